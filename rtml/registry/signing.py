"""Signed gate results: editing a tag in the MLflow UI cannot turn a failed evaluation into a pass.

Where the gates are decided (``rtml.evaluate.gates.decide``, the evaluating side), the result is signed with
an Ed25519 private key over the model name, version, run id, a digest of the model's files and the
gate summary (the ``gate.*`` tags as written). The signature, the digest and the key id are tags
of the version (``gate.signature``, ``gate.model_digest``, ``gate.key_id``). Promotion and serving
hold only the public key: they rebuild the signed bytes from the version's current tags and refuse
it when the signature does not verify, and serving also recomputes the digest of the files it
downloaded.

Keys are settings: ``RTML_GATE_SIGNING_KEY_FILE`` (private, PEM; the evaluator only) and
``RTML_GATE_PUBLIC_KEY`` (PEM or base64 of the 32 raw bytes) or ``RTML_GATE_PUBLIC_KEY_FILE``.
Left empty, the evaluator generates a key pair once under ``RTML_HOME/keys/`` (the private key
readable only by its owner) and the other components read the public half from there.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rtml.names import APPROVED, CHALLENGER, CHAMPION, GATE_TAGS, REJECTED, SIGNED_TAGS, normalize_decision
from rtml.registry.client import alias_version

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

    from rtml.settings import Settings

SIGNATURE_TAG, DIGEST_TAG, KEY_ID_TAG = "gate.signature", "gate.model_digest", "gate.key_id"
# The gate summary that is signed (rtml.names.SIGNED_TAGS): the verdicts, the reasons and when.
# Written by MLflow into a downloaded registered model (its name and version): not a model file.
_NOT_MODEL_FILES = {"registered_model_meta"}


class SignatureError(RuntimeError):
    """A gate result without a valid signature; the message says what is wrong."""


class NotServable(RuntimeError):
    """A version the endpoint must not load: ``reason`` is a short code, the message says why."""

    def __init__(self, version: str, reason: str, message: str) -> None:
        super().__init__(message)
        self.version = str(version)
        self.reason = reason


# --- keys -----------------------------------------------------------------------------------------
def _settings(settings: Settings | None) -> Settings:
    from rtml.settings import get_settings

    return settings or get_settings()


def private_key_path(settings: Settings | None = None) -> Path:
    s = _settings(settings)
    return Path(s.gate_signing_key_file).expanduser() if s.gate_signing_key_file else s.home / "keys" / "gate_signing.key"


def public_key_path(settings: Settings | None = None) -> Path:
    s = _settings(settings)
    if s.gate_public_key_file:
        return Path(s.gate_public_key_file).expanduser()
    return s.home / "keys" / "gate_signing.pub"


def _generate(priv_path: Path, pub_path: Path) -> None:
    """A new key pair, written once: the private key with O_EXCL and mode 0600."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    priv_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(priv_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process generated it first: use theirs
        return
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    pub = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    pub_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = pub_path.with_name(f".{pub_path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(pub)
    os.replace(tmp, pub_path)


def load_private_key(settings: Settings | None = None) -> Ed25519PrivateKey:
    """The evaluator's signing key; generated once under RTML_HOME when no key file is configured."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    s = _settings(settings)
    path = private_key_path(s)
    if not path.exists():
        if s.gate_signing_key_file:
            raise SignatureError(f"RTML_GATE_SIGNING_KEY_FILE: {path} does not exist; gate results cannot be signed")
        if s.gate_public_key:  # a new pair would not match the configured public key
            raise SignatureError("RTML_GATE_PUBLIC_KEY is set but RTML_GATE_SIGNING_KEY_FILE is not: cannot sign")
        _generate(path, public_key_path(s))
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise SignatureError(f"RTML_GATE_SIGNING_KEY_FILE: {path} is not an Ed25519 private key")
    return key


def load_public_key(settings: Settings | None = None) -> Ed25519PublicKey:
    """The key that verifies gate results: RTML_GATE_PUBLIC_KEY, else the public key file."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    s = _settings(settings)
    text = s.gate_public_key.strip()
    where = "RTML_GATE_PUBLIC_KEY"
    if not text:
        path = public_key_path(s)
        where = f"the gate public key file {path}"
        try:
            text = path.read_text().strip()
        except OSError:
            raise SignatureError(
                f"no gate public key: set RTML_GATE_PUBLIC_KEY or RTML_GATE_PUBLIC_KEY_FILE ({path} does not exist; "
                "it is created when the evaluator signs its first gate result)"
            ) from None
    try:
        if text.startswith("-----BEGIN"):
            key = serialization.load_pem_public_key(text.encode())
        else:
            key = Ed25519PublicKey.from_public_bytes(base64.b64decode(text, validate=True))
    except ValueError as err:
        raise SignatureError(f"{where} is not a valid Ed25519 public key: {err}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise SignatureError(f"{where} is not an Ed25519 public key")
    return key


def key_id(public: Ed25519PublicKey) -> str:
    from cryptography.hazmat.primitives import serialization

    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


# --- model digest -------------------------------------------------------------------------------
def model_digest(directory: str | Path) -> str:
    """``sha256:<hex>`` over every file of a model directory (relative path and content)."""
    root = Path(directory)
    h = hashlib.sha256()
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.relative_to(root).as_posix() not in _NOT_MODEL_FILES)
    for p in files:
        fh = hashlib.sha256()
        with p.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                fh.update(chunk)
        h.update(f"{p.relative_to(root).as_posix()}\0{fh.hexdigest()}\n".encode())
    return f"sha256:{h.hexdigest()}"


def registry_digest(name: str, version: str | int, tracking_uri: str) -> str:
    """The digest of a registered version's files, downloaded from the registry."""
    import mlflow

    tmp = tempfile.mkdtemp(prefix="rtml-digest-")
    try:
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=f"models:/{name}/{version}", dst_path=tmp, tracking_uri=tracking_uri
        )
        return model_digest(local)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# --- sign / verify ------------------------------------------------------------------------------
