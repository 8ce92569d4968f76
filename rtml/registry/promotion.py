"""Approval, promotion and rollback of model versions in the MLflow registry.

A person decides in the MLflow UI: on the model version page (Models -> NAME -> Version N), under
"Tags", add the tag ``approval`` with value ``approved`` (or ``rejected``), optionally ``approval.by``
with their name. The promotion DAG waits for that tag; ``rtml approve NAME VERSION`` does the same
from a terminal. Promotion is refused unless every gate tag (``gate.quality``, ``gate.fairness``,
``gate.drift``, ``gate.decision``) is ``passed`` and signed by the evaluator over the version's
files (``rtml.registry.signing``), the version is approved right now (an approval withdrawn in the UI is
never written back), and it is the current ``challenger`` and newer than the champion; only
``--force`` (recorded, with its reason) promotes another version. One promotion or rollback of a
model at a time (a lease in the lake). A rollback only goes to a version that passed, is signed,
is approved and was never rejected (neither by its tag nor in the decision log).

Aliases: ``champion`` (what the endpoint serves), ``previous_champion`` (where ``rollback`` goes),
``challenger`` (the version waiting for a decision; removed when it is promoted or rejected).
Each decision is recorded as tags on the version (``approval``, ``approval.by``, ``approval.at``,
``promoted.*``, ``rolled_back.*``), as an entry of the hash-chained decision log in the lake
(``rtml.registry.audit``: the record) and as a dated line appended to its description (for people).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from rtml.names import (
    APPROVED,
    CHALLENGER,
    CHAMPION,
    GATE_TAGS,
    PREVIOUS_CHAMPION,
    REJECTED,
    normalize_decision,
)
from rtml.registry.client import alias_version, mlflow_client

log = logging.getLogger("rtml.registry.promotion")

if TYPE_CHECKING:
    from mlflow import MlflowClient


PREVIOUS = PREVIOUS_CHAMPION
AUDIT_MARK = "[rtml]"


class PromotionError(RuntimeError):
    """A promotion, decision or rollback that must not happen; the message says why."""


def current_user() -> str:
    """Who decides (the default of ``--by``): the MLflow user name, else ``RTML_ACTOR``, else the OS user.

    The decision log also records who acted as far as rtml can tell (``rtml.registry.audit.actor``).
    """
    import os

    from rtml.registry.audit import actor

    return os.environ.get("MLFLOW_TRACKING_USERNAME") or actor()[0]


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _version(client: MlflowClient, name: str, version: str | int):
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version(name, str(version))
    except MlflowException as err:
        raise PromotionError(f"model {name!r} has no version {version}: {err.message}") from None


def gate_status(client: MlflowClient, name: str, version: str | int) -> dict[str, str]:
    """Each gate tag's value (``missing`` when the gate never ran)."""
    tags = _version(client, name, version).tags or {}
    return {g: str(tags.get(g, "missing")).strip().lower() for g in GATE_TAGS}


def check_gates(client: MlflowClient, name: str, version: str | int) -> None:
    """Raise ``PromotionError`` unless every gate tag of the version is ``passed``."""
    mv = _version(client, name, version)
    tags = mv.tags or {}
    bad = [f"{g}={tags.get(g, 'missing')}" for g in GATE_TAGS if str(tags.get(g, "")).strip().lower() != "passed"]
    if bad:
        reasons = tags.get("gate.reasons", "")
        raise PromotionError(
            f"{name} version {version} cannot become champion: not every gate passed ({', '.join(bad)})"
            + (f"; reasons: {reasons}" if reasons else "")
        )


def approval_decision(name: str, version: str | int, client: MlflowClient | None = None) -> str | None:
    """The person's decision on a version: ``approved``, ``rejected``, or None (not decided yet)."""
    client = client or mlflow_client()
    tags = _version(client, name, version).tags or {}
    return normalize_decision(tags.get("approval"))


def audit(client: MlflowClient, name: str, version: str | int, line: str) -> None:
    """Append a dated line to the version's description (shown on its page in the MLflow UI)."""
    mv = _version(client, name, version)
    text = (mv.description or "").rstrip()
    entry = f"{AUDIT_MARK} {_now()} {line}"
    client.update_model_version(name, str(version), description=f"{text}\n\n{entry}" if text else entry)


