"""What rtml_promote decides (rtml.serve.deploy): which version a run is about, and whether a failed
deployment is rolled back, against an in-memory registry and the real decision log in a local lake."""

from __future__ import annotations

import pytest
from support.registry import FakeRegistry, local_governance

from rtml.names import CHALLENGER, CHAMPION, PREVIOUS_CHAMPION

PASSED = {"gate.quality": "passed", "gate.fairness": "passed", "gate.drift": "passed", "gate.decision": "passed",
          "approval": "approved", "approval.by": "alice"}


@pytest.fixture()
def lake(tmp_path, monkeypatch):
    yield from local_governance(tmp_path, monkeypatch)


@pytest.mark.parametrize(
    ("params", "extras", "expected"),
    [
        ({"name": "m", "version": "4"}, [], {"name": "m", "version": "4"}),
        ({"name": "", "version": 7}, [], {"name": "credit", "version": "7"}),  # the spec's model
        ({}, [{"name": "m", "version": "2"}, {"name": "m", "version": "3"}], {"name": "m", "version": "3"}),
        ({"name": "", "version": ""}, [{"version": "5"}], {"name": "credit", "version": "5"}),
        ({"name": "x", "version": "9"}, [{"name": "m", "version": "3"}], {"name": "x", "version": "9"}),  # params win
    ],
)
def test_the_version_comes_from_the_params_else_the_newest_event(params, extras, expected):
    from rtml.serve.deploy import decision_target

    assert decision_target(params, extras, "credit") == expected


@pytest.mark.parametrize(("extras", "match"), [([], "params.version"), ([{"name": "m"}], "without 'version'"),
                                               ([None], "without 'version'")])
def test_no_version_is_a_clear_error(extras, match):
    from rtml.serve.deploy import decision_target

    with pytest.raises(ValueError, match=match):
        decision_target({"name": "", "version": ""}, extras, "credit")


def test_a_version_that_never_became_champion_is_not_rolled_back(lake):
    from rtml.registry.audit import entries
    from rtml.serve.deploy import roll_back_failed

    reg = FakeRegistry({"1": PASSED, "2": PASSED}, {CHAMPION: "1", CHALLENGER: "2"})
    out = roll_back_failed("credit", "2", ["promote: refused"], client=reg)
    assert out["rolled_back"] is False and "no rollback needed" in out["message"]
    assert reg.aliases == {CHAMPION: "1", CHALLENGER: "2"} and entries() == []


def test_a_failed_deployment_goes_back_to_the_previous_champion_and_says_why(lake, monkeypatch):
    from rtml.registry.audit import entries
    from rtml.serve import client as serve_client
    from rtml.serve.deploy import roll_back_failed

    calls = []
    monkeypatch.setattr(serve_client, "request_reload", lambda *a, **k: calls.append("reload") or {})
    reg = FakeRegistry({"1": PASSED, "2": {**PASSED, "promoted.previous": "1"}},
                       {CHAMPION: "2", PREVIOUS_CHAMPION: "1"})
    out = roll_back_failed("credit", "2", [None, "live smoke check: 3 of 50 answers differ"], client=reg)
    assert out["rolled_back"] and out["endpoint_notified"] and calls == ["reload"]
    assert reg.aliases[CHAMPION] == "1" and PREVIOUS_CHAMPION not in reg.aliases
    assert "3 of 50 answers differ" in out["message"]
    (entry,) = entries()
    assert (entry["action"], entry["version"], entry["from_version"]) == ("rollback", "1", "2")
    assert "3 of 50 answers differ" in entry["reason"] and entry["on_behalf_of"] == "rtml_promote"


def test_an_unreachable_endpoint_does_not_stop_the_rollback(lake, monkeypatch):
    from rtml.serve import client as serve_client
    from rtml.serve.deploy import roll_back_failed

    def down(*a, **k):
        raise ConnectionError("refused")

    monkeypatch.setattr(serve_client, "request_reload", down)
    reg = FakeRegistry({"1": PASSED, "2": PASSED}, {CHAMPION: "2", PREVIOUS_CHAMPION: "1"})
    out = roll_back_failed("credit", "2", [], client=reg)
    assert out["rolled_back"] and out["endpoint_notified"] is False and reg.aliases[CHAMPION] == "1"
    assert "see the failed task's log" in out["reason"]


