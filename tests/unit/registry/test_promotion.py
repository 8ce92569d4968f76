"""Promotion and rollback (rtml.registry.promotion) against an in-memory registry.

The decision log is the real one, in a local lake; the MLflow registry is a fake that can fail or
watch the log at the moment an alias moves (what the serving endpoint does when it reloads).
"""

from __future__ import annotations

import threading

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


# --- one decision, one entry: `rtml approve` and the MLflow webhook see the same approval -----------
def _tag_event(version: str, value: str = "approved") -> dict:
    """What MLflow delivers when the ``approval`` tag is set (rtml.registry.webhooks)."""
    return {"entity": "model_version_tag", "action": "set", "timestamp": "2026-01-01T00:00:00+00:00",
            "data": {"name": "credit", "version": version, "key": "approval", "value": value}}


def _approvals(version: str = "2") -> list[dict]:
    from rtml.registry.audit import entries

    return [e for e in entries() if e["version"] == version and e["action"] == "approval"]


def _waiting_registry() -> FakeRegistry:
    return FakeRegistry({"1": {**GATES, "approval": "approved"}, "2": dict(GATES)}, {CHAMPION: "1", CHALLENGER: "2"})


def test_approve_then_the_webhook_delivery_logs_one_approval(lake):
    from rtml.registry.audit import verify
    from rtml.registry.promotion import record_decision
    from rtml.registry.webhooks import handle

    reg = _waiting_registry()
    out = record_decision("credit", "2", "approved", by="alice", client=reg)
    assert out["logged"] and out["audit_seq"] == 0
    assert handle(_tag_event("2"), reg)["action"] == "none"  # the delivery of the tag approve set
    (entry,) = _approvals()
    assert entry["on_behalf_of"] == "alice" and entry["details"]["via"] == "rtml"
    assert verify()["ok"]


def test_the_webhook_delivery_then_approve_logs_one_approval(lake):
    """A person tags the version in the MLflow UI (the webhook logs it), then runs `rtml approve`."""
    from rtml.registry.promotion import record_decision
    from rtml.registry.webhooks import handle

    reg = _waiting_registry()
    reg.tags["2"].update({"approval": "approved", "approval.by": "dana"})
    assert handle(_tag_event("2"), reg)["action"] == "recorded"
    out = record_decision("credit", "2", "approved", by="alice", client=reg)
    assert not out["logged"] and out["audit_seq"] is None
    (entry,) = _approvals()
    assert entry["on_behalf_of"] == "dana" and entry["details"]["via"] == "MLflow tag (webhook)"
    assert reg.tags["2"]["approval"] == "approved"
    # A different decision is a new entry: approve -> reject -> approve logs three.
    record_decision("credit", "2", "rejected", by="erin", client=reg)
    record_decision("credit", "2", "approved", by="alice", client=reg)
    from rtml.registry.audit import entries

    assert [e["action"] for e in entries()] == ["approval", "rejection", "approval"]


class _DeliveringRegistry(FakeRegistry):
    """Delivers the webhook (in its own thread, as MLflow does) the moment the ``approval`` tag is set,
    and lets the setter go on only once the delivery has finished or is waiting for the model's lease."""

    def __init__(self, *a, contended: threading.Event, **kw):
        super().__init__(*a, **kw)
        self.contended = contended
        self.deliveries: list[threading.Thread] = []
        self.results: list[dict] = []

    def set_model_version_tag(self, name, version, key, value):
        from rtml.registry.webhooks import handle

        super().set_model_version_tag(name, version, key, value)
        if key != "approval":
            return
        t = threading.Thread(target=lambda: self.results.append(handle(_tag_event(str(version), value), self)))
        t.start()
        self.deliveries.append(t)
        while t.is_alive() and not self.contended.is_set():
            self.contended.wait(0.01)


def _spy_lease(monkeypatch) -> threading.Event:
    """An event set when anyone finds the model's lease taken (a writer waits for another)."""
    from rtml.registry import audit
    from rtml.registry.promotion import LOCK_PREFIX

    contended = threading.Event()
    real = audit._create

    def create(store, key, data):
        ok = real(store, key, data)
        if not ok and key.startswith(LOCK_PREFIX):
            contended.set()
        return ok

    monkeypatch.setattr(audit, "_create", create)
    return contended


def test_a_delivery_that_arrives_while_approve_is_logging_waits_and_logs_nothing(lake, monkeypatch):
    """The delivery runs between `rtml approve` setting the tag and appending its entry: it waits for
    the lease approve holds, then finds approve's entry (no delay decides this)."""
    from rtml.registry.promotion import record_decision

    reg = _DeliveringRegistry({"1": dict(GATES), "2": dict(GATES)}, {CHAMPION: "1", CHALLENGER: "2"},
                              contended=_spy_lease(monkeypatch))
    out = record_decision("credit", "2", "approved", by="alice", client=reg)
    for t in reg.deliveries:
        t.join(30)
    assert reg.contended.is_set()  # the delivery really came while approve held the lease
    assert out["logged"] and [r["action"] for r in reg.results] == ["none"]
    (entry,) = _approvals()
    assert entry["on_behalf_of"] == "alice"


