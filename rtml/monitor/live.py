"""Monitoring: live drift and live performance of the served model, fed back into retraining.

The serving endpoint logs every prediction to the lake (kind ``predictions``: features, score,
label, model version, and the event id when the caller sends it). Labels arrive later through the
ingestion path (kind ``labels``). This stage, run by the ``rtml_monitor`` DAG or ``rtml monitor``:

- compares the recent predictions' features and scores with the labelled training window that came
  before them (Evidently, the same check as the drift gate), and
- joins the predictions whose label has arrived and computes the live quality metrics, compared
  with the champion's holdout metric logged at training time, and the fairness gate's group
  metrics (same functions, limits and minimums) on the decisions the endpoint answered with,
  attached to the champion (model card section, ``live_fairness`` tag read by the endpoint's
  ``/metrics``),

then writes a JSON (and HTML) monitoring report to the lake and says whether to retrain: drifted
beyond the spec's threshold, live quality below the champion's holdout quality by more than the
spec's tolerance, or a live fairness check failed. The DAG turns that into an Asset event the
training DAG listens to.
"""

from __future__ import annotations

import json
import logging
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rtml.lake import LABEL_CLOCK_SKEW, Lake, _utc
from rtml.names import CHAMPION, EVAL_DIR, LIVE_FAIRNESS_TAG, MODEL_CARD
from rtml.settings import Settings, get_settings
from rtml.spec import ProjectSpec

if TYPE_CHECKING:
    import pyarrow as pa

MIN_LABELLED = 50  # below this, live metrics are too noisy to act on
TAG_LIMIT = 5000  # MLflow's longest model version tag value
MONITORING_KIND = "monitoring"  # the table <dataset>.monitoring: one row per check

log = logging.getLogger("rtml.monitor.live")


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

    # Only the window's batches (the day index) and, in a table, only its days are read.
    preds = lake.read_window(ds, "predictions", "time", since, now)
    if not preds.empty:
        preds["time"] = pd.to_datetime(preds["time"], utc=True)
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
    # A label stamped more than the clock skew before the window cannot be the live outcome of a
    # prediction in it (training's rule, rtml.lake.LABEL_CLOCK_SKEW): only the window's label days are read.
    labels = lake.latest_labels(spec, since=since - LABEL_CLOCK_SKEW)
    if eid in preds.columns and not labels.empty:
        joined = preds.dropna(subset=[eid]).merge(labels[[eid, spec.target.name]], on=eid, how="inner")
    else:
        joined = preds.iloc[0:0]
    report["labelled_predictions"] = int(len(joined))
    gate = spec.gates.quality
    champion, reference_value = None, reference_metric
    if len(joined) and reference_metric is None:
        champion, reference_value = _champion_metric(spec, settings, gate.metric)
    if len(joined) >= MIN_LABELLED:
        y = target_vector(joined[spec.target.name], spec)
        live = quality_metrics(y, joined["score"].to_numpy(dtype=np.float64), gate.decision_threshold)
        report["live_quality"] = live
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

    # Fairness: the gate's group metrics, with its minimums, on the served decisions.
    if spec.sensitive:
        fair = live_fairness(joined, spec, champion, random_state=random_state)
        fair["checked_at"] = report["checked_at"]
        report["live_fairness"] = fair
        report["reasons"].extend(fair["reasons"])
        if champion is not None and fair.get("rows"):
            fair["published"] = _publish_fairness(spec, settings, champion, fair, report["checked_at"])

    report["retrain"] = bool(report["reasons"])
    report["message"] = (
        f"{len(preds)} predictions, {len(joined)} labelled: "
        + ("retrain: " + "; ".join(report["reasons"]) if report["retrain"] else "healthy")
    )
    return _save(lake, spec, report, html_path)