def test_reload_and_wait_always_waits_for_every_replica(monkeypatch):
    """The reload's own answer (one replica's, or a common version) is not enough: the wait, which
    covers every registered replica, decides (rtml.serve.client.wait_for_version)."""
    from rtml.serve import client as serve_client
    from rtml.serve.deploy import reload_and_wait

    calls = []
    monkeypatch.setattr(serve_client, "request_reload", lambda *a, **k: calls.append("reload") or {"version": "4"})
    monkeypatch.setattr(serve_client, "wait_for_version",
                        lambda v, **k: calls.append(("wait", v)) or {"version": v, "replicas": [11, 12]})
    assert reload_and_wait("4") == {"version": "4", "replicas": [11, 12]}
    assert calls == ["reload", ("wait", "4")]

    def stuck(v, **k):
        raise TimeoutError("the endpoint at http://127.0.0.1:5 still serves version 3 after 120s, not 4")

    monkeypatch.setattr(serve_client, "wait_for_version", stuck)
    with pytest.raises(TimeoutError, match="still serves version 3"):
        reload_and_wait("4")


# --- deploying at the approval (the approval wait in the triggerer), then the tasks take over ------
@pytest.fixture()
def endpoint(monkeypatch):
    """A fake endpoint: reloads and waits are recorded; it serves whatever was last reloaded."""
    from rtml.serve import client as serve_client

    calls: list = []
    monkeypatch.setattr(serve_client, "request_reload", lambda *a, **k: calls.append("reload") or {})
    monkeypatch.setattr(serve_client, "wait_for_version", lambda v, **k: calls.append(("wait", v)) or {"version": v})
    return calls


def _registry(monkeypatch, versions, aliases):
    from rtml.registry import promotion

    reg = FakeRegistry(versions, aliases)
    monkeypatch.setattr(promotion, "mlflow_client", lambda *a, **k: reg)
    return reg


def test_deployed_at_the_approval_then_taken_over_without_a_second_record_or_reload(lake, monkeypatch, endpoint):
    from rtml.registry.audit import entries
    from rtml.serve.deploy import deploy_approved, promotion_after_approval, reload_after_promotion

    reg = _registry(monkeypatch, {"1": PASSED, "2": PASSED}, {CHAMPION: "1", CHALLENGER: "2"})
    decision = {"status": "approved", "by": "alice", "at": "2026-11-26T01:00:00Z"}
    out = deploy_approved("credit", "2", decision)
    assert out["promotion"]["changed"] and out["served"] == {"version": "2"}
    assert reg.aliases == {CHAMPION: "2", PREVIOUS_CHAMPION: "1"} and endpoint == ["reload", ("wait", "2")]
    assert [(e["action"], e["on_behalf_of"]) for e in entries()] == [("approval", "alice"), ("promotion", "alice")]
    # A restarted triggerer runs it again: nothing new is recorded, nothing moves.
    again = deploy_approved("credit", "2", decision)
    assert again["promotion"]["changed"] is False and len(entries()) == 2 and reg.aliases[CHAMPION] == "2"
    # The promote and reload tasks take over: no promotion, no reload, only a look at the endpoint.
    endpoint.clear()
    promoted = promotion_after_approval("credit", "2", {**decision, "deployed": out}, client=reg)
    assert promoted["deployed_at_approval"] and promoted["audit_seq"] == out["promotion"]["audit_seq"]
    assert promoted["previous_champion"] == "1"
    served = reload_after_promotion(promoted)
    assert served["reloaded_at_approval"] and endpoint == [("wait", "2")]
    assert [e["action"] for e in entries()] == ["approval", "promotion"]