def test_concurrent_approves_and_deliveries_log_exactly_one_approval(lake):
    """The tag is set in the UI; two `rtml approve`s, three deliveries (MLflow retries) and the
    promotion DAG's trigger all act at once."""
    from rtml.registry.promotion import record_decision, record_observed_decision
    from rtml.registry.webhooks import handle

    reg = _waiting_registry()
    reg.tags["2"].update({"approval": "approved", "approval.by": "dana"})
    jobs = [lambda: record_decision("credit", "2", "approved", by="alice", client=reg)] * 2
    jobs += [lambda: handle(_tag_event("2"), reg)] * 3
    jobs += [lambda: record_observed_decision("credit", "2", "approved", "dana", via="MLflow tag seen by rtml_promote")]
    start = threading.Barrier(len(jobs))
    errors: list[BaseException] = []

    def run(job):
        start.wait()
        try:
            job()
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=run, args=(j,)) for j in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors and not any(t.is_alive() for t in threads)
    assert len(_approvals()) == 1
    from rtml.registry.audit import verify

    assert verify()["ok"]


def test_on_champion_is_told_once_the_alias_moved_before_the_card_and_lines(lake, monkeypatch):
    """What lets the endpoint start loading while promote() still writes for people."""
    from rtml.registry import promotion

    reg = _registry()
    seen: list[tuple[str, ...]] = []
    monkeypatch.setattr(promotion, "_refresh_card", lambda c, n, v: seen.append(("card", str(v))))
    monkeypatch.setattr(promotion, "audit", lambda c, n, v, line: seen.append(("line", str(v))))
    promotion.promote("credit", "2", client=reg,
                      on_champion=lambda: seen.append(("champion", reg.aliases[CHAMPION], *_actions()[-1])))
    assert seen[0] == ("champion", "2", "promotion", "2") and len(seen) == 4
    assert [s[0] for s in seen[1:]] == ["line", "line", "card"]
    # Promoting the champion again changes nothing and tells no one.
    seen.clear()
    assert promotion.promote("credit", "2", client=reg, on_champion=lambda: seen.append(("again",)))["changed"] is False
    assert seen == []


def _lease(name: str = "m") -> tuple:
    from rtml.registry.audit import open_log_store
    from rtml.registry.promotion import LOCK_PREFIX

    return open_log_store(), f"{LOCK_PREFIX}/{name}.lock"


def test_a_held_lease_makes_another_promotion_wait_then_refuse_naming_it(lake):
    from rtml.registry.promotion import PromotionError, promotion_guard

    with promotion_guard("m", "rollback"):
        with pytest.raises(PromotionError, match="another rollback of m by tester is in progress"):
            with promotion_guard("m", wait=0.3):
                pass
    with promotion_guard("m"):  # released
        pass


def test_the_lease_of_a_holder_that_died_is_broken_after_its_ttl(lake):
    """A killed triggerer renews nothing: its lease is taken over once it is ``ttl`` old, not before."""
    import json
    import time

    from rtml.registry.promotion import PromotionError, promotion_guard

    store, key = _lease()
    store.put(key, json.dumps({"token": "dead", "what": "promotion", "by": "x", "at": time.time() - 61}).encode())
    with promotion_guard("m", wait=0.3, ttl=60):
        assert json.loads(store.get(key))["token"] != "dead"
    store.put(key, json.dumps({"token": "alive", "what": "promotion", "by": "x", "at": time.time() - 30}).encode())
    with pytest.raises(PromotionError):
        with promotion_guard("m", wait=0.3, ttl=60):
            pass


def test_a_live_holder_renews_its_lease_and_only_its_own(lake, monkeypatch):
    import json

    from rtml.registry import promotion

    renewed = threading.Event()
    real = promotion._renew_lease

    def spy(store, key, token):
        ok = real(store, key, token)
        renewed.set()
        return ok

    monkeypatch.setattr(promotion, "_renew_lease", spy)
    store, key = _lease()
    with promotion.promotion_guard("m", ttl=0.02):
        assert renewed.wait(30)  # the renewer runs beside the holder's work
        mine = json.loads(store.get(key))
        assert promotion._renew_lease(store, key, mine["token"])
        assert json.loads(store.get(key))["at"] >= mine["at"]
        assert not promotion._renew_lease(store, key, "someone-else")  # never writes over another's lease
    assert not promotion._renew_lease(store, key, mine["token"])  # released: nothing to renew
    with pytest.raises(KeyError):
        store.get(key)
