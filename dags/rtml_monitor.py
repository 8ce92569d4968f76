"""
### rtml_monitor: live drift, performance and fairness of the served model

Every hour, reads the serving endpoint's prediction log from the lake (last `window_hours`),
with the run's project spec (param `spec`, default `RTML_SPEC`) resolved once by **resolve_spec**:

1. **check** - Evidently drift of the live features against the labelled window that preceded
   them, and, for the predictions whose label has arrived (joined by event id), live quality
   compared with the champion's holdout quality, and live fairness: the fairness gate's group
   metrics, limits and minimums on the champion's answered decisions, attached to its model card
   and to its `live_fairness` tag (the endpoint's `/metrics` shows it). The report (JSON + HTML)
   goes to `<lake>/<dataset>/monitoring/`; its summary is this task's return value.
2. **needs_retraining** - ends the run here when the model is healthy (later tasks *skipped*).
3. **request_retraining** - updates the **rtml_retrain** Asset with the reasons, which starts
   `rtml_train`.

Beside them, **compare_shadow** refreshes the challenger's shadow comparison (its answers on live
traffic next to the champion's) in its model card, for the person who approves it in MLflow.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import Param, dag, task

from rtml.assets import RETRAIN_OF_RUN, SPEC_PATH


@dag(
    dag_id="rtml_monitor",
    description="Live drift, performance and fairness of the served model; requests retraining when they degrade",
    doc_md=__doc__,
    schedule=timedelta(hours=1),
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    tags=["rtml", "monitoring"],
    params={
        "spec": Param(SPEC_PATH, type="string", description="project spec YAML"),
        "window_hours": Param(24, type="number", minimum=0.01, description="how far back to look"),
    },
)
def rtml_monitor():
    @task
    def resolve_spec(params: dict | None = None) -> dict:
        from rtml.spec import spec_for_run

        ref = spec_for_run((params or {}).get("spec"))
        print(f"project spec {ref['path']} ({ref['digest']})")
        return ref

    @task
    def check(spec: dict, params: dict | None = None) -> dict:
        from rtml.monitor.live import monitor
        from rtml.settings import get_settings
        from rtml.spec import spec_from_run

        params = params or {}
        report = monitor(spec_from_run(spec), get_settings(refresh=True),
                         window_hours=float(params.get("window_hours") or 24))
        print(report["message"])
        keep = ("retrain", "reasons", "predictions", "labelled_predictions", "report", "message")
        summary = {k: report.get(k) for k in keep}
        fair = report.get("live_fairness") or {}
        summary["live_fairness"] = {k: fair.get(k) for k in ("version", "rows", "passed", "published")}
        return summary

    @task.short_circuit
    def needs_retraining(summary: dict) -> bool:
        return bool(summary["retrain"])

    @task(outlets=[RETRAIN_OF_RUN])
    def request_retraining(summary: dict, spec: dict, *, outlet_events=None) -> None:
        from rtml.assets import asset_for
        from rtml.spec import spec_from_run

        extra = {"reasons": summary["reasons"], "report": summary["report"]}
        outlet_events[RETRAIN_OF_RUN].add(asset_for("retrain", spec_from_run(spec)), extra=extra)

    @task
    def compare_shadow(spec: dict) -> dict:
        from rtml.monitor.shadow import compare
        from rtml.settings import get_settings
        from rtml.spec import spec_from_run

        result = compare(spec_from_run(spec), get_settings(refresh=True))
        print(result["message"])
        return {k: result.get(k) for k in ("version", "rows", "agreement", "message")}

    spec = resolve_spec()
    summary = check(spec)
    needs_retraining(summary) >> request_retraining(summary, spec)
    compare_shadow(spec)


rtml_monitor()