@pytest.mark.parametrize(
    ("aliases", "tags", "why"),
    [
        ({CHAMPION: "1", CHALLENGER: "3"}, PASSED, "not the current challenger"),
        ({CHAMPION: "1", CHALLENGER: "2"}, {**PASSED, "gate.drift": "failed"}, "not every gate passed"),
        ({CHAMPION: "1", CHALLENGER: "2"}, {**PASSED, "approval": "rejected"}, "was rejected"),
    ],
)
def test_a_refused_promotion_at_the_approval_serves_nothing_and_fails_the_task(lake, monkeypatch, endpoint,
                                                                                aliases, tags, why):
    from rtml.registry.promotion import PromotionError
    from rtml.serve.deploy import deploy_approved, promotion_after_approval

    reg = _registry(monkeypatch, {"1": PASSED, "2": tags, "3": PASSED}, aliases)
    out = deploy_approved("credit", "2", {"status": "approved", "by": "alice"})
    assert why in out["refused"] and "promotion" not in out
    assert reg.aliases == aliases and endpoint == []
    with pytest.raises(PromotionError, match=why):
        promotion_after_approval("credit", "2", {"by": "alice", "deployed": out}, client=reg)
    assert reg.aliases == aliases


def test_a_failed_reload_at_the_approval_fails_the_reload_task_with_its_reason(lake, monkeypatch):
    from rtml.serve import client as serve_client
    from rtml.serve.deploy import (
        DeploymentError,
        deploy_approved,
        promotion_after_approval,
        reload_after_promotion,
    )

    def stuck(v, **k):
        raise TimeoutError("the endpoint still serves version 1 after 120s, not 2")

    monkeypatch.setattr(serve_client, "request_reload", lambda *a, **k: {})
    monkeypatch.setattr(serve_client, "wait_for_version", stuck)
    reg = _registry(monkeypatch, {"1": PASSED, "2": PASSED}, {CHAMPION: "1", CHALLENGER: "2"})
    out = deploy_approved("credit", "2", {"status": "approved", "by": "alice"})
    assert out["promotion"]["changed"] and "still serves version 1" in out["reload_error"]
    promoted = promotion_after_approval("credit", "2", {"by": "alice", "deployed": out}, client=reg)
    with pytest.raises(DeploymentError, match="reload at the approval failed.*still serves version 1"):
        reload_after_promotion(promoted)


def test_without_a_deployment_at_the_approval_the_tasks_promote_and_reload(lake, monkeypatch, endpoint):
    """Decided before the run, the wait's attempt failed, or deploying at the approval is off."""
    from rtml.registry.audit import entries
    from rtml.serve.deploy import promotion_after_approval, reload_after_promotion

    reg = _registry(monkeypatch, {"1": PASSED, "2": PASSED}, {CHAMPION: "1", CHALLENGER: "2"})
    approval = {"status": "approved", "by": "", "deployed": {"error": "ConnectionError: lake unreachable"}}
    promoted = promotion_after_approval("credit", "2", approval, client=reg)
    assert promoted["changed"] and promoted["approver"] == "MLflow UI (approval.by not set)"
    assert reg.aliases[CHAMPION] == "2" and [e["action"] for e in entries()] == ["promotion"]
    assert reload_after_promotion(promoted) == {"version": "2"} and endpoint == ["reload", ("wait", "2")]


def test_a_deployment_overtaken_before_the_task_is_judged_again(lake, monkeypatch, endpoint):
    """The champion moved on after the wait promoted (e.g. a rollback): the task does not claim the
    old result; promote() judges again, and the version is no longer the challenger."""
    from rtml.registry.promotion import PromotionError
    from rtml.serve.deploy import deploy_approved, promotion_after_approval

    reg = _registry(monkeypatch, {"1": PASSED, "2": PASSED}, {CHAMPION: "1", CHALLENGER: "2"})
    out = deploy_approved("credit", "2", {"status": "approved", "by": "alice"})
    reg.aliases[CHAMPION] = "1"  # rolled back by hand meanwhile
    with pytest.raises(PromotionError, match="not the current challenger"):
        promotion_after_approval("credit", "2", {"by": "alice", "deployed": out}, client=reg)
