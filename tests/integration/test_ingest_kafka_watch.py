"""The event-driven Kafka start against the REAL broker: the AssetWatcher's trigger, built as
rtml_ingest builds it and run as the triggerer runs it, fires on a fresh record (not on old ones),
reads with its own consumer group, and the ingest run it stands for takes every record once."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import pytest
import yaml

from rtml.ingest import produce as prod
from rtml.ingest.kafka import ensure_topic, topic_name, watch_trigger_kwargs
from rtml.ingest.produce import write_kafka
from rtml.lake import Lake
from rtml.platform.kafka import WATCH_CONN_ID, WATCH_GROUP, airflow_connection
from rtml.settings import EXAMPLE_SPEC, Settings, get_settings
from rtml.spec import load_spec

pytestmark = pytest.mark.integration


@pytest.fixture
def env(stack, tmp_path: Path, monkeypatch) -> Settings:
    """A dataset of its own (so its topics are new) on the session's broker, a local lake, Kafka as source."""
    broker = stack.ensure("kafka")
    data = yaml.safe_load(EXAMPLE_SPEC.read_text())
    data["dataset"]["name"] = f"watch_{uuid.uuid4().hex[:10]}"
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(data))
    for key, value in {"RTML_SPEC": str(spec_path), "RTML_SOURCE": "kafka", "RTML_STORAGE": "local",
                       "RTML_LAKE_URI": str(tmp_path / "lake"), "RTML_KAFKA_BOOTSTRAP": broker.kafka_bootstrap,
                       "RTML_INGEST_INTERVAL_MINUTES": "5"}.items():
        monkeypatch.setenv(key, value)
    settings = get_settings(refresh=True)
    # What `rtml stack up` gives Airflow (the triggerer reads the connection from this variable).
    monkeypatch.setenv(f"AIRFLOW_CONN_{WATCH_CONN_ID.upper()}", airflow_connection(settings))
    yield settings
    monkeypatch.undo()
    get_settings(refresh=True)


def _committed(settings: Settings, group: str, topic: str) -> int | None:
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": group})
    try:
        off = c.committed([TopicPartition(topic, 0)], timeout=30)[0].offset
    finally:
        c.close()
    return off if off >= 0 else None


def _start_watch_group_at_zero(settings: Settings, topic: str) -> None:
    # A watcher that ran before: its group resumes from its committed offset, so the test does
    # not depend on when the trigger's first "latest" lookup happens.
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": WATCH_GROUP})
    try:
        c.commit(offsets=[TopicPartition(topic, 0, 0)], asynchronous=False)
    finally:
        c.close()


def _send_old(settings: Settings, topic: str, values: list[bytes], age_seconds: float) -> None:
    from confluent_kafka import Producer

    p = Producer({"bootstrap.servers": settings.kafka_bootstrap})
    for v in values:
        p.produce(topic, value=v, partition=0, timestamp=int((time.time() - age_seconds) * 1000))
    assert p.flush(30) == 0


def _first_event(trigger_kwargs: dict, timeout: float = 90) -> dict:
    """One run of the trigger as the triggerer does it: deserialize, run to the first event, clean up."""
    from airflow.providers.apache.kafka.triggers.await_message import AwaitMessageTrigger
    from airflow.providers.common.compat.module_loading import import_string

    classpath, kwargs = AwaitMessageTrigger(**trigger_kwargs).serialize()
    trigger = import_string(classpath)(**kwargs)

    async def run() -> dict:
        try:
            async for event in trigger.run():
                return event.payload
            raise AssertionError("the trigger ended without an event")
        finally:
            await trigger.cleanup()  # closes the consumer: its offsets are committed then

    return asyncio.run(asyncio.wait_for(run(), timeout))


def test_the_watcher_signals_fresh_records_with_its_own_group_and_the_run_ingests_them(env: Settings):
    from rtml.ingest.batches import ingest_for_run

    spec = load_spec()
    ds = spec.dataset.name
    events, labels = topic_name(ds, "events"), topic_name(ds, "labels")
    for t in (events, labels):
        ensure_topic(t, partitions=1, settings=env)
        _start_watch_group_at_zero(env, t)
    kw = watch_trigger_kwargs(ds, env)
    max_age = kw["apply_function_kwargs"]["max_age_seconds"]

    # Two records older than one interval (garbage, as it happens), then five fresh events.
    _send_old(env, events, [b"\xff\xfe not json", b'{"half": '], age_seconds=2 * max_age)
    rows, _ = prod.build(spec, rows=5, seed=3)
    assert write_kafka(rows, events, spec.event_time, settings=env, key_column=spec.event_id) == 5

    payload = _first_event(kw)
    assert (payload["topic"], payload["partition"], payload["offset"]) == (events, 0, 2)  # old ones skimmed
    assert set(payload) == {"topic", "partition", "offset", "timestamp_ms", "bytes"}  # a position, no content
    # The watcher committed in its own group, just past the record it signalled; the ingest
    # group has not moved: the trigger read nothing on its behalf.
    assert _committed(env, WATCH_GROUP, events) == 3
    assert _committed(env, f"rtml-ingest.{events}", events) is None

    # The run the signal starts: the same stage function as a scheduled run (no interval).
    out = ingest_for_run("events", None, None, run_id="asset_triggered__test", settings=env)
    assert (out["source"], out["records_in"], out["accepted"], out["quarantined"]) == ("kafka", 7, 5, 2)
    lake = Lake(env)
    [manifest] = lake.manifests(ds, "events")
    assert manifest["source"]["first_offset"] == 0 and manifest["source"]["last_offset"] == 6
    assert manifest["records_in"] == manifest["accepted"] + manifest["quarantined"] == 7
    assert _committed(env, f"rtml-ingest.{events}", events) == 7
    assert _committed(env, WATCH_GROUP, events) == 3  # and the ingest did not move the watcher's

    # The triggerer restarts the trigger after each event (here in the same process, as there): it
    # resumes from its own offsets, takes the rest of the burst (sent before its signal, so the run
    # it started read them) without signalling, skims the stale label, and signals the new one.
    _send_old(env, labels, [b"{}"], age_seconds=2 * max_age)
    write_kafka(rows.head(1), labels, spec.event_time, settings=env)
    nxt = _first_event(kw)
    assert (nxt["topic"], nxt["offset"]) == (labels, 1)
    again = ingest_for_run("events", None, None, settings=env)
    assert again["records_in"] == 0  # nothing new: each record was ingested once


