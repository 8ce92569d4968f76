"""Train on a window's older rows and judge fairness on its out-of-time holdout, as the training
DAG does (pipeline, out-of-fold scores for the mitigation search, the spec's fairness gate)."""

from __future__ import annotations

from typing import Any

import pandas as pd

from rtml.evaluate.fairness import evaluate_fairness
from rtml.features import sensitive_frame, target_vector, to_frame
from rtml.spec import ProjectSpec
from rtml.train import fit_pipeline, oof_scores, split_holdout


def train_and_judge(spec: ProjectSpec, window: pd.DataFrame) -> dict[str, Any]:
    """The gate's result on ``window``'s holdout, with the holdout's labels, scores and groups."""
    train, hold = split_holdout(window, spec)
    pipe = fit_pipeline(spec, train, spec.model.random_state)
    oof = oof_scores(spec, train, spec.model.random_state)
    scores = pipe.predict_proba(to_frame(hold, spec))[:, 1]
    y = target_vector(hold[spec.target.name], spec)
    sens = sensitive_frame(hold, spec)
    res = evaluate_fairness(
        y, scores, sens, spec.gates.fairness, spec.gates.quality.decision_threshold,
        train=(oof, target_vector(train[spec.target.name], spec), sensitive_frame(train, spec)),
        random_state=spec.model.random_state,
    )
    return {"res": res, "y": y, "scores": scores, "sens": sens}
