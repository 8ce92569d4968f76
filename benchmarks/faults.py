"""Fault injection: every fault of issue 10 against a real local stack; one line per fault and a total.

    python benchmarks/faults.py [--outage 30] [--only store-outage,redis-restart] [--keep]

Starts its own stack (SeaweedFS, MLflow, Airflow; a temporary RTML_HOME and free ports, like the test
session) and a redis-server of its own (append-only file, restarted by one fault), then runs the
scenarios of ``tests/support/faults.py``, the same code ``tests/integration/test_faults.py`` asserts:

- the ingest worker killed after the batch's data write / after its manifest (before the Redis ack),
  with the landing zone and with a Redis stream;
- the object store (SeaweedFS, SIGSTOP) unreachable for ``--outage`` seconds mid-batch;
- Redis killed and restarted between a batch's manifest and its ack;
- MLflow stopped during training (before the model is logged): no version, lake untouched, one
  version after the retry;
- the Airflow scheduler killed while an ``rtml_ingest`` run is running; the supervisor restarts it.

Each line: records produced = accepted + quarantined as a reader of the lake sees them (by event id),
lost and duplicated counts, the time the fault and its recovery took. Exit status 1 if any fault lost
or duplicated a record, or its scenario failed.

The fault helpers live under tests/support (not in the rtml package): they drive services the way
tests do (SIGSTOP, a crash hook, patched store writes) and are no API a user should call.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from support.faults import FAULTS, Census, FaultResult, RedisServer, run_fault  # noqa: E402
from support.stack import use_session_env  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--outage", type=float, default=30.0, help="seconds the object store is unreachable")
    ap.add_argument("--only", help=f"comma-separated faults (default all): {', '.join(FAULTS)}")
    ap.add_argument("--keep", action="store_true", help="keep the temporary home (logs of every service)")
    args = ap.parse_args()
    chosen = args.only.split(",") if args.only else list(FAULTS)
    unknown = set(chosen) - set(FAULTS)
    if unknown:
        ap.error(f"unknown fault(s) {sorted(unknown)}; choose from {', '.join(FAULTS)}")

    from support.stack import TestStack

    from rtml.settings import get_settings

    home = Path(tempfile.mkdtemp(prefix="rtml-faults-"))
    use_session_env(home)  # the test session's environment: a temp home, free ports
    settings = get_settings(refresh=True)
    stack = TestStack(settings)
    redis = RedisServer(home / "redis")
    api = None
    results: list[FaultResult] = []
    try:
        t = time.monotonic()
        service = "airflow" if "scheduler-killed" in chosen else "mlflow" if "mlflow-down" in chosen else "s3"
        stack.ensure(service, timeout=600)
        redis.start()
        print(f"stack up ({service} and what it needs) in {time.monotonic() - t:.0f}s; home {home}", flush=True)
        if service == "airflow":
            from rtml.platform.airflow import AirflowClient

            api = AirflowClient(settings)
        for name in chosen:
            t = time.monotonic()
            try:
                result = run_fault(name, settings, redis, api, outage_seconds=args.outage)
            except Exception as err:  # noqa: BLE001 - one failed scenario is reported, the others run
                traceback.print_exc()
                result = FaultResult(name, Census(0, 0, 0, 0, 0, 0, inconsistent=["scenario failed"]),
                                     time.monotonic() - t, f"{type(err).__name__}: {str(err)[:300]}")
            results.append(result)
            print(result.line(), flush=True)
    finally:
        if api is not None:
            api.close()
        redis.stop()
        left = stack.close()
        if left:
            print(f"processes left running: {left}", file=sys.stderr)
        if not args.keep:
            shutil.rmtree(home, ignore_errors=True)
    produced = sum(r.census.produced for r in results)
    accepted = sum(r.census.accepted for r in results)
    quarantined = sum(r.census.quarantined for r in results)
    lost = sum(r.census.lost for r in results)
    dup = sum(r.census.duplicated for r in results)
    ok = sum(r.ok for r in results)
    print(f"{'total: ' + str(len(results)) + ' faults':<38} in {produced:>4} = {accepted:>4} accepted + {quarantined:>3} "
          f"quarantined  lost {lost}  duplicated {dup}  {ok}/{len(results)} conserved  "
          f"{sum(r.seconds for r in results):6.1f}s")
    return 0 if ok == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
