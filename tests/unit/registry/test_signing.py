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


def test_unsigned_or_digestless_tags_are_refused_naming_the_tag(settings):
    from rtml.registry.signing import SignatureError, verify

    tags = _signed(settings)
    with pytest.raises(SignatureError, match=r"credit version 3: the gate result is not signed \(no gate.signature tag\)"):
        verify("credit", "3", "run-abc", {k: v for k, v in tags.items() if k != "gate.signature"}, settings)
    with pytest.raises(SignatureError, match="credit version 3: no gate.model_digest tag"):
        verify("credit", "3", "run-abc", {**tags, "gate.model_digest": ""}, settings)


def test_public_key_as_pem_text_or_file_and_a_key_of_another_kind(settings, tmp_path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from rtml.registry.signing import SignatureError, load_private_key, public_key_path, verify

    tags = _signed(settings)
    pem = public_key_path(settings).read_text()
    assert pem.startswith("-----BEGIN PUBLIC KEY-----")
    verify("credit", "3", "run-abc", tags, Settings(home=tmp_path / "a", storage="local", gate_public_key=pem))
    copied = tmp_path / "copied.pub"
    copied.write_text(pem)
    verify("credit", "3", "run-abc", tags, Settings(home=tmp_path / "b", storage="local",
                                                    gate_public_key_file=str(copied)))
    other_kind = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    with pytest.raises(SignatureError, match="RTML_GATE_PUBLIC_KEY is not an Ed25519 public key"):
        verify("credit", "3", "run-abc", tags, Settings(home=tmp_path / "c", storage="local",
                                                        gate_public_key=other_kind))
    garbage = tmp_path / "garbage.pub"
    garbage.write_text("-----BEGIN PUBLIC KEY-----\nnot a key\n-----END PUBLIC KEY-----\n")
    with pytest.raises(SignatureError, match=f"the gate public key file {garbage} is not a valid Ed25519"):
        verify("credit", "3", "run-abc", tags, Settings(home=tmp_path / "d", storage="local",
                                                        gate_public_key_file=str(garbage)))
    # The private key of this side was never made up to match a configured public key.
    with pytest.raises(SignatureError, match="RTML_GATE_PUBLIC_KEY is set but RTML_GATE_SIGNING_KEY_FILE is not"):
        load_private_key(Settings(home=tmp_path / "e", storage="local", gate_public_key=pem))


def test_a_signing_key_file_of_another_kind_is_refused(tmp_path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from rtml.registry.signing import SignatureError, load_private_key

    path = tmp_path / "ec.key"
    path.write_bytes(ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    with pytest.raises(SignatureError, match=f"RTML_GATE_SIGNING_KEY_FILE: {path} is not an Ed25519 private key"):
        load_private_key(Settings(home=tmp_path, storage="local", gate_signing_key_file=str(path)))


def test_verify_files_tells_a_swapped_model_from_an_edited_tag(settings, tmp_path):
    from rtml.registry.signing import NotServable, model_digest, sign, verify_files

    model = tmp_path / "model"
    model.mkdir()
    (model / "model.pkl").write_bytes(b"weights")
    tags = {**GATES, **sign("credit", "3", "run-abc", model_digest(model), GATES, settings)}
    assert verify_files("credit", "3", "run-abc", tags, model, settings) == model_digest(model)
    with pytest.raises(NotServable) as err:
        verify_files("credit", "3", "run-abc", {**tags, "gate.drift": "failed"}, model, settings)
    assert (err.value.reason, err.value.version) == ("signature", "3")
    (model / "model.pkl").write_bytes(b"other weights")
    with pytest.raises(NotServable) as err:
        verify_files("credit", "3", "run-abc", tags, model, settings)
    assert err.value.reason == "digest" and "are not the ones that were evaluated" in str(err.value)


def test_not_servable_names_each_gate_that_did_not_pass(settings):
    from rtml.registry.signing import NotServable, check_servable

    tags = {k: v for k, v in _signed(settings).items() if k != "gate.drift"}
    tags["gate.quality"] = "failed"
    with pytest.raises(NotServable, match=r"not every gate passed \(gate.quality=failed, gate.drift=missing\)"):
        check_servable("credit", "3", "run-abc", tags, "challenger", settings)
    with pytest.raises(NotServable, match="was rejected by carol"):
        check_servable("credit", "3", "run-abc", {**_signed(settings), "approval": "no", "approval.by": "carol"},
                       "champion", settings)


class FakeRegistry:
    """The MlflowClient calls write_signed_gates makes, on dicts."""

    def __init__(self) -> None:
        self.tags: dict[str, dict[str, str]] = {"3": {}}
        self.aliases: dict[str, str] = {}

    def get_model_version(self, name, version):
        from types import SimpleNamespace

        return SimpleNamespace(run_id="run-abc", tags=dict(self.tags[str(version)]))

    def set_model_version_tag(self, name, version, key, value):
        self.tags[str(version)][key] = value

    def get_model_version_by_alias(self, name, alias):
        from types import SimpleNamespace

        from mlflow.exceptions import MlflowException
        from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

        if alias not in self.aliases:
            raise MlflowException(f"Registered model alias {alias} not found.", INVALID_PARAMETER_VALUE)
        return SimpleNamespace(version=self.aliases[alias])

    def set_registered_model_alias(self, name, alias, version):
        self.aliases[alias] = str(version)

    def delete_registered_model_alias(self, name, alias):
        del self.aliases[alias]


def test_write_signed_gates_signs_records_and_moves_the_challenger(settings, monkeypatch):
    from rtml.registry import audit, signing

    monkeypatch.setattr(signing, "registry_digest", lambda name, version, uri: "sha256:" + "a" * 64)
    monkeypatch.setattr(audit, "refresh_model_card", lambda *a, **k: True)
    reg = FakeRegistry()
    passed = {g: "passed" for g in ("gate.quality", "gate.fairness", "gate.drift", "gate.decision")}
    signed = signing.write_signed_gates(reg, "credit", 3, passed, settings=settings)
    assert reg.aliases == {"challenger": "3"}
    tags = reg.tags["3"]
    assert tags["gate.model_digest"] == "sha256:" + "a" * 64 and signed["gate.signature"] == tags["gate.signature"]
    signing.verify("credit", "3", "run-abc", tags, settings, digest="sha256:" + "a" * 64)
    [entry] = audit.entries(settings=settings)
    assert (entry["action"], entry["version"], entry["details"]["passed"]) == ("gate", "3", True)
    assert entry["details"]["signature"] == tags["gate.signature"]

    signing.write_signed_gates(reg, "credit", 3, {**passed, "gate.fairness": "failed", "gate.decision": "failed"},
                               reasons="fairness: ratio 0.61 < 0.8", settings=settings)
    assert reg.aliases == {}  # a version that now fails stops being the challenger
    last = audit.entries(settings=settings)[-1]
    assert last["details"]["passed"] is False and last["reason"] == "fairness: ratio 0.61 < 0.8"
    assert last["details"]["gates"] == {"quality": True, "fairness": False, "drift": True}
