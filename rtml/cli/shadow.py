"""``rtml`` verbs of :mod:`rtml.monitor.shadow`: argument parsing and printing only; the work is done there."""

from __future__ import annotations

import argparse
from typing import Any

from rtml.monitor.shadow import compare
from rtml.settings import get_settings


def _cmd_shadow(args: argparse.Namespace) -> dict[str, Any]:
    from rtml.cli import load_spec_arg

    return compare(load_spec_arg(args.spec), get_settings(), version=args.version)


def add_commands(sub: argparse._SubParsersAction) -> None:
    from rtml.cli import command

    p = command(sub, "shadow", _cmd_shadow,
                "compare the challenger's shadow answers on live traffic with the champion's (model card)")
    p.add_argument("spec", nargs="?", default=None, help="project spec (default: RTML_SPEC)")
    p.add_argument("--version", default=None, help="model version (default: the challenger)")
