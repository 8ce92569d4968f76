"""Ingestion from a REAL Redis stream (127.0.0.1:6379): acks after the manifest, crash + retry."""

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
from rtml.ingest.batches import ingest_stream
from rtml.ingest.sources import batch_id_for_ids, redis_client
from rtml.lake import Lake
from rtml.settings import Settings
from rtml.spec import load_spec

pytestmark = pytest.mark.integration

SPEC = load_spec()
DS = SPEC.dataset.name
T0 = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
GROUP = "rtml-ingest-test"


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(storage="local", home=tmp_path, lake_uri=str(tmp_path / "lake"))


@pytest.fixture
def stream(settings):
    client = redis_client(settings)
    try:
        client.ping()
    except Exception as err:  # noqa: BLE001
        pytest.fail(f"Redis on {settings.redis_url} is required for this test: {err}")
    key = f"rtml-test:{uuid.uuid4().hex}:events"
    yield key
    client.delete(key)


def send(settings: Settings, stream: str, rows: int, seed: int = 1) -> None:
    events, _ = prod.build(SPEC, rows=rows, start=T0, seed=seed)
    prod.write_redis(events, stream, SPEC.event_time, settings=settings)


def pending(settings: Settings, stream: str) -> int:
    return int(redis_client(settings).xpending(stream, GROUP)["pending"])


def test_batches_conserve_and_ack_only_after_manifest(settings, stream):
    send(settings, stream, 250)
    r = redis_client(settings)
    r.xadd(stream, {"data": b'{"event_id": "broken'})  # malformed JSON
    r.xadd(stream, {"event_id": "flat-1", "Age": "40"})  # flat fields, most of them missing
    r.xadd(stream, {"data": json.dumps({"event_id": "big", "blob": "x" * 70_000})})  # oversized
    lake = Lake(settings)
    res = ingest_stream(SPEC, "events", settings=settings, lake=lake, stream=stream, group=GROUP,
                        max_records=100, max_batches=10)
    assert len(res["batches"]) == 3 and res["records_in"] == 253
    assert res["accepted"] == 250 and res["quarantined"] == 3
    assert {"malformed JSON", "missing field", "oversized record"} <= set(res["reasons"])
    assert pending(settings, stream) == 0
    group = next(g for g in r.xinfo_groups(stream) if g["name"].decode() == GROUP)
    assert group["lag"] == 0
    manifests = lake.manifests(DS, "events")
    assert len(manifests) == 3
    ids = [i.decode() for i, _ in r.xrange(stream)]
    covered = []
    for m in manifests:
        assert m["records_in"] == m["accepted"] + m["quarantined"]
        src = m["source"]
        assert src["type"] == "redis" and src["stream"] == stream and src["group"] == GROUP
        first, last = ids.index(src["first_id"]), ids.index(src["last_id"])
        assert last - first + 1 == src["count"] == m["records_in"]
        covered.extend(ids[first : last + 1])
        assert m["batch_id"] == batch_id_for_ids(src["first_id"], src["last_id"])
    assert covered == ids  # every entry in exactly one batch
    events = lake.read_batches(DS, "events")
    assert len(events) == 250 and events[SPEC.event_id].is_unique
    # Nothing new: no batch, nothing written.
    again = ingest_stream(SPEC, "events", settings=settings, lake=lake, stream=stream, group=GROUP)
    assert again["batches"] == [] and len(lake.manifests(DS, "events")) == 3


def _crashing_env(settings, tmp_path, crash_at: str) -> dict[str, str]:
    """The environment of an `rtml ingest` subprocess that dies at ``crash_at`` (before XACK)."""
    return {
        **os.environ,
        "RTML_STORAGE": "local",
        "RTML_HOME": str(tmp_path),
        "RTML_LAKE_URI": settings.lake_uri,
        "RTML_REDIS_URL": settings.redis_url,
        "RTML_TEST_CRASH_AFTER_WRITE": crash_at,
    }


