"""The hash-chained decision log (rtml.registry.audit), in a local lake: appending, the actor, what
``verify`` detects (edits, gaps, renumbering, foreign objects) and what it cannot (a truncated tail),
concurrent writers, and ``rtml audit verify``."""

from __future__ import annotations

import json
import threading

import pytest

from rtml.settings import Settings


@pytest.fixture()
def settings(tmp_path, monkeypatch) -> Settings:
    for var in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.delenv(var, raising=False)
    return Settings(home=tmp_path / "home", storage="local", actor="tester")


def _log(settings: Settings, n: int = 5):
    from rtml.registry import audit

    store = audit.open_log_store(settings)
    for i in range(n):
        audit.record("approval" if i % 2 else "gate", "credit", str(i + 1), from_version=str(i) if i else None,
                     settings=settings, store=store, reason=f"step {i}")
    return store


def test_log_chain_verifies_and_names_the_actor(settings):
    from rtml.registry import audit

    store = _log(settings)
    out = audit.verify(store)
    assert out["ok"] and out["entries"] == 5 and out["head"]["seq"] == 4
    es = audit.entries(store)
    assert [e["seq"] for e in es] == [0, 1, 2, 3, 4]
    assert es[0]["prev"] == "" and all(es[i]["prev"] == es[i - 1]["hash"] for i in range(1, 5))
    assert {e["actor"] for e in es} == {"tester"} and es[0]["actor_source"] == "configured"
    assert [e["version"] for e in audit.for_version("credit", "3", store)] == ["3", "4"]  # as version, as from


def test_mlflow_identity_wins_when_auth_is_on(settings, monkeypatch):
    from rtml.registry import audit

    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "alice")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "pw")
    e = audit.record("promotion", "credit", "2", on_behalf_of="bob", settings=settings)
    assert (e["actor"], e["actor_source"], e["on_behalf_of"]) == ("alice", "mlflow-auth", "bob")


@pytest.mark.parametrize("tamper", ["edit", "edit_and_rehash", "delete_middle", "renumber", "insert_foreign",
                                    "garbage", "swap"])
def test_verify_detects_edits_and_gaps(settings, tamper):
    from rtml.registry import audit

    store = _log(settings)
    key = audit._key(2)
    entry = json.loads(store.get(key))
    if tamper == "edit":
        entry["actor"] = "mallory"
        store.put(key, json.dumps(entry).encode())
    elif tamper == "edit_and_rehash":  # a consistent entry, but the next link breaks
        entry["reason"] = "nothing happened"
        entry["hash"] = audit.entry_hash(entry)
        store.put(key, json.dumps(entry).encode())
    elif tamper == "delete_middle":
        store.delete(key)
    elif tamper == "renumber":
        store.put(audit._key(7), store.get(audit._key(4)))
    elif tamper == "insert_foreign":
        store.put(f"{audit.PREFIX}/notes.txt", b"hello")
    elif tamper == "garbage":
        store.put(key, b"\xff\xfe not json")
    elif tamper == "swap":
        a, b = store.get(audit._key(1)), store.get(audit._key(3))
        store.put(audit._key(1), b)
        store.put(audit._key(3), a)
    out = audit.verify(store)
    assert not out["ok"] and out["problems"], out
    assert "BROKEN" in out["message"]


def test_concurrent_writers_never_share_a_sequence_number(settings):
    from rtml.registry import audit

    store = audit.open_log_store(settings)
    errors: list[BaseException] = []

    def writer(k: int) -> None:
        try:
            for i in range(8):
                audit.record("reload", "credit", str(i), settings=settings, store=store, details={"writer": k})
        except BaseException as err:  # noqa: BLE001
            errors.append(err)

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    out = audit.verify(store)
    assert out["ok"] and out["entries"] == 32, out


def test_cli_audit_verify_exit_codes(settings, monkeypatch, capsys):
    from rtml.cli import main
    from rtml.registry import audit

    monkeypatch.setenv("RTML_HOME", str(settings.home))
    monkeypatch.setenv("RTML_STORAGE", "local")
    monkeypatch.delenv("RTML_LAKE_URI", raising=False)
    from rtml.settings import get_settings

    s = get_settings(refresh=True)
    try:
        store = _log(s, 3)
        assert main(["audit", "verify"]) == 0
        assert "chain intact" in capsys.readouterr().out
        store.delete(audit._key(1))
        assert main(["audit", "verify"]) == 1
        assert "entry 1: missing" in capsys.readouterr().out
    finally:
        get_settings(refresh=True)




def test_an_unknown_action_is_refused_naming_it(settings):
    from rtml.registry import audit

    with pytest.raises(ValueError, match=r"action must be one of .*'promote'"):
        audit.record("promote", "credit", "1", settings=settings)
    assert audit.entries(settings=settings) == []


