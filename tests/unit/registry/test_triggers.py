"""What the approval wait reads from MLflow: a decision, a pending challenger, or a superseded version."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import pytest

from rtml.registry.triggers import fetch_decision


def _read(tags: dict[str, str], aliases: list[str], status: int = 200) -> dict:
    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/api/2.0/mlflow/model-versions/get"
        assert dict(request.url.params) == {"name": "m", "version": "3"}
        if status != 200:
            return httpx.Response(status, json={"error_code": "RESOURCE_DOES_NOT_EXIST"})
        mv = {"tags": [{"key": k, "value": v} for k, v in tags.items()], "aliases": aliases}
        return httpx.Response(200, json={"model_version": mv})

    async def go() -> dict:
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
            return await fetch_decision(client, "http://mlflow", "m", "3")

    return asyncio.run(go())


@pytest.mark.parametrize(
    ("tags", "aliases", "status"),
    [
        ({}, ["challenger"], "pending"),
        ({"approval": "approved", "approval.by": "ann"}, ["challenger"], "approved"),
        ({"approval": " Rejected "}, ["challenger"], "rejected"),
        ({"approval": "maybe"}, ["challenger"], "pending"),
        # No decision and no longer the challenger: a newer version replaced it.
        ({}, [], "superseded"),
        ({"approval": "maybe"}, ["previous_champion"], "superseded"),
        # A decision stands even after the alias moved (promotion then judges it).
        ({"approval": "approved"}, [], "approved"),
    ],
)
def test_decision_pending_or_superseded(tags, aliases, status):
    got = _read(tags, aliases)
    assert got["status"] == status
    if status == "superseded":
        assert "no longer the challenger" in got["message"]


def test_a_deleted_version_is_missing():
    assert _read({}, [], status=404)["status"] == "missing"


# --- the approval wait wakes on the webhook's signal, polls as the fallback ----------------------
class _Signal:
    """Stands in for rtml.registry.signals.Listener: ``fire`` is what the webhook receiver's publish does."""

    def __init__(self, subscribed: bool = True) -> None:
        self.subscribed = subscribed
        self.event = asyncio.Event()
        self.waits: list[float] = []

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        return None

    def fire(self) -> None:
        self.event.set()

    async def wait(self, timeout: float) -> bool:
        self.waits.append(timeout)
        if not self.subscribed:
            return False  # no channel: as if the poll interval passed
        await self.event.wait()
        self.event.clear()
        return True


def _run_trigger(monkeypatch, signal: _Signal, tags: dict[str, str], on_read) -> tuple[dict, int]:
    """Run an ApprovalTrigger whose poll intervals are an hour: only the signal can make it read again."""
    import time

    from rtml.registry import triggers
    from rtml.registry.triggers import ApprovalTrigger

    reads = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal reads
        reads += 1
        mv = {"tags": [{"key": k, "value": v} for k, v in tags.items()], "aliases": ["challenger"]}
        on_read(reads)  # what happens after this read (the answer is already taken)
        return httpx.Response(200, json={"model_version": mv})

    real_client = httpx.AsyncClient
    monkeypatch.setattr(httpx, "AsyncClient", lambda **kw: real_client(transport=httpx.MockTransport(handler), **kw))
    monkeypatch.setattr(triggers, "MIN_READ_GAP", 0.0)
    trig = ApprovalTrigger("m", "3", "http://mlflow", deadline=time.time() + 86_400, poll_interval=3600,
                           fallback_interval=3600, settle=0)
    monkeypatch.setattr(trig, "_listener", lambda: signal)

    async def first() -> dict:
        async for event in trig.run():
            return event.payload
        raise AssertionError("no event")

    return asyncio.run(asyncio.wait_for(first(), 30)), reads


def test_the_wait_reads_again_the_moment_the_signal_comes(monkeypatch):
    signal = _Signal()
    tags: dict[str, str] = {}

    def on_read(n: int) -> None:
        if n == 1:  # pending at the first read; then the person decides and the receiver signals
            tags.update({"approval": "approved", "approval.by": "ann"})
            asyncio.get_running_loop().call_soon(signal.fire)

    got, reads = _run_trigger(monkeypatch, signal, tags, on_read)
    assert (got["status"], got["by"], reads) == ("approved", "ann", 2)
    assert signal.waits == [3600]  # it was waiting out the (hour-long) fallback interval when woken


