"""The demo's replay and backfill arithmetic: fixed by its inputs, never by the clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

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
