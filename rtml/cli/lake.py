"""``rtml lake`` verbs of :mod:`rtml.tables`: ``migrate`` (a file lake into Iceberg tables) and
``maintain`` (compaction and snapshot expiry); argument parsing and printing only."""

from __future__ import annotations

import argparse
import math
from typing import Any

from rtml.settings import get_settings


def _cmd_migrate(args: argparse.Namespace) -> dict[str, Any]:
    from rtml.migration import migrate
    from rtml.tables import TableError

    settings = get_settings()
    if args.lake:
        settings = settings.model_copy(update={"lake_uri": args.lake})
    try:
        return migrate(settings, datasets=args.dataset or None, kinds=tuple(args.kind) if args.kind else None,
                       dry_run=args.dry_run)
    except TableError as err:
        from rtml.cli import CLIError

        raise CLIError(f"lake migrate: {err}", code=1) from None


def _cmd_maintain(args: argparse.Namespace) -> dict[str, Any]:
    from rtml.cli import CLIError
    from rtml.tables import TableError, maintain

    settings = get_settings()
    if args.older_than_hours is not None and not (math.isfinite(args.older_than_hours) and args.older_than_hours >= 0):
        raise CLIError(f"--older-than-hours must be a finite number >= 0, got {args.older_than_hours}")
    if args.retain_last is not None and args.retain_last < 1:
        raise CLIError(f"--retain-last must be at least 1 (the current snapshot), got {args.retain_last}")
    if args.min_files < 2:
        raise CLIError(f"--min-files must be at least 2, got {args.min_files}")
    try:
        return maintain(settings, older_than_hours=args.older_than_hours, retain_last=args.retain_last,
                        min_files=args.min_files)
    except TableError as err:
        raise CLIError(f"lake maintain: {err}", code=1) from None


def add_commands(sub: argparse._SubParsersAction) -> None:
    from rtml.cli import command
    from rtml.lake import KINDS
    from rtml.tables import COMPACT_MIN_FILES

    p = sub.add_parser("lake", help="lake tools: migrate to Iceberg tables, maintain the tables",
                       description="Lake tools (rtml.tables).")
    lake_sub = p.add_subparsers(dest="lake_command", required=True, metavar="{migrate,maintain}")
    m = command(lake_sub, "migrate", _cmd_migrate,
                "move a file lake's batches (Parquet listed by manifests) into Iceberg tables, batch by batch; "
                "resumable, checks row counts per batch")
    m.add_argument("--lake", help="lake URI (default: RTML_LAKE_URI)")
    m.add_argument("--dataset", action="append", help="only this dataset (repeatable; default: every dataset)")
    m.add_argument("--kind", action="append", choices=KINDS, help="only this kind (repeatable; default: all)")
    m.add_argument("--dry-run", action="store_true", help="print what would be migrated; change nothing")
    t = command(lake_sub, "maintain", _cmd_maintain,
                "compact days of many small data files and expire old snapshots of every table")
    t.add_argument("--older-than-hours", type=float, default=None,
                   help="expire snapshots older than this (default: RTML_TABLE_SNAPSHOT_RETENTION_DAYS x 24)")
    t.add_argument("--retain-last", type=int, default=None,
                   help="always keep this many newest snapshots (default: RTML_TABLE_SNAPSHOT_RETAIN_LAST)")
    t.add_argument("--min-files", type=int, default=COMPACT_MIN_FILES,
                   help=f"compact a day with at least this many small files (default {COMPACT_MIN_FILES})")