def payload(name: str, version: str | int, run_id: str, digest: str, tags: dict[str, str]) -> bytes:
    """The exact bytes that are signed (canonical JSON)."""
    body = {
        "v": 1,
        "name": str(name),
        "version": str(version),
        "run_id": str(run_id or ""),
        "model_digest": str(digest),
        "gates": {k: str(tags.get(k, "")) for k in SIGNED_TAGS},
    }
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def sign(name: str, version: str | int, run_id: str, digest: str, tags: dict[str, str],
         settings: Settings | None = None) -> dict[str, str]:
    """The signature tags for a gate result (``gate.signature``, ``gate.model_digest``, ``gate.key_id``)."""
    key = load_private_key(settings)
    sig = key.sign(payload(name, version, run_id, digest, tags))
    return {
        SIGNATURE_TAG: base64.b64encode(sig).decode(),
        DIGEST_TAG: digest,
        KEY_ID_TAG: key_id(key.public_key()),
    }


def sign_version(client: Any, name: str, version: str | int, settings: Settings | None = None) -> dict[str, str]:
    """Sign the version's gate tags as they are now in the registry, and write the signature tags.

    Called by the evaluating side right after it wrote the ``gate.*`` tags.
    """
    s = _settings(settings)
    mv = client.get_model_version(name, str(version))
    digest = registry_digest(name, version, s.mlflow_tracking_uri)
    out = sign(name, version, mv.run_id, digest, dict(mv.tags or {}), s)
    for k, v in out.items():
        client.set_model_version_tag(name, str(version), k, v)
    return out


def verify(name: str, version: str | int, run_id: str, tags: dict[str, str], settings: Settings | None = None,
           digest: str | None = None) -> None:
    """Raise ``SignatureError`` unless the tags carry a valid signature of this version's gate result.

    ``digest``, when given, is the digest of the files actually at hand; it must be the signed one.
    """
    from cryptography.exceptions import InvalidSignature

    sig_text = tags.get(SIGNATURE_TAG)
    if not sig_text:
        raise SignatureError(f"{name} version {version}: the gate result is not signed (no {SIGNATURE_TAG} tag)")
    signed_digest = str(tags.get(DIGEST_TAG, ""))
    if not signed_digest:
        raise SignatureError(f"{name} version {version}: no {DIGEST_TAG} tag")
    public = load_public_key(settings)
    try:
        sig = base64.b64decode(sig_text, validate=True)
        public.verify(sig, payload(name, version, run_id, signed_digest, tags))
    except (InvalidSignature, ValueError):
        kid = tags.get(KEY_ID_TAG, "?")
        hint = "" if kid == key_id(public) else f" (signed with key {kid}, this side holds key {key_id(public)})"
        raise SignatureError(
            f"{name} version {version}: the gate signature does not match its tags, run or model{hint}; "
            "a gate tag was edited after the evaluation, or it was not signed by the evaluator"
        ) from None
    if digest is not None and digest != signed_digest:
        raise SignatureError(
            f"{name} version {version}: its model files ({digest}) are not the ones that were evaluated ({signed_digest})"
        )


