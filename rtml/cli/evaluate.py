"""``rtml`` verbs of :mod:`rtml.evaluate.gates`: argument parsing and printing only; the work is done there."""

from __future__ import annotations

import argparse
from typing import Any

from rtml.cli import CLIError, command
from rtml.evaluate.gates import evaluate


def _cmd_evaluate(args: argparse.Namespace) -> dict[str, Any]:
    from rtml.cli import load_spec_arg

    spec = load_spec_arg(args.spec)
    try:
        result = evaluate(spec, args.version)
    except ValueError as err:
        raise CLIError(str(err)) from None
    return result


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = command(
        sub,
        "evaluate",
        _cmd_evaluate,
        "run the quality, fairness and drift gates on a registered version; passing -> alias challenger",
    )
    p.add_argument("spec", help="path to the project spec YAML")
    p.add_argument("--version", required=True, help="the registered model version to evaluate")
