"""``rtml`` verbs of :mod:`rtml.ingest.batches`: argument parsing and printing only; the work is done there."""

from __future__ import annotations

import argparse
from typing import Any

from rtml.ingest.batches import ingest_run
from rtml.settings import get_settings


def _cmd_ingest(args: argparse.Namespace) -> dict[str, Any]:
    from rtml.cli import CLIError, parse_time
    from rtml.spec import SpecError

    settings = get_settings()
    if args.lake:
        settings = settings.model_copy(update={"lake_uri": args.lake})
    start, end = parse_time(args.start, "--start"), parse_time(args.end, "--end")
    if (start is None) != (end is None):
        raise CLIError("--start and --end go together (the data interval [start, end))")
    if start is not None and end is not None and end <= start:
        raise CLIError("--end must be after --start")
    kinds = ["events", "labels"] if args.kind == "both" else [args.kind]
    if args.stream and len(kinds) > 1:
        raise CLIError("--stream names one stream: give --kind events or --kind labels with it")
    try:
        return ingest_run(
            kinds,
            start,
            end,
            spec_path=args.spec,
            source=args.source,
            settings=settings,
            landing_uri=args.landing,
            stream=args.stream,
            group=args.group,
            max_records=args.max_records,
            max_batches=args.max_batches,
            claim_idle_ms=args.claim_idle_ms,
            max_wait=args.max_wait,
        )
    except SpecError as err:
        raise CLIError(str(err)) from None
    except ValueError as err:
        raise CLIError(str(err)) from None


def add_commands(sub: argparse._SubParsersAction) -> None:
    from rtml.cli import command

    p = command(sub, "ingest", _cmd_ingest, "ingest one micro-batch (landing interval or stream offsets) into the lake")
    p.add_argument("spec", nargs="?", default=None, help="project spec YAML (default: RTML_SPEC / the example)")
    p.add_argument("--kind", choices=["events", "labels", "both"], default="both")
    p.add_argument("--source", choices=["landing", "redis", "kafka"], default=None, help="default: RTML_SOURCE")
    p.add_argument("--start", help="landing: data interval start (ISO 8601, UTC if no offset)")
    p.add_argument("--end", help="landing: data interval end (exclusive); default: the last complete interval")
    p.add_argument("--lake", help="lake URI (default: RTML_LAKE_URI)")
    p.add_argument("--landing", help="landing-zone store URI (default: the lake's store, prefix landing/)")
    p.add_argument("--stream", help="redis: stream key (default rtml:<dataset>:<kind>), kafka: topic "
                   "(default rtml.<dataset>.<kind>); needs one --kind")
    p.add_argument("--group", help="redis/kafka: consumer group (default rtml-ingest)")
    p.add_argument("--max-records", type=int, default=100_000, help="redis/kafka: records per batch")
    p.add_argument("--max-batches", type=int, default=10, help="redis/kafka: batches per call")
    p.add_argument("--claim-idle-ms", type=int, default=0, help="redis: re-claim pending entries idle this long")
    p.add_argument("--max-wait", type=float, default=None, help="kafka: seconds to read one batch (default 10)")
