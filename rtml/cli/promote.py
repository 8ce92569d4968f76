"""``rtml`` verbs of :mod:`rtml.registry.promotion`: argument parsing and printing only; the work is done there."""

from __future__ import annotations

import argparse
from typing import Any

from rtml.registry.promotion import PromotionError, approve, reject, rollback


def _notify_endpoint(args: argparse.Namespace, result: dict[str, Any]) -> None:
    """Best effort: ask the serving endpoint to follow the alias now (it also polls on its own)."""
    if getattr(args, "no_reload", False):
        return
    from rtml.serve.client import request_reload

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
    if args.force and not args.reason:
        from rtml.cli import CLIError

        raise CLIError("--force needs --reason: a forced promotion is recorded with why")
    out = _guard(approve, args.name, args.version, args.by, force=args.force, reason=args.reason)
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
    p.add_argument("--force", action="store_true",
                   help="promote even if it is not the current challenger or not newer than the champion (recorded)")
    p.add_argument("--reason", default="", help="why (required with --force; recorded)")
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