def audit_trail(client: MlflowClient, name: str, version: str | int) -> list[str]:
    desc = _version(client, name, version).description or ""
    return [ln.strip() for ln in desc.splitlines() if ln.strip().startswith(AUDIT_MARK)]


def _log(action: str, name: str, version: str | int | None, client: Any = None, **kw: Any) -> dict[str, Any]:
    """Append to the decision log (the record): a decision that cannot be recorded fails. With
    ``client``, the entry is also anchored on the version in the registry (see audit.anchor)."""
    from rtml.registry.audit import anchor, record

    entry = record(action, name, version, **kw)
    if client is not None:
        anchor(client, name, version, entry)
    return entry


@contextlib.contextmanager
def _applying(entry: dict[str, Any]) -> Iterator[None]:
    """Apply a decision already in the log; if the registry writes fail, say so in the log too.

    The decision is logged first (see ``promote``); a failure to apply it is logged as a refusal
    naming the decision's ``seq``, so the record never claims a change the registry does not show.
    """
    try:
        yield
    except Exception as err:
        try:
            _log("refusal", entry["model"], entry["version"], from_version=entry.get("from_version"),
                 reason=f"{entry['action']} (seq {entry['seq']}) not applied: {type(err).__name__}: {err}"[:2000],
                 details={"not_applied_seq": entry["seq"]})
        except Exception:  # noqa: BLE001 - the original error is the one to report
            log.exception("could not record that %s seq %s was not applied", entry["action"], entry["seq"])
        raise


def _refresh_card(client: MlflowClient, name: str, version: str | int) -> None:
    from rtml.registry.audit import refresh_model_card

    refresh_model_card(client, name, version)


def _decision_once(name: str, version: str, action: str, client: Any = None, **kw: Any) -> dict[str, Any] | None:
    """Append ``action`` (approval or rejection) for the version unless it is already its newest
    decision in the log; None when it is. Call under the model's lease (``promotion_guard``): the
    check and the append must not interleave with another writer's."""
    from rtml.registry.audit import for_version

    for e in reversed(for_version(name, version)):
        if e.get("version") == str(version) and e.get("action") in ("approval", "rejection"):
            if e["action"] == action:
                return None
            break
    return _log(action, name, version, client, **kw)


def record_decision(
    name: str, version: str | int, decision: str, by: str | None = None, client: MlflowClient | None = None,
    reason: str = "",
) -> dict[str, Any]:
    """Record a person's decision as tags (what the UI path sets by hand), in the decision log (once)
    and as a description line.

    The tags are set and the log checked and appended under the model's lease: the webhook receiver
    sees the tag the moment it is set and waits for the lease, so it finds this entry; and a decision
    the receiver (or the promotion DAG) logged first, from the same tag set in the MLflow UI, is not
    logged again. ``logged`` says whether an entry was appended.
    """
    client = client or mlflow_client()
    decision = normalize_decision(decision) or ""
    if decision not in (APPROVED, REJECTED):
        raise PromotionError(f"decision must be {APPROVED!r} or {REJECTED!r}")
    version = str(version)
    _version(client, name, version)
    by = by or current_user()
    at = _now()
    action = "approval" if decision == APPROVED else "rejection"
    with promotion_guard(name, "decision record", wait=60):
        client.set_model_version_tag(name, version, "approval", decision)
        client.set_model_version_tag(name, version, "approval.by", by)
        client.set_model_version_tag(name, version, "approval.at", at)
        if reason:
            client.set_model_version_tag(name, version, "approval.reason", reason[:4900])
        entry = _decision_once(name, version, action, client, on_behalf_of=by, reason=reason,
                               details={"via": "rtml"})
    if entry is not None:
        audit(client, name, version, f"{decision} by {by}" + (f": {reason}" if reason else ""))
    return {"name": name, "version": version, "decision": decision, "by": by, "at": at,
            "logged": entry is not None, "audit_seq": None if entry is None else entry["seq"]}


