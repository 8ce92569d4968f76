"""Waiting for a person's approval without holding an Airflow worker slot.

``ApprovalTrigger`` runs in the triggerer: an asyncio loop that reads the model version from the
MLflow REST API and fires when its ``approval`` tag says ``approved`` or ``rejected``, or when the
deadline passes. It reads at once when the webhook receiver signals a decision on that version
(``rtml.registry.signals``: MLflow's webhook -> the receiver -> a Redis channel the trigger listens
on), and otherwise every ``fallback_interval`` seconds (every ``poll_interval`` when the signal
channel cannot be reached): the event is the fast path, polling the fallback. ``WaitForApprovalOperator`` defers to it and turns the
event into the task's outcome: approved -> success (returns the decision), rejected or timed out ->
skipped (so nothing downstream deploys), version gone -> failed. An approval or rejection is
appended to the decision log (``rtml.registry.audit``) once, with the name the person gave in ``approval.by``.

Acting at the approval: with ``on_approved`` (the dotted path of a function under ``rtml.``, chosen by
the DAG; ``rtml_promote`` passes ``rtml.serve.deploy.deploy_approved``), the trigger calls it the
moment it sees an approval, in a worker thread of the triggerer (the event loop keeps serving the
other triggers), and the event carries its result under ``deployed``. This is what makes approval
-> served take only the deployment's own time: resuming a deferred task and starting the next ones
costs Airflow seconds each. The function must be safe to run twice (a restarted triggerer runs the trigger again)
and report failures in its result rather than raise. A cancelled trigger (the task cleared or marked
by hand) cannot stop a call already running: it finishes, under its own checks and records.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from airflow.sdk import BaseOperator
from airflow.triggers.base import BaseTrigger, TriggerEvent

from rtml.names import APPROVED, CHALLENGER, REJECTED, normalize_decision

MIN_READ_GAP = 0.1  # seconds between a signal and the read it causes (signals carry no authority)
NAME_WAIT = 1.0  # seconds a decision without 'approval.by' waits for it (scripts set it right after)
HOOK_PREFIX = "rtml."  # on_approved must name an rtml function: the trigger's stored kwargs are no code


def approval_hook(path: str) -> Callable[[str, str, dict[str, Any]], dict[str, Any]]:
    """The function ``on_approved`` names (``module.function`` under ``rtml.``)."""
    module, _, attr = path.rpartition(".")
    if not path.startswith(HOOK_PREFIX) or not module or not attr:
        raise ValueError(f"on_approved: {path!r} is not the dotted path of an rtml function")
    fn = getattr(importlib.import_module(module), attr, None)
    if not callable(fn):
        raise ValueError(f"on_approved: {path!r} is not a function")
    return fn


def _warm_up(path: str) -> None:
    """Import the hook's module and run its ``warm_up()`` if it has one (heavy imports, clients)."""
    approval_hook(path)
    warm = getattr(importlib.import_module(path.rpartition(".")[0]), "warm_up", None)
    if callable(warm):
        warm()


def run_hook(path: str, name: str, version: str, decision: dict[str, Any]) -> dict[str, Any]:
    """Call the ``on_approved`` hook; a failure to call it becomes ``{"error": ...}`` (the tasks after
    the wait then do the work themselves)."""
    try:
        out = approval_hook(path)(name, version, decision)
    except Exception as err:  # noqa: BLE001 - reported in the event, never lost with the trigger
        return {"error": f"{path}: {type(err).__name__}: {err}"[:2000]}
    return out if isinstance(out, dict) else {"error": f"{path} returned {type(out).__name__}, not a dict"}


def _auth() -> tuple[dict[str, str], tuple[str, str] | None]:
    """MLflow client credentials from the standard variables (basic auth or a bearer token)."""
    user, password = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
    token = os.environ.get("MLFLOW_TRACKING_TOKEN")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return headers, (user, password) if user and password else None


async def fetch_decision(client: Any, tracking_uri: str, name: str, version: str) -> dict[str, Any]:
    """One read of the model version: {"status": approved|rejected|pending|superseded|missing, "by", "at", ...}.

    ``superseded``: no decision yet and the version is no longer the ``challenger`` (a newer version
    replaced it, or someone removed the alias): waiting for it would only hold up its model.
    """
    r = await client.get(
        f"{tracking_uri.rstrip('/')}/api/2.0/mlflow/model-versions/get", params={"name": name, "version": version}
    )
    if r.status_code == 404 or (r.status_code == 400 and "RESOURCE_DOES_NOT_EXIST" in r.text):
        return {"status": "missing", "message": f"{name} version {version} does not exist"}
    r.raise_for_status()
    mv = r.json().get("model_version", {})
    tags = {t["key"]: t.get("value", "") for t in mv.get("tags", [])}
    decision = normalize_decision(tags.get("approval"))
    aliases = mv.get("aliases", [])
    if decision is None and CHALLENGER not in aliases:
        return {"status": "superseded", "aliases": aliases,
                "message": f"{name} version {version} is no longer the challenger: nothing to decide"}
    return {
        "status": decision or "pending",
        "by": tags.get("approval.by", ""),
        "at": tags.get("approval.at", ""),
        "aliases": mv.get("aliases", []),
    }


