"""Drift with Evidently 0.7: a current frame (holdout, newest batches) against the training window.

Evidently's ``DataDriftPreset`` tests each feature and the model's prediction (the positive-class
score) column by column. The gate counts features only: the share of drifted features must not
exceed ``gates.drift.max_drifted_share``; a drifted prediction fails the gate too when
``gates.drift.check_prediction``. Frames larger than ``max_rows`` are sampled (seeded) before
Evidently sees them: its statistics and HTML (every histogram inlined) grow with the rows, while
a 50k-row sample already resolves any shift that matters for a gate.

``import evidently`` takes seconds, so it is imported inside the function only.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

    from rtml.spec import DriftGate, ProjectSpec

PREDICTION = "prediction"
MAX_ROWS = 50_000


def _sample(df: pd.DataFrame, max_rows: int, seed: int) -> pd.DataFrame:
    return df if len(df) <= max_rows else df.sample(n=max_rows, random_state=seed)


def drift_check(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    spec: ProjectSpec,
    gate: DriftGate | None = None,
    *,
    name: str = "holdout",
    html_path: str | Path | None = None,
    max_rows: int = MAX_ROWS,
    random_state: int = 0,
) -> dict[str, Any]:
    """Run Evidently on two model-input frames (spec features, plus ``prediction`` if present).

    Returns per-column results (method, score, threshold, drifted), the share of drifted features
    and the gate outcome with reasons naming the columns. Writes the HTML report to ``html_path``.
    """
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    gate = gate or spec.gates.drift
    has_pred = PREDICTION in reference.columns and PREDICTION in current.columns
    numeric = list(spec.numeric_features) + ([PREDICTION] if has_pred else [])
    categorical = list(spec.categorical_features)
    cols = [*spec.feature_names] + ([PREDICTION] if has_pred else [])
    ref = _sample(reference[cols], max_rows, random_state)
    cur = _sample(current[cols], max_rows, random_state + 1)
    definition = DataDefinition(numerical_columns=numeric, categorical_columns=categorical)
    preset_kw: dict[str, Any] = {"drift_share": gate.max_drifted_share}
    if gate.threshold is not None:
        preset_kw["threshold"] = gate.threshold
    report = Report([DataDriftPreset(**preset_kw)], include_tests=True)
    snapshot = report.run(
        Dataset.from_pandas(cur.reset_index(drop=True), data_definition=definition),
        Dataset.from_pandas(ref.reset_index(drop=True), data_definition=definition),
    )
    data = snapshot.dict()
    columns: dict[str, dict[str, Any]] = {}
    for m in data.get("metrics", []):
        cfg = m.get("config", {})
        if cfg.get("type", "").endswith("ValueDrift"):
            columns[cfg["column"]] = {
                "method": cfg.get("method"),
                "score": float(m["value"]) if m.get("value") is not None else None,
                "threshold": cfg.get("threshold"),
                "drifted": None,
            }
    for t in data.get("tests", []):
        params = t.get("metric_config", {}).get("params", {})
        col = params.get("column")
        if params.get("type", "").endswith("ValueDrift") and col in columns:
            # Evidently's own verdict (p-value below, or distance above, the threshold).
            columns[col]["drifted"] = t.get("status") == "FAIL"
    features = [c for c in spec.feature_names if c in columns]
    drifted = [c for c in features if columns[c]["drifted"]]
    share = len(drifted) / len(features) if features else 0.0
    reasons = []
    if share > gate.max_drifted_share:
        reasons.append(
            f"drift: {name}: {len(drifted)} of {len(features)} features drifted "
            f"(share {share:.2f} > {gate.max_drifted_share:g}): {', '.join(drifted)}"
        )
    pred = columns.get(PREDICTION)
    if gate.check_prediction and pred is not None and pred["drifted"]:
        reasons.append(
            f"drift: {name}: the prediction drifted ({pred['method']} {pred['score']:.3f}, threshold {pred['threshold']})"
        )
    if html_path is not None:
        snapshot.save_html(str(html_path))
    return {
        "name": name,
        "reference_rows": len(reference),
        "current_rows": len(current),
        "sampled": len(ref) < len(reference) or len(cur) < len(current),
        "sample_rows": {"reference": len(ref), "current": len(cur)},
        "columns": columns,
        "drifted_features": drifted,
        "drifted_share": share,
        "max_drifted_share": gate.max_drifted_share,
        "prediction_drifted": None if pred is None else pred["drifted"],
        "passed": not reasons,
        "reasons": reasons,
    }