def record_observed_decision(name: str, version: str | int, decision: str, by: str = "", at: str = "",
                             via: str = "MLflow tag") -> dict[str, Any] | None:
    """Log a decision a person made by tagging the version (seen by the promotion DAG or the
    webhook, whichever is first), once; None when it is in the log already."""
    action = "approval" if normalize_decision(decision) == APPROVED else "rejection"
    # Under the model's lease: the DAG, the webhook and `rtml approve` may act on the same tag at the
    # same moment, and the check and the append must not interleave (two entries for one decision).
    with promotion_guard(name, "decision record", wait=60):
        return _decision_once(name, str(version), action, on_behalf_of=by or None, details={"via": via, "tag_at": at})


def verify_signed(client: MlflowClient, name: str, version: str | int, mv: Any = None) -> None:
    """Raise ``PromotionError`` unless the gate tags carry the evaluator's valid signature over
    this version's files as they are in the registry now."""
    from rtml.registry.signing import SignatureError, registry_digest, verify
    from rtml.settings import get_settings

    mv = mv or _version(client, name, version)
    s = get_settings()
    try:
        digest = registry_digest(name, version, s.mlflow_tracking_uri)
        verify(name, version, mv.run_id, dict(mv.tags or {}), s, digest=digest)
    except SignatureError as err:
        raise PromotionError(f"{name} version {version} cannot become champion: {err}") from None


def _never_rejected(name: str, version: str, tags: dict[str, str]) -> None:
    from rtml.registry.audit import for_version

    if normalize_decision(tags.get("approval")) == REJECTED:
        raise PromotionError(f"{name} version {version} was rejected by {tags.get('approval.by', 'someone')}")
    rejected = [e for e in for_version(name, version) if e.get("action") == "rejection" and e.get("version") == version]
    if rejected:
        e = rejected[-1]
        raise PromotionError(
            f"{name} version {version} was rejected at {e.get('at')} by {e.get('on_behalf_of') or e.get('actor')} "
            f"(decision log entry {e.get('seq')}); a rejected version is never deployed again"
        )


def check_eligible(client: MlflowClient, name: str, version: str | int, force: bool = False) -> str | None:
    """Without ``force``: the version must be the current challenger and newer than the champion.
    Returns the current champion."""
    version = str(version)
    champion = alias_version(client, name, CHAMPION)
    if force or champion == version:
        return champion
    challenger = alias_version(client, name, CHALLENGER)
    if challenger != version:
        raise PromotionError(
            f"{name} version {version} is not the current challenger (challenger: "
            f"{'version ' + challenger if challenger else 'none'}); only the challenger is promoted "
            "(use --force, which is recorded, to promote another version)"
        )
    if champion is not None and int(version) <= int(champion):
        raise PromotionError(
            f"{name} version {version} is not newer than the champion (version {champion}): promoting it would "
            "roll production back (use 'rtml rollback', or --force, which is recorded)"
        )
    return champion


LOCK_PREFIX = "_audit/locks"
LEASE_POLL = 0.2  # seconds between tries for a held lease (a webhook event waits behind `rtml approve`)
# A live holder renews its lease every quarter of this; a holder that died (a killed triggerer or
# worker) stops renewing, and its lease is broken this long after its last renewal.
LEASE_TTL = 60.0


def _renew_lease(store: Any, key: str, token: str) -> bool:
    """Move the lease's ``at`` to now if it is still ours; False when it is not (broken, released)."""
    try:
        held = json.loads(store.get(key))
    except (KeyError, ValueError):
        return False
    if held.get("token") != token:
        return False
    store.put(key, json.dumps({**held, "at": time.time()}).encode())
    return True


