"""rtml.ingest.sources: landing keys and their times, the landing source of an interval in a local
folder (listing, ordering, odd file names, the ledger of consumed files, re-runs), and reading one
landing file (formats, gzip, wrong names) without ever raising."""

from __future__ import annotations

import gzip
import json
from datetime import UTC, datetime, timedelta, timezone

import pytest

from rtml.ingest.contract import Contract
from rtml.ingest.sources import (
    LandingSource,
    batch_id_for_interval,
    key_time,
    landing_key,
    landing_prefix,
    landing_store,
    parse_file,
    stream_key,
)
from rtml.settings import Settings
from rtml.spec import load_spec

SPEC = load_spec()
DS = SPEC.dataset.name
T0 = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
END = T0 + timedelta(minutes=5)


@pytest.fixture
def store(tmp_path):
    return landing_store(Settings(storage="local", home=tmp_path, lake_uri=str(tmp_path / "lake")))


def record(i: int, **over) -> dict:
    rec = {"event_id": f"e{i}", "application_id": f"a{i}", "event_time": "2026-11-25T12:00:00Z",
           "Seniority": 9, "Home": "rent", "Time": 60, "Age": 30, "Marital": "married", "Records": "no",
           "Job": "freelance", "Expenses": 73, "Income": 129.0, "Assets": 0.0, "Debt": 0.0, "Amount": 800,
           "Price": 846}
    rec.update(over)
    return rec


def jsonl(*ids: int) -> bytes:
    return "".join(json.dumps(record(i)) + "\n" for i in ids).encode()


def put(store, seconds: float, tag: str, data: bytes, fmt: str = "jsonl") -> str:
    key = landing_key(DS, "events", T0 + timedelta(seconds=seconds), tag, fmt)
    store.put(key, data)
    return key


def test_landing_keys_carry_their_arrival_time_in_utc():
    t = datetime(2026, 3, 1, 1, 2, 3, 450000, tzinfo=timezone(timedelta(hours=2)))
    key = landing_key("ds", "labels", t, "s0-000001", "csv")
    assert key == "landing/ds/labels/date=2026-02-28/20260228T230203.450000Z-s0-000001.csv"
    assert key_time(key) == t.astimezone(UTC)
    assert key_time("landing/ds/labels/20260228T230203Z-x.csv") == datetime(2026, 2, 28, 23, 2, 3, tzinfo=UTC)
    assert key_time("landing/ds/labels/20260228T230203.5Z.csv") == datetime(2026, 2, 28, 23, 2, 3, 500000, tzinfo=UTC)
    for odd in ("landing/ds/labels/upload.jsonl", "landing/ds/x/2026-02-28T23:02:03Z.jsonl",
                "landing/ds/x/20260228T2302Z.jsonl", "landing/ds/x/x20260228T230203Z.jsonl"):
        assert key_time(odd) is None, odd
    assert landing_prefix("ds", "events") == "landing/ds/events"
    assert stream_key("ds", "labels") == "rtml:ds:labels" and stream_key("ds", "events", "p") == "p:ds:events"
    naive = datetime(2026, 11, 25, 12, 0)
    assert batch_id_for_interval(naive, END) == "20261125T120000-20261125T120500"


def test_an_interval_lists_files_before_its_end_in_time_order(store):
    late = put(store, -3600, "from-an-earlier-hour", jsonl(1))
    b = put(store, 120, "b", jsonl(2))
    a2 = put(store, 60, "z", jsonl(3))
    a1 = put(store, 60, "a", jsonl(4))
    put(store, 300, "at-the-end", jsonl(5))  # [start, end): the end belongs to the next interval
    put(store, 900, "later", jsonl(6))
    src = LandingSource(store, DS, "events", T0, END)
    assert src.keys() == [late, a1, a2, b]  # key time first, then the key
    batch = src.read(Contract(SPEC))
    assert batch.batch_id == "20261125T120000-20261125T120500"
    assert batch.raw.records_in == 4 and sorted(batch.raw.frame["event_id"]) == ["e1", "e2", "e3", "e4"]
    assert [f["key"] for f in batch.position["files"]] == [late, a1, a2, b]
    assert all(f["records"] == 1 and f["bytes"] > 0 for f in batch.position["files"])
    assert batch.info == {"files": 4, "late_files": 1, "unkeyed_files": 0}
    assert batch.position["interval"] == [T0.isoformat(), END.isoformat()]