def served_decisions(rows: Any, spec: ProjectSpec) -> Any:
    """The 0/1 decisions the endpoint answered with: its logged ``label`` (a mitigated version
    decides with per-group thresholds, not the score), else the score at the spec's threshold."""
    import numpy as np

    by_score = rows["score"].to_numpy(dtype=np.float64) >= spec.gates.quality.decision_threshold
    if "label" not in rows.columns:
        return by_score.astype(int)
    label = rows["label"]
    said = label.astype(str).to_numpy() == str(spec.target.positive)
    return np.where(label.isna().to_numpy(), by_score, said).astype(int)


def live_fairness(
    joined: Any, spec: ProjectSpec, version: str | None = None, *, random_state: int = 0
) -> dict[str, Any]:
    """The fairness gate's group metrics (``attribute_fairness``, same limits and minimums) on the
    labelled live predictions of ``version`` (all of them when None). A group below the minimums
    is "insufficient data" and decides nothing; a failed check is a reason to retrain."""
    from rtml.evaluate.fairness import attribute_fairness, fairness_groups
    from rtml.features import target_vector

    gate = spec.gates.fairness
    rows = joined
    if "model" in rows.columns and len(rows):  # one lake may hold several models' logs of a dataset
        rows = rows[rows["model"].isna() | (rows["model"].astype(str) == spec.model.registered_name)]
    if version is not None and len(rows):
        rows = rows[rows["version"].astype(str) == str(version)]
    out: dict[str, Any] = {"version": version, "rows": int(len(rows)), "attributes": {}, "reasons": [],
                           "passed": True}
    if rows.empty:
        who = f"version {version}" if version is not None else "any version"
        out["skipped"] = f"no labelled predictions of {who} in the window"
        return out
    rows = rows.reset_index(drop=True)
    y = target_vector(rows[spec.target.name], spec)
    decided = served_decisions(rows, spec)
    out["selection_rate"] = float(decided.mean())
    for name, groups in fairness_groups(rows, spec).items():
        res = attribute_fairness(name, y, decided, groups.reset_index(drop=True), gate, random_state)
        out["attributes"][name] = res
        out["reasons"].extend(f"live {c['reason']}" for c in res["checks"] if not c["passed"])
    out["passed"] = not out["reasons"]
    return out


def fairness_tag(fair: dict[str, Any], checked_at: str) -> str:
    """The compact JSON of the ``live_fairness`` version tag: per attribute, per gated metric,
    [value, 1 passed / 0 failed]; the serving endpoint turns it into gauges."""
    checks = {
        name: {c["metric"]: [round(float(c["value"]), 4), int(bool(c["passed"]))] for c in res.get("checks", [])}
        for name, res in fair["attributes"].items()
    }
    body = {"at": checked_at, "rows": fair["rows"], "passed": fair["passed"], "checks": checks}
    text = json.dumps(body, separators=(",", ":"), sort_keys=True)
    if len(text) > TAG_LIMIT:  # many attributes: keep the failed checks, which matter most
        body["checks"] = {n: {m: v for m, v in ms.items() if not v[1]} for n, ms in checks.items()}
        body["truncated"] = True
        text = json.dumps(body, separators=(",", ":"), sort_keys=True)
    if len(text) > TAG_LIMIT:  # still too long: the verdict alone (the card and the JSON have the rest)
        body["checks"] = {}
        text = json.dumps(body, separators=(",", ":"), sort_keys=True)
    return text