@contextlib.contextmanager
def promotion_guard(name: str, what: str = "promotion", wait: float = 120.0, ttl: float = LEASE_TTL) -> Iterator[None]:
    """One promotion or rollback of a model at a time, across processes and hosts: a lease object
    in the lake, created only if absent, renewed while held. A lease not renewed for ``ttl`` (its
    holder died) is broken."""
    from rtml.registry.audit import _create, actor, open_log_store

    store = open_log_store()
    key = f"{LOCK_PREFIX}/{name.replace('/', '_')}.lock"
    token = f"{time.time_ns()}-{os.getpid()}-{id(store)}"
    body = json.dumps({"token": token, "what": what, "by": actor()[0], "at": time.time()}).encode()
    deadline = time.monotonic() + wait
    while not _create(store, key, body):
        try:
            held = json.loads(store.get(key))
        except (KeyError, ValueError):
            continue  # released (or half-written) meanwhile: try again
        if time.time() - float(held.get("at", 0)) > ttl:
            store.delete(key)  # a holder that died: its lease expired
            continue
        if time.monotonic() >= deadline:
            raise PromotionError(
                f"another {held.get('what', 'promotion')} of {name} by {held.get('by', '?')} is in progress; "
                "one at a time"
            )
        time.sleep(LEASE_POLL)
    stop = threading.Event()

    def renew() -> None:
        while not stop.wait(ttl / 4):
            with contextlib.suppress(Exception):  # a store hiccup: the next renewal tries again
                if not _renew_lease(store, key, token):
                    return

    renewer = threading.Thread(target=renew, name=f"rtml-lease-{name}", daemon=True)
    renewer.start()
    try:
        yield
    finally:
        stop.set()
        renewer.join()
        with contextlib.suppress(Exception):
            if json.loads(store.get(key)).get("token") == token:
                store.delete(key)


