"""Deploying an approved version: which version a promotion run decides on, the live check after
the swap, and the rollback when a step after the approval failed.

What ``rtml_promote`` calls, one function per task, so that its decisions (which version, whether
to roll back) are plain Python that the CLI and the tests reach without Airflow.

Deploying at the approval: ``deploy_approved`` runs inside the approval wait (in Airflow's triggerer,
off its event loop) the moment the approval is seen: it logs the decision, promotes
(``rtml.registry.promotion.promote``: gates and signature, challenger and newer than the champion,
under the model's lease, decision log first) and reloads the endpoint, then the wait's event carries
the outcome. Starting the ``promote`` and ``reload`` tasks takes Airflow seconds each, so they only
take over what was done (``promotion_after_approval``, ``reload_after_promotion``: no second
decision-log entry, no second reload) or do it themselves when the wait did not (it was decided
before the run deferred, or the wait's own attempt failed for a reason other than a refusal). The
live smoke check and the rollback after it stay tasks of the DAG.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from rtml.names import APPROVED, CHAMPION

if TYPE_CHECKING:
    from rtml.spec import ProjectSpec


UNNAMED_APPROVER = "MLflow UI (approval.by not set)"  # the approver of a bare 'approval' tag


class DeploymentError(RuntimeError):
    """A deployment step failed; the message says which and why."""


def decision_target(params: Mapping[str, Any], event_extras: Iterable[Mapping[str, Any] | None],
                    default_name: str) -> dict[str, str]:
    """The version a promotion run decides on: ``params`` ``name``/``version`` (a manual run), else
    the newest ``rtml_challenger`` event's extra; the model defaults to the spec's."""
    name, version = str(params.get("name") or ""), str(params.get("version") or "")
    if not version:
        extras = list(event_extras)
        if not extras:
            raise ValueError("params.version: give 'name' and 'version', or run from an rtml_challenger event")
        extra = extras[-1] or {}
        name, version = str(extra.get("name") or name), str(extra.get("version") or "")
        if not version:
            raise ValueError(f"rtml_challenger event without 'version' in its extra: {dict(extra)}")
    return {"name": name or default_name, "version": version}


def reload_and_wait(version: str, timeout: float = 120.0) -> dict[str, Any]:
    """Ask the endpoint to load the champion now and wait until it answers with ``version``: every
    replica of it, when several share one address (``rtml.serve.replicas``), so that the smoke check
    that follows cannot meet a replica still on the old version."""
    from rtml.serve.client import request_reload

    request_reload()
    return served_version(str(version), timeout=timeout)


def served_version(version: str, timeout: float = 120.0) -> dict[str, Any]:
    """Wait until the endpoint (every replica) answers with ``version``; returns the version and,
    with several replicas, what each serves."""
    from rtml.serve.client import wait_for_version

    info = wait_for_version(str(version), timeout=timeout)
    return {"version": str(version), **({"replicas": info["replicas"]} if "replicas" in info else {})}


def warm_up() -> None:
    """Import what ``deploy_approved`` needs (MLflow's client takes seconds to import), so that the
    first approval a fresh triggerer sees does not wait for it."""
    import rtml.registry.promotion  # noqa: F401 - imported for its side effect: loaded modules
    import rtml.serve.client  # noqa: F401
    from rtml.registry.client import mlflow_client

    mlflow_client()


def deploy_approved(name: str, version: str, decision: Mapping[str, Any], timeout: float = 120.0) -> dict[str, Any]:
    """Log the approval, promote ``version`` and reload the endpoint: what the approval wait runs the
    moment it sees ``approval=approved`` (``decision``: what it read, with ``by`` and ``at``).

    Never raises: the outcome is data for the wait's event. ``refused`` (a ``PromotionError``: the
    version may not be served; nothing changed), ``error`` (the promotion could not be attempted or
    failed otherwise: the ``promote`` task tries again), or ``promotion`` (promote's result) with
    ``served`` (the endpoint answers with the version) or ``reload_error``; ``seconds``: when each
    step ended. The endpoint is told to reload the moment the alias moves, before promote() writes
    the description lines and the model card.
    Safe to repeat (a restarted triggerer runs it again): the decision is logged once, promoting
    the champion again changes nothing, and a reload to the version already served swaps nothing.
    """
    from rtml.registry.promotion import PromotionError, promote, record_observed_decision

    version = str(version)
    by = str(decision.get("by") or "")
    out: dict[str, Any] = {"name": name, "version": version}
    seconds: dict[str, float] = {}
    out["seconds"] = seconds  # where the time went (the trigger's log and event show it)
    pushed: list[threading.Thread] = []
    push_failed: list[str] = []

    def push_reload() -> None:
        # The alias has moved: the endpoint loads the version while promote() writes its records.
        def go() -> None:
            try:
                request_reload()
            except Exception as err:  # noqa: BLE001 - reported as the reload's error below
                push_failed.append(f"{type(err).__name__}: {err}")

        from rtml.serve.client import request_reload

        seconds["champion"] = round(time.monotonic() - start, 3)
        pushed.append(threading.Thread(target=go, name="rtml-reload", daemon=True))
        pushed[0].start()

    start = time.monotonic()
    try:
        # The record first: a decision the log cannot hold deploys nothing.
        record_observed_decision(name, version, APPROVED, by, str(decision.get("at") or ""),
                                 via="MLflow tag seen by rtml_promote")
        seconds["record"] = round(time.monotonic() - start, 3)
        out["recorded"] = True  # the wait's execute_complete need not read the log again
        out["promotion"] = promote(name, version, approver=by or UNNAMED_APPROVER, on_champion=push_reload)
        seconds["promote"] = round(time.monotonic() - start, 3)
    except PromotionError as err:
        out["refused"] = str(err)
    except Exception as err:  # noqa: BLE001 - reported in the event; the promote task tries again
        out["error"] = f"{type(err).__name__}: {err}"[:2000]
    if "promotion" not in out and not pushed:
        return out
    try:
        if pushed:
            pushed[0].join(timeout)
            if push_failed:
                raise DeploymentError(f"the endpoint's reload failed: {push_failed[0]}")
            out["served"] = served_version(version, timeout=max(1.0, timeout - (time.monotonic() - start)))
        else:  # already the champion (a repeat, or `rtml approve` was first): make sure it is served
            out["served"] = reload_and_wait(version, timeout=timeout)
    except Exception as err:  # noqa: BLE001 - reported in the event; the reload task fails with it
        out["reload_error"] = f"{type(err).__name__}: {err}"[:2000]
    seconds["served"] = round(time.monotonic() - start, 3)
    return out


def promotion_after_approval(name: str, version: str, approval: Mapping[str, Any],
                             client: Any = None) -> dict[str, Any]:
    """The ``promote`` task: take over the promotion the approval wait made (``approval["deployed"]``,
    see ``deploy_approved``) while the version is still the champion, else promote here.

    A refusal in the wait is final (``PromotionError`` with its message: nothing was changed). The
    result carries ``served`` / ``reload_error`` from the wait for ``reload_after_promotion``.
    """
    from rtml.registry.client import alias_version, mlflow_client
    from rtml.registry.promotion import PromotionError, promote

    version = str(version)
    deployed = approval.get("deployed") or {}
    if deployed.get("refused"):
        raise PromotionError(str(deployed["refused"]))
    client = client or mlflow_client()
    done = deployed.get("promotion")
    if done and str(done.get("version")) == version and alias_version(client, name, CHAMPION) == version:
        return {**done, "deployed_at_approval": True,
                **{k: deployed[k] for k in ("served", "reload_error") if deployed.get(k)}}
    # Not deployed by the wait (decided before it deferred, the wait could not, or the champion moved
    # since): promote here; promote() checks everything again.
    return promote(name, version, approver=approval.get("by") or UNNAMED_APPROVER, client=client)


def reload_after_promotion(promoted: Mapping[str, Any], timeout: float = 120.0) -> dict[str, Any]:
    """The ``reload`` task: when the approval wait already reloaded the endpoint, confirm it still
    serves the version (no second reload); when that reload failed, fail with its reason (the run
    then rolls back, as for a reload here); otherwise reload now (``reload_and_wait``)."""
    version = str(promoted["version"])
    if promoted.get("reload_error"):
        raise DeploymentError(f"the reload at the approval failed: {promoted['reload_error']}")
    served = promoted.get("served") or {}
    if str(served.get("version")) == version:
        return {**served_version(version, timeout=timeout), "reloaded_at_approval": True}
    return reload_and_wait(version, timeout=timeout)


def smoke_check(spec: ProjectSpec, name: str, version: str, n: int = 50) -> dict[str, Any]:
    """The live endpoint's answers on the version's own holdout sample equal its offline predictions."""
    from rtml.serve.client import live_smoke_check, version_holdout_rows

    rows = version_holdout_rows(spec, name, version, n=n)
    return live_smoke_check(name, version, rows, spec=spec)


def roll_back_failed(name: str, version: str, failures: Iterable[str | None], client: Any = None) -> dict[str, Any]:
    """After a failed promotion, reload or smoke check: if ``version`` had become champion, put
    the previous champion back (``rtml.registry.promotion.rollback``: only to a version that passed,
    is approved and was never rejected) and tell the endpoint.

    Returns ``rolled_back`` False when the version never became champion (nothing to undo).
    """
    from rtml.registry.client import alias_version, mlflow_client
    from rtml.registry.promotion import rollback

    client = client or mlflow_client()
    why = [w for w in failures if w]
    if alias_version(client, name, CHAMPION) != str(version):
        return {"rolled_back": False, "reason": "; ".join(why),
                "message": f"{name} version {version} was not deployed (see the failed task); no rollback needed"}
    reason = f"deploying version {version} failed: " + ("; ".join(why) or "see the failed task's log")
    done = rollback(name, by="rtml_promote", reason=reason, client=client)
    notified = True
    try:
        from rtml.serve.client import request_reload

        request_reload()
    except Exception:  # noqa: BLE001 - the endpoint's poller follows the alias anyway
        notified = False
    return {**done, "rolled_back": True, "reason": reason, "endpoint_notified": notified,
            "message": f"deployment of {name} version {version} failed ({reason}); {done['message']}"}
