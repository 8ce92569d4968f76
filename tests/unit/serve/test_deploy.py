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