def test_actor_sources_in_order_of_trust(settings, monkeypatch):
    from rtml.registry import audit

    assert audit.actor(settings) == ("tester", "configured")
    # A username without a password was not authenticated by MLflow: the configured actor wins.
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "alice")
    assert audit.actor(settings) == ("tester", "configured")
    unset = settings.model_copy(update={"actor": ""})
    assert audit.actor(unset) == ("alice", "mlflow-username")
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME")
    monkeypatch.setattr("getpass.getuser", lambda: "osuser")
    assert audit.actor(unset) == ("osuser", "os-user")


def test_on_behalf_of_is_dropped_when_it_names_the_actor_itself(settings):
    from rtml.registry import audit

    assert audit.record("approval", "credit", "1", on_behalf_of="tester", settings=settings)["on_behalf_of"] is None
    assert audit.record("approval", "credit", "1", on_behalf_of="", settings=settings)["on_behalf_of"] is None
    assert audit.record("approval", "credit", "1", on_behalf_of="bob", settings=settings)["on_behalf_of"] == "bob"


def test_entry_hash_ignores_its_own_hash_and_covers_every_other_field():
    from rtml.registry import audit

    entry = {"seq": 0, "prev": "", "action": "gate", "details": {"a": 1}}
    h = audit.entry_hash(entry)
    assert audit.entry_hash({**entry, "hash": "whatever"}) == h
    assert audit.entry_hash({**entry, "details": {"a": 2}}) != h
    assert audit.entry_hash({**entry, "prev": "x"}) != h
    assert audit.entry_hash(dict(reversed(list(entry.items())))) == h  # key order does not matter


def test_hostile_reasons_and_details_are_recorded_and_verify(settings):
    from rtml.registry import audit

    store = audit.open_log_store(settings)
    audit.record("refusal", "credit", "1", settings=settings, store=store,
                 reason="lone \ud800 surrogate, \x00 nul, <script>", details={"nan": float("nan"),
                                                                           "inf": float("-inf"), "big": 10**40})
    entry = audit.entries(store)[0]
    assert entry["reason"] == "lone \ud800 surrogate, \x00 nul, <script>" and entry["details"]["big"] == 10**40
    assert audit.verify(store)["ok"]


def test_details_that_are_not_json_are_stored_as_text_and_verify(settings):
    from datetime import UTC, datetime
    from pathlib import Path

    from rtml.registry import audit

    store = audit.open_log_store(settings)
    when = datetime(2026, 1, 2, tzinfo=UTC)
    e = audit.record("promotion", "credit", "2", settings=settings, store=store,
                     details={"when": when, "path": Path("/x")})
    assert audit.entries(store)[0]["details"] == {"when": str(when), "path": "/x"}
    assert audit.verify(store)["ok"] and e["hash"] == audit.entries(store)[0]["hash"]


def test_a_decision_that_cannot_be_written_fails_loudly_or_is_logged(settings, caplog):
    from rtml.registry import audit

    class Down:
        uri = "s3://down"

        def list(self, prefix=""):
            raise ConnectionError("lake unreachable")

    with pytest.raises(audit.AuditError, match=r"rollback of credit version 7.*lake unreachable"):
        audit.record("rollback", "credit", "7", settings=settings, store=Down())
    with caplog.at_level("ERROR", logger="rtml.registry.audit"):
        assert audit.try_record("reload", "credit", "7", settings=settings, store=Down()) is None
    assert "reload of credit version 7 was not recorded" in caplog.text


def test_a_taken_sequence_number_makes_the_writer_re_read_the_head(settings, monkeypatch):
    from rtml.registry import audit

    store = audit.open_log_store(settings)
    audit.record("gate", "credit", "1", settings=settings, store=store)
    real_create = audit._create
    raced = []

    def create(store_, key, data):
        if not raced:  # another writer takes this number first
            raced.append(key)
            other = {"seq": 1, "prev": audit.entries(store_)[0]["hash"], "action": "reload"}
            other["hash"] = audit.entry_hash(other)
            assert real_create(store_, key, json.dumps(other).encode())
        return real_create(store_, key, data)

    monkeypatch.setattr(audit, "_create", create)
    mine = audit.record("approval", "credit", "1", settings=settings, store=store)
    assert raced == [audit._key(1)] and mine["seq"] == 2
    assert mine["prev"] == audit.entries(store)[1]["hash"]
    assert audit.verify(store)["ok"]