@pytest.mark.parametrize("crash_at", ["1", "data"])
def test_crash_between_write_and_ack_loses_and_duplicates_nothing(settings, stream, tmp_path, crash_at):
    send(settings, stream, 120)
    env = _crashing_env(settings, tmp_path, crash_at)
    cmd = [sys.executable, "-m", "rtml.cli", "ingest", "--source", "redis", "--kind", "events", "--stream", stream,
           "--group", GROUP, "--max-records", "50", "--max-batches", "10", "--json"]
    crashed = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert crashed.returncode == 75, crashed.stderr  # died inside the first batch, before XACK
    lake = Lake(settings)
    assert pending(settings, stream) == 50
    committed = lake.manifests(DS, "events")
    if crash_at == "1":
        assert len(committed) == 1 and committed[0]["accepted"] == 50
        state = batch_state(lake, DS, "events", committed[0]["batch_id"], SPEC.event_id)
    else:
        assert committed == []  # data written, no manifest: invisible

    env.pop("RTML_TEST_CRASH_AFTER_WRITE")
    ok = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    summary = json.loads(ok.stdout)["events"]
    assert summary["records_in"] == 120 and summary["accepted"] == 120
    first = summary["batches"][0]
    assert first["source"]["redelivered"] is True and first["records_in"] == 50
    if crash_at == "1":
        # The retry rewrote the same batch: same id, same counts, same rows.
        assert first["batch_id"] == committed[0]["batch_id"]
        assert batch_state(Lake(settings), DS, "events", first["batch_id"], SPEC.event_id) == state
    assert pending(settings, stream) == 0
    events = lake.read_batches(DS, "events")
    assert len(events) == 120 and events[SPEC.event_id].is_unique
    assert sum(m["records_in"] for m in lake.manifests(DS, "events")) == 120


def test_redelivered_records_are_quarantined_as_duplicates(settings, stream):
    lake = Lake(settings)
    send(settings, stream, 40, seed=5)
    first = ingest_stream(SPEC, "events", settings=settings, lake=lake, stream=stream, group=GROUP)
    send(settings, stream, 40, seed=5)  # an at-least-once producer sends everything again
    second = ingest_stream(SPEC, "events", settings=settings, lake=lake, stream=stream, group=GROUP)
    assert first["accepted"] == 40
    assert second["records_in"] == 40 and second["accepted"] == 0
    assert second["reasons"] == {"duplicate event_id": 40}
    q = lake.store.get(second["batches"][0]["quarantine"]).decode().splitlines()
    assert f"already committed in batch {first['batch_ids'][0]}" in json.loads(q[0])["reasons"][0]
    assert len(lake.read_batches(DS, "events")) == 40


def test_labels_stream_joins_events(settings, stream):
    lake = Lake(settings)
    labels_stream = stream.replace(":events", ":labels")
    events, labels = prod.build(SPEC, rows=60, start=T0, seed=2, label_fraction=0.5)
    prod.write_redis(events, stream, SPEC.event_time, settings=settings)
    prod.write_redis(labels, labels_stream, "label_time", settings=settings)
    try:
        ingest_stream(SPEC, "events", settings=settings, lake=lake, stream=stream, group=GROUP)
        lab = ingest_stream(SPEC, "labels", settings=settings, lake=lake, stream=labels_stream, group=GROUP)
        assert lab["accepted"] == len(labels) and 15 < len(labels) < 45
        df, lineage = lake.labelled(SPEC)
        assert len(df) == len(labels)
        assert set(df[SPEC.event_id]) == set(labels[SPEC.event_id])
        assert lineage["labels"] == lab["batch_ids"]
    finally:
        redis_client(settings).delete(labels_stream)


def test_pending_entries_of_a_committed_batch_plus_new_ones(settings, stream, tmp_path):
    """A crash after the manifest of batch A, then a second consumer died holding newer entries:
    the retry acknowledges A's entries without writing them again and ingests only the others."""
    send(settings, stream, 120)
    env = _crashing_env(settings, tmp_path, "1")
    cmd = [sys.executable, "-m", "rtml.cli", "ingest", "--source", "redis", "--kind", "events", "--stream", stream,
           "--group", GROUP, "--max-records", "50", "--json"]
    assert subprocess.run(cmd, env=env, capture_output=True, timeout=120).returncode == 75
    r = redis_client(settings)
    r.xreadgroup(GROUP, "another-consumer", {stream: ">"}, count=30)  # ...and died too
    assert pending(settings, stream) == 80
    lake = Lake(settings)
    res = ingest_stream(SPEC, "events", settings=settings, lake=lake, stream=stream, group=GROUP, max_records=100,
                        max_batches=5)
    first = res["batches"][0]
    assert first["source"]["acked_already_committed"] == 50 and first["records_in"] == 30
    assert res["records_in"] == 70 and pending(settings, stream) == 0
    events = lake.read_batches(DS, "events")
    assert len(events) == 120 and events[SPEC.event_id].is_unique


# --- dead letters, gaps, safe trimming -----------------------------------------------------------
def _failed_attempt(settings, stream: str, max_records: int = 100) -> list[str]:
    """One ingestion attempt that died after reading (no commit): its entries stay pending."""
    from rtml.ingest.contract import Contract
    from rtml.ingest.sources import RedisStreamSource

    src = RedisStreamSource(stream, group=GROUP, settings=settings, max_records=max_records, consumer="doomed")
    batch = src.read(Contract(SPEC))
    return batch.ack_ids if batch else []


