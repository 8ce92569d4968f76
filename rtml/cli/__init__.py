"""The ``rtml`` command line: one entry point, one verb per stage.

One module here per stage (``rtml.cli.ingest``, ``rtml.cli.train`` ...) registers that stage's verbs
through ``add_commands(subparsers)`` and calls the stage's plain functions; a handler returns a
JSON-able dict (printed as JSON with ``--json``) or raises ``CLIError`` for a clear, non-zero exit.
The CLI imports the stages, never the reverse; heavy imports stay inside functions, so
``rtml --help`` stays fast. ``rtml.cli.demo`` drives the whole loop as a user would.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

# The modules that contribute verbs, in the order of the loop.
COMMAND_MODULES = [
    "rtml.cli.stack",
    "rtml.cli.produce",
    "rtml.cli.ingest",
    "rtml.cli.train",
    "rtml.cli.evaluate",
    "rtml.cli.promote",
    "rtml.cli.audit",
    "rtml.cli.serve",
    "rtml.cli.shadow",
    "rtml.cli.monitor",
    "rtml.cli.lake",
    "rtml.cli.demo",
]


class CLIError(Exception):
    """An error meant for the user: printed without a traceback, exit code 2 by default."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


def load_spec_arg(path: str | None) -> Any:
    """The project spec named on the command line (None: the settings' spec), or a clean CLI error."""
    from rtml.spec import SpecError, load_spec

    try:
        return load_spec(path)
    except SpecError as err:
        raise CLIError(str(err)) from None


def parse_time(value: str | None, flag: str) -> datetime | None:
    """An ISO 8601 time from the command line (UTC when it names no zone), or a clean CLI error."""
    if value is None:
        return None
    try:
        t = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise CLIError(f"{flag}: not an ISO 8601 time: {value!r}") from None
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


def add_json_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print the result as JSON (for machines)")


def command(
    sub: argparse._SubParsersAction, name: str, func: Callable[[argparse.Namespace], Any], help: str, **kw: Any
) -> argparse.ArgumentParser:
    """Add a verb whose handler is ``func(args) -> dict | str | None``."""
    p = sub.add_parser(name, help=help, description=help, **kw)
    add_json_flag(p)
    p.set_defaults(func=func)
    return p


def _human(result: Any) -> str:
    if isinstance(result, str):
        return result
    if isinstance(result, dict):
        if "message" in result and isinstance(result["message"], str):
            return result["message"]
        width = max((len(str(k)) for k in result), default=0)
        return "\n".join(f"{k:<{width}}  {v}" for k, v in result.items())
    return json.dumps(result, indent=2, default=str)


# --- rtml spec ---------------------------------------------------------------------------------
def _spec_check(args: argparse.Namespace) -> dict[str, Any]:
    spec = load_spec_arg(args.spec)
    return {
        "message": f"{args.spec}: OK ({spec.name}: {len(spec.features)} features, target {spec.target.name}, "
        f"{len(spec.sensitive)} sensitive attribute(s), schema {spec.schema_hash()})",
        "ok": True,
        "name": spec.name,
        "features": spec.feature_names,
        "target": spec.target.name,
        "sensitive": [s.name for s in spec.sensitive],
        "schema_hash": spec.schema_hash(),
    }


def _add_spec_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("spec", help="check a project spec", description="Project spec tools.")
    spec_sub = p.add_subparsers(dest="spec_command", required=True, metavar="{check}")
    c = command(spec_sub, "check", _spec_check, "validate a project spec and print a summary")
    c.add_argument("spec", help="path to the project spec YAML")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rtml",
        description="rtml: real-time ML on Airflow + MLflow (ingest, train, gate, approve, serve, monitor).",
    )
    from rtml import __version__

    parser.add_argument("--version", action="version", version=f"rtml {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="VERB")
    _add_spec_commands(sub)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name == name:  # a stage not built yet
                continue
            raise
        add = getattr(module, "add_commands", None)
        if add is not None:
            add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result = args.func(args)
    except CLIError as err:
        if getattr(args, "json", False):
            print(json.dumps({"ok": False, "error": str(err)}))
        else:
            print(f"rtml: error: {err}", file=sys.stderr)
        return err.code
    except ValidationError as err:
        if err.title != "Settings":
            raise
        # RTML_* variables refused by the settings: each named, no traceback.
        msg = "; ".join(f"RTML_{'_'.join(map(str, e['loc'])).upper()}: {e['msg']}" for e in err.errors())
        if getattr(args, "json", False):
            print(json.dumps({"ok": False, "error": f"settings: {msg}"}))
        else:
            print(f"rtml: error: settings: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    if result is None:
        return 0
    if getattr(args, "json", False):
        print(json.dumps(result, indent=2, default=str))
    else:
        print(_human(result))
    if isinstance(result, dict) and result.get("ok") is False:
        return 1
    return 0