def test_a_decision_without_a_name_waits_for_the_name_signal(monkeypatch):
    signal = _Signal()
    tags: dict[str, str] = {"approval": "approved"}

    def on_read(n: int) -> None:
        if n == 1:
            tags["approval.by"] = "ann"
            asyncio.get_running_loop().call_soon(signal.fire)

    got, reads = _run_trigger(monkeypatch, signal, tags, on_read)
    assert (got["status"], got["by"], reads) == ("approved", "ann", 2)


def test_without_the_signal_channel_the_wait_polls_at_the_short_interval(monkeypatch):
    from rtml.registry.triggers import ApprovalTrigger

    signal = _Signal(subscribed=False)
    tags: dict[str, str] = {}

    def on_read(n: int) -> None:
        if n == 2:
            tags.update({"approval": "rejected", "approval.by": "bo"})

    got, reads = _run_trigger(monkeypatch, signal, tags, on_read)
    assert (got["status"], reads) == ("rejected", 3) and signal.waits == [3600, 3600]
    # What the triggerer stores and rebuilds: the intervals survive.
    _, kwargs = ApprovalTrigger("m", "3", "http://x", 1.0, 2.0, 40.0, 0.5).serialize()
    assert ApprovalTrigger(**kwargs).serialize()[1] == kwargs and kwargs["fallback_interval"] == 40.0


# --- deploying at the approval (on_approved) ----------------------------------------------------
HOOK = "rtml.serve.deploy.deploy_approved"


def _fake_hook(monkeypatch, result=None, fail: Exception | None = None) -> list:
    """Stand in for the deploy function the DAG names; records (name, version, decision, thread)."""
    import threading

    from rtml.serve import deploy

    calls: list = []

    def hook(name, version, decision):
        calls.append((name, version, dict(decision), threading.current_thread() is threading.main_thread()))
        if fail is not None:
            raise fail
        return result if result is not None else {"promotion": {"version": version}, "served": {"version": version}}

    monkeypatch.setattr(deploy, "deploy_approved", hook)
    monkeypatch.setattr(deploy, "warm_up", lambda: None)
    return calls


def _hooked_trigger(monkeypatch, tags: dict[str, str], name_wait: float, signal: _Signal) -> tuple[Any, list[str]]:
    """An ApprovalTrigger with the deploy hook, reading ``tags`` from a fake MLflow; returns it and the
    list of MLflow reads it makes."""
    from rtml.registry import triggers
    from rtml.registry.triggers import ApprovalTrigger

    reads: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        reads.append(request.url.path)
        mv = {"tags": [{"key": k, "value": v} for k, v in tags.items()], "aliases": ["challenger"]}
        return httpx.Response(200, json={"model_version": mv})

    real_client = httpx.AsyncClient
    monkeypatch.setattr(httpx, "AsyncClient", lambda **kw: real_client(transport=httpx.MockTransport(handler), **kw))
    monkeypatch.setattr(triggers, "MIN_READ_GAP", 0.0)
    trig = ApprovalTrigger("m", "3", "http://mlflow", deadline=time.time() + 86_400, poll_interval=3600,
                           fallback_interval=3600, settle=0, on_approved=HOOK, name_wait=name_wait)
    monkeypatch.setattr(trig, "_listener", lambda: signal)
    return trig, reads


def _run_hooked(monkeypatch, tags: dict[str, str], name_wait: float = 3600) -> dict:
    trig, _ = _hooked_trigger(monkeypatch, tags, name_wait, _Signal(subscribed=False))

    async def events() -> list[dict]:
        return [event.payload async for event in trig.run()]

    (payload,) = asyncio.run(asyncio.wait_for(events(), 30))
    return payload


def test_an_approval_deploys_from_the_trigger_off_the_event_loop(monkeypatch):
    calls = _fake_hook(monkeypatch)
    got = _run_hooked(monkeypatch, {"approval": "approved", "approval.by": "ann"})
    assert got["status"] == "approved" and got["deployed"] == {"promotion": {"version": "3"}, "served": {"version": "3"}}
    ((name, version, decision, on_main_thread),) = calls
    assert (name, version, decision["by"], on_main_thread) == ("m", "3", "ann", False)


