"""Monitoring: live drift and live performance of the served model, fed back into retraining.

The serving endpoint logs every prediction to the lake (kind ``predictions``: features, score,
label, model version, and the event id when the caller sends it). Labels arrive later through the
ingestion path (kind ``labels``). This stage, run by the ``rtml_monitor`` DAG or ``rtml monitor``:

- compares the recent predictions' features and scores with the labelled training window that came
  before them (Evidently, the same check as the drift gate), and
- joins the predictions whose label has arrived and computes the live quality metrics, compared
  with the champion's holdout metric logged at training time,

then writes a JSON (and HTML) monitoring report to the lake and says whether to retrain: drifted
beyond the spec's threshold, or live quality below the champion's holdout quality by more than the
spec's tolerance. The DAG turns that into an Asset event the training DAG listens to.
"""

from __future__ import annotations

import json
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from rtml.lake import Lake, _utc
from rtml.names import CHAMPION
from rtml.settings import Settings, get_settings
from rtml.spec import ProjectSpec

MIN_LABELLED = 50  # below this, live metrics are too noisy to act on


def _champion_metric(spec: ProjectSpec, settings: Settings, metric: str) -> tuple[str | None, float | None]:
    """The champion version and its holdout metric as logged by training (None if no champion)."""
    try:
        from rtml.registry.client import mlflow_client

        client = mlflow_client(settings)
        mv = client.get_model_version_by_alias(spec.model.registered_name, CHAMPION)
    except Exception:  # no registered model or no champion yet: nothing to compare with
        return None, None
    run = client.get_run(mv.run_id) if mv.run_id else None
    if run is None:
        return mv.version, None
    for key in (f"holdout_{metric}", f"candidate.{metric}", metric):
        if key in run.data.metrics:
            return mv.version, float(run.data.metrics[key])
    return mv.version, None


def monitor(
    spec: ProjectSpec,
    settings: Settings | None = None,
    *,
    window_hours: float = 24.0,
    now: datetime | None = None,
    reference_metric: float | None = None,
    random_state: int = 0,
) -> dict[str, Any]:
    """Check the last ``window_hours`` of predictions; returns the report (and writes it to the lake).

    ``reference_metric`` is the quality live traffic is held to; by default the champion's holdout
    value of the spec's gate metric, read from its MLflow run.
    """
    import numpy as np
    import pandas as pd

    from rtml.evaluate.drift import drift_check
    from rtml.evaluate.quality import LOWER_IS_BETTER, quality_metrics
    from rtml.features import target_vector

    settings = settings or get_settings()
    lake = Lake(settings)
    ds = spec.dataset.name
    now = _utc(now or datetime.now(UTC))
    since = now - timedelta(hours=window_hours)
    report: dict[str, Any] = {
        "dataset": ds,
        "model": spec.model.registered_name,
        "window": {"start": since.isoformat(), "end": now.isoformat()},
        "checked_at": datetime.now(UTC).isoformat(),
        "retrain": False,
        "reasons": [],
    }

    # A batch whose newest prediction (watermark) is older than the window has nothing for it.
    preds = lake.read_batches(
        ds, "predictions", keep=lambda m: m.get("watermark") is None or _utc(m["watermark"]) >= since
    )
    if not preds.empty:
        preds["time"] = pd.to_datetime(preds["time"], utc=True)
        preds = preds[(preds["time"] >= since) & (preds["time"] < now)]
    report["predictions"] = int(len(preds))
    if preds.empty:
        report["message"] = "no predictions in the window: nothing to monitor"
        return _save(lake, spec, report, None)
    report["model_versions"] = sorted(preds["version"].astype(str).unique().tolist())

    # Drift: recent traffic against the labelled window that preceded it (what training saw).
    ref_end = preds["time"].min()
    reference, _ = lake.labelled(spec, ref_end - timedelta(days=spec.training.window_days), ref_end)
    html_path = None
    if len(reference) >= MIN_LABELLED:
        current = preds[spec.feature_names].copy()
        ref = reference[spec.feature_names].copy()
        tmp = Path(tempfile.mkdtemp(prefix="rtml-monitor-"))
        html_path = tmp / "live_drift.html"
        drift = drift_check(ref, current, spec, name="live", html_path=html_path, random_state=random_state)
        report["drift"] = {k: drift[k] for k in ("drifted_features", "drifted_share", "max_drifted_share", "passed")}
        if not drift["passed"]:
            report["reasons"].extend(drift["reasons"])
    else:
        report["drift"] = {"skipped": f"only {len(reference)} labelled reference rows (< {MIN_LABELLED})"}

    # Performance: predictions whose label has arrived, joined by event id.
    eid = spec.event_id
    labels = lake.latest_labels(spec)
    if eid in preds.columns and not labels.empty:
        joined = preds.dropna(subset=[eid]).merge(labels[[eid, spec.target.name]], on=eid, how="inner")
    else:
        joined = preds.iloc[0:0]
    report["labelled_predictions"] = int(len(joined))
    gate = spec.gates.quality
    if len(joined) >= MIN_LABELLED:
        y = target_vector(joined[spec.target.name], spec)
        live = quality_metrics(y, joined["score"].to_numpy(dtype=np.float64), gate.decision_threshold)
        report["live_quality"] = live
        if reference_metric is None:
            champion, reference_value = _champion_metric(spec, settings, gate.metric)
        else:
            champion, reference_value = None, reference_metric
        report["reference"] = {"champion_version": champion, gate.metric: reference_value}
        value = live.get(gate.metric)
        if reference_value is not None and value is not None:
            lower_better = gate.metric in LOWER_IS_BETTER
            worse = (value - reference_value) if lower_better else (reference_value - value)
            report["quality_drop"] = worse
            if worse > gate.tolerance:
                report["reasons"].append(
                    f"performance: live {gate.metric} {value:.4f} vs champion holdout {reference_value:.4f} "
                    f"(worse by {worse:.4f} > tolerance {gate.tolerance:g})"
                )
    else:
        report["live_quality"] = {"skipped": f"only {len(joined)} labelled predictions (< {MIN_LABELLED})"}

    report["retrain"] = bool(report["reasons"])
    report["message"] = (
        f"{len(preds)} predictions, {len(joined)} labelled: "
        + ("retrain: " + "; ".join(report["reasons"]) if report["retrain"] else "healthy")
    )
    return _save(lake, spec, report, html_path)


def _save(lake: Lake, spec: ProjectSpec, report: dict[str, Any], html_path: Path | None) -> dict[str, Any]:
    stamp = datetime.fromisoformat(report["checked_at"]).strftime("%Y%m%dT%H%M%S")
    base = f"{spec.dataset.name}/monitoring/{stamp}"
    if html_path is not None and html_path.exists():
        lake.store.put(f"{base}/live_drift.html", html_path.read_bytes())
        report["drift_report"] = lake.store.url(f"{base}/live_drift.html")
    lake.store.put(f"{base}/report.json", json.dumps(report, indent=2, sort_keys=True, default=str).encode())
    report["report"] = lake.store.url(f"{base}/report.json")
    return report