class ApprovalTrigger(BaseTrigger):
    """Fires once the version's ``approval`` tag is set, or at ``deadline`` (epoch seconds)."""

    def __init__(
        self, name: str, version: str, tracking_uri: str, deadline: float, poll_interval: float = 5.0,
        fallback_interval: float = 30.0, settle: float | None = None, on_approved: str = "",
        name_wait: float = NAME_WAIT,
    ) -> None:
        super().__init__()
        self.name = name
        self.version = str(version)
        self.tracking_uri = tracking_uri
        self.deadline = float(deadline)
        self.poll_interval = float(poll_interval)
        self.fallback_interval = float(fallback_interval)
        self.settle = self.poll_interval if settle is None else float(settle)
        self.on_approved = on_approved or ""
        self.name_wait = float(name_wait)

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            "rtml.registry.triggers.ApprovalTrigger",
            {
                "name": self.name,
                "version": self.version,
                "tracking_uri": self.tracking_uri,
                "deadline": self.deadline,
                "poll_interval": self.poll_interval,
                "fallback_interval": self.fallback_interval,
                "settle": self.settle,
                "on_approved": self.on_approved,
                "name_wait": self.name_wait,
            },
        )

    def _listener(self) -> Any:
        from rtml.registry.signals import Listener, signal_url

        try:
            url = signal_url()
        except Exception as err:  # noqa: BLE001 - settings unreadable here: poll
            self.log.warning("no approval signal (%s): polling MLflow", err)
            url = None
        return Listener(url, self.name, self.version)

    async def run(self) -> AsyncIterator[TriggerEvent]:
        warm = asyncio.create_task(self._warm_up()) if self.on_approved else None
        try:
            got = await self._decision()
            if got["status"] == APPROVED and self.on_approved:
                self.log.info("%s version %s approved: deploying it now (%s)", self.name, self.version,
                              self.on_approved)
                # In a thread: the hook blocks (registry, lake, endpoint) and the loop runs other triggers.
                got["deployed"] = await asyncio.to_thread(run_hook, self.on_approved, self.name, self.version,
                                                          dict(got))
            yield TriggerEvent(got)
        finally:
            if warm is not None and not warm.done():
                warm.cancel()

    async def _warm_up(self) -> None:
        try:
            await asyncio.to_thread(_warm_up, self.on_approved)
        except Exception as err:  # noqa: BLE001 - only a head start; the hook reports real failures
            self.log.warning("preparing %s failed: %s", self.on_approved, err)

    async def _decision(self) -> dict[str, Any]:
        """Wait for the decision (or the deadline); the event's payload."""
        import httpx

        headers, auth = _auth()
        base = {"name": self.name, "version": self.version}
        waited_for_name = False
        async with httpx.AsyncClient(timeout=10, headers=headers, auth=auth) as client, self._listener() as signal:
            # Subscribed first, so a decision made from here on is never missed (the first read
            # below comes after it). Airflow 3.3 with a busy LocalExecutor: if the trigger fires
            # while the deferring workload is still being reaped, the scheduler can mark the resumed
            # task failed ("state changed externally"). The operator already checked once before
            # deferring, so settle a moment first.
            await asyncio.sleep(min(self.settle, max(0.0, self.deadline - time.time())))
            while True:
                try:
                    got = await fetch_decision(client, self.tracking_uri, self.name, self.version)
                except (httpx.HTTPError, ValueError) as err:
                    # The MLflow server may be restarting: keep waiting, the deadline still applies.
                    self.log.warning("reading %s version %s failed: %s", self.name, self.version, err)
                    got = {"status": "pending"}
                if got["status"] in (APPROVED, REJECTED) and not got.get("by") and not waited_for_name:
                    # Scripts set 'approval.by' right after 'approval' (its webhook signal wakes this
                    # at once): one more look, after at most ``name_wait``. A person typing the name
                    # afterwards in the UI takes longer than is worth holding a deployment for.
                    waited_for_name = True
                    if await signal.wait(self.name_wait):
                        await asyncio.sleep(MIN_READ_GAP)
                    continue
                if got["status"] in (APPROVED, REJECTED, "missing", "superseded"):
                    return {**base, **got}
                left = self.deadline - time.time()
                if left <= 0:
                    return {**base, "status": "timeout", "message": "no decision before the deadline"}
                interval = self.fallback_interval if signal.subscribed else self.poll_interval
                if await signal.wait(min(interval, left)):
                    await asyncio.sleep(MIN_READ_GAP)  # a burst of signals costs one read per gap


