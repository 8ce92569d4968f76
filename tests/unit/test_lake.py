"""rtml.lake on a local-folder store: the key layout, byte-identical Parquet, manifests (oldest batch
first, only committed batches visible), reading chosen batches from the tables, the latest label
winning, the labelled join over a half-open time range with lineage of contributing batches only,
batches outside the range not read, batches of another data contract refused naming them, and
batches of a lake written before tables refused naming ``rtml lake migrate``."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from support.lake import commit_frame, legacy_batch
from support.synthetic import synthetic_frame, toy_spec, write_to_lake

from rtml.lake import (
    LABEL_CLOCK_SKEW,
    BatchRef,
    Lake,
    SchemaMismatch,
    UnmigratedBatches,
    _date_of,
    check_schema,
    from_parquet_bytes,
    to_parquet_bytes,
)
from rtml.storage import LocalStore


@pytest.fixture(scope="module")
def spec():
    return toy_spec()


@pytest.fixture
def lake(tmp_path):
    return Lake(store=LocalStore(tmp_path / "lake"))


def record_reads(lake: Lake) -> list[tuple[str, set[str] | None]]:
    """The (kind, batch ids) of each table read ``lake`` makes from now on."""
    reads: list[tuple[str, set[str] | None]] = []
    real = lake.tables.read

    def read(dataset, kind, batch_ids=None, *args, **kw):
        reads.append((kind, None if batch_ids is None else set(batch_ids)))
        return real(dataset, kind, batch_ids, *args, **kw)

    lake.tables.read = read  # type: ignore[method-assign]
    return reads


def read_ids(reads: list[tuple[str, set[str] | None]], kind: str) -> set[str]:
    return set().union(*(ids or set() for k, ids in reads if k == kind))


def test_layout_keys_and_date_partition(lake):
    b = "20261125T120000-20261125T120500"
    assert lake.quarantine_key("ds", "labels", b) == f"ds/quarantine/labels/date=2026-11-25/batch={b}/rejected.jsonl"
    assert lake.manifest_key("ds", "events", b) == f"ds/_manifests/events/{b}.json"
    assert _date_of("backfill-1") == "undated" and _date_of("2026-01-01") == "undated"
    assert _date_of("2026") == "undated" and _date_of("20260101") == "2026-01-01"
    assert lake.uri == lake.store.uri


def test_parquet_bytes_are_deterministic_and_round_trip():
    df = pd.DataFrame({"a": [1, 2], "b": ["x", None], "t": pd.to_datetime(["2026-01-01", "2026-01-02"], utc=True)})
    data = to_parquet_bytes(df)
    assert data == to_parquet_bytes(df.copy())  # a retried batch rewrites the same bytes
    pd.testing.assert_frame_equal(from_parquet_bytes(data), df)
    # the index is never written: a frame's row labels do not change the bytes
    assert to_parquet_bytes(df.set_axis([7, 8])) == data
    assert list(from_parquet_bytes(to_parquet_bytes(df.set_axis([7, 8]))).columns) == ["a", "b", "t"]


def test_manifests_are_sorted_and_only_json_counts(lake):
    for b in ("20260102T000000-0001", "20260101T000000-0000"):
        ref = lake.write_manifest("ds", "events", b, {"batch_id": b, "files": []})
        assert isinstance(ref, BatchRef)
    lake.store.put("ds/_manifests/events/notes.txt", b"not a manifest")
    assert [m["batch_id"] for m in lake.manifests("ds", "events")] == ["20260101T000000-0000", "20260102T000000-0001"]
    assert lake.manifests("ds", "labels") == []
    assert ref.as_dict() == {"dataset": "ds", "kind": "events", "batch_id": "20260101T000000-0000",
                             "manifest": "ds/_manifests/events/20260101T000000-0000.json"}


def test_a_batch_without_a_manifest_is_invisible(lake):
    import pyarrow as pa

    snap = lake.tables.commit_batch("ds", "events", "20260101T000000-0000", pa.table({"x": [1]}))
    assert lake.read_batches("ds", "events").empty
    lake.write_manifest("ds", "events", "20260101T000000-0000", {"batch_id": "20260101T000000-0000", **snap})
    assert list(lake.read_batches("ds", "events")["x"]) == [1]


def test_a_lake_written_before_tables_is_refused_naming_the_migration(spec, lake):
    ds = spec.dataset.name
    write_to_lake(lake, spec, synthetic_frame(spec, 20, seed=1), batches=1)
    old = synthetic_frame(spec, 10, seed=2, id_offset=10**6)
    legacy_batch(lake, ds, "events", "20250101T000000-old", [old[[spec.event_id, spec.event_time]]],
                 schema_hash=spec.schema_hash(), min_time="2025-01-01T00:00:00Z", watermark="2025-01-01T01:00:00Z")
    with pytest.raises(UnmigratedBatches, match=r"rtml lake migrate --lake .*lake") as err:
        lake.read_batches(ds, "events")
    assert err.value.batch_ids == ["20250101T000000-old"] and "1 batch(es) (20250101T000000-old)" in str(err.value)
    with pytest.raises(UnmigratedBatches):
        lake.labelled(spec)
    # batches that are tables still read alone, and a window that does not meet the old batch reads
    assert len(lake.read_batches(ds, "events", [m["batch_id"] for m in lake.manifests(ds, "events")][1:])) == 20
    assert len(lake.labelled(spec, "2026-01-01", "2026-01-02")[0]) == 20


def test_read_batches_by_id_and_by_manifest(spec, lake):
    write_to_lake(lake, spec, synthetic_frame(spec, 90, seed=1), batches=3)
    ids = [m["batch_id"] for m in lake.manifests(spec.dataset.name, "events")]
    df = lake.read_batches(spec.dataset.name, "events", [ids[2], ids[0]])
    assert len(df) == 60 and "_batch" not in df.columns
    assert df[spec.event_id].iloc[0] == "evt-00000000" and df[spec.event_id].iloc[-1] == "evt-00000089"  # batch order
    late = lake.read_batches(spec.dataset.name, "events", keep=lambda m: m["batch_id"] >= ids[1])
    assert len(late) == 60 and late[spec.event_id].iloc[0] == "evt-00000030"
    assert lake.read_batches(spec.dataset.name, "events", ["nope"]).empty


def test_a_later_label_batch_corrects_an_earlier_one(spec, lake):
    df = synthetic_frame(spec, 40, seed=2)
    write_to_lake(lake, spec, df, batches=1)
    ds, eid, target = spec.dataset.name, spec.event_id, spec.target.name
    fix = pd.DataFrame({eid: [df[eid].iloc[0]], target: ["no" if df[target].iloc[0] == "yes" else "yes"]})
    commit_frame(lake, ds, "labels", "29990101T000000-fix", fix, schema_hash=spec.schema_hash())
    labels = lake.latest_labels(spec)
    assert len(labels) == 40 and labels.set_index(eid).loc[df[eid].iloc[0], target] == fix[target].iloc[0]
    joined, lineage = lake.labelled(spec)
    assert joined.set_index(eid).loc[df[eid].iloc[0], target] == fix[target].iloc[0]
    assert "29990101T000000-fix" in lineage["labels"]


def test_labelled_reads_a_half_open_range_and_lists_only_contributing_batches(spec, lake):
    df = synthetic_frame(spec, 120, seed=3)  # one a minute from 2026-01-01 00:00
    write_to_lake(lake, spec, df, batches=4)  # 30 rows per batch
    reads = record_reads(lake)
    start, end = pd.Timestamp("2026-01-01T00:30:00Z"), pd.Timestamp("2026-01-01T01:00:00Z")
    out, lineage = lake.labelled(spec, start, end)
    assert len(out) == 30 and out[spec.event_time].min() == start and out[spec.event_time].max() < end
    assert out[spec.event_time].is_monotonic_increasing and "_batch" not in out.columns
    assert lineage == {"events": ["20260101T003000-0001"], "labels": ["20260101T003000-0001"]}
    # the event batches whose time range lies outside the window are not read (labels all are)
    assert read_ids(reads, "events") == {"20260101T003000-0001"} and len(read_ids(reads, "labels")) == 4
    # naive bounds are UTC
    naive, _ = lake.labelled(spec, start.tz_localize(None), end.tz_localize(None))
    pd.testing.assert_frame_equal(naive, out)


def test_manifests_without_a_readable_time_range_are_read(spec, lake):
    write_to_lake(lake, spec, synthetic_frame(spec, 20, seed=3), batches=2)
    ds = spec.dataset.name
    first, second = lake.manifests(ds, "events")
    lake.write_manifest(ds, "events", first["batch_id"], {**first, "min_time": None})
    lake.write_manifest(ds, "events", second["batch_id"], {**second, "watermark": "not a time"})
    out, lineage = lake.labelled(spec, "2026-01-01T00:00:00Z", "2026-01-01T00:20:00Z")
    assert len(out) == 20 and len(lineage["events"]) == 2


def test_no_labels_or_no_overlap_is_an_empty_frame_with_the_columns(spec, lake):
    out, lineage = lake.labelled(spec)
    assert out.empty and lineage == {"events": [], "labels": []}
    assert list(out.columns) == [spec.event_id, spec.event_time, *spec.feature_names, spec.target.name]
    write_to_lake(lake, spec, synthetic_frame(spec, 20, seed=3), batches=1)
    out, lineage = lake.labelled(spec, "2030-01-01", "2030-02-01")
    assert out.empty and lineage == {"events": [], "labels": []}


def test_training_reader_refuses_batches_of_another_schema(spec, lake):
    from rtml.spec import parse_spec

    write_to_lake(lake, spec, synthetic_frame(spec, 300, seed=4), batches=1)
    assert len(lake.labelled(spec)[0]) == 300
    data = spec.model_dump(mode="json")
    data["features"][0]["max"] = 99  # another contract: same columns, other rules
    other = parse_spec(data)
    with pytest.raises(SchemaMismatch, match="re-ingest those batches") as err:
        lake.labelled(other)
    assert spec.schema_hash() in str(err.value) and "20260101T000000-0000" in str(err.value)
    with pytest.raises(SchemaMismatch):
        lake.latest_labels(other)
    assert len(lake.read_batches(spec.dataset.name, "events")) == 300  # no contract asked: read as is


def test_check_schema_ignores_batches_without_rows_and_groups_by_hash():
    ms = [
        {"batch_id": "b1", "files": ["k"], "schema_hash": "old"},
        {"batch_id": "b2", "files": ["k"], "schema_hash": "old"},
        {"batch_id": "b3", "files": ["k"]},
        {"batch_id": "b4", "files": [], "schema_hash": "old"},  # an empty interval: nothing to mix
        {"batch_id": "b5", "files": ["k"], "schema_hash": "new"},
    ]
    with pytest.raises(SchemaMismatch) as err:
        check_schema(ms, "new", "ds/events")
    msg = str(err.value)
    assert msg.startswith("ds/events: the spec's data contract has schema hash new")
    assert "2 batch(es) under schema old (e.g. b1)" in msg and "1 batch(es) under schema None (e.g. b3)" in msg
    assert "b4" not in msg and "b5" not in msg
    check_schema(ms[3:], "new", "ds/events")  # no error


# --- the day index: a window lists its days, not the lake's history --------------------------------
class CountingStore:
    """A store that records the keys read and the prefixes listed."""

    def __init__(self, store) -> None:
        self._store, self.gets, self.lists = store, [], []

    def get(self, key: str) -> bytes:
        self.gets.append(key)
        return self._store.get(key)

    def list(self, prefix: str = "") -> list[str]:
        self.lists.append(prefix)
        return self._store.list(prefix)

    def __getattr__(self, name: str):
        return getattr(self._store, name)


def test_a_window_reads_the_day_index_not_every_manifest_and_returns_the_same_rows(spec, tmp_path):
    from rtml.lake import INDEX_COMPLETE

    store = LocalStore(tmp_path / "lake")
    lake = Lake(store=store)
    ds = spec.dataset.name
    df = synthetic_frame(spec, 10 * 96, seed=5, step_seconds=900.0)  # 10 days, one event per 15 minutes
    write_to_lake(lake, spec, df, batches=40)  # 6 hours a batch
    start, end = pd.Timestamp("2026-01-04T00:00:00Z"), pd.Timestamp("2026-01-05T00:00:00Z")
    counting = CountingStore(store)
    reader = Lake(store=counting)
    reads = record_reads(reader)
    got, lineage = reader.labelled(spec, start, end)
    assert len(got) == 96 and len(lineage["events"]) == 4
    assert not any("/_manifests/" in k for k in counting.gets + counting.lists)
    # labels: those of the days from a day before the window's start on (LABEL_CLOCK_SKEW)
    events_read, labels_read = read_ids(reads, "events"), read_ids(reads, "labels")
    assert LABEL_CLOCK_SKEW == pd.Timedelta(days=1)
    assert len(events_read) == 4 and len(labels_read) == 4 * 8  # the window day's 4 batches; labels 01-03..01-10
    # without the index (a lake written before it) every manifest is listed, and the rows are the same
    store.delete(f"_index/{ds}/events/{INDEX_COMPLETE}")
    store.delete(f"_index/{ds}/labels/{INDEX_COMPLETE}")
    counting = CountingStore(store)
    want, want_lineage = Lake(store=counting).labelled(spec, start, end)
    assert any("/_manifests/" in k for k in counting.lists)
    pd.testing.assert_frame_equal(got, want)
    assert lineage == want_lineage


def test_a_lake_written_before_the_index_is_indexed_at_its_next_batch(spec, tmp_path):
    from rtml.lake import INDEX_COMPLETE

    store = LocalStore(tmp_path / "lake")
    lake = Lake(store=store)
    ds = spec.dataset.name
    write_to_lake(lake, spec, synthetic_frame(spec, 120, seed=3), batches=4)
    for key in store.list(f"_index/{ds}"):  # as if written by an older rtml
        store.delete(key)
    assert lake.window_manifests(ds, "events", "2026-01-01", "2026-01-02") is None  # not indexed: full listing
    m = lake.manifests(ds, "events")[0]
    lake.write_manifest(ds, "events", m["batch_id"], m)  # the next batch (a re-run) indexes the lake
    assert store.exists(f"_index/{ds}/events/{INDEX_COMPLETE}")
    found = lake.window_manifests(ds, "events", "2026-01-01", "2026-01-02")
    assert [e["batch_id"] for e in found] == [m["batch_id"] for m in lake.manifests(ds, "events")]


def test_a_rerun_batch_that_moves_days_leaves_no_entry_behind(spec, lake):
    import pyarrow as pa

    ds = spec.dataset.name
    bid = "20260101T000000-0000"
    snap = lake.tables.commit_batch(ds, "events", bid, pa.table({"x": [1]}))
    base = {"batch_id": bid, **snap, "accepted": 1, "schema_hash": spec.schema_hash()}
    lake.write_manifest(ds, "events", bid, {**base, "min_time": "2026-01-01T10:00:00Z", "watermark": "2026-01-02T01:00:00Z"})
    assert {k.split("/")[3] for k in lake.store.list(f"_index/{ds}/events") if k.endswith(".json")} == {
        "2026-01-01", "2026-01-02"}
    lake.write_manifest(ds, "events", bid, {**base, "min_time": "2026-01-03T10:00:00Z", "watermark": "2026-01-03T11:00:00Z"})
    assert {k.split("/")[3] for k in lake.store.list(f"_index/{ds}/events") if k.endswith(".json")} == {"2026-01-03"}
    assert lake.window_manifests(ds, "events", "2026-01-01", "2026-01-03") == []
    lake.write_manifest(ds, "events", bid, {**base, "min_time": "2025-01-01T00:00:00Z", "watermark": "2026-01-03T11:00:00Z"})
    assert [k.split("/")[3] for k in lake.store.list(f"_index/{ds}/events") if k.endswith(".json")] == ["wide"]
    lake.write_manifest(ds, "events", bid, {**base, "min_time": None, "watermark": None})
    assert [k.split("/")[3] for k in lake.store.list(f"_index/{ds}/events") if k.endswith(".json")] == ["undated"]
    assert [e["batch_id"] for e in lake.window_manifests(ds, "events", "2030-01-01", "2030-01-02")] == [bid]


def test_a_stale_index_entry_is_settled_by_the_manifest(spec, lake):
    ds = spec.dataset.name
    bid = "20260101T000000-0000"
    part = pd.DataFrame({"x": [0, 1]})
    span = {"min_time": "2026-01-01T10:00:00Z", "watermark": "2026-01-01T11:00:00Z"}
    legacy_batch(lake, ds, "events", bid, [part], **span)
    # migrated since (its table rows and manifest), but the index entry of the file batch was left
    # behind (a crash between the two writes)
    entry = lake.store.get(lake.index_key(ds, "events", "2026-01-01", bid))
    commit_frame(lake, ds, "events", bid, part.head(1), **span)
    lake.store.put(lake.index_key(ds, "events", "2026-01-01", bid), entry)
    found = lake.window_manifests(ds, "events", "2026-01-01", "2026-01-02")
    assert found[0]["files"] and not found[0].get("table")  # the stale entry
    assert list(lake._read(ds, "events", candidates=found)["x"]) == [0]  # the manifest's table batch
    # a manifest still naming files (not migrated): refused, naming the batch
    legacy_batch(lake, ds, "events", bid, [part], **span)
    with pytest.raises(UnmigratedBatches, match=bid):
        lake._read(ds, "events", candidates=lake.window_manifests(ds, "events", "2026-01-01", "2026-01-02"))


def test_a_label_stamped_well_before_its_event_is_not_joined(spec, lake):
    df = synthetic_frame(spec, 20, seed=2)
    write_to_lake(lake, spec, df, batches=1)
    ds, eid, target, ts = spec.dataset.name, spec.event_id, spec.target.name, spec.event_time
    flip = {"yes": "no", "no": "yes"}
    # A later batch relabels events 0 and 2: event 0's label is stamped two days before the event
    # (it cannot be its outcome), event 2's an hour before (clock skew between producers: joined).
    fix = pd.DataFrame({eid: [df[eid].iloc[0], df[eid].iloc[1], df[eid].iloc[2]],
                        target: [flip[df[target].iloc[0]], df[target].iloc[1], flip[df[target].iloc[2]]],
                        "label_time": [df[ts].iloc[0] - pd.Timedelta(days=2), df[ts].iloc[1],
                                       df[ts].iloc[2] - pd.Timedelta(hours=1)]})
    bid = "29990101T000000-fix"
    commit_frame(lake, ds, "labels", bid, fix, time_column="label_time", schema_hash=spec.schema_hash())
    joined, lineage = lake.labelled(spec)
    assert LABEL_CLOCK_SKEW < pd.Timedelta(days=2)
    assert joined.set_index(eid).loc[df[eid].iloc[0], target] == df[target].iloc[0]  # the early one ignored
    assert joined.set_index(eid).loc[df[eid].iloc[2], target] == flip[df[target].iloc[2]]  # skew: joined
    assert lineage["labels"] == sorted(["20260101T000000-0000", bid])
    window, _ = lake.labelled(spec, df[ts].min(), df[ts].max() + pd.Timedelta(seconds=1))
    pd.testing.assert_frame_equal(window, joined)


def _newest_by_listing(lake: Lake, ds: str) -> pd.Timestamp:
    marks = [m["watermark"] for m in lake.manifests(ds, "events") if m.get("files") or m.get("accepted")]
    return max(pd.Timestamp(w) for w in marks)


def test_the_newest_watermark_reads_the_newest_day_not_every_manifest(spec, tmp_path):
    store = LocalStore(tmp_path / "lake")
    lake = Lake(store=store)
    ds = spec.dataset.name
    write_to_lake(lake, spec, synthetic_frame(spec, 10 * 96, seed=5, step_seconds=900.0), batches=40)
    counting = CountingStore(store)
    newest = Lake(store=counting).newest_watermark(ds, "events")
    assert newest == _newest_by_listing(lake, ds)
    assert not any("/_manifests/" in k for k in counting.lists)
    read = {k for k in counting.gets if "/_manifests/" in k}
    assert 0 < len(read) <= 4  # the newest day's batches (6 hours each)
    # an empty batch committed later (an interval without events) says nothing about the newest event
    lake.write_manifest(ds, "events", "20260201T000000-empty", {"batch_id": "20260201T000000-empty", "files": [],
                                                               "accepted": 0, "watermark": None})
    assert lake.newest_watermark(ds, "events") == newest


def test_the_newest_watermark_is_settled_by_the_manifests(spec, lake):
    ds = spec.dataset.name
    write_to_lake(lake, spec, synthetic_frame(spec, 120, seed=3), batches=4)
    newest = _newest_by_listing(lake, ds)
    assert lake.newest_watermark(ds, "events") == newest
    # a batch that crashed after its index entry, before its manifest: not committed, does not count
    late = {"batch_id": "20270101T000000-crashed", "files": ["x"], "accepted": 1,
            "min_time": "2027-01-01T00:00:00Z", "watermark": "2027-01-01T01:00:00Z"}
    lake._write_index(ds, "events", late)
    assert lake.newest_watermark(ds, "events") == newest
    # a committed batch spanning months (indexed as "wide") counts
    wide = {**late, "batch_id": "20260101T000000-wide", "min_time": "2025-01-01T00:00:00Z"}
    lake.write_manifest(ds, "events", wide["batch_id"], wide)
    assert lake.newest_watermark(ds, "events") == pd.Timestamp("2027-01-01T01:00:00Z") == _newest_by_listing(lake, ds)
    # a batch with rows but no time range: the index cannot say, the caller lists the manifests
    lake.write_manifest(ds, "events", "20260101T000000-undated", {**late, "batch_id": "20260101T000000-undated",
                                                                  "min_time": None, "watermark": None})
    assert lake.newest_watermark(ds, "events") is None


def test_latest_labels_since_reads_only_the_label_days_from_then_on(spec, tmp_path):
    from rtml.lake import LABEL_TIME

    store = LocalStore(tmp_path / "lake")
    lake = Lake(store=store)
    ds, eid = spec.dataset.name, spec.event_id
    df = synthetic_frame(spec, 10 * 96, seed=5, step_seconds=900.0)  # 10 days
    df[LABEL_TIME] = df[spec.event_time] + pd.Timedelta(minutes=30)
    for i, part in enumerate(np.array_split(np.arange(len(df)), 40)):  # the labels' time: their label time
        rows = df.iloc[part]
        commit_frame(lake, ds, "labels", f"{rows[spec.event_time].iloc[0]:%Y%m%dT%H%M%S}-{i:04d}",
                     rows[[eid, spec.target.name, LABEL_TIME]], time_column=LABEL_TIME, schema_hash=spec.schema_hash())
    since = pd.Timestamp("2026-01-08T00:00:00Z")
    counting = CountingStore(store)
    reader = Lake(store=counting)
    reads = record_reads(reader)
    got = reader.latest_labels(spec, since=since)
    everything = lake.latest_labels(spec)
    want = everything[pd.to_datetime(everything[LABEL_TIME], utc=True) >= since]
    pd.testing.assert_frame_equal(got.reset_index(drop=True), want.reset_index(drop=True))
    assert len(got) and not any("/_manifests/" in k for k in counting.gets + counting.lists)
    assert read_ids(reads, "labels") < {m["batch_id"] for m in lake.manifests(ds, "labels")}


def test_read_window_lists_its_days_and_keeps_its_rows(spec, tmp_path):
    store = LocalStore(tmp_path / "lake")
    lake = Lake(store=store)
    ds, ts = spec.dataset.name, spec.event_time
    write_to_lake(lake, spec, synthetic_frame(spec, 10 * 96, seed=5, step_seconds=900.0), batches=40)
    start, end = pd.Timestamp("2026-01-04T03:00:00Z"), pd.Timestamp("2026-01-05T09:00:00Z")
    counting = CountingStore(store)
    reader = Lake(store=counting)
    reads = record_reads(reader)
    got = reader.read_window(ds, "events", ts, start, end)
    assert not any("/_manifests/" in k for k in counting.gets + counting.lists)
    assert len(read_ids(reads, "events")) == 8  # the 2 days' batches, not all 40
    every = lake.read_batches(ds, "events")

    def inside(df):
        t = pd.to_datetime(df[ts], utc=True)
        return df[(t >= start) & (t < end)].reset_index(drop=True)

    assert len(got) == 96 - 12 + 36  # 01-04 from 03:00, 01-05 until 09:00 (one event per 15 minutes)
    pd.testing.assert_frame_equal(got, inside(every))


def test_batch_ids_list_the_committed_batches_without_reading_a_manifest(spec, tmp_path):
    store = LocalStore(tmp_path / "lake")
    lake = Lake(store=store)
    ds = spec.dataset.name
    write_to_lake(lake, spec, synthetic_frame(spec, 120, seed=3), batches=4)
    lake.store.put(f"{ds}/_manifests/events/notes.txt", b"not a manifest")
    counting = CountingStore(store)
    ids = Lake(store=counting).batch_ids(ds, "events")
    assert ids == [m["batch_id"] for m in lake.manifests(ds, "events")] and not counting.gets
    assert lake.manifest(ds, "events", ids[-1]) == lake.manifests(ds, "events")[-1]
    assert lake.manifest(ds, "events", "20990101T000000-none") is None
    # From a name on (the duplicate check lists its lookback, not the history): also without children.
    assert lake.batch_ids(ds, "events", after=ids[1]) == ids[2:]
    assert Lake(store=counting).batch_ids(ds, "events", after=ids[1][:15]) == ids[1:]


def test_read_window_reads_the_windows_batches_and_rows_only(tmp_path):
    """The serving log's reader: rows with time in [start, end), from the day index's batches (a batch
    of another day is not read)."""
    import pyarrow as pa

    from rtml.settings import Settings

    settings = Settings(storage="local", home=tmp_path / "home", lake_uri=str(tmp_path / "lake"))
    store = LocalStore(tmp_path / "lake")
    lake = Lake(settings, store)
    t0 = pd.Timestamp("2026-01-01T00:00:00Z")
    for day in range(4):  # a batch per day, 6 rows 4 hours apart
        bid = f"2026010{day + 1}T000000-p"
        times = [t0 + pd.Timedelta(days=day, hours=4 * i) for i in range(6)]
        frame = pa.table({"request_id": [f"d{day}-{i}" for i in range(6)],
                          "time": pa.array(times, pa.timestamp("us", tz="UTC")), "score": [0.1 * i for i in range(6)]})
        written = lake.tables.commit_batch("ds", "predictions", bid, frame, time_column="time")
        lake.write_manifest("ds", "predictions", bid, {"batch_id": bid, "kind": "predictions", **written,
                                                       "accepted": 6, "min_time": times[0].isoformat(),
                                                       "watermark": times[-1].isoformat()})
    start, end = t0 + pd.Timedelta(days=1, hours=12), t0 + pd.Timedelta(days=2, hours=8)
    counting = CountingStore(store)
    reader = Lake(settings, counting)
    reads = record_reads(reader)
    got = reader.read_window("ds", "predictions", "time", start, end)
    assert list(got["request_id"]) == ["d1-3", "d1-4", "d1-5", "d2-0", "d2-1"]
    assert "_batch" not in got.columns
    assert not any("/_manifests/" in k for k in counting.gets + counting.lists)
    assert read_ids(reads, "predictions") == {"20260102T000000-p", "20260103T000000-p"}
    assert list(lake.read_window("ds", "predictions", "time", t0 + pd.Timedelta(days=3, hours=19))["request_id"]) == [
        "d3-5"]  # open-ended: up to now
    assert lake.read_window("ds", "predictions", "time", t0 + pd.Timedelta(days=9)).empty
