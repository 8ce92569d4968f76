"""Evaluation gates of a registered model version, and the fairness-mitigated variant.

- ``quality``: metrics against the champion on the same out-of-time holdout;
- ``fairness``: fairlearn metrics by group with bootstrap intervals, the fairness gate;
- ``grouprule``: the per-group threshold rule a mitigated version applies after scoring;
- ``fairsearch``: the mitigation search (ThresholdOptimizer, joint threshold search, trade-off);
- ``drift``: Evidently drift of features and predictions;
- ``gates``: one evaluation context (what training stored, loaded once), the gate decision;
- ``mitigation``: registers and gates the mitigated variant as a version of its own.
"""
