"""The demo's replay and backfill arithmetic: fixed by its inputs, never by the clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest

from rtml.cli.demo import REPLAY_START, backfill_range, replay_interval

T = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)


def test_replay_interval_covers_every_event_and_label_in_whole_intervals():
    first, end = replay_interval(REPLAY_START, 4454, 5)
    assert first == REPLAY_START
    # last event at 445.3 s, its label 60 s later: two 5-minute intervals
    assert end == REPLAY_START + timedelta(minutes=10)
    assert replay_interval(REPLAY_START, 1, 5) == (REPLAY_START, REPLAY_START + timedelta(minutes=5))
    # a start inside an interval still yields whole intervals
    odd = REPLAY_START + timedelta(minutes=2, seconds=30)
    assert replay_interval(odd, 10, 5) == (REPLAY_START, REPLAY_START + timedelta(minutes=5))


@pytest.mark.parametrize(
    "now",
    [T, T + timedelta(seconds=1), T + timedelta(minutes=4, seconds=59), T + timedelta(minutes=5) - timedelta(microseconds=1)],
)
def test_backfill_never_covers_the_interval_the_scheduler_runs_itself(now):
    # Latest complete interval at `now` is [T-5m, T): the scheduler (catchup=False) creates it.
    start, end = backfill_range(T - timedelta(hours=1), T + timedelta(minutes=30), now, 5)
    assert start == T - timedelta(hours=1)
    assert end == T - timedelta(minutes=5)


def test_backfill_far_in_the_past_is_untouched():
    start, end = backfill_range(REPLAY_START, REPLAY_START + timedelta(minutes=10), T, 5)
    assert (start, end) == (REPLAY_START, REPLAY_START + timedelta(minutes=10))


def test_backfill_with_nothing_before_the_latest_interval_is_refused():
    with pytest.raises(ValueError, match="scheduler runs itself"):
        backfill_range(T - timedelta(minutes=5), T, T + timedelta(seconds=30), 5)



class _Runs:
    """An Airflow REST stand-in for dagRuns queries: scripted counts of the scheduler's own runs and
    of active runs (each query takes the next count; the last one repeats)."""

    def __init__(self, scheduled, active):
        self.counts = {"scheduled": list(scheduled), "active": list(active)}
        self.calls: list[str] = []

    def get(self, url, params=None):
        kind = "scheduled" if "run_type" in params else "active"
        self.calls.append(kind)
        counts = self.counts[kind]
        total = counts.pop(0) if len(counts) > 1 else counts[0]
        return SimpleNamespace(raise_for_status=lambda: None, json=lambda: {"total_entries": total})


def test_wait_scheduled_waits_for_the_schedulers_own_run_to_exist_then_finish(monkeypatch):
    """Right after unpausing, nothing is active yet: that alone must not count as done."""
    from rtml.cli import demo

    monkeypatch.setattr(demo.time, "sleep", lambda s: None)
    af = _Runs(scheduled=[0, 0, 1], active=[1, 1, 0])
    demo.wait_scheduled(af, "rtml_ingest")
    assert af.calls == ["scheduled", "scheduled", "scheduled", "active", "active", "active"]


def test_wait_scheduled_names_the_dag_when_no_run_comes(monkeypatch):
    from rtml.cli import demo

    clock = iter(range(0, 10_000, 100))
    monkeypatch.setattr(demo.time, "sleep", lambda s: None)
    monkeypatch.setattr(demo.time, "monotonic", lambda: next(clock))
    with pytest.raises(TimeoutError, match="rtml_ingest"):
        demo.wait_scheduled(_Runs(scheduled=[0], active=[0]), "rtml_ingest", timeout=300)