def test_entries_failing_max_deliveries_times_become_dead_letters(settings, stream):
    send(settings, stream, 8)
    # Attempts keep failing: the first retry takes the batch whole, later ones half of it per failure.
    assert len(_failed_attempt(settings, stream, max_records=8)) == 8
    assert len(_failed_attempt(settings, stream, max_records=8)) == 8
    assert len(_failed_attempt(settings, stream, max_records=8)) == 4
    lake = Lake(settings)
    res = ingest_stream(SPEC, "events", settings=settings, lake=lake, stream=stream, group=GROUP, max_records=8)
    # The four entries that failed 3 times (ingestion.max_deliveries) are dead letters, the rest goes on.
    assert (res["records_in"], res["accepted"], res["quarantined"]) == (8, 4, 4)
    assert res["reasons"] == {"dead letter": 4} and res["dead_letters"] == 4
    assert pending(settings, stream) == 0
    m = lake.manifests(DS, "events")[0]
    items = [json.loads(x) for x in lake.store.get(m["quarantine"]).decode().splitlines()]
    assert [i["reasons"][0] for i in items] == ["dead letter: delivered 3 times without being committed "
                                                 "(ingestion.max_deliveries=3)"] * 4
    assert all(json.loads(i["raw"])["event_id"] for i in items)  # the payload is kept for a replay
    # The stream is not wedged: new entries flow.
    send(settings, stream, 5, seed=8)
    more = ingest_stream(SPEC, "events", settings=settings, lake=lake, stream=stream, group=GROUP)
    assert more["accepted"] == 5 and pending(settings, stream) == 0


def test_unread_entries_trimmed_are_reported_as_a_gap(settings, stream):
    send(settings, stream, 20)
    lake = Lake(settings)
    first = ingest_stream(SPEC, "events", settings=settings, lake=lake, stream=stream, group=GROUP, max_records=5,
                          max_batches=1)
    assert first["accepted"] == 5
    r = redis_client(settings)
    r.xtrim(stream, maxlen=5, approximate=False)  # someone trims: 10 entries no one read are gone
    res = ingest_stream(SPEC, "events", settings=settings, lake=lake, stream=stream, group=GROUP)
    assert res["accepted"] == 5
    assert len(res["gaps"]) == 1 and res["gaps"][0]["lost_unread"] == 10
    assert any(a.startswith(f"stream gap in {stream}: 10 unread") for a in res["alerts"])
    record = json.loads(lake.store.get(res["gaps"][0]["record"]))
    assert record["lost_unread"] == 10 and record["stream"] == stream
    # Reported once: the group is past the gap now.
    send(settings, stream, 3, seed=4)
    assert "gaps" not in ingest_stream(SPEC, "events", settings=settings, lake=lake, stream=stream, group=GROUP)


def test_pending_entries_trimmed_are_reported_as_a_gap(settings, stream):
    send(settings, stream, 10)
    assert len(_failed_attempt(settings, stream, max_records=4)) == 4
    redis_client(settings).xtrim(stream, maxlen=6, approximate=False)  # the 4 pending entries are gone
    res = ingest_stream(SPEC, "events", settings=settings, lake=Lake(settings), stream=stream, group=GROUP)
    assert res["accepted"] == 6 and pending(settings, stream) == 0
    assert res["gaps"][0]["lost_pending"] == 4 and res["gaps"][0]["lost_unread"] == 0


def test_producer_maxlen_never_trims_unread_entries(settings, stream):
    lake = Lake(settings)
    send(settings, stream, 30)
    ingest_stream(SPEC, "events", settings=settings, lake=lake, stream=stream, group=GROUP, max_records=10,
                  max_batches=1)
    assert len(_failed_attempt(settings, stream, max_records=5)) == 5  # 5 more read, not committed
    events, _ = prod.build(SPEC, rows=40, start=T0, seed=6)
    prod.write_redis(events, stream, SPEC.event_time, settings=settings, maxlen=10)
    r = redis_client(settings)
    # Only the 10 acknowledged entries could go; 20 unread/pending + 40 new remain.
    assert r.xlen(stream) == 60
    res = ingest_stream(SPEC, "events", settings=settings, lake=lake, stream=stream, group=GROUP, max_batches=10)
    assert "gaps" not in res and res["records_in"] == 60 and res["accepted"] == 60
    from rtml.ingest.produce import safe_trim

    assert safe_trim(r, stream, 10) == 50 and r.xlen(stream) == 10  # all acknowledged now