def test_a_rejection_deploys_nothing(monkeypatch):
    calls = _fake_hook(monkeypatch)
    got = _run_hooked(monkeypatch, {"approval": "rejected", "approval.by": "bo"})
    assert got["status"] == "rejected" and "deployed" not in got and calls == []


def test_a_failing_hook_is_reported_in_the_event(monkeypatch):
    _fake_hook(monkeypatch, fail=ConnectionError("registry down"))
    got = _run_hooked(monkeypatch, {"approval": "approved", "approval.by": "ann"})
    assert got["status"] == "approved" and "ConnectionError: registry down" in got["deployed"]["error"]


def test_a_decision_without_a_name_waits_only_the_short_name_wait(monkeypatch):
    """No signal comes and 'approval.by' never arrives: one extra look after name_wait, not a poll interval."""
    signal = _Signal(subscribed=False)
    calls = _fake_hook(monkeypatch)
    trig, reads = _hooked_trigger(monkeypatch, {"approval": "approved"}, 0.25, signal)

    async def first() -> dict:
        async for event in trig.run():
            return event.payload
        raise AssertionError("no event")

    got = asyncio.run(asyncio.wait_for(first(), 30))
    assert signal.waits == [0.25] and len(reads) == 2
    assert got["status"] == "approved" and got["by"] == "" and len(calls) == 1


@pytest.mark.parametrize("path", ["os.system", "rtml", "rtml.serve.deploy.no_such_function", "rtml.serve.deploy.APPROVED"])
def test_only_an_rtml_function_can_be_the_hook(path):
    from rtml.registry.triggers import approval_hook, run_hook

    with pytest.raises(ValueError, match="on_approved"):
        approval_hook(path)
    assert "on_approved" in run_hook(path, "m", "3", {})["error"]


def test_the_hook_survives_serialization():
    from rtml.registry.triggers import ApprovalTrigger

    _, kwargs = ApprovalTrigger("m", "3", "http://x", 1.0, on_approved=HOOK, name_wait=0.5).serialize()
    assert (kwargs["on_approved"], kwargs["name_wait"]) == (HOOK, 0.5)
    assert ApprovalTrigger(**kwargs).serialize()[1] == kwargs


def test_a_decision_made_before_the_task_deploys_from_the_task(monkeypatch, tmp_path):
    """No deferral: the operator runs the hook itself and returns its result; rejected: no hook, skipped."""
    from airflow.sdk.exceptions import AirflowSkipException
    from support.registry import local_governance

    from rtml.registry.audit import entries
    from rtml.registry.triggers import WaitForApprovalOperator

    gov = local_governance(tmp_path, monkeypatch)
    next(gov)
    calls = _fake_hook(monkeypatch)
    op = WaitForApprovalOperator(task_id="wait", name="m", version="3", tracking_uri="http://x", on_approved=HOOK)
    decided = {"name": "m", "version": "3", "status": "approved", "by": "ann", "at": ""}
    monkeypatch.setattr(op, "_decided_already", lambda: dict(decided))
    out = op.execute({})
    assert out["deployed"]["served"] == {"version": "3"} and len(calls) == 1
    assert [(e["action"], e["on_behalf_of"]) for e in entries()] == [("approval", "ann")]
    decided.update(status="rejected", by="bo")
    with pytest.raises(AirflowSkipException, match="rejected by bo"):
        op.execute({})
    assert len(calls) == 1


@pytest.mark.parametrize("deployed, reads", [({"recorded": True, "promotion": {"version": "3"}}, 0), ({}, 1)])
def test_the_approval_is_logged_by_the_wait_only_when_the_deployment_did_not(monkeypatch, deployed, reads):
    """deploy_approved logs the decision before it promotes: execute_complete then reads no log."""
    from rtml.registry import promotion
    from rtml.registry.triggers import WaitForApprovalOperator

    logged: list[tuple] = []
    monkeypatch.setattr(promotion, "record_observed_decision", lambda *a, **k: logged.append(a))
    op = WaitForApprovalOperator(task_id="wait", name="m", version="3", tracking_uri="http://x")
    event = {"status": "approved", "by": "ann", "at": "", "deployed": deployed}
    assert op.execute_complete({}, event) == event
    assert len(logged) == reads
