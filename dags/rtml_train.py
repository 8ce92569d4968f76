"""
### rtml_train: train a candidate and run the evaluation gates

Runs when ingestion updates the **rtml_events** or **rtml_labels** Asset, when monitoring asks for
retraining (**rtml_retrain**), or when triggered by hand.

0. **resolve_spec** - the run's project spec (param `spec`, default `RTML_SPEC`), read once and
   handed to every later task, so editing the YAML mid-run cannot split a run between two specs.
1. **check_new_data** - enough new labelled rows since the last trained version? Otherwise the run
   ends here, every later task *skipped* (nothing is wrong: data is still arriving).
   Params: `min_new_labels` (default: the spec's `training.min_rows`), `force` to train anyway,
   `window_end` to end the training window at a given time (default: the newest event received).
2. **train** - sliding window of labelled data from the lake, out-of-time holdout (newest slice),
   seeded; logged to MLflow and registered as a new version of the spec's model.
3. **evaluate** - the quality (against the current `champion` on the same holdout), fairness and
   drift gates in one task (the version's model, frames and stored scores are loaded once), then
   the decision: reports (model card, fairness, Evidently drift, JSON summary) in the run's
   `evaluation/` artifacts, signed version tags `gate.*`; a version passing every gate gets the
   alias `challenger`.
4. **mitigate** - when the plain version failed ONLY the fairness gate and the spec allows it
   (`gates.fairness.mitigate`), registers the fairness-mitigated variant as a new version
   (tags `rtml.variant=mitigated`, `rtml.base_version`; same scores, per-group decision
   thresholds) and runs the same gates on it; passing them all gives it `challenger`.
   Otherwise it does nothing (the log says why).
5. **publish_challenger** - emits the **rtml_challenger** Asset of the run's model (extra: name,
   version of the version that got `challenger`, plain or mitigated), which starts `rtml_promote`;
   skipped when no version passed (the reasons are in the versions' `gate.reasons` tags).
"""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import AssetAny, Param, dag, task

from rtml.assets import CHALLENGER_OF_RUN, EVENTS, LABELS, RETRAIN, SPEC_PATH


@dag(
    dag_id="rtml_train",
    description="Train on the lake's labelled window, run the quality/fairness/drift gates, mark the challenger",
    doc_md=__doc__,
    schedule=AssetAny(EVENTS, LABELS, RETRAIN),
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,  # two trainings at once would race for the challenger alias
    tags=["rtml", "training"],
    params={
        "spec": Param(SPEC_PATH, type="string", description="project spec YAML"),
        "min_new_labels": Param(
            None,
            type=["null", "integer"],
            minimum=0,
            description="new labelled rows needed to train (default: training.min_rows)",
        ),
        "force": Param(False, type="boolean", description="train even without enough new labelled data"),
        "window_end": Param(
            None,
            type=["null", "string"],
            description="end of the training window (ISO 8601; default: just after the newest event received)",
        ),
    },
)
def rtml_train():
    @task
    def resolve_spec(params: dict | None = None) -> dict:
        from rtml.spec import spec_for_run

        ref = spec_for_run((params or {}).get("spec"))
        print(f"project spec {ref['path']} ({ref['digest']})")
        return ref

    @task.short_circuit
    def check_new_data(spec: dict, params: dict | None = None) -> bool:
        from rtml.spec import spec_from_run
        from rtml.train import new_data_status

        params = params or {}
        status = new_data_status(spec_from_run(spec), min_new_rows=params.get("min_new_labels"))
        print(status["message"])
        if params.get("force"):
            print("force=true: training anyway")
            return True
        return bool(status["ready"])

    @task
    def train(spec: dict, params: dict | None = None) -> dict:
        from airflow.sdk.exceptions import AirflowSkipException

        from rtml.spec import spec_from_run
        from rtml.train import NotEnoughData
        from rtml.train import train as train_model

        try:
            params = params or {}
            result = train_model(spec_from_run(spec), end=params.get("window_end"), run_name="rtml_train")
        except NotEnoughData as err:  # e.g. labels exist but not inside the window: wait for more
            raise AirflowSkipException(str(err)) from None
        print(result["message"])
        keep = (
            "run_id",
            "version",
            "model_uri",
            "registered_name",
            "holdout_uri",
            "train_uri",
            "lineage_uri",
            "train_rows",
            "holdout_rows",
            "window_start",
            "window_end",
            "metrics",
        )
        return {k: result[k] for k in keep}

    @task
    def evaluate(trained: dict, spec: dict) -> dict:
        from rtml.evaluate.gates import evaluate as evaluate_gates
        from rtml.spec import spec_from_run

        # One task, one process: the version's model, frames and stored scores are loaded once
        # for the three gates and the decision (separate tasks would each download them again).
        res = evaluate_gates(spec_from_run(spec), trained["version"])
        print(res["message"])
        return {k: res[k] for k in ("passed", "name", "version", "run_id", "gates", "reasons", "reports")}

    @task
    def mitigate(decision: dict, spec: dict) -> dict:
        from rtml.evaluate.mitigation import mitigate_version
        from rtml.spec import spec_from_run

        res = mitigate_version(spec_from_run(spec), decision)
        print(res["message"])
        keep = ("ran", "passed", "name", "version", "base_version", "run_id", "gates", "reasons", "reason")
        return {k: res.get(k) for k in keep}

    @task(outlets=[CHALLENGER_OF_RUN])
    def publish_challenger(decision: dict, mitigated: dict, spec: dict, **context) -> dict:
        from airflow.sdk.exceptions import AirflowSkipException

        from rtml.assets import asset_for
        from rtml.spec import spec_from_run

        # the plain version if it passed, else its mitigated variant if that passed
        winner = decision if decision["passed"] else (mitigated if mitigated.get("passed") else None)
        if winner is None:
            why = f"version {decision['version']} failed the gates: {decision['reasons']}"
            if mitigated.get("ran"):
                why += f"; mitigated version {mitigated['version']} failed too: {mitigated['reasons']}"
            raise AirflowSkipException(why)
        extra = {"name": winner["name"], "version": winner["version"]}
        # The Asset of the run's own model: rtml_challenger for the deployment's (starts rtml_promote).
        context["outlet_events"][CHALLENGER_OF_RUN].add(asset_for("challenger", spec_from_run(spec)), extra=extra)
        return extra

    spec = resolve_spec()
    trained = train(spec)
    check_new_data(spec) >> trained
    decision = evaluate(trained, spec)
    publish_challenger(decision, mitigate(decision, spec), spec)


rtml_train()
