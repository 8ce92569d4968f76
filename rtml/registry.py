"""Approval, promotion and rollback of model versions in the MLflow registry.

A person decides in the MLflow UI: on the model version page (Models -> NAME -> Version N), under
"Tags", add the tag ``approval`` with value ``approved`` (or ``rejected``), optionally ``approval.by``
with their name. The promotion DAG waits for that tag; ``rtml approve NAME VERSION`` does the same
from a terminal. Promotion is refused unless every gate tag (``gate.quality``, ``gate.fairness``,
``gate.drift``, ``gate.decision``) is ``passed``.

Aliases: ``champion`` (what the endpoint serves), ``previous_champion`` (where ``rollback`` goes),
``challenger`` (the version waiting for a decision; removed when it is promoted or rejected).
Each decision is recorded as tags on the version (``approval``, ``approval.by``, ``approval.at``,
``promoted.*``, ``rolled_back.*``) and as a dated line appended to its description (the audit
trail the MLflow UI shows).
"""

from __future__ import annotations

import argparse
import getpass
import os
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from rtml.settings import Settings

GATE_TAGS = ("gate.quality", "gate.fairness", "gate.drift", "gate.decision")
CHAMPION, PREVIOUS, CHALLENGER = "champion", "previous_champion", "challenger"
APPROVED, REJECTED = "approved", "rejected"
AUDIT_MARK = "[rtml]"


class PromotionError(RuntimeError):
    """A promotion, decision or rollback that must not happen; the message says why."""


def mlflow_client(settings: Settings | None = None) -> MlflowClient:
    from mlflow import MlflowClient

    from rtml.settings import get_settings

    s = settings or get_settings()
    return MlflowClient(tracking_uri=s.mlflow_tracking_uri, registry_uri=s.mlflow_tracking_uri)


def current_user() -> str:
    """Who is acting: the MLflow user when auth is on, else the OS user."""
    return os.environ.get("MLFLOW_TRACKING_USERNAME") or getpass.getuser()


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _version(client: MlflowClient, name: str, version: str | int):
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version(name, str(version))
    except MlflowException as err:
        raise PromotionError(f"model {name!r} has no version {version}: {err.message}") from None


def alias_version(client: MlflowClient, name: str, alias: str) -> str | None:
    """The version an alias points to, or None when the alias (or the model) does not exist."""
    from mlflow.exceptions import MlflowException

    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


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


def normalize_decision(value: Any) -> str | None:
    v = str(value or "").strip().lower()
    if v in (APPROVED, "approve", "yes"):
        return APPROVED
    if v in (REJECTED, "reject", "no"):
        return REJECTED
    return None


def audit(client: MlflowClient, name: str, version: str | int, line: str) -> None:
    """Append a dated line to the version's description (shown on its page in the MLflow UI)."""
    mv = _version(client, name, version)
    text = (mv.description or "").rstrip()
    entry = f"{AUDIT_MARK} {_now()} {line}"
    client.update_model_version(name, str(version), description=f"{text}\n\n{entry}" if text else entry)


def audit_trail(client: MlflowClient, name: str, version: str | int) -> list[str]:
    desc = _version(client, name, version).description or ""
    return [ln.strip() for ln in desc.splitlines() if ln.strip().startswith(AUDIT_MARK)]


def record_decision(
    name: str, version: str | int, decision: str, by: str | None = None, client: MlflowClient | None = None,
    reason: str = "",
) -> dict[str, Any]:
    """Record a person's decision as tags (what the UI path sets by hand) plus an audit line."""
    client = client or mlflow_client()
    decision = normalize_decision(decision) or ""
    if decision not in (APPROVED, REJECTED):
        raise PromotionError(f"decision must be {APPROVED!r} or {REJECTED!r}")
    version = str(version)
    _version(client, name, version)
    by = by or current_user()
    at = _now()
    client.set_model_version_tag(name, version, "approval", decision)
    client.set_model_version_tag(name, version, "approval.by", by)
    client.set_model_version_tag(name, version, "approval.at", at)
    if reason:
        client.set_model_version_tag(name, version, "approval.reason", reason[:4900])
    audit(client, name, version, f"{decision} by {by}" + (f": {reason}" if reason else ""))
    return {"name": name, "version": version, "decision": decision, "by": by, "at": at}


def promote(
    name: str, version: str | int, approver: str | None = None, client: MlflowClient | None = None
) -> dict[str, Any]:
    """Make ``version`` the champion (after checking its gates); the old champion becomes previous.

    Refused when a gate did not pass or the version was rejected. Idempotent: promoting the
    current champion changes nothing. The challenger alias is removed from the promoted version.
    """
    client = client or mlflow_client()
    version = str(version)
    check_gates(client, name, version)
    mv = _version(client, name, version)
    tags = mv.tags or {}
    if normalize_decision(tags.get("approval")) == REJECTED:
        raise PromotionError(
            f"{name} version {version} was rejected by {tags.get('approval.by', 'someone')} at "
            f"{tags.get('approval.at', '?')}; approve it first to promote it"
        )
    approver = approver or tags.get("approval.by") or current_user()
    old = alias_version(client, name, CHAMPION)
    result: dict[str, Any] = {"name": name, "version": version, "previous_champion": old, "approver": approver}
    if old == version:
        result.update(changed=False, message=f"{name} version {version} is already the champion")
        return result
    at = _now()
    if normalize_decision(tags.get("approval")) != APPROVED:
        client.set_model_version_tag(name, version, "approval", APPROVED)
        client.set_model_version_tag(name, version, "approval.at", at)
    if tags.get("approval.by") != approver:
        client.set_model_version_tag(name, version, "approval.by", approver)
    # previous_champion first: if we stop half-way, champion still names a served version.
    if old is not None:
        client.set_registered_model_alias(name, PREVIOUS, old)
        client.set_model_version_tag(name, version, "promoted.previous", old)
    client.set_registered_model_alias(name, CHAMPION, version)
    client.set_model_version_tag(name, version, "promoted.at", at)
    client.set_model_version_tag(name, version, "promoted.by", approver)
    if alias_version(client, name, CHALLENGER) == version:
        client.delete_registered_model_alias(name, CHALLENGER)
    audit(client, name, version, f"promoted to champion, approved by {approver} (previous champion: {old or 'none'})")
    if old is not None:
        audit(client, name, old, f"replaced as champion by version {version} (approved by {approver})")
    result.update(changed=True, at=at, message=f"{name} version {version} is now the champion (was {old or 'none'})")
    return result