class WaitForApprovalOperator(BaseOperator):
    """Wait (deferred, in the triggerer) for the ``approval`` tag on ``name`` / ``version``.

    ``timeout`` ends the wait cleanly: the task is skipped, as on a rejection, so nothing deploys.
    ``on_approved`` (see ``ApprovalTrigger``) runs at the approval, in the triggerer, or here when the
    decision was made before the task started; the task returns its result under ``deployed``.
    """

    template_fields = ("name", "version", "timeout_seconds", "on_approved")
    ui_color = "#fdf1d6"

    def __init__(
        self,
        *,
        name: str,
        version: str,
        tracking_uri: str | None = None,
        timeout_seconds: float | str = 3 * 24 * 3600,
        poll_interval: float = 5.0,
        fallback_interval: float = 30.0,
        on_approved: str = "",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.name = name
        self.version = version
        self.tracking_uri = tracking_uri
        self.timeout_seconds = timeout_seconds
        self.poll_interval = poll_interval
        self.fallback_interval = fallback_interval
        self.on_approved = on_approved

    def _uri(self) -> str:
        if self.tracking_uri:
            return self.tracking_uri
        from rtml.settings import get_settings

        return get_settings().mlflow_tracking_uri

    def execute(self, context: Any) -> dict[str, Any]:
        self.log.info(
            "Waiting for a decision on %s version %s: in the MLflow UI open Models -> %s -> Version %s, "
            "and add the tag 'approval' = 'approved' (or 'rejected'); 'approval.by' = your name is welcome.",
            self.name, self.version, self.name, self.version,
        )
        deadline = time.time() + float(self.timeout_seconds)
        decided = self._decided_already()
        if decided is not None:  # no need to occupy the triggerer
            if decided["status"] == APPROVED and self.on_approved:
                decided["deployed"] = run_hook(self.on_approved, self.name, str(self.version), dict(decided))
            return self.execute_complete(context, decided)
        self.defer(
            trigger=ApprovalTrigger(self.name, str(self.version), self._uri(), deadline, self.poll_interval,
                                    self.fallback_interval, on_approved=self.on_approved or ""),
            method_name="execute_complete",
        )

    def _decided_already(self) -> dict[str, Any] | None:
        import httpx

        headers, auth = _auth()

        async def once() -> dict[str, Any]:
            async with httpx.AsyncClient(timeout=10, headers=headers, auth=auth) as client:
                return await fetch_decision(client, self._uri(), self.name, str(self.version))

        try:
            got = asyncio.run(once())
        except (httpx.HTTPError, ValueError):
            return None
        if got["status"] in (APPROVED, REJECTED, "missing", "superseded"):
            return {"name": self.name, "version": str(self.version), **got}
        return None

    def execute_complete(self, context: Any, event: dict[str, Any] | None = None) -> dict[str, Any]:
        from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

        event = event or {}
        status = event.get("status")
        who = f" by {event['by']}" if event.get("by") else ""
        if status in (APPROVED, REJECTED) and not (event.get("deployed") or {}).get("recorded"):
            # The decision log is the record: a decision it cannot hold does not deploy anything.
            # (When the wait deployed, deploy_approved logged it first.)
            from rtml.registry.promotion import record_observed_decision

            record_observed_decision(self.name, str(self.version), status, event.get("by", ""), event.get("at", ""),
                                     via="MLflow tag seen by rtml_promote")
        if status == APPROVED:
            self.log.info("%s version %s approved%s", self.name, self.version, who)
            deployed = event.get("deployed") or {}
            for key, what in (("refused", "promotion refused"), ("error", "deploying at the approval failed"),
                              ("reload_error", "reload at the approval failed")):
                if deployed.get(key):
                    self.log.warning("%s: %s", what, deployed[key])
            if deployed.get("promotion"):
                self.log.info("deployed at the approval: %s; endpoint serves %s", deployed["promotion"].get("message"),
                              (deployed.get("served") or {}).get("version", "?"))
            return event
        if status == REJECTED:
            raise AirflowSkipException(f"{self.name} version {self.version} was rejected{who}: nothing is deployed")
        if status == "superseded":
            raise AirflowSkipException(event.get("message") or f"{self.name} version {self.version} was superseded")
        if status == "timeout":
            raise AirflowSkipException(
                f"no decision on {self.name} version {self.version} within {float(self.timeout_seconds):.0f} s: "
                "nothing is deployed"
            )
        raise AirflowFailException(event.get("message") or f"unexpected approval event {event!r}")
