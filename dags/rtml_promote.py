"""rtml_promote: a person approves a challenger in MLflow, rtml deploys it, checks it live, or rolls back.

Started when the training DAG publishes the Asset `rtml_challenger` (a version passed every gate),
or by hand with the params `name` and `version`.

**How to decide (MLflow UI):** Models -> the model -> Version N -> Tags -> add the tag
`approval` with value `approved` (or `rejected`); add `approval.by` = your name so it is recorded.
From a terminal: `rtml approve NAME VERSION` / `rtml reject NAME VERSION`.

1. `wait_for_approval` waits in the triggerer (no worker slot) for that tag; a rejection or no
   decision within `approval_timeout_hours` skips everything after it: nothing is deployed.
   The tag reaches the wait as an event: MLflow's registry webhook delivers it to the rtml plugin
   (`POST /rtml/hooks/mlflow`, HMAC-checked), which logs the decision and publishes "look now" on a
   Redis channel named after the version (`rtml.registry.signals`); the deferred trigger listens
   on it and reads the version from MLflow at once. The signal carries no authority (the trigger
   acts only on what MLflow says), so a lost or forged one changes only timing. Polling MLflow stays
   as the fallback: every 30 s while listening, every 5 s when Redis cannot be reached (or
   `RTML_APPROVAL_SIGNAL_URL=off`). Why not an Asset event: it would start a second run beside
   the one already waiting, and both would then promote, reload and smoke-check the version.
   Deploying at the approval (param `deploy_on_approval`, on by default): the moment the wait sees
   the approval, it promotes and reloads the endpoint itself, from the triggerer
   (`rtml.serve.deploy.deploy_approved`), so approval -> served takes the promotion's own time (a few
   seconds on a loaded machine) instead of also the time Airflow needs to resume the wait and start
   `promote` and `reload` (15-20 s more; `benchmarks/approval.py`); those two tasks then
   take over what was done (no second record, no second reload) and the run goes on with the smoke
   check. Off: `promote` and `reload` do the work, as the fallback does anyway.
2. `promote` moves the `champion` alias (the old one becomes `previous_champion`) and records who
   approved and when; refused unless every gate passed with the evaluator's valid signature, the
   version is still approved, and it is the current challenger and newer than the champion.
   A refusal at the approval is final: the task fails with it and nothing is served.
3. `reload` tells the serving endpoint to load the new champion now and waits until it serves it
   (or confirms the endpoint already serves it, after a deployment at the approval).
4. `smoke_check` sends a holdout sample to the live endpoint: its answers must equal the model's
   offline predictions.
5. `rollback` runs only if a step after the approval failed: if the version had become champion,
   `champion` goes back to the previous version (only to one that passed, is approved and was never
   rejected). The run then ends failed, saying why; the decision log records the rollback and why.

Several runs may wait at once (one per challenger, of different models, each deferred in the
triggerer); a run whose version stops being the challenger before a decision ends *skipped*. The
promotion itself is one at a time: `rtml.registry.promotion` holds a lease in the lake during a
promotion or rollback, so two runs, or the CLI and this DAG, never interleave.
"""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import Param, TriggerRule, dag, task

from rtml.assets import CHALLENGER, SPEC
from rtml.registry.triggers import WaitForApprovalOperator

MODEL = SPEC.model.registered_name
FAILURE_KEY = "failure"  # XCom a failing step leaves for rollback: why the deployment failed


def _say_why(context, step: str, err: Exception) -> None:
    context["ti"].xcom_push(key=FAILURE_KEY, value=f"{step}: {err}"[:2000])


@task(multiple_outputs=True)
def target(**context) -> dict:
    """The version to decide on: from the params (manual run) or the Asset event's extra."""
    from rtml.serve.deploy import decision_target

    events = [e.extra for evs in context["triggering_asset_events"].values() for e in evs]
    return decision_target(context["params"], events, MODEL)


@task(retries=0)
def promote(name: str, version: str, approval: dict) -> dict:
    """Move the champion alias (or take over the move made at the approval); refuse versions that
    did not pass every gate."""
    from airflow.sdk.exceptions import AirflowFailException

    from rtml.registry.promotion import PromotionError
    from rtml.serve.deploy import promotion_after_approval

    try:
        return promotion_after_approval(name, version, approval)
    except PromotionError as err:
        raise AirflowFailException(str(err)) from None


@task(retries=0)
def reload(promoted: dict, **context) -> dict:
    """Ask the serving endpoint to load the new champion now (unless it did at the approval); wait
    until it answers with it."""
    from rtml.serve.deploy import reload_after_promotion

    try:
        return reload_after_promotion(promoted)
    except Exception as err:
        _say_why(context, "reload", err)
        raise


@task(retries=0)
def smoke_check(promoted: dict, served: dict, **context) -> dict:
    """The live endpoint's answers on a holdout sample equal the model's offline predictions."""
    from rtml.serve.deploy import smoke_check as check_live
    from rtml.spec import spec_for_run, spec_from_run

    try:
        spec = spec_from_run(spec_for_run())  # the one task of the run that needs the spec
        return check_live(spec, promoted["name"], promoted["version"])
    except Exception as err:
        _say_why(context, "live smoke check", err)
        raise


@task(trigger_rule=TriggerRule.ONE_FAILED, retries=0)
def rollback(name: str, version: str, **context) -> None:
    """Only after a failed promotion, reload or smoke check: put the previous champion back."""
    from airflow.sdk.exceptions import AirflowFailException

    from rtml.serve.deploy import roll_back_failed

    why = context["ti"].xcom_pull(task_ids=["reload", "smoke_check"], key=FAILURE_KEY) or []
    done = roll_back_failed(name, version, why)
    # Failing this task fails the run: the deployment did not happen, and the log says why.
    raise AirflowFailException(done["message"])


@dag(
    dag_id="rtml_promote",
    schedule=[CHALLENGER],
    start_date=datetime(2026, 1, 1),
    catchup=False,
    # Waiting runs must not hold up other models' approvals; the lease makes promotions one at a time.
    max_active_runs=4,
    tags=["rtml", "promotion"],
    doc_md=__doc__,
    params={
        "name": Param("", type="string", description="registered model (default: the spec's)"),
        "version": Param("", type="string", description="model version to decide on (empty: from the Asset event)"),
        "approval_timeout_hours": Param(72, type="number", minimum=0, description="give up waiting after this"),
        "deploy_on_approval": Param(True, type="boolean",
                                    description="promote and reload from the approval wait the moment it sees the "
                                                "approval (off: in the promote and reload tasks, seconds later)"),
    },
    render_template_as_native_obj=True,
)
def rtml_promote():
    t = target()
    approval = WaitForApprovalOperator(
        task_id="wait_for_approval",
        name=t["name"],
        version=t["version"],
        timeout_seconds="{{ params.approval_timeout_hours * 3600 }}",
        on_approved="{{ 'rtml.serve.deploy.deploy_approved' if params.deploy_on_approval else '' }}",
    )
    promoted = promote(t["name"], t["version"], approval.output)
    served = reload(promoted)
    checked = smoke_check(promoted, served)
    rollback(t["name"], t["version"]).set_upstream([promoted, served, checked])


rtml_promote()
