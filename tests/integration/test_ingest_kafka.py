"""Ingestion from a REAL Kafka broker (the session stack's KRaft broker on loopback): offsets
committed only after the manifest, crash + retry, dead letters, conservation, hostile values, gaps."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
from support.lake import batch_state

from rtml.ingest import produce as prod
from rtml.ingest.batches import ingest_kafka
from rtml.ingest.kafka import KafkaSource, batch_id_for_offsets, ensure_topic, group_lag, state_key
from rtml.ingest.produce import write_kafka
from rtml.lake import Lake
from rtml.settings import Settings
from rtml.spec import load_spec

pytestmark = pytest.mark.integration

SPEC = load_spec()
DS = SPEC.dataset.name
T0 = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def broker(stack) -> Settings:
    return stack.ensure("kafka")


@pytest.fixture
def settings(broker: Settings, tmp_path: Path) -> Settings:
    return Settings(storage="local", home=tmp_path, lake_uri=str(tmp_path / "lake"),
                    kafka_bootstrap=broker.kafka_bootstrap)


@pytest.fixture
def topic(settings) -> str:
    name = f"rtml-test.{uuid.uuid4().hex}.events"
    ensure_topic(name, partitions=1, settings=settings)
    return name


def group_of(topic: str) -> str:
    return f"g-{topic}"


def send(settings: Settings, topic: str, rows: int, seed: int = 1) -> None:
    events, _ = prod.build(SPEC, rows=rows, start=T0, seed=seed)
    write_kafka(events, topic, SPEC.event_time, settings=settings, key_column=SPEC.event_id)


def send_raw(settings: Settings, topic: str, values: list[bytes | None], partition: int = 0) -> None:
    from confluent_kafka import Producer

    p = Producer({"bootstrap.servers": settings.kafka_bootstrap})
    for v in values:
        p.produce(topic, value=v, partition=partition)
    assert p.flush(30) == 0


def committed(settings: Settings, topic: str, partition: int = 0) -> int | None:
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": group_of(topic)})
    try:
        off = c.committed([TopicPartition(topic, partition)], timeout=30)[0].offset
    finally:
        c.close()
    return off if off >= 0 else None


def ingest(settings, topic, **kw):
    kw.setdefault("max_batches", 20)
    return ingest_kafka(SPEC, "events", settings=settings, lake=Lake(settings), topic=topic, group=group_of(topic), **kw)


def test_batches_conserve_and_commit_offsets_only_after_manifest(settings, topic):
    send(settings, topic, 250)
    send_raw(settings, topic, [b'{"event_id": "broken', json.dumps({"event_id": "big", "blob": "x" * 70_000}).encode()])
    lake = Lake(settings)
    res = ingest(settings, topic, max_records=100)
    assert len(res["batches"]) == 3 and res["records_in"] == 252
    assert res["accepted"] == 250 and res["quarantined"] == 2
    assert {"malformed JSON", "oversized record"} <= set(res["reasons"])
    assert committed(settings, topic) == 252
    manifests = lake.manifests(DS, "events")
    covered: list[int] = []
    for m in manifests:
        assert m["records_in"] == m["accepted"] + m["quarantined"]
        src = m["source"]
        assert src["type"] == "kafka" and src["topic"] == topic and src["group"] == group_of(topic)
        assert src["last_offset"] - src["first_offset"] + 1 == src["count"] == m["records_in"]
        assert m["batch_id"].endswith(f"-p0000-{src['first_offset']:015d}-{src['last_offset']:015d}")
        covered.extend(range(src["first_offset"], src["last_offset"] + 1))
    assert covered == list(range(252))  # every offset in exactly one batch
    events = lake.read_batches(DS, "events")
    assert len(events) == 250 and events[SPEC.event_id].is_unique
    # The attempt record is gone once everything is committed; nothing new: no batch.
    assert not lake.store.exists(state_key(DS, "events", group_of(topic), topic))
    again = ingest(settings, topic)
    assert again["batches"] == [] and len(lake.manifests(DS, "events")) == 3


def _cli(settings, tmp_path, topic, crash_at: str | None, max_records: int = 50) -> subprocess.CompletedProcess:
    env = {**os.environ, "RTML_STORAGE": "local", "RTML_HOME": str(tmp_path), "RTML_LAKE_URI": settings.lake_uri,
           "RTML_KAFKA_BOOTSTRAP": settings.kafka_bootstrap}
    env.pop("RTML_TEST_CRASH_AFTER_WRITE", None)
    if crash_at:
        env["RTML_TEST_CRASH_AFTER_WRITE"] = crash_at
    cmd = [sys.executable, "-m", "rtml.cli", "ingest", "--source", "kafka", "--kind", "events", "--stream", topic,
           "--group", group_of(topic), "--max-records", str(max_records), "--max-batches", "10", "--json"]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)


@pytest.mark.parametrize("crash_at", ["1", "data"])
def test_crash_between_lake_commit_and_offset_commit_is_exactly_once(settings, topic, tmp_path, crash_at):
    send(settings, topic, 120)
    crashed = _cli(settings, tmp_path, topic, crash_at)
    assert crashed.returncode == 75, crashed.stderr  # died inside the first batch, before the offset commit
    lake = Lake(settings)
    assert committed(settings, topic) is None
    before = lake.manifests(DS, "events")
    if crash_at == "1":
        assert len(before) == 1 and before[0]["accepted"] == 50
        state = batch_state(lake, DS, "events", before[0]["batch_id"], SPEC.event_id)
    else:
        assert before == []  # data written, no manifest: invisible

    ok = _cli(settings, tmp_path, topic, None)
    assert ok.returncode == 0, ok.stderr
    summary = json.loads(ok.stdout)["events"]
    assert summary["records_in"] == 120 and summary["accepted"] == 120
    first = summary["batches"][0]
    assert first["source"]["redelivered"] is True and first["records_in"] == 50
    assert (first["source"]["first_offset"], first["source"]["last_offset"]) == (0, 49)
    if crash_at == "1":
        # The retry rewrote the same batch: same id, same counts, same rows.
        assert first["batch_id"] == before[0]["batch_id"]
        assert batch_state(Lake(settings), DS, "events", first["batch_id"], SPEC.event_id) == state
    assert committed(settings, topic) == 120
    events = lake.read_batches(DS, "events")
    assert len(events) == 120 and events[SPEC.event_id].is_unique
    assert sum(m["records_in"] for m in lake.manifests(DS, "events")) == 120


def _failed_attempt(settings, topic, max_records: int) -> tuple[int, int] | None:
    """One ingestion attempt that died after reading (no commit): the records come back next time."""
    from rtml.ingest.contract import Contract

    lake = Lake(settings)
    src = KafkaSource(topic, lake.store, state_key(DS, "events", group_of(topic), topic), group=group_of(topic),
                      settings=settings, max_records=max_records, max_deliveries=SPEC.ingestion.max_deliveries)
    try:
        batch = src.read(Contract(SPEC))
    finally:
        src.close()
    return (batch.position["first_offset"], batch.position["last_offset"]) if batch else None


def test_poison_records_become_dead_letters_and_the_partition_moves_on(settings, topic):
    send(settings, topic, 8)
    # Attempts keep dying: the first retry takes the batch whole, later ones half of it per failure.
    assert _failed_attempt(settings, topic, 8) == (0, 7)
    assert _failed_attempt(settings, topic, 8) == (0, 7)
    assert _failed_attempt(settings, topic, 8) == (0, 3)
    lake = Lake(settings)
    res = ingest(settings, topic, max_records=8)
    # The four records delivered 3 times (ingestion.max_deliveries) are dead letters; the rest goes on.
    assert (res["records_in"], res["accepted"], res["quarantined"]) == (8, 4, 4)
    assert res["reasons"] == {"dead letter": 4} and res["dead_letters"] == 4
    assert committed(settings, topic) == 8
    m = lake.manifests(DS, "events")[0]
    assert m["source"]["dead_offsets"] == [0, 1, 2, 3]
    items = [json.loads(x) for x in lake.store.get(m["quarantine"]).decode().splitlines()]
    assert [i["reasons"][0] for i in items] == ["dead letter: delivered 3 times without being committed "
                                                 "(ingestion.max_deliveries=3)"] * 4
    assert [i["source"] for i in items] == [f"{topic}[0]@{k}" for k in range(4)]
    assert all(json.loads(i["raw"])["event_id"] for i in items)  # the value is kept for a replay
    # Not wedged: new records flow.
    send(settings, topic, 5, seed=8)
    more = ingest(settings, topic)
    assert more["accepted"] == 5 and committed(settings, topic) == 13


GOOD = ('{"event_id":"ev-h-%d","application_id":"app-h-%d","event_time":"2026-11-25T12:00:00.000000Z","Seniority":12,'
        '"Home":"owner","Time":60,"Age":34,"Marital":"married","Records":"no","Job":"fixed","Expenses":35,'
        '"Income":187.0,"Assets":6000.0,"Debt":2000.0,"Amount":%s,"Price":1457}')


def good_with(k: int, amount: str) -> bytes:
    return (GOOD % (k, k, amount)).encode()


# Complete records with one hostile part, and values that are not records at all.
HOSTILE: list[tuple[bytes | None, str]] = [
    (b"\xff\xfe" + good_with(1, "500"), "malformed JSON: invalid UTF-8 at byte 0"),
    (good_with(2, "500").replace(b'"fixed"', b'"fix\xc3"'), "malformed JSON: invalid UTF-8"),
    (good_with(3, "500").replace(b'"fixed"', b'"\\ud800"'), "invalid text: lone UTF-16 surrogate in Job"),
    (good_with(4, "500").replace(b'"ev-h-4"', b'"ev-h-4\\udfff"'), "invalid text: lone UTF-16 surrogate in event_id"),
    (good_with(5, "1e999999"), "Amount"),
    (good_with(6, "9" * 5000), "Amount"),
    (good_with(7, "NaN"), "Amount"),
    (good_with(8, '{"a": [NaN]}'), "Amount"),
    (b"[" * 5000 + b"]" * 5000, "malformed JSON: nested too deeply"),
    (b"[1, 2]", "not a JSON object"),
    (b"", "malformed JSON: empty record"),
    (None, "malformed JSON: empty record"),  # a tombstone
    (b"\x00\x01\x02binary", "malformed JSON"),
]


def test_hostile_values_are_quarantined_with_a_reason_and_nothing_is_lost(settings, topic):
    send(settings, topic, 20, seed=3)
    send_raw(settings, topic, [v for v, _ in HOSTILE])
    send(settings, topic, 10, seed=4)
    lake = Lake(settings)
    res = ingest(settings, topic, max_records=1000)
    n = 30 + len(HOSTILE)
    assert res["records_in"] == n and res["accepted"] == 30 and res["quarantined"] == len(HOSTILE)
    assert committed(settings, topic) == n
    (m,) = lake.manifests(DS, "events")
    items = {i["source"]: i for i in map(json.loads, lake.store.get(m["quarantine"]).decode().splitlines())}
    assert len(items) == len(HOSTILE)
    for k, (_, reason) in enumerate(HOSTILE):
        item = items[f"{topic}[0]@{20 + k}"]
        assert item["reasons"] and all(r.strip() for r in item["reasons"])
        assert reason in item["reasons"][0], (k, item["reasons"])  # names the problem (or the field)
    events = lake.read_batches(DS, "events")
    assert len(events) == 30 and events[SPEC.event_id].is_unique


def test_every_partition_is_read_exactly_once(settings):
    topic = f"rtml-test.{uuid.uuid4().hex}.events"
    ensure_topic(topic, partitions=3, settings=settings)
    send(settings, topic, 150, seed=6)  # keyed by event id: spread over the partitions
    lake = Lake(settings)
    res = ingest(settings, topic, max_records=20)
    assert res["records_in"] == res["accepted"] == 150
    seen = {}
    for m in lake.manifests(DS, "events"):
        src = m["source"]
        assert m["batch_id"] == batch_id_for_offsets(topic, src["partition"], src["first_offset"], src["last_offset"],
                                                     _first_ms(settings, topic, src["partition"], src["first_offset"]))
        seen.setdefault(src["partition"], []).extend(range(src["first_offset"], src["last_offset"] + 1))
    assert len(seen) == 3
    for p, offsets in seen.items():
        assert sorted(offsets) == list(range(committed(settings, topic, p)))
    assert sum(len(v) for v in seen.values()) == 150
    assert lake.read_batches(DS, "events")[SPEC.event_id].is_unique


def test_group_lag_counts_the_records_the_ingest_group_has_not_committed(settings):
    """What ``rtml demo`` waits on: every partition's records past the ingest group's offset (the
    group ingest_kafka uses by default), 0 only once ingestion committed everything."""
    topic = f"rtml-test.{uuid.uuid4().hex}.events"
    ensure_topic(topic, partitions=3, settings=settings)
    assert group_lag(topic, settings=settings) == 0
    send(settings, topic, 60, seed=8)
    assert group_lag(topic, settings=settings) == 60  # nothing committed yet: all of it
    lake = Lake(settings)
    first = ingest_kafka(SPEC, "events", settings=settings, lake=lake, topic=topic, max_records=15, max_batches=1)
    assert first["records_in"] == 15
    assert group_lag(topic, settings=settings) == 45
    # Another group's offsets are its own.
    assert group_lag(topic, group=f"other-{topic}", settings=settings) == 60
    rest = ingest_kafka(SPEC, "events", settings=settings, lake=lake, topic=topic, max_batches=20)
    assert rest["records_in"] == 45
    assert group_lag(topic, settings=settings) == 0


def _first_ms(settings, topic, partition, offset) -> int:
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": f"peek-{uuid.uuid4().hex}"})
    try:
        c.assign([TopicPartition(topic, partition, offset)])
        m = c.poll(30)
        assert m is not None and m.error() is None and m.offset() == offset
        return m.timestamp()[1]
    finally:
        c.close()


def test_records_deleted_before_being_committed_are_reported_as_a_gap(settings, topic):
    from confluent_kafka import TopicPartition
    from confluent_kafka.admin import AdminClient

    send(settings, topic, 20)
    first = ingest(settings, topic, max_records=5, max_batches=1)
    assert first["accepted"] == 5
    assert _failed_attempt(settings, topic, 5) == (5, 9)  # read, never committed
    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap})
    fut = admin.delete_records([TopicPartition(topic, 0, 15)])  # retention takes offsets 0..14
    for f in fut.values():
        f.result(30)
    res = ingest(settings, topic)
    assert res["accepted"] == 5 and committed(settings, topic) == 20
    (gap,) = res["gaps"]
    assert (gap["lost_pending"], gap["lost_unread"]) == (5, 5)
    assert any(a.startswith(f"kafka gap in {topic}[0]: 5 unread and 5 read but uncommitted") for a in res["alerts"])
    assert json.loads(Lake(settings).store.get(gap["record"]))["before_offset"] == 15
    send(settings, topic, 3, seed=9)
    assert "gaps" not in ingest(settings, topic)  # reported once