def approve(name: str, version: str | int, by: str | None = None, client: MlflowClient | None = None) -> dict[str, Any]:
    """A person's approval from the CLI: gates checked first (nothing recorded if refused), then promote."""
    client = client or mlflow_client()
    check_gates(client, name, version)
    by = by or current_user()
    record_decision(name, version, APPROVED, by, client)
    return promote(name, version, by, client)


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
    out["message"] = f"{name} version {version} rejected by {out['by']}; it will not be deployed"
    return out


def rollback(name: str, by: str | None = None, reason: str = "", client: MlflowClient | None = None) -> dict[str, Any]:
    """Move ``champion`` back to ``previous_champion`` (and ``previous_champion`` one step further back)."""
    client = client or mlflow_client()
    by = by or current_user()
    current = alias_version(client, name, CHAMPION)
    previous = alias_version(client, name, PREVIOUS)
    if previous is None:
        raise PromotionError(f"model {name!r} has no {PREVIOUS!r} alias: nothing to roll back to")
    if previous == current:
        raise PromotionError(f"{PREVIOUS!r} and {CHAMPION!r} of {name!r} are both version {current}")
    at = _now()
    client.set_registered_model_alias(name, CHAMPION, previous)
    # The version that was champion before `previous` was promoted becomes the next step back.
    before = (_version(client, name, previous).tags or {}).get("promoted.previous")
    if before and before not in (previous, current):
        client.set_registered_model_alias(name, PREVIOUS, before)
    else:
        client.delete_registered_model_alias(name, PREVIOUS)
    if current is not None:
        client.set_model_version_tag(name, current, "rolled_back.at", at)
        client.set_model_version_tag(name, current, "rolled_back.by", by)
        if reason:
            client.set_model_version_tag(name, current, "rolled_back.reason", reason[:4900])
        audit(client, name, current, f"rolled back by {by} to version {previous}" + (f": {reason}" if reason else ""))
    audit(client, name, previous, f"champion again after a rollback by {by} (from version {current})")
    return {
        "name": name,
        "version": previous,
        "rolled_back": current,
        "previous_champion": before if before and before not in (previous, current) else None,
        "by": by,
        "at": at,
        "message": f"{name}: champion rolled back from version {current} to {previous}",
    }


# --- CLI ---------------------------------------------------------------------------------------------
def _notify_endpoint(args: argparse.Namespace, result: dict[str, Any]) -> None:
    """Best effort: ask the serving endpoint to follow the alias now (it also polls on its own)."""
    if getattr(args, "no_reload", False):
        return
    from rtml.serve import request_reload

    try:
        status = request_reload(args.url, timeout=60)
        result["endpoint_version"] = status.get("version")
        result["message"] += f"; the endpoint serves version {status.get('version')}"
    except Exception as err:  # noqa: BLE001 - the endpoint may not run here; its poller catches up
        result["endpoint"] = f"not notified ({type(err).__name__}); it picks up the alias at its next poll"


def _guard(fn, *a, **kw) -> dict[str, Any]:
    from rtml.cli import CLIError

    try:
        return fn(*a, **kw)
    except PromotionError as err:
        raise CLIError(str(err)) from None


def _approve_cmd(args: argparse.Namespace) -> dict[str, Any]:
    out = _guard(approve, args.name, args.version, args.by)
    _notify_endpoint(args, out)
    return out


def _reject_cmd(args: argparse.Namespace) -> dict[str, Any]:
    return _guard(reject, args.name, args.version, args.by, args.reason)


def _rollback_cmd(args: argparse.Namespace) -> dict[str, Any]:
    out = _guard(rollback, args.name, args.by, args.reason)
    _notify_endpoint(args, out)
    return out


def add_commands(sub: argparse._SubParsersAction) -> None:
    from rtml.cli import command

    def common(p: argparse.ArgumentParser, endpoint: bool) -> None:
        p.add_argument("--by", default=None, help="who decides (default: MLFLOW_TRACKING_USERNAME or the OS user)")
        if endpoint:
            p.add_argument("--url", default=None, help="serving endpoint to notify (default: RTML_SERVE_URL)")
            p.add_argument("--no-reload", action="store_true", help="do not notify the serving endpoint")

    p = command(sub, "approve", _approve_cmd, "approve a model version and promote it to champion (gates must pass)")
    p.add_argument("name", help="registered model name")
    p.add_argument("version", help="model version")
    common(p, endpoint=True)
    p = command(sub, "reject", _reject_cmd, "reject a model version: it is never deployed")
    p.add_argument("name", help="registered model name")
    p.add_argument("version", help="model version")
    p.add_argument("--reason", default="", help="why (recorded on the version)")
    common(p, endpoint=False)
    p = command(sub, "rollback", _rollback_cmd, "move champion back to previous_champion")
    p.add_argument("name", help="registered model name")
    p.add_argument("--reason", default="", help="why (recorded on the version)")
    common(p, endpoint=True)