def _publish_fairness(
    spec: ProjectSpec, settings: Settings, version: str, fair: dict[str, Any], checked_at: str
) -> str:
    """Attach the live fairness to the champion version: a "live fairness" section of its model
    card, ``evaluation/live_fairness.json`` on its run, and the ``live_fairness`` tag the endpoint
    reads into ``/metrics``. Returns "ok" or why not (monitoring still reports and asks to retrain)."""
    from mlflow.exceptions import MlflowException

    from rtml.registry.client import mlflow_client
    from rtml.reports import LIVE_FAIRNESS_MARK, live_fairness_html, replace_section

    name = spec.model.registered_name
    try:
        client = mlflow_client(settings)
        mv = client.get_model_version(name, version)
        if mv.run_id:
            with tempfile.TemporaryDirectory(prefix="rtml-live-fairness-") as tmp:
                tmpdir = Path(tmp)
                (tmpdir / "live_fairness.json").write_text(json.dumps(fair, indent=2, sort_keys=True, default=str))
                client.log_artifact(mv.run_id, str(tmpdir / "live_fairness.json"), EVAL_DIR)
                try:
                    card_path: Path | None = Path(client.download_artifacts(mv.run_id, MODEL_CARD, str(tmpdir)))
                except MlflowException:
                    card_path = None  # a version without a card: the JSON and the tag still tell
                if card_path is not None:
                    section = live_fairness_html(fair, checked_at)
                    card_path.write_text(replace_section(card_path.read_text(), section, LIVE_FAIRNESS_MARK))
                    client.log_artifact(mv.run_id, str(card_path), EVAL_DIR)
        client.set_model_version_tag(name, version, LIVE_FAIRNESS_TAG, fairness_tag(fair, checked_at))
    except Exception as err:  # noqa: BLE001 - the registry being down must not lose the monitoring report
        log.warning("could not attach live fairness to %s version %s: %r", name, version, err)
        return f"not attached: {err!r}"[:500]
    return "ok"


def _save(lake: Lake, spec: ProjectSpec, report: dict[str, Any], html_path: Path | None) -> dict[str, Any]:
    stamp = datetime.fromisoformat(report["checked_at"]).strftime("%Y%m%dT%H%M%S")
    base = f"{spec.dataset.name}/monitoring/{stamp}"
    if html_path is not None and html_path.exists():
        lake.store.put(f"{base}/live_drift.html", html_path.read_bytes())
        report["drift_report"] = lake.store.url(f"{base}/live_drift.html")
    lake.store.put(f"{base}/report.json", json.dumps(report, indent=2, sort_keys=True, default=str).encode())
    report["report"] = lake.store.url(f"{base}/report.json")
    # One row per check in the table <dataset>.monitoring (Spark/SQL over the history of checks);
    # the check's time is its batch, so a re-saved report replaces its row.
    snap = lake.tables.commit_batch(spec.dataset.name, MONITORING_KIND, stamp, monitoring_row(report),
                                    time_column="checked_at")
    report["table"] = snap["table"]
    return report


def monitoring_row(report: dict[str, Any]) -> pa.Table:
    """A monitoring report as one table row: the verdict and headline numbers as columns, the whole
    report as JSON (a check's details vary with what it could check)."""
    import pyarrow as pa

    drift = report.get("drift") or {}
    fair = report.get("live_fairness") or {}
    share = drift.get("drifted_share")
    return pa.table({
        "checked_at": pa.array([datetime.fromisoformat(report["checked_at"])], pa.timestamp("us", tz="UTC")),
        "model": pa.array([report.get("model")], pa.string()),
        "model_versions": pa.array([[str(v) for v in report.get("model_versions", [])]], pa.list_(pa.string())),
        "predictions": pa.array([report.get("predictions", 0)], pa.int64()),
        "labelled_predictions": pa.array([report.get("labelled_predictions")], pa.int64()),
        "drifted_share": pa.array([float(share) if isinstance(share, (int, float)) else None], pa.float64()),
        "drift_passed": pa.array([drift.get("passed") if isinstance(drift.get("passed"), bool) else None], pa.bool_()),
        "fairness_passed": pa.array([fair.get("passed") if isinstance(fair.get("passed"), bool) else None], pa.bool_()),
        "retrain": pa.array([bool(report.get("retrain"))], pa.bool_()),
        "reasons": pa.array([[str(r) for r in report.get("reasons", [])]], pa.list_(pa.string())),
        "report": pa.array([json.dumps(report, sort_keys=True, default=str)], pa.string()),
    })
