"""``rtml`` verbs of :mod:`rtml.serve`: argument parsing and printing only; the work is done there."""

from __future__ import annotations

import argparse
import os
from typing import Any

from rtml.serve.app import run
from rtml.serve.client import request_reload
from rtml.serve.server import ServeConfig
from rtml.serve.validation import DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_RECORDS


def _serve_cmd(args: argparse.Namespace) -> None:
    # MLflow's client retries a dead server for minutes by default: the poller would hold an I/O
    # thread that long, and so would a shutdown. Keep its retries short (the poller tries again).
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    from rtml.settings import get_settings

    cfg = ServeConfig.from_settings(
        get_settings(),
        poll_seconds=args.poll_seconds,
        max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms,
        max_body_bytes=args.max_body_bytes,
        max_records=args.max_records,
        log_flush_seconds=args.log_flush_seconds,
        shadow=not args.no_shadow,
    )
    run(args.host, args.port, args.spec, args.model, cfg)


def _reload_cmd(args: argparse.Namespace) -> dict[str, Any]:
    from rtml.cli import CLIError

    try:
        out = request_reload(args.url)
    except Exception as err:  # noqa: BLE001
        raise CLIError(f"cannot reach the serving endpoint: {err}") from None
    out["message"] = f"serving version {out.get('version')} (swapped: {out.get('swapped')})"
    if out.get("last_error"):
        out["message"] += f"; last load failure: {out['last_error']}"
    return out


def add_commands(sub: argparse._SubParsersAction) -> None:
    from rtml.cli import command

    env = os.environ.get
    p = command(sub, "serve", _serve_cmd, "run the scoring endpoint for the champion model (uvicorn)")
    p.add_argument("--host", default=None, help="bind address (default: RTML_SERVE_HOST)")
    p.add_argument("--port", type=int, default=None, help="port (default: RTML_SERVE_PORT)")
    p.add_argument("--spec", default=None, help="project spec (default: RTML_SPEC)")
    p.add_argument("--model", default=None, help="registered model name (default: the spec's)")
    p.add_argument("--poll-seconds", type=float, default=float(env("RTML_SERVE_POLL_SECONDS", "5")),
                   help="how often to check the champion alias")
    p.add_argument("--max-batch", type=int, default=64, help="rows per model call at most")
    p.add_argument("--max-wait-ms", type=float, default=2.0, help="how long a micro-batch may wait to fill")
    p.add_argument("--max-body-bytes", type=int, default=DEFAULT_MAX_BODY_BYTES, help="largest request body")
    p.add_argument("--max-records", type=int, default=DEFAULT_MAX_RECORDS, help="most records per request")
    p.add_argument("--log-flush-seconds", type=float, default=2.0, help="prediction log flush interval")
    p.add_argument("--no-shadow", action="store_true", help="do not shadow-score the challenger")
    r = command(sub, "serve-reload", _reload_cmd, "tell the scoring endpoint to follow the champion alias now")
    r.add_argument("--url", default=None, help="endpoint URL (default: RTML_SERVE_URL)")