def test_a_store_without_conditional_writes_never_overwrites_an_entry(settings):
    from rtml.registry import audit

    class Memory:
        uri = "mem://log"

        def __init__(self):
            self.objects: dict[str, bytes] = {}

        def put(self, key, data):
            self.objects[key] = data

        def get(self, key):
            return self.objects[key]

        def exists(self, key):
            return key in self.objects

        def list(self, prefix=""):
            return sorted(k for k in self.objects if k.startswith(prefix))

    store = Memory()
    assert audit._create(store, audit._key(0), b"first")
    assert not audit._create(store, audit._key(0), b"second")
    assert store.objects[audit._key(0)] == b"first"
    store.objects.clear()
    for v in ("1", "2"):
        audit.record("gate", "credit", v, settings=settings, store=store)
    assert [e["version"] for e in audit.entries(store)] == ["1", "2"] and audit.verify(store)["ok"]


def test_entries_skips_what_verify_reports(settings):
    from rtml.registry import audit

    store = _log(settings, 3)
    store.put(audit._key(1), b"not json")
    store.put(f"{audit.PREFIX}/000000000003.json.bak", b"{}")
    store.put(f"{audit.PREFIX}/3.json", b"{}")  # not zero-padded: not an entry
    assert [e["seq"] for e in audit.entries(store)] == [0, 2]
    problems = audit.verify(store)["problems"]
    assert any("entry 1: unreadable" in p for p in problems)
    assert sum("not a decision entry" in p for p in problems) == 2


def test_an_empty_log_verifies_with_no_head(settings):
    from rtml.registry import audit

    out = audit.verify(audit.open_log_store(settings))
    assert out["ok"] and out["entries"] == 0 and out["head"] is None and "0 entries" in out["message"]


@pytest.mark.parametrize("dropped", [1, 3])
def test_a_truncated_tail_shows_only_as_an_older_head(settings, dropped):
    """``verify`` has no anchor for the last entry: deleting the newest entries leaves a valid chain.
    What changes is the head it reports, so a head remembered elsewhere reveals the truncation."""
    from rtml.registry import audit

    store = _log(settings)
    before = audit.verify(store)["head"]
    assert before == {"seq": 4, "hash": audit.entries(store)[4]["hash"]}
    for seq in range(5 - dropped, 5):
        store.delete(audit._key(seq))
    after = audit.verify(store)["head"]
    assert after["seq"] == 4 - dropped and after != before
    assert after["hash"] == audit.entries(store)[-1]["hash"]


def _anchored(settings: Settings):
    """Five decisions, each anchored on its version in an in-memory registry."""
    from support.registry import FakeRegistry

    from rtml.registry import audit

    reg = FakeRegistry({str(v): {} for v in range(1, 6)}, {})
    store = audit.open_log_store(settings)
    for i in range(5):
        e = audit.record("approval", "credit", str(i + 1), settings=settings, store=store)
        assert audit.anchor(reg, "credit", str(i + 1), e, store)
    return reg, store


@pytest.mark.parametrize("dropped", [1, 3])
def test_registry_anchors_reveal_a_cut_tail(settings, dropped):
    from rtml.registry import audit

    reg, store = _anchored(settings)
    anchors = audit.registry_anchors(reg)
    assert [a["seq"] for a in anchors] == [0, 1, 2, 3, 4]
    assert audit.verify(store, anchors=anchors)["ok"]
    for seq in range(5 - dropped, 5):
        store.delete(audit._key(seq))
    out = audit.verify(store, anchors=audit.registry_anchors(reg))
    assert not out["ok"] and len(out["problems"]) == dropped
    assert all("does not have" in p and "deleted" in p for p in out["problems"])


def test_registry_anchors_reveal_a_tail_cut_and_rewritten(settings):
    """The newest entry deleted and a forged one appended in its place: a valid chain, a wrong hash."""
    from rtml.registry import audit

    reg, store = _anchored(settings)
    store.delete(audit._key(4))
    audit.record("rejection", "credit", "5", settings=settings, store=store, reason="forged")
    assert audit.verify(store)["ok"]  # the chain alone cannot tell
    out = audit.verify(store, anchors=audit.registry_anchors(reg))
    assert not out["ok"] and out["problems"] == [
        "anchor on credit version 5: entry 4 is not the entry it named (the log was re-written)"]


def test_malformed_anchors_and_an_anchor_failure(settings, caplog):
    from rtml.names import AUDIT_ANCHOR_TAG
    from rtml.registry import audit

    reg, store = _anchored(settings)
    reg.tags["2"][AUDIT_ANCHOR_TAG] = "two:abc"
    reg.tags["3"][AUDIT_ANCHOR_TAG] = "99:abc@s3://another-lake/_audit/decisions"  # another lake's log
    out = audit.verify(store, anchors=audit.registry_anchors(reg))
    assert out["problems"] == ["anchor on credit version 2: malformed ('abc')"] and out["anchors"] == 4

    class Down:
        def set_model_version_tag(self, *a):
            raise ConnectionError("registry down")

    entry = audit.entries(store)[0]
    assert audit.anchor(Down(), "credit", "1", entry) is False and "not anchored" in caplog.text
    assert audit.anchor(reg, "credit", None, entry) is False
