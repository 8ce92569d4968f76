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


class _Airflow:
    """An Airflow client stand-in that records pauses, unpauses and triggers in order, and ends each
    triggered run in the next of ``states``."""

    def __init__(self, states=("success",)):
        self.calls: list[tuple[str, str]] = []
        self.states = list(states)

    def pause(self, dag_id):
        self.calls.append(("pause", dag_id))

    def unpause(self, dag_id):
        self.calls.append(("unpause", dag_id))

    def trigger(self, dag_id, conf=None):
        self.calls.append(("trigger", dag_id))
        return f"manual-{len(self.calls)}"

    def wait(self, dag_id, run_id, timeout=300):
        return self.states.pop(0) if len(self.states) > 1 else self.states[0]

    def explain(self, dag_id, run_id):
        return f"why {run_id} failed"


def _kafka_demo(monkeypatch, lags, states=("success",)):
    """ingest_from_kafka with the replay, the waits and the group lag faked; ``lags`` are the total
    lags the ingest groups report in turn (per check of both topics)."""
    from rtml.cli import demo
    from rtml.ingest import kafka

    af = _Airflow(states)
    left = list(lags)

    def replay(spec, settings, rows=None, start=None, to="landing"):
        af.calls.append(("replay", to))
        return {"message": "produced", "interval": ["2026-01-01T00:00:00+00:00", "2026-01-01T00:10:00+00:00"],
                "event_topic": "rtml.d.events", "label_topic": "rtml.d.labels"}

    def group_lag(topic, group=None, settings=None):
        # Both topics are asked each round: the round's lag goes to the events topic.
        return (left.pop(0) if len(left) > 1 else left[0]) if topic.endswith("events") else 0

    monkeypatch.setattr(demo, "replay", replay)
    monkeypatch.setattr(demo, "wait_idle", lambda af_, dag_id, timeout=600: af.calls.append(("idle", dag_id)))
    monkeypatch.setattr(kafka, "group_lag", group_lag)
    return demo, af


def test_kafka_replay_is_produced_while_ingestion_is_paused_then_read_by_the_schedulers_run(monkeypatch):
    demo, af = _kafka_demo(monkeypatch, lags=[0])
    produced, runs = demo.ingest_from_kafka(af, spec=None, settings=None)
    assert runs == 0 and produced["event_topic"] == "rtml.d.events"
    # Paused before the replay (its watcher would start a run on the first records), unpaused after.
    assert af.calls.index(("pause", "rtml_ingest")) < af.calls.index(("replay", "kafka"))
    assert af.calls.index(("replay", "kafka")) < af.calls.index(("unpause", "rtml_ingest"))
    assert not [c for c in af.calls if c[0] == "trigger"]  # nothing left: no manual run
    assert af.calls[-1] == ("idle", "rtml_ingest")


def test_kafka_records_left_are_read_by_triggered_runs_until_the_groups_lag_no_more(monkeypatch):
    demo, af = _kafka_demo(monkeypatch, lags=[700, 200, 0])
    _, runs = demo.ingest_from_kafka(af, spec=None, settings=None)
    assert runs == 2
    assert [c for c in af.calls if c[0] == "trigger"] == [("trigger", "rtml_ingest")] * 2
    assert af.calls[-1] == ("idle", "rtml_ingest")


def test_kafka_ingestion_that_never_drains_is_named(monkeypatch):
    demo, af = _kafka_demo(monkeypatch, lags=[5])
    with pytest.raises(RuntimeError, match=r"5 record\(s\) of rtml.d.events, rtml.d.labels still not ingested after 4"):
        demo.ingest_from_kafka(af, spec=None, settings=None, max_runs=4)


def test_kafka_failed_ingestion_run_is_explained(monkeypatch):
    demo, af = _kafka_demo(monkeypatch, lags=[5], states=("failed",))
    with pytest.raises(RuntimeError, match="ended failed:\nwhy manual-"):
        demo.ingest_from_kafka(af, spec=None, settings=None)


def _landing_demo(monkeypatch, states=("success",)):
    from rtml.cli import demo

    af = _Airflow(states)
    monkeypatch.setattr(demo, "wait_idle", lambda af_, dag_id, timeout=600: af.calls.append(("idle", dag_id)))
    return demo, af


def test_the_replay_is_swept_by_one_triggered_run_whatever_the_scheduler_ran_before(monkeypatch):
    """One run takes all of it: the batches never depend on which run the scheduler started first."""
    demo, af = _landing_demo(monkeypatch)
    run_id = demo.sweep_landing(af, REPLAY_START + timedelta(minutes=10), 5, now=T)
    assert af.calls == [("trigger", "rtml_ingest"), ("idle", "rtml_ingest")]
    assert run_id == "manual-1"


@pytest.mark.parametrize("now", [REPLAY_START + timedelta(minutes=9, seconds=59), REPLAY_START + timedelta(minutes=5)])
def test_a_replay_no_run_may_take_whole_yet_is_refused_before_any_run(monkeypatch, now):
    demo, af = _landing_demo(monkeypatch)
    with pytest.raises(ValueError, match="earlier --start"):
        demo.sweep_landing(af, REPLAY_START + timedelta(minutes=10), 5, now=now)
    assert af.calls == []


def test_a_failed_sweep_is_explained(monkeypatch):
    demo, af = _landing_demo(monkeypatch, states=("failed",))
    with pytest.raises(RuntimeError, match="ended failed:\nwhy manual-1"):
        demo.sweep_landing(af, REPLAY_START + timedelta(minutes=10), 5, now=T)
