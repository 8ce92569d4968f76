"""A backfill next to the scheduler's own runs, in the REAL Airflow: the scheduler stays up.

``rtml_ingest`` is unpaused, so the scheduler creates the run of the latest complete interval
itself; the demo's backfill is asked for a range that includes that interval and the ones after
it. It must cover only the earlier intervals (never a run the scheduler creates), and the
scheduler must still be the same process, heartbeating, afterwards.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from rtml.cli.demo import backfill_ingest, wait_idle
from rtml.platform.stack import Stack

pytestmark = pytest.mark.integration


def _scheduler_heartbeat(settings) -> datetime | None:
    health = httpx.get(f"{settings.airflow_url}/api/v2/monitor/health", timeout=10).json()
    beat = (health.get("scheduler") or {}).get("latest_scheduler_heartbeat")
    return datetime.fromisoformat(beat) if beat else None


def test_backfill_up_to_now_leaves_the_latest_interval_to_the_scheduler(airflow_settings, airflow_api):
    minutes = airflow_settings.ingest_interval_minutes
    step = timedelta(minutes=minutes)
    scheduler = Stack(airflow_settings).programs()["airflow-scheduler"]
    airflow_api.wait_dag("rtml_ingest")
    airflow_api.unpause("rtml_ingest")
    try:
        now = datetime.now(UTC)
        boundary = datetime.fromtimestamp(int(now.timestamp()) // (minutes * 60) * (minutes * 60), tz=UTC)
        # Ask for two intervals before the latest complete one, that one, and the open one after it.
        runs = backfill_ingest(airflow_api, boundary - 3 * step, boundary + step, minutes, timeout=600)
        starts = sorted(datetime.fromisoformat(r["data_interval_start"].replace("Z", "+00:00")) for r in runs)
        latest_start = boundary - step
        # The clock may have crossed a boundary since `now`: the latest interval only moves later.
        assert starts and all(s < latest_start for s in starts), starts
        assert starts[0] == boundary - 3 * step
        assert all(r["state"] == "success" for r in runs), runs

        # The scheduler creates the latest interval's run itself, and is still the same live process.
        deadline = time.monotonic() + 120
        while True:
            listed = airflow_api.get(
                "/api/v2/dags/rtml_ingest/dagRuns", params={"run_type": "scheduled", "limit": 50}
            ).json()["dag_runs"]
            scheduled = {datetime.fromisoformat(r["data_interval_start"].replace("Z", "+00:00")) for r in listed}
            if any(s >= latest_start for s in scheduled):
                break
            assert time.monotonic() < deadline, f"no scheduled run from {latest_start} on: {scheduled}"
            time.sleep(2)
        assert not scheduled & set(starts)  # no interval was run by both
        after = Stack(airflow_settings).programs()["airflow-scheduler"]
        assert after["pid"] == scheduler["pid"] and after["restarts"] == scheduler["restarts"]
        checked = datetime.now(UTC)
        deadline = time.monotonic() + 60
        while not ((beat := _scheduler_heartbeat(airflow_settings)) and beat > checked - timedelta(seconds=1)):
            assert time.monotonic() < deadline, f"scheduler heartbeat stale: {beat}"
            time.sleep(1)
        # Let the scheduler's own run finish before other tests use the lake.
        wait_idle(airflow_api, "rtml_ingest", timeout=300)
    finally:
        airflow_api.pause("rtml_ingest")