def verify_files(name: str, version: str | int, run_id: str, tags: dict[str, str], directory: str | Path,
                 settings: Settings | None = None) -> str:
    """Raise ``NotServable`` unless the downloaded model files are the ones whose gate result was
    signed; returns their digest."""
    digest = model_digest(directory)
    try:
        verify(name, version, run_id, tags, settings, digest=digest)
    except SignatureError as err:
        code = "digest" if tags.get(DIGEST_TAG) and tags.get(DIGEST_TAG) != digest else "signature"
        raise NotServable(str(version), code, str(err)) from None
    return digest


def check_servable(name: str, version: str | int, run_id: str, tags: dict[str, str], alias: str = CHAMPION,
                   settings: Settings | None = None) -> None:
    """Raise ``NotServable`` unless every gate passed, the result is signed and, for the champion,
    a person approved it (a challenger is only shadow-scored: its gates and signature suffice)."""
    version = str(version)
    bad = [f"{g}={tags.get(g, 'missing')}" for g in GATE_TAGS if str(tags.get(g, "")).strip().lower() != "passed"]
    if bad:
        raise NotServable(version, "gates", f"{name} version {version}: not every gate passed ({', '.join(bad)})")
    try:
        verify(name, version, run_id, tags, settings)
    except SignatureError as err:
        raise NotServable(version, "signature", str(err)) from None
    if alias == CHAMPION:
        decision = normalize_decision(tags.get("approval"))
        if decision == REJECTED:
            raise NotServable(version, "rejected", f"{name} version {version} was rejected by "
                                                   f"{tags.get('approval.by', 'someone')}")
        if decision != APPROVED:
            raise NotServable(version, "approval", f"{name} version {version} has no approval (tag approval=approved)")


def sign_and_record(client: Any, name: str, version: str | int, decision: dict[str, Any],
                    settings: Settings | None = None) -> dict[str, str]:
    """What the evaluator does right after writing the gate tags: sign them, append the gate
    result to the decision log, and show it in the model card."""
    from rtml.registry.audit import anchor, record, refresh_model_card

    s = _settings(settings)
    signed = sign_version(client, name, version, s)
    entry = record("gate", name, version, settings=s, reason="; ".join(decision.get("reasons", []))[:2000],
           details={"passed": bool(decision.get("passed")),
                    "gates": {k: bool(v.get("passed")) for k, v in (decision.get("gates") or {}).items()},
                    "model_digest": signed[DIGEST_TAG], "signature": signed[SIGNATURE_TAG],
                    "key_id": signed[KEY_ID_TAG]})
    anchor(client, name, version, entry)
    refresh_model_card(client, name, version, s)
    return signed


def write_signed_gates(client: Any, name: str, version: str | int, gates: dict[str, str], reasons: str = "",
                       settings: Settings | None = None) -> dict[str, str]:
    """Write gate tags and sign them, as the evaluator does (for tools and tests that hold the
    evaluator's key and decide gates themselves); sets or clears ``challenger`` like ``decide``."""
    from datetime import UTC, datetime

    version = str(version)
    tags = {**gates, "gate.reasons": reasons or "all gates passed",
            "gate.evaluated_at": datetime.now(UTC).isoformat(timespec="seconds")}
    for k, v in tags.items():
        client.set_model_version_tag(name, version, k, v)
    current = dict(client.get_model_version(name, version).tags or {})
    passed = all(str(current.get(g, "")).strip().lower() == "passed" for g in GATE_TAGS)
    decision = {"passed": passed, "reasons": [] if passed else [reasons or "a gate failed"],
                "gates": {g.removeprefix("gate."): {"passed": current.get(g) == "passed"} for g in GATE_TAGS[:3]}}
    signed = sign_and_record(client, name, version, decision, settings)
    if passed:
        client.set_registered_model_alias(name, CHALLENGER, version)
    elif alias_version(client, name, CHALLENGER) == version:
        client.delete_registered_model_alias(name, CHALLENGER)
    return signed
