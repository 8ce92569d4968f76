"""Gate signatures (rtml.registry.signing), without services: the key pair, sign/verify and what any
edit breaks, ``check_servable`` (gates, signature, approval) and the model digest."""

from __future__ import annotations

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
