"""``rtml`` verbs of :mod:`rtml.monitor.live`: argument parsing and printing only; the work is done there."""

from __future__ import annotations

import argparse
from typing import Any

from rtml.monitor.live import monitor
from rtml.settings import get_settings


def _cmd_monitor(args: argparse.Namespace) -> dict[str, Any]:
    from rtml.cli import load_spec_arg

    return monitor(load_spec_arg(args.spec), get_settings(), window_hours=args.window_hours)


def add_commands(sub: argparse._SubParsersAction) -> None:
    from rtml.cli import command

    p = command(sub, "monitor", _cmd_monitor, "check live drift, performance and fairness of the served model")
    p.add_argument("spec", nargs="?", default=None, help="project spec (default: RTML_SPEC)")
    p.add_argument("--window-hours", type=float, default=24.0, help="how far back to look (default 24)")