def promote(
    name: str, version: str | int, approver: str | None = None, client: MlflowClient | None = None,
    force: bool = False, reason: str = "", on_champion: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Make ``version`` the champion; the old champion becomes previous.

    Refused unless every gate passed with a valid signature, a person approved the version (the
    ``approval`` tag says so now: it is never written here), and it is the current challenger and
    newer than the champion, unless ``force`` (recorded with ``reason``). Idempotent: promoting the
    current champion changes nothing. The challenger alias is removed from the promoted version.
    ``on_champion`` is called once the alias has moved (and the lease is released), before the
    description lines and the model card are written: a caller can tell the endpoint at once.
    """
    client = client or mlflow_client()
    version = str(version)
    with promotion_guard(name):
        mv = _version(client, name, version)
        # The signature check downloads and hashes the version's files, the slowest check: it runs
        # beside the others (each reads the registry or the log); all must pass.
        with ThreadPoolExecutor(1, thread_name_prefix="rtml-verify") as pool:
            signed = pool.submit(verify_signed, client, name, version, mv)
            check_gates(client, name, version)
            tags = mv.tags or {}
            _never_rejected(name, version, tags)
            if normalize_decision(tags.get("approval")) != APPROVED:
                raise PromotionError(
                    f"{name} version {version} is not approved (its tag approval is "
                    f"{tags.get('approval') or 'not set'}); a person approves it in the MLflow UI or with 'rtml approve'"
                )
            signed.result()  # before eligibility: its refusal names the graver problem, as before
        old = check_eligible(client, name, version, force)
        approver = approver or tags.get("approval.by") or current_user()
        result: dict[str, Any] = {"name": name, "version": version, "previous_champion": old, "approver": approver}
        if old == version:
            result.update(changed=False, message=f"{name} version {version} is already the champion")
            return result
        at = _now()
        # Recorded before the alias moves: the endpoint reloads as soon as it sees the new champion
        # and logs that reload, so the decision must already be in the log ahead of it.
        entry = _log("promotion", name, version, client, from_version=old, on_behalf_of=approver,
                     reason=(f"forced: {reason}" if force else reason) if (force or reason) else "",
                     details={"forced": force, "approved_by": tags.get("approval.by", ""),
                              "gate_signature_key": tags.get("gate.key_id", "")})
        with _applying(entry):
            # previous_champion first: if we stop half-way, champion still names a served version.
            if old is not None:
                client.set_registered_model_alias(name, PREVIOUS, old)
                client.set_model_version_tag(name, version, "promoted.previous", old)
            client.set_registered_model_alias(name, CHAMPION, version)
            client.set_model_version_tag(name, version, "promoted.at", at)
            client.set_model_version_tag(name, version, "promoted.by", approver)
            if force:
                client.set_model_version_tag(name, version, "promoted.forced", (reason or "forced")[:4900])
            if alias_version(client, name, CHALLENGER) == version:
                client.delete_registered_model_alias(name, CHALLENGER)
    if on_champion is not None:
        on_champion()
    forced = f" (FORCED: {reason or 'no reason given'})" if force else ""
    audit(client, name, version, f"promoted to champion, approved by {approver} (previous champion: {old or 'none'}){forced}")
    if old is not None:
        audit(client, name, old, f"replaced as champion by version {version} (approved by {approver})")
    _refresh_card(client, name, version)
    result.update(changed=True, at=at, forced=force, audit_seq=entry["seq"],
                  message=f"{name} version {version} is now the champion (was {old or 'none'})" + forced)
    return result


def approve(name: str, version: str | int, by: str | None = None, client: MlflowClient | None = None,
            force: bool = False, reason: str = "") -> dict[str, Any]:
    """A person's approval from the CLI: everything checked first (nothing recorded if refused), then promote."""
    client = client or mlflow_client()
    version = str(version)
    check_gates(client, name, version)
    _never_rejected(name, version, _version(client, name, version).tags or {})
    verify_signed(client, name, version)
    check_eligible(client, name, version, force)
    by = by or current_user()
    record_decision(name, version, APPROVED, by, client)
    return promote(name, version, by, client, force=force, reason=reason)


def reject(
    name: str, version: str | int, by: str | None = None, reason: str = "", client: MlflowClient | None = None
) -> dict[str, Any]:
    """Record a rejection; the version loses the challenger alias and is never deployed."""
    client = client or mlflow_client()
    version = str(version)
    if alias_version(client, name, CHAMPION) == version:
        raise PromotionError(f"{name} version {version} is the champion; use 'rtml rollback {name}' instead")
    out = record_decision(name, version, REJECTED, by, client, reason)
    if alias_version(client, name, CHALLENGER) == version:
        client.delete_registered_model_alias(name, CHALLENGER)
    _refresh_card(client, name, version)
    out["message"] = f"{name} version {version} rejected by {out['by']}; it will not be deployed"
    return out


def rollback(name: str, by: str | None = None, reason: str = "", client: MlflowClient | None = None) -> dict[str, Any]:
    """Move ``champion`` back to ``previous_champion`` (and ``previous_champion`` one step further back).

    Only to a version that passed every gate (signed), is approved and was never rejected.
    """
    client = client or mlflow_client()
    by = by or current_user()
    with promotion_guard(name, "rollback"):
        current = alias_version(client, name, CHAMPION)
        previous = alias_version(client, name, PREVIOUS)
        if previous is None:
            raise PromotionError(f"model {name!r} has no {PREVIOUS!r} alias: nothing to roll back to")
        if previous == current:
            raise PromotionError(f"{PREVIOUS!r} and {CHAMPION!r} of {name!r} are both version {current}")
        try:
            check_gates(client, name, previous)
            ptags = _version(client, name, previous).tags or {}
            _never_rejected(name, previous, ptags)
            if normalize_decision(ptags.get("approval")) != APPROVED:
                raise PromotionError(f"{name} version {previous} is no longer approved")
            verify_signed(client, name, previous)
        except PromotionError as err:
            raise PromotionError(f"cannot roll {name} back to version {previous}: {err}") from None
        at = _now()
        before = ptags.get("promoted.previous")
        entry = _log("rollback", name, previous, client, from_version=current, on_behalf_of=by,
                     reason=reason)  # before the alias moves
        with _applying(entry):
            client.set_registered_model_alias(name, CHAMPION, previous)
            # The version that was champion before `previous` was promoted becomes the next step back.
            if before and before not in (previous, current):
                client.set_registered_model_alias(name, PREVIOUS, before)
            else:
                client.delete_registered_model_alias(name, PREVIOUS)
            if current is not None:
                client.set_model_version_tag(name, current, "rolled_back.at", at)
                client.set_model_version_tag(name, current, "rolled_back.by", by)
                if reason:
                    client.set_model_version_tag(name, current, "rolled_back.reason", reason[:4900])
    if current is not None:
        audit(client, name, current, f"rolled back by {by} to version {previous}" + (f": {reason}" if reason else ""))
        _refresh_card(client, name, current)
    audit(client, name, previous, f"champion again after a rollback by {by} (from version {current})")
    return {
        "name": name,
        "version": previous,
        "rolled_back": current,
        "previous_champion": before if before and before not in (previous, current) else None,
        "by": by,
        "at": at,
        "audit_seq": entry["seq"],
        "message": f"{name}: champion rolled back from version {current} to {previous}",
    }
