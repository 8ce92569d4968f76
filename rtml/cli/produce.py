"""``rtml`` verbs of :mod:`rtml.ingest.produce`: argument parsing and printing only; the work is done there."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime, timedelta
from typing import Any

from rtml.ingest.produce import GroupShift, produce
from rtml.settings import get_settings


def _cmd_produce(args: argparse.Namespace) -> dict[str, Any]:
    from rtml.cli import CLIError, load_spec_arg, parse_time

    spec = load_spec_arg(args.spec)
    settings = get_settings()
    if args.lake:
        settings = settings.model_copy(update={"lake_uri": args.lake})
    start = parse_time(args.start, "--start")
    if not args.rate > 0:  # checked here too: the default start below divides by it (--rate 0 crashed)
        raise CLIError(f"--rate must be positive, got {args.rate:g}")
    if start is None:
        if args.realtime:
            start = datetime.now(UTC)
        else:
            # A replay that ends about now, so it falls inside the training window.
            n = args.rows or 4454
            start = (datetime.now(UTC) - timedelta(seconds=n / args.rate)).replace(second=0, microsecond=0)
    try:
        return produce(
            spec,
            to=args.to,
            fmt=args.format,
            file_seconds=args.file_seconds,
            labels=not args.no_labels,
            realtime=args.realtime,
            settings=settings,
            landing_uri=args.landing,
            stream_prefix=args.stream_prefix,
            maxlen=args.maxlen,
            rows=args.rows,
            start=start,
            rate=args.rate,
            seed=args.seed,
            drift_from=parse_time(args.drift_from, "--drift-from"),
            drift_features=[f for f in (args.drift_features or "").split(",") if f],
            drift_factor=args.drift_factor,
            group_shift=GroupShift.parse(args.group_shift) if args.group_shift else None,
            label_delay=args.label_delay,
            label_fraction=args.label_fraction,
            bad_fraction=args.bad_fraction,
        )
    except ValueError as err:
        raise CLIError(str(err)) from None


def add_commands(sub: argparse._SubParsersAction) -> None:
    from rtml.cli import command

    p = command(sub, "produce", _cmd_produce, "replay the spec's dataset as an event stream (landing files or Redis)")
    p.add_argument("spec", nargs="?", default=None, help="project spec YAML (default: RTML_SPEC / the example)")
    p.add_argument("--to", choices=["landing", "redis", "kafka"], default="landing")
    p.add_argument("--format", choices=["jsonl", "csv", "parquet"], default="jsonl", help="landing file format")
    p.add_argument("--rows", type=int, default=None, help="events to emit (default: the table once; more cycles it)")
    p.add_argument("--start", help="first event time (ISO 8601; default: so that the replay ends now)")
    p.add_argument("--rate", type=float, default=1.0, help="events per second of event time")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--file-seconds", type=float, default=60.0, help="landing: one file per this many seconds")
    p.add_argument("--drift-from", help="scenario start time (ISO 8601) for drift and group shift")
    p.add_argument("--drift-features", help="comma-separated features to drift, e.g. Income,Amount")
    p.add_argument("--drift-factor", type=float, default=1.5)
    p.add_argument("--group-shift", help="COLUMN=VALUE:SHARE, e.g. Marital=single:0.6")
    p.add_argument("--label-delay", type=float, default=600.0, help="seconds from event to its label")
    p.add_argument("--label-fraction", type=float, default=1.0, help="share of events that get a label")
    p.add_argument("--no-labels", action="store_true", help="emit events only")
    p.add_argument("--bad-fraction", type=float, default=0.0, help="share of deliberately broken events")
    p.add_argument("--realtime", action="store_true", help="pace writes to the wall clock")
    p.add_argument("--lake", help="lake URI (the landing zone lives in its store)")
    p.add_argument("--landing", help="landing-zone store URI (default: the lake's store)")
    p.add_argument("--stream-prefix", default="rtml",
                   help="redis: streams are PREFIX:<dataset>:<kind>; kafka: topics are PREFIX.<dataset>.<kind>")
    p.add_argument("--maxlen", type=int, default=None,
                   help="redis: keep about this many entries, trimming only entries every consumer group acknowledged")
