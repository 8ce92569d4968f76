"""Gate signatures (rtml.registry.signing) and the hash-chained decision log (rtml.registry.audit), without services."""

from __future__ import annotations

import json
import threading

import pytest

from rtml.settings import Settings

GATES = {"gate.quality": "passed", "gate.fairness": "passed", "gate.drift": "passed", "gate.decision": "passed",
         "gate.reasons": "all gates passed", "gate.evaluated_at": "2026-11-25T12:00:00+00:00"}


@pytest.fixture()
def settings(tmp_path, monkeypatch) -> Settings:
    for var in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.delenv(var, raising=False)
    return Settings(home=tmp_path / "home", storage="local", actor="tester")


def _signed(settings: Settings, tags: dict[str, str] | None = None) -> dict[str, str]:
    from rtml.registry.signing import sign

    tags = dict(tags or GATES)
    return {**tags, **sign("credit", "3", "run-abc", "sha256:" + "0" * 64, tags, settings)}


def test_key_pair_is_generated_once_and_private_key_is_owner_only(settings):
    from rtml.registry.signing import (
        key_id,
        load_private_key,
        load_public_key,
        private_key_path,
        public_key_path,
    )

    k1 = load_private_key(settings)
    k2 = load_private_key(settings)
    assert key_id(k1.public_key()) == key_id(k2.public_key()) == key_id(load_public_key(settings))
    assert private_key_path(settings).stat().st_mode & 0o777 == 0o600
    assert "PRIVATE" not in public_key_path(settings).read_text()


def test_signature_verifies_and_any_edit_breaks_it(settings):
    from rtml.registry.signing import SignatureError, verify

    tags = _signed(settings)
    verify("credit", "3", "run-abc", tags, settings)
    verify("credit", "3", "run-abc", tags, settings, digest="sha256:" + "0" * 64)
    edits = [
        ("credit", "3", "run-abc", {**tags, "gate.fairness": "passed "}),  # a changed gate value
        ("credit", "3", "run-abc", {**tags, "gate.reasons": "fine"}),
        ("credit", "4", "run-abc", tags),  # copied onto another version
        ("credit", "3", "run-xyz", tags),  # another run
        ("other", "3", "run-abc", tags),
        ("credit", "3", "run-abc", {**tags, "gate.model_digest": "sha256:" + "1" * 64}),
        ("credit", "3", "run-abc", {k: v for k, v in tags.items() if k != "gate.signature"}),
        ("credit", "3", "run-abc", {**tags, "gate.signature": "not base64!"}),
    ]
    for name, version, run, t in edits:
        with pytest.raises(SignatureError):
            verify(name, version, run, t, settings)
    with pytest.raises(SignatureError, match="not the ones that were evaluated"):
        verify("credit", "3", "run-abc", tags, settings, digest="sha256:" + "2" * 64)


def test_a_failed_gate_signed_as_failed_cannot_be_edited_into_a_pass(settings):
    from rtml.registry.signing import NotServable, check_servable

    failed = _signed(settings, {**GATES, "gate.fairness": "failed", "gate.decision": "failed"})
    forged = {**failed, "gate.fairness": "passed", "gate.decision": "passed", "approval": "approved"}
    with pytest.raises(NotServable) as err:
        check_servable("credit", "3", "run-abc", forged, "champion", settings)
    assert err.value.reason == "signature"
    with pytest.raises(NotServable) as err:
        check_servable("credit", "3", "run-abc", {**failed, "approval": "approved"}, "champion", settings)
    assert err.value.reason == "gates"


def test_champion_needs_an_approval_a_challenger_does_not(settings):
    from rtml.registry.signing import NotServable, check_servable

    tags = _signed(settings)
    check_servable("credit", "3", "run-abc", tags, "challenger", settings)
    for approval, reason in ((None, "approval"), ("rejected", "rejected"), ("maybe", "approval")):
        t = tags if approval is None else {**tags, "approval": approval}
        with pytest.raises(NotServable) as err:
            check_servable("credit", "3", "run-abc", t, "champion", settings)
        assert err.value.reason == reason
    check_servable("credit", "3", "run-abc", {**tags, "approval": "Approved "}, "champion", settings)


def test_another_key_pair_is_refused_with_its_key_id(settings, tmp_path):
    from rtml.registry.signing import SignatureError, verify

    tags = _signed(settings)
    other = Settings(home=tmp_path / "other-home", storage="local")
    _signed(other)  # generates the other pair
    with pytest.raises(SignatureError, match="signed with key"):
        verify("credit", "3", "run-abc", tags, other)


def test_public_key_from_settings_and_clear_errors(settings, tmp_path):
    import base64

    from cryptography.hazmat.primitives import serialization

    from rtml.registry.signing import SignatureError, load_private_key, verify

    tags = _signed(settings)
    raw = load_private_key(settings).public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    serving = Settings(home=tmp_path / "serving", storage="local", gate_public_key=base64.b64encode(raw).decode())
    verify("credit", "3", "run-abc", tags, serving)
    nothing = Settings(home=tmp_path / "nothing", storage="local")
    with pytest.raises(SignatureError, match="no gate public key"):
        verify("credit", "3", "run-abc", tags, nothing)
    bad = Settings(home=tmp_path / "bad", storage="local", gate_public_key="AAAA")
    with pytest.raises(SignatureError, match="RTML_GATE_PUBLIC_KEY is not a valid"):
        verify("credit", "3", "run-abc", tags, bad)
    missing = Settings(home=tmp_path / "m", storage="local", gate_signing_key_file=str(tmp_path / "nope.key"))
    with pytest.raises(SignatureError, match="RTML_GATE_SIGNING_KEY_FILE"):
        load_private_key(missing)


def test_model_digest_covers_names_and_contents(tmp_path):
    from rtml.registry.signing import model_digest

    d = tmp_path / "model"
    (d / "sub").mkdir(parents=True)
    (d / "model.pkl").write_bytes(b"abc")
    (d / "sub" / "MLmodel").write_text("flavors: {}")
    first = model_digest(d)
    (d / "registered_model_meta").write_text("model_name: x")  # written by MLflow on download
    assert model_digest(d) == first
    (d / "model.pkl").write_bytes(b"abd")
    assert model_digest(d) != first
    (d / "model.pkl").write_bytes(b"abc")
    (d / "sub" / "MLmodel").rename(d / "MLmodel")
    assert model_digest(d) != first


# --- decision log ----------------------------------------------------------------------------------
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


def test_decision_section_in_the_model_card():
    from rtml.reports import model_card_html

    entry = {"seq": 4, "at": "2026-11-25T12:00:00Z", "action": "promotion", "version": "3", "from_version": "2",
             "actor": "alice", "on_behalf_of": None, "reason": "<b>ok</b>", "hash": "ab" * 32}
    html = model_card_html({"model": "credit", "version": "3", "decisions": [entry]})
    assert "<h2>Decisions</h2>" in html and "promotion" in html and "alice" in html
    assert "&lt;b&gt;ok&lt;/b&gt;" in html and "<b>ok</b>" not in html
    assert "<h2>Decisions</h2>" not in model_card_html({"model": "credit", "version": "3"})
