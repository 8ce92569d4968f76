"""Promotion and rollback (rtml.registry.promotion) against an in-memory registry.

The decision log is the real one, in a local lake; the MLflow registry is a fake that can fail or
watch the log at the moment an alias moves (what the serving endpoint does when it reloads).
"""

from __future__ import annotations

import pytest
from support.registry import FakeRegistry, local_governance

from rtml.names import CHALLENGER, CHAMPION, PREVIOUS_CHAMPION

GATES = {"gate.quality": "passed", "gate.fairness": "passed", "gate.drift": "passed", "gate.decision": "passed"}


@pytest.fixture()
def lake(tmp_path, monkeypatch):
    yield from local_governance(tmp_path, monkeypatch)


def _actions() -> list[tuple[str, str]]:
    from rtml.registry.audit import entries

    return [(e["action"], e["version"]) for e in entries()]


def _registry() -> FakeRegistry:
    approved = {**GATES, "approval": "approved", "approval.by": "alice"}
    return FakeRegistry({"1": approved, "2": approved}, {CHAMPION: "1", CHALLENGER: "2"})


def test_the_promotion_is_in_the_log_before_the_champion_alias_moves(lake):
    """An endpoint that reloads the moment the alias moves logs its reload after the decision."""
    from rtml.registry.promotion import promote

    reg = _registry()
    seen: list[list[tuple[str, str]]] = []
    reg.on_alias = lambda alias, version: seen.append(_actions()) if alias == CHAMPION else None
    out = promote("credit", "2", client=reg)
    assert out["changed"] and out["previous_champion"] == "1"
    assert seen == [[("promotion", "2")]]
    assert reg.aliases == {CHAMPION: "2", PREVIOUS_CHAMPION: "1"}
    assert reg.tags["2"]["promoted.by"] == "alice" and reg.tags["2"]["promoted.previous"] == "1"


def test_a_promotion_the_registry_refuses_is_logged_as_not_applied(lake):
    from rtml.registry.audit import entries, verify
    from rtml.registry.promotion import promote

    reg = _registry()

    def fail(alias, version):
        if alias == CHAMPION:
            raise ConnectionError("registry went away")

    reg.on_alias = fail
    with pytest.raises(ConnectionError, match="went away"):
        promote("credit", "2", client=reg)
    promo, refusal = entries()
    assert (promo["action"], refusal["action"]) == ("promotion", "refusal")
    assert refusal["details"]["not_applied_seq"] == promo["seq"]
    assert "not applied" in refusal["reason"] and "registry went away" in refusal["reason"]
    assert reg.aliases[CHAMPION] == "1"  # champion still names the served version
    assert verify()["ok"]
    # Applied on a second try: the log shows both attempts, in order.
    reg.on_alias = lambda alias, version: None
    assert promote("credit", "2", client=reg)["changed"]
    assert [a for a, _ in _actions()] == ["promotion", "refusal", "promotion"]


def test_rollback_is_logged_before_the_alias_moves_back(lake):
    from rtml.registry.promotion import promote, rollback

    reg = _registry()
    promote("credit", "2", client=reg)
    seen: list[list[tuple[str, str]]] = []
    reg.on_alias = lambda alias, version: seen.append(_actions()[-1:]) if alias == CHAMPION else None
    out = rollback("credit", by="bob", reason="live errors", client=reg)
    assert out["version"] == "1" and out["rolled_back"] == "2"
    assert seen == [[("rollback", "1")]]
    assert reg.aliases[CHAMPION] == "1" and PREVIOUS_CHAMPION not in reg.aliases
    assert reg.tags["2"]["rolled_back.by"] == "bob"


def test_unapproved_or_ungated_versions_leave_no_decision(lake):
    from rtml.registry.promotion import PromotionError, promote

    reg = _registry()
    reg.tags["2"].pop("approval")
    with pytest.raises(PromotionError, match="not approved"):
        promote("credit", "2", client=reg)
    reg.tags["2"].update(approval="approved", **{"gate.fairness": "failed"})
    with pytest.raises(PromotionError, match="gate.fairness=failed"):
        promote("credit", "2", client=reg)
    assert _actions() == [] and reg.aliases[CHAMPION] == "1"