def test_files_without_a_leading_timestamp_are_reported_not_read(store):
    keyed = put(store, 10, "ok", jsonl(1))
    odd = [f"{landing_prefix(DS, 'events')}/date=2026-11-25/{name}" for name in
           ("upload.jsonl", "copy of 20261125T120010Z.jsonl", "ünïcode name.jsonl", ".hidden")]
    for key in odd:
        store.put(key, jsonl(9))
    src = LandingSource(store, DS, "events", T0, END)
    batch = src.read(Contract(SPEC))
    assert [f["key"] for f in batch.position["files"]] == [keyed]
    assert sorted(src.unkeyed) == sorted(odd) and batch.info["unkeyed_files"] == 4


def test_consumed_files_are_not_taken_again_and_a_rerun_takes_the_same_files(store):
    first = put(store, 10, "first", jsonl(1))
    src = LandingSource(store, DS, "events", T0, END)
    batch = src.read(Contract(SPEC))
    # the batch manifest is the commit point: it lists the files the batch consumed
    manifest = {"batch_id": batch.batch_id, "source": batch.position}
    store.put(f"{DS}/_manifests/events/{batch.batch_id}.json", json.dumps(manifest).encode())
    late = put(store, 20, "uploaded-after-the-batch", jsonl(2))
    again = LandingSource(store, DS, "events", T0, END)
    assert again.keys() == [first]  # a retry of the committed batch: its own file list, nothing new
    nxt = LandingSource(store, DS, "events", END, END + timedelta(minutes=5))
    assert nxt.keys() == [late] and nxt.ledger() == {first: batch.batch_id}
    manual = LandingSource(store, DS, "events", T0, END, batch_tag="manual__2026-11-25T12:30:00+00:00")
    assert manual.batch_id == batch.batch_id + "-manual_2026_11_25T12_30_00_00_00"
    assert manual.keys() == [late]  # a manual run sweeps what is new into its own batch


def test_a_manifest_of_another_source_type_consumes_no_landing_file(store):
    key = put(store, 10, "x", jsonl(1))
    store.put(f"{DS}/_manifests/events/redis-batch.json", json.dumps({"source": {"type": "redis"}}).encode())
    store.put(f"{DS}/_manifests/events/broken.json", b"\xff{")
    assert LandingSource(store, DS, "events", T0, END).keys() == [key]


def test_an_empty_interval_is_refused():
    with pytest.raises(ValueError, match="empty data interval"):
        LandingSource(None, DS, "events", END, T0)
    with pytest.raises(ValueError, match="empty data interval"):
        LandingSource(None, DS, "events", T0, T0)


def test_parse_file_reads_each_format_and_gzip_alike():
    import pandas as pd

    from rtml.lake import to_parquet_bytes

    contract = Contract(SPEC)
    plain = parse_file("a.jsonl", jsonl(1, 2), contract)
    assert plain.records_in == 2 and not plain.rejects
    zipped = parse_file("a.jsonl.gz", gzip.compress(jsonl(1, 2)), contract)
    assert zipped.frame["event_id"].tolist() == plain.frame["event_id"].tolist()
    csv = pd.DataFrame([record(1), record(2)]).to_csv(index=False).encode()
    assert parse_file("a.csv", csv, contract).frame["event_id"].tolist() == ["e1", "e2"]
    pq = to_parquet_bytes(pd.DataFrame([record(1)]))
    assert parse_file("a.parquet", pq, contract).frame["event_id"].tolist() == ["e1"]
    assert parse_file("a.jsonl", b"", contract).records_in == 0


@pytest.mark.parametrize(
    ("key", "data", "reason"),
    [
        ("a.txt", b"{}", "unsupported file type '.txt'"),
        ("noext", b"{}", "unsupported file type '(none)'"),
        ("a.parquet", b'{"a": 1}\n', "not a Parquet file (it looks like text)"),
        ("a.jsonl", gzip.compress(b'{"a": 1}\n'), "is a gzip file"),
        ("a.csv", b'{"a": 1}\n', "looks like JSON lines, not CSV"),
        ("a.jsonl", b"\x00\x01\x02", "not text"),
        ("a.jsonl.gz", b"\x1f\x8bnot gzip at all", "corrupt gzip file"),
    ],
)
def test_parse_file_refuses_misnamed_or_broken_files_with_a_reason(key, data, reason):
    raw = parse_file(key, data, Contract(SPEC))
    assert len(raw.frame) == 0 and len(raw.rejects) == 1
    assert raw.rejects[0]["source"] == key and reason in raw.rejects[0]["reasons"][0]


def test_a_truncated_gzip_file_keeps_its_complete_lines():
    data = gzip.compress(jsonl(1, 2, 3))
    raw = parse_file("a.jsonl.gz", data[: len(data) - 12], Contract(SPEC))
    assert raw.frame["event_id"].tolist()[:2] == ["e1", "e2"]
    assert any("truncated gzip file" in r["reasons"][0] for r in raw.rejects)
