"""``rtml`` verbs of :mod:`rtml.registry.audit`: argument parsing and printing only; the work is done there."""

from __future__ import annotations

import argparse
from typing import Any

from rtml.registry.audit import entries, verify


def _verify_cmd(args: argparse.Namespace) -> dict[str, Any]:
    anchors = None
    unchecked = ""
    if not args.no_registry:
        try:
            import httpx

            from rtml.registry.audit import registry_anchors
            from rtml.registry.client import mlflow_client
            from rtml.settings import get_settings

            # A quick probe first: MLflow's client retries an absent server for minutes.
            httpx.get(get_settings().mlflow_tracking_uri.rstrip("/") + "/health", timeout=3).raise_for_status()
            anchors = registry_anchors(mlflow_client())
        except Exception as err:  # noqa: BLE001 - the chain is still checked; say what was not
            unchecked = f"registry anchors NOT checked (MLflow: {type(err).__name__}: {str(err)[:200]})"
    result = verify(anchors=anchors)
    if unchecked:
        result["message"] += f"\n{unchecked}"
    return result  # "ok": False makes the exit code 1


def _show_cmd(args: argparse.Namespace) -> dict[str, Any]:
    rows = entries()
    if args.model:
        rows = [e for e in rows if e.get("model") == args.model]
    if args.version:
        rows = [e for e in rows if args.version in (e.get("version"), e.get("from_version"))]
    rows = rows[-args.limit:] if args.limit else rows
    lines = [
        f"{e.get('seq'):>5} {e.get('at')} {e.get('action'):<10} {e.get('model')} v{e.get('version')}"
        + (f" (from v{e['from_version']})" if e.get("from_version") else "")
        + f" by {e.get('actor')}" + (f" for {e['on_behalf_of']}" if e.get("on_behalf_of") else "")
        + (f": {e['reason']}" if e.get("reason") else "")
        for e in rows
    ]
    return {"entries": rows, "message": "\n".join(lines) or "the decision log is empty"}


def _keygen_cmd(args: argparse.Namespace) -> dict[str, Any]:
    from pathlib import Path

    from rtml.cli import CLIError
    from rtml.registry.signing import _generate

    out = Path(args.dir).expanduser().resolve()
    priv, pub = out / "gate_signing.key", out / "gate_signing.pub"
    if priv.exists() or pub.exists():
        raise CLIError(f"{out} already holds a gate key: remove it first if you mean to replace it")
    _generate(priv, pub)
    return {"private_key": str(priv), "public_key": str(pub),
            "message": f"GATE_SIGNING_KEY_PATH={priv}\nGATE_PUBLIC_KEY_PATH={pub}\n"
                       "(the private key only on the evaluating side: the Airflow worker)"}


def add_commands(sub: argparse._SubParsersAction) -> None:
    from rtml.cli import command

    p = sub.add_parser("audit", help="the decision log (gates, approvals, promotions, rollbacks, reloads)",
                       description="The append-only, hash-chained decision log in the lake.")
    asub = p.add_subparsers(dest="audit_command", required=True, metavar="{verify,show,keygen}")
    c = command(asub, "verify", _verify_cmd,
                "check the decision log: any edited entry, gap, broken link or cut tail (registry anchors) fails")
    c.add_argument("--no-registry", action="store_true",
                   help="check the chain only (not the anchors on model versions in MLflow)")
    c = command(asub, "show", _show_cmd, "print the decision log")
    c.add_argument("--model", default=None, help="only this registered model")
    c.add_argument("--version", default=None, help="only this version (as the version or the from-version)")
    c.add_argument("--limit", type=int, default=50, help="the last N entries (0: all)")
    c = command(asub, "keygen", _keygen_cmd, "generate the Ed25519 key pair that signs gate results (for compose secrets)")
    c.add_argument("dir", help="folder for gate_signing.key (private, mode 0600) and gate_signing.pub")