# --- the whole path in a real Airflow ----------------------------------------------------------------
@pytest.fixture
def kafka_airflow(stack, tmp_path_factory: pytest.TempPathFactory):
    """Airflow (and its MLflow) in a home of its own, parsed with RTML_SOURCE=kafka and a dataset of
    its own, on the session's broker (the session's Airflow is parsed for the landing zone)."""
    from rtml.platform.stack import Stack, free_port_block

    broker = stack.ensure("kafka")
    home = tmp_path_factory.mktemp("kafka-airflow")
    data = yaml.safe_load(EXAMPLE_SPEC.read_text())
    data["dataset"]["name"] = f"watch_{uuid.uuid4().hex[:10]}"
    spec_path = home / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(data))
    base = free_port_block(15)
    settings = Settings(home=home, storage="local", source="kafka", spec=spec_path, mlflow_port=base + 10,
                        airflow_port=base + 11, serve_port=base + 14, kafka_port=broker.kafka_port,
                        kafka_bootstrap=broker.kafka_bootstrap, mlflow_workers=1,
                        # One scheduled run (at unpause) and the next a day later: none races the signalled one.
                        ingest_interval_minutes=1440)
    st = Stack(settings)
    try:
        st.up(["airflow"], timeout=400)
        yield settings
    finally:
        st.down()


def test_a_record_on_the_topic_starts_an_ingest_run_in_airflow(kafka_airflow: Settings):
    from confluent_kafka.admin import AdminClient

    from rtml.platform.airflow import AirflowClient

    s = kafka_airflow
    spec = load_spec(s.spec)
    ds = spec.dataset.name
    for kind in ("events", "labels"):
        ensure_topic(topic_name(ds, kind), partitions=1, settings=s)
    with AirflowClient(s) as api:
        api.wait_dag("rtml_ingest", timeout=180)
        api.unpause("rtml_ingest")  # a paused DAG's watchers do not run
        deadline = time.monotonic() + 180
        while True:  # the scheduled run of the latest interval, created at unpause, is over
            runs = api.get("/api/v2/dags/rtml_ingest/dagRuns").json()["dag_runs"]
            if any(r["run_type"] == "scheduled" for r in runs) and all(
                    r["state"] in ("success", "failed") for r in runs):
                break
            assert time.monotonic() < deadline, f"the scheduled run did not finish: {runs}"
            time.sleep(1)
        # The DAG processor registers the watcher, the triggerer starts it and it joins its group.
        admin = AdminClient({"bootstrap.servers": s.kafka_bootstrap})
        deadline = time.monotonic() + 180
        while True:
            try:
                g = admin.describe_consumer_groups([WATCH_GROUP])[WATCH_GROUP].result(timeout=10)
                if any(tp.topic == topic_name(ds, "events") for m in g.members for tp in m.assignment.topic_partitions):
                    break
            except Exception:  # noqa: BLE001 - the group coordinator is still loading
                pass
            assert time.monotonic() < deadline, "the watcher never joined its consumer group"
            time.sleep(1)
        before = {r["dag_run_id"] for r in api.get("/api/v2/dags/rtml_ingest/dagRuns").json()["dag_runs"]}

        rows, _ = prod.build(spec, rows=40, seed=9)
        assert write_kafka(rows, topic_name(ds, "events"), spec.event_time, settings=s, key_column=spec.event_id) == 40
        deadline = time.monotonic() + 180
        while True:
            runs = api.get("/api/v2/dags/rtml_ingest/dagRuns").json()["dag_runs"]
            done = [r for r in runs if r["dag_run_id"] not in before and r["run_type"] == "asset_triggered"
                    and r["state"] in ("success", "failed")]
            if done:
                break
            assert time.monotonic() < deadline, f"no asset-triggered run finished: {runs}"
            time.sleep(1)
        run = done[0]
        assert run["state"] == "success", api.explain("rtml_ingest", run["dag_run_id"])
        states = {t["task_id"]: t["state"] for t in api.task_instances("rtml_ingest", run["dag_run_id"])}
        assert states == {"ingest_events": "success", "ingest_labels": "skipped"}
        events = api.get("/api/v2/assets/events", params={"limit": 50}).json()["asset_events"]
        signals = [e for e in events if e["uri"] == f"rtml://{ds}/kafka-arrivals"]
        assert signals and signals[0]["extra"]["from_trigger"] is True
        assert signals[0]["extra"]["payload"]["topic"] == topic_name(ds, "events")
    # Exactly once: one batch with every record, the ingest group's offset at the end of the topic.
    [manifest] = Lake(s).manifests(ds, "events")
    assert (manifest["records_in"], manifest["accepted"]) == (40, 40)
    assert _committed(s, f"rtml-ingest.{topic_name(ds, 'events')}", topic_name(ds, "events")) == 40
