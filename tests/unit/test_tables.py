"""The lake's Iceberg tables (rtml.tables) on a SQLite catalog and a folder warehouse, alone and
under micro-batch ingestion, and their maintenance: compaction of a day's
small files keeps every row; snapshot expiry keeps the current (and the retained) snapshots, deletes
what only expired ones referenced, and a read at an expired snapshot falls back to the current table."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyiceberg.table
import pytest
from pydantic import ValidationError

from rtml.ingest import produce as prod
from rtml.ingest.batches import ingest_interval
from rtml.lake import Lake
from rtml.settings import Settings
from rtml.spec import load_spec
from rtml.tables import BATCH_COLUMN, TableError, Tables, catalog_properties, maintain, warehouse_uri

SPEC = load_spec()
DS = SPEC.dataset.name
T0 = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
FIVE = timedelta(minutes=5)
SCHEMA = pa.schema([pa.field("id", pa.string()), pa.field("ts", pa.timestamp("us", tz="UTC")),
                    pa.field("x", pa.float64())])


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(storage="local", home=tmp_path / "home", lake_uri=str(tmp_path / "lake"))


def rows(n: int, day: int, prefix: str = "e") -> pa.Table:
    times = [datetime(2026, 1, day, tzinfo=UTC) + timedelta(minutes=i) for i in range(n)]
    return pa.Table.from_arrays([pa.array([f"{prefix}{day}-{i}" for i in range(n)]),
                                 pa.array(times, pa.timestamp("us", tz="UTC")),
                                 pa.array([float(i) for i in range(n)])], schema=SCHEMA)


def test_catalog_and_warehouse_follow_the_settings(tmp_path):
    home = Settings(storage="local", home=tmp_path / "h")
    assert home.resolved_catalog_uri() == f"sqlite:///{tmp_path / 'h' / 'catalog' / 'catalog.db'}"
    local = Settings(storage="local", home=tmp_path / "h", lake_uri=str(tmp_path / "lake"))
    # Another lake of the same home has a catalog of its own, also when only lake_uri was changed
    # (rtml ingest --lake): its tables are never registered in another lake's catalog.
    other = home.model_copy(update={"lake_uri": str(tmp_path / "lake")})
    assert local.resolved_catalog_uri() == other.resolved_catalog_uri() != home.resolved_catalog_uri()
    assert local.resolved_catalog_uri().startswith(f"sqlite:///{tmp_path / 'h' / 'catalog'}/catalog-")
    assert warehouse_uri(local) == f"file://{tmp_path / 'lake'}/_iceberg"
    assert "s3.endpoint" not in catalog_properties(local)
    s3 = Settings(storage="s3", home=tmp_path / "h", lake_bucket="b", s3_endpoint_url="http://127.0.0.1:9",
                  catalog_uri="postgresql+psycopg2://u@db/rtml")
    props = catalog_properties(s3)
    assert props["warehouse"] == "s3://b/_iceberg" and props["uri"] == "postgresql+psycopg2://u@db/rtml"
    assert props["s3.endpoint"] == "http://127.0.0.1:9" and props["s3.force-virtual-addressing"] == "false"


def test_a_batch_is_one_commit_and_a_rerun_replaces_its_rows(settings):
    t = Tables(settings)
    first = t.commit_batch("ds", "events", "b1", rows(5, 1), {"accepted": 5}, time_column="ts")
    t.commit_batch("ds", "events", "b2", rows(3, 2), {"accepted": 3}, time_column="ts")
    again = t.commit_batch("ds", "events", "b1", rows(4, 1, "r"), {"accepted": 4}, time_column="ts")
    got = t.read("ds", "events").to_pandas()
    assert len(got) == 7 and got.groupby(BATCH_COLUMN).size().to_dict() == {"b1": 4, "b2": 3}
    assert set(got[got[BATCH_COLUMN] == "b1"]["id"]) == {f"r1-{i}" for i in range(4)}  # replaced, not appended
    # The summary of the snapshot that committed a batch carries its counts.
    table = t.table("ds", "events")
    last = table.snapshot_by_id(again["snapshot_id"])
    assert last.summary["rtml.batch"] == "b1" and last.summary["rtml.accepted"] == "4"
    # Time travel: the first snapshot still reads the first attempt.
    assert t.read("ds", "events", snapshot_id=first["snapshot_id"]).num_rows == 5
    assert "day" in str(table.spec())  # partitioned by day of the time column


def test_reads_filter_by_batch_and_window(settings):
    t = Tables(settings)
    for day in (1, 2, 3):
        t.commit_batch("ds", "events", f"b{day}", rows(4, day), time_column="ts")
    assert t.read("ds", "events", {"b1", "b3"}).num_rows == 8
    assert t.read("ds", "events", set()).num_rows == 0
    window = t.read("ds", "events", time_column="ts", start=datetime(2026, 1, 2, tzinfo=UTC),
                    end=datetime(2026, 1, 3, tzinfo=UTC)).to_pandas()
    assert set(window[BATCH_COLUMN]) == {"b2"} and len(window) == 4
    with pytest.raises(TableError, match="ds.labels does not exist"):
        t.read("ds", "labels")


def test_a_new_nullable_feature_evolves_the_schema_and_old_rows_read_as_null(settings):
    t = Tables(settings)
    t.commit_batch("ds", "events", "b1", rows(2, 1), time_column="ts")
    wider = rows(2, 2).append_column("y", pa.array([1.5, None], pa.float64()))
    t.commit_batch("ds", "events", "b2", wider, time_column="ts")
    got = t.read("ds", "events").to_pandas().set_index("id")
    assert list(t.table("ds", "events").schema().as_arrow().names) == ["id", "ts", "x", BATCH_COLUMN, "y"]
    assert got.loc["e2-0", "y"] == 1.5 and got["y"].isna().sum() == 3
    # A batch without the new column (an older producer) still commits: the column is null.
    t.commit_batch("ds", "events", "b3", rows(1, 3), time_column="ts")
    assert t.read("ds", "events", {"b3"}).column("y").null_count == 1


def test_a_column_that_changed_kind_is_refused_naming_it_and_nothing_is_committed(settings):
    """A spec that turned a numeric feature categorical: "02134" would be cast to 2134.0 silently, "A1"
    would fail deep in Arrow; both are refused, naming the table, the column and both types."""
    t = Tables(settings)
    t.commit_batch("ds", "events", "b1", rows(2, 1), time_column="ts")
    for value in ("02134", "A1"):
        changed = rows(1, 2).set_column(2, "x", pa.array([value], pa.string()))
        with pytest.raises(TableError, match=r"ds.events: column 'x' is double in the table but string in this batch"):
            t.commit_batch("ds", "events", "b2", changed, time_column="ts")
    # ...also beside a new column (the schema update adds only the new one)
    changed = changed.append_column("y", pa.array([1.0], pa.float64()))
    with pytest.raises(TableError, match="column 'x'"):
        t.commit_batch("ds", "events", "b2", changed, time_column="ts")
    assert t.read("ds", "events").column(BATCH_COLUMN).to_pylist() == ["b1", "b1"]
    # Integers into a double column are the same numbers: taken.
    ints = rows(1, 3).set_column(2, "x", pa.array([7], pa.int64()))
    t.commit_batch("ds", "events", "b3", ints, time_column="ts")
    assert t.read("ds", "events", {"b3"}).column("x").to_pylist() == [7.0]


def test_a_new_home_over_an_existing_lake_adopts_its_tables(settings, tmp_path):
    """Another RTML_HOME (a new machine, a lost catalog file) over the same lake: its empty catalog
    registers the lake's tables from their newest metadata, so every batch stays readable and the next
    commit goes to the same table, never to a second one that would hide the earlier batches."""
    lake = _ingest_all(settings)
    before = {kind: lake.read_batches(DS, kind) for kind in ("events", "labels")}
    moved = Settings(storage="local", home=tmp_path / "new-home", lake_uri=settings.lake_uri)
    assert moved.resolved_catalog_uri() != settings.resolved_catalog_uri()
    again = Lake(moved)
    for kind in ("events", "labels"):  # a reader first: the tables are found in the lake
        assert again.read_batches(DS, kind).equals(before[kind])
    assert again.tables.table(DS, "events").metadata_location == Tables(settings).table(DS, "events").metadata_location
    # A writer on the new home: the batch lands in the same table, beside the earlier ones.
    extra = rows(3, 2).rename_columns(["event_id", SPEC.event_time, "x"])
    fresh = Tables(Settings(storage="local", home=tmp_path / "third-home", lake_uri=settings.lake_uri))
    fresh.commit_batch(DS, "events", "29990101T000000-new", extra.select(["event_id", SPEC.event_time]),
                       time_column=SPEC.event_time)
    batches = set(fresh.read(DS, "events").column(BATCH_COLUMN).to_pylist())
    with_rows = {m["batch_id"] for m in lake.manifests(DS, "events") if m["accepted"]}
    assert "29990101T000000-new" in batches and with_rows and with_rows <= batches


def test_two_writers_of_one_table_both_commit(settings):
    """Events and labels tasks, or two workers: a lost commit race is retried, nothing is lost."""
    a, b = Tables(settings), Tables(settings)
    a.commit_batch("ds", "events", "b1", rows(3, 1), time_column="ts")
    b.table("ds", "events")  # b holds the table as of b1
    a.commit_batch("ds", "events", "b2", rows(3, 2), time_column="ts")
    b.commit_batch("ds", "events", "b3", rows(3, 3), time_column="ts")  # stale metadata: must retry
    assert Tables(settings).read("ds", "events").num_rows == 9


def test_a_writer_whose_snapshot_another_expired_meanwhile_commits(tmp_path):
    """Two serving replicas log to one table: while b idles, a's commits expire the snapshot b's
    cached metadata starts from (and delete its manifests); b reloads and commits, nothing is lost."""
    settings = Settings(storage="local", home=tmp_path / "home", lake_uri=str(tmp_path / "lake"),
                        table_snapshot_max=2)
    a, b = Tables(settings), Tables(settings)
    b.commit_batch("ds", "events", "b0", rows(3, 1), time_column="ts")
    for k in range(1, 7):
        a.commit_batch("ds", "events", f"a{k}", rows(3, 1 + k % 3, f"a{k}-"), time_column="ts")
    stale = b.table("ds", "events").current_snapshot()
    assert a.table("ds", "events").refresh().metadata.snapshot_by_id(stale.snapshot_id) is None
    b.commit_batch("ds", "events", "b1", rows(3, 2, "b1-"), time_column="ts")
    got = Tables(settings).read("ds", "events").to_pandas()
    assert got.groupby(BATCH_COLUMN).size().to_dict() == {"b0": 3, "b1": 3, **{f"a{k}": 3 for k in range(1, 7)}}


def produce(settings: Settings, **kw) -> dict:
    args = dict(rows=600, start=T0, rate=1.0, seed=3, label_delay=300.0, file_seconds=60.0)
    args.update(kw)
    return prod.produce(SPEC, to="landing", settings=settings, **args)


def _ingest_all(settings: Settings) -> Lake:
    produce(settings, bad_fraction=0.03)
    lake = Lake(settings)
    for k in range(3):
        for kind in ("events", "labels"):
            ingest_interval(SPEC, kind, T0 + k * FIVE, T0 + (k + 1) * FIVE, settings=settings, lake=lake)
    return lake


def test_ingestion_into_tables_reads_the_same_in_any_lake_and_a_window_reads_no_manifest(settings, tmp_path,
                                                                                        monkeypatch):
    """Same landing files into two lakes (each its own home and catalog): every reader gets the same
    frames and lineage (what a read returns depends on the rows, not on snapshot ids or catalogs);
    a window reads the day index and the table, no manifest."""
    files = _ingest_all(Settings(storage="local", home=tmp_path / "fh", lake_uri=str(tmp_path / "flake")))
    lake = _ingest_all(settings)
    manifests = lake.manifests(DS, "events")
    assert all(m["table"] == f"{DS}.events" and m["snapshot_id"] and "files" not in m for m in manifests)
    assert sum(m["records_in"] for m in manifests) == 600
    for kind in ("events", "labels"):
        assert lake.read_batches(DS, kind).equals(files.read_batches(DS, kind))
    some = [m["batch_id"] for m in manifests[1:]]
    assert lake.read_batches(DS, "events", some).equals(files.read_batches(DS, "events", some))
    for window in ((None, None), (T0, T0 + FIVE), (T0 + FIVE, T0 + 3 * FIVE)):
        got, lineage = lake.labelled(SPEC, *window)
        want, want_lineage = files.labelled(SPEC, *window)
        assert got.equals(want) and lineage == want_lineage and len(got)
    seen: list[str] = []
    real_list, real_get = lake.store.list, lake.store.get
    monkeypatch.setattr(lake.store, "list", lambda prefix="": seen.append(prefix) or real_list(prefix))
    monkeypatch.setattr(lake.store, "get", lambda key: seen.append(key) or real_get(key))
    got, _ = lake.labelled(SPEC, T0 + FIVE, T0 + 3 * FIVE)
    assert len(got) and seen and not any("_manifests" in k for k in seen)
    monkeypatch.undo()
    # A re-run of a batch changes nothing a reader sees.
    before = lake.read_batches(DS, "events")
    ingest_interval(SPEC, "events", T0, T0 + FIVE, settings=settings, lake=lake)
    assert lake.read_batches(DS, "events").equals(before)


@pytest.mark.parametrize("stage", ["before-data", "data"])
def test_a_writer_killed_before_or_after_the_commit_leaves_no_partial_batch(settings, tmp_path, stage):
    produce(settings, rows=100)
    env = {**os.environ, "RTML_STORAGE": "local", "RTML_HOME": str(settings.home), "RTML_LAKE_URI": settings.lake_uri,
           "RTML_TEST_CRASH_AFTER_WRITE": stage}
    cmd = [sys.executable, "-m", "rtml.cli", "ingest", "--kind", "events", "--source", "landing",
           "--start", T0.isoformat(), "--end", (T0 + FIVE).isoformat(), "--json"]
    crashed = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert crashed.returncode == 75, crashed.stderr
    lake = Lake(settings)
    assert lake.manifests(DS, "events") == [] and lake.read_batches(DS, "events").empty
    committed = Tables(settings).read(DS, "events").num_rows if Tables(settings).exists(DS, "events") else 0
    assert committed == (100 if stage == "data" else 0)  # all of the batch or none of it
    env.pop("RTML_TEST_CRASH_AFTER_WRITE")
    ok = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["events"]["accepted"] == 100
    assert len(lake.read_batches(DS, "events")) == 100 == Tables(settings).read(DS, "events").num_rows


def test_a_window_read_at_its_snapshots_is_unchanged_by_later_commits(settings):
    """Lineage: what training read is read back exactly, after new batches and a re-written batch."""
    from rtml.train import frame_digest, read_lineage

    produce(settings, rows=900, bad_fraction=0.0)
    lake = Lake(settings)
    for k in range(2):
        for kind in ("events", "labels"):
            ingest_interval(SPEC, kind, T0 + k * FIVE, T0 + (k + 1) * FIVE, settings=settings, lake=lake)
    snaps = lake.snapshots(DS)
    assert set(snaps) == {"events", "labels"} and all(snaps.values())
    then, batches = lake.labelled(SPEC, snapshots=snaps)
    for kind in ("events", "labels"):  # later batches land
        ingest_interval(SPEC, kind, T0 + 2 * FIVE, T0 + 3 * FIVE, settings=settings, lake=lake)
    first = batches["events"][0]
    current = Tables(settings).read(DS, "events", {first}).drop_columns([BATCH_COLUMN])
    Tables(settings).commit_batch(DS, "events", first, current.slice(0, 10))  # a batch re-written smaller
    now, _ = lake.labelled(SPEC)
    assert not now.equals(then)
    lineage = {"window_start": "2000-01-01T00:00:00+00:00", "window_end": "2100-01-01T00:00:00+00:00",
               "events_batches": batches["events"], "labels_batches": batches["labels"],
               "tables": {k: {"table": f"{DS}.{k}", "snapshot_id": v} for k, v in snaps.items()}}
    back = read_lineage(SPEC, lineage, lake)
    assert back.equals(then) and frame_digest(back) == frame_digest(then) != frame_digest(now)


def test_an_event_already_in_a_table_batch_is_quarantined_as_a_duplicate(settings):
    """The cross-batch duplicate check reads table batches too (a re-sent event is not a new row)."""
    from rtml.ingest.sources import landing_key, landing_store

    produce(settings, rows=100)
    lake = Lake(settings)
    ingest_interval(SPEC, "events", T0, T0 + FIVE, settings=settings, lake=lake)
    again = prod.build(SPEC, rows=5, start=T0, seed=3)[0]  # the same first 5 events, re-sent later
    landing_store(settings).put(landing_key(DS, "events", T0 + FIVE + timedelta(seconds=10), "resend", "jsonl"),
                                again.to_json(orient="records", lines=True, date_format="iso").encode())
    second = ingest_interval(SPEC, "events", T0 + FIVE, T0 + 2 * FIVE, settings=settings, lake=lake)
    assert (second["records_in"], second["accepted"], second["quarantined"]) == (5, 0, 5)
    assert second["reasons"] == {"duplicate event_id": 5}
    assert len(lake.read_batches(DS, "events")) == 100


# --- maintenance -------------------------------------------------------------------------------
@pytest.fixture
def iceberg(tmp_path: Path) -> Settings:
    return Settings(storage="local", home=tmp_path / "home", lake_uri=str(tmp_path / "lake"))


def day_rows(n: int, day: int, prefix: str) -> pa.Table:
    times = [datetime(2026, 1, day, tzinfo=UTC) + timedelta(minutes=i) for i in range(n)]
    return pa.Table.from_arrays([pa.array([f"{prefix}-{i}" for i in range(n)]),
                                 pa.array(times, pa.timestamp("us", tz="UTC")),
                                 pa.array([float(i) for i in range(n)])], schema=SCHEMA)


def _day_files(settings: Settings) -> dict[str, int]:
    files = Tables(settings).table("ds", "events").refresh().inspect.files().to_pylist()
    out: dict[str, int] = {}
    for f in files:
        day = str(f["partition"]["ts_day"])
        out[day] = out.get(day, 0) + 1
    return out


def _ordered(table: pa.Table) -> pd.DataFrame:
    return table.to_pandas().sort_values([BATCH_COLUMN, "id"]).reset_index(drop=True)


KEEP_ALL = 1e6  # hours: no snapshot is old enough to expire


def test_compaction_rewrites_a_day_of_small_files_into_one_and_keeps_every_row(iceberg):
    t = Tables(iceberg)
    for i in range(20):
        t.commit_batch("ds", "events", f"b{i:02d}", day_rows(3, 1, f"d1b{i}"), time_column="ts")
    for i in range(2):
        t.commit_batch("ds", "events", f"c{i}", day_rows(2, 2, f"d2c{i}"), time_column="ts")
    before = t.read("ds", "events")
    by_batch = t.read("ds", "events", {"b03", "b11"}).to_pandas()
    assert _day_files(iceberg) == {"2026-01-01": 20, "2026-01-02": 2}

    result = maintain(iceberg, older_than_hours=KEEP_ALL, min_files=8)
    (r,) = result["tables"]
    assert result["ok"] and r["table"] == "ds.events" and r["compacted"] == ["2026-01-01"]
    assert (r["data_files_before"], r["data_files_after"]) == (22, 3) and r["rows_before"] == r["rows_after"] == 64
    assert _day_files(iceberg) == {"2026-01-01": 1, "2026-01-02": 2}  # the day of 2 files is left alone
    after = Tables(iceberg)
    assert _ordered(after.read("ds", "events")).equals(_ordered(before))
    chosen = after.read("ds", "events", {"b03", "b11"}).to_pandas()
    for b in ("b03", "b11"):  # each batch's rows in their order (readers put batches in batch order)
        assert chosen[chosen[BATCH_COLUMN] == b].reset_index(drop=True).equals(
            by_batch[by_batch[BATCH_COLUMN] == b].reset_index(drop=True))
    assert "ds.events: data files 22 -> 3 (1 day(s) compacted)" in result["message"]
    current = after.table("ds", "events").current_snapshot()
    assert current.summary["rtml.maintenance"] == "compact" and current.summary["rtml.rows"] == "60"
    # Nothing left to compact: a second run commits nothing.
    again = maintain(iceberg, older_than_hours=KEEP_ALL, min_files=8)
    assert again["tables"][0]["compacted"] == [] and after.snapshot("ds", "events") == current.snapshot_id


def test_a_batch_committed_during_compaction_is_not_lost(iceberg, monkeypatch):
    t = Tables(iceberg)
    for i in range(10):
        t.commit_batch("ds", "events", f"b{i:02d}", day_rows(3, 1, f"b{i}"), time_column="ts")
    real = pyiceberg.table.Table.overwrite
    raced = []

    def overwrite(self, df, *args, **kw):
        if "rtml.maintenance" in (kw.get("snapshot_properties") or {}) and not raced:
            # Another writer commits a batch of the same day after the compaction read it.
            raced.append(Tables(iceberg).commit_batch("ds", "events", "late", day_rows(4, 1, "late"), time_column="ts"))
        return real(self, df, *args, **kw)

    monkeypatch.setattr(pyiceberg.table.Table, "overwrite", overwrite)
    result = maintain(iceberg, older_than_hours=KEEP_ALL, min_files=8)
    assert raced and result["tables"][0]["compacted"] == ["2026-01-01"]
    got = Tables(iceberg).read("ds", "events").to_pandas()
    assert len(got) == 34 and got.groupby(BATCH_COLUMN).size()["late"] == 4
    assert _day_files(iceberg) == {"2026-01-01": 1}


def test_expiry_keeps_the_retained_and_current_snapshots_and_deletes_unreferenced_files(iceberg, tmp_path):
    t = Tables(iceberg)
    first = t.commit_batch("ds", "events", "b1", day_rows(5, 1, "first"), time_column="ts")
    t.commit_batch("ds", "events", "b2", day_rows(3, 2, "b2"), time_column="ts")
    t.commit_batch("ds", "events", "b1", day_rows(4, 1, "again"), time_column="ts")  # replaces b1: 2 snapshots
    t.commit_batch("ds", "events", "b3", day_rows(2, 3, "b3"), time_column="ts")
    table = t.table("ds", "events").refresh()
    snaps = [s.snapshot_id for s in table.metadata.snapshots]
    current = table.current_snapshot().snapshot_id
    now_rows = _ordered(t.read("ds", "events"))
    assert len(snaps) == 5
    replaced = {f["file_path"] for f in table.inspect.files(first["snapshot_id"]).to_pylist()} - {
        f["file_path"] for f in table.inspect.files().to_pylist()}
    assert replaced and all(Path(p.removeprefix("file://")).exists() for p in replaced)
    later = datetime.now(UTC) + timedelta(hours=48)

    # Young snapshots are kept whatever retain_last says.
    young = maintain(iceberg, older_than_hours=24, retain_last=1)
    assert young["tables"][0]["snapshots_expired"] == [] and young["tables"][0]["snapshots_after"] == 5

    # A snapshot asked for (a lineage) is kept, and with it the files it reads.
    result = maintain(iceberg, older_than_hours=24, retain_last=2, now=later, keep_snapshots={snaps[1]})
    (r,) = result["tables"]
    assert r["snapshots_expired"] == [snaps[0], snaps[2]] and (r["snapshots_before"], r["snapshots_after"]) == (5, 3)
    assert "snapshots 5 -> 3" in result["message"]
    assert all(Path(p.removeprefix("file://")).exists() for p in replaced)
    assert Tables(iceberg).read("ds", "events", snapshot_id=snaps[1]).num_rows == 8  # still readable as it was

    result = maintain(iceberg, older_than_hours=24, retain_last=2, now=later)
    (r,) = result["tables"]
    assert r["snapshots_expired"] == [snaps[1]] and r["snapshots_after"] == 2 and r["files_deleted"] >= len(replaced)
    assert not any(Path(p.removeprefix("file://")).exists() for p in replaced)  # only expired snapshots held them
    fresh = Tables(iceberg)
    assert fresh.snapshot("ds", "events") == current and _ordered(fresh.read("ds", "events")).equals(now_rows)

    # retain_last 1: only the current one is left.
    last = maintain(iceberg, older_than_hours=24, retain_last=1, now=later)["tables"][0]
    assert last["snapshots_after"] == 1 and Tables(iceberg).snapshot("ds", "events") == current
    assert _ordered(Tables(iceberg).read("ds", "events", snapshot_id=current)).equals(now_rows)


def test_a_read_at_an_expired_snapshot_reads_the_current_table(iceberg, caplog):
    t = Tables(iceberg)
    old = t.commit_batch("ds", "events", "b1", day_rows(5, 1, "old"), time_column="ts")["snapshot_id"]
    t.commit_batch("ds", "events", "b1", day_rows(2, 1, "new"), time_column="ts")
    maintain(iceberg, older_than_hours=0, retain_last=1, now=datetime.now(UTC) + timedelta(hours=1))
    got = Tables(iceberg).read("ds", "events", {"b1"}, snapshot_id=old).to_pandas()
    assert sorted(got["id"]) == ["new-0", "new-1"]
    assert f"snapshot {old} was expired; reading the current table" in caplog.text


def test_retention_defaults_come_from_the_settings(tmp_path):
    settings = Settings(storage="local", home=tmp_path / "home", lake_uri=str(tmp_path / "lake"),
                        table_snapshot_retention_days=0, table_snapshot_retain_last=2)
    t = Tables(settings)
    for i in range(4):
        t.commit_batch("ds", "events", f"b{i}", day_rows(1, 1, f"b{i}"), time_column="ts")
    result = maintain(settings, min_files=100, now=datetime.now(UTC) + timedelta(seconds=1))
    assert result["retain_last"] == 2 and result["tables"][0]["snapshots_after"] == 2
    assert Settings().table_snapshot_retention_days == 30 and Settings().table_snapshot_retain_last == 10


@pytest.mark.parametrize(("field", "value"), [("table_snapshot_retention_days", float("nan")),
                                              ("table_snapshot_retention_days", -1),
                                              ("table_snapshot_retention_days", float("inf")),
                                              ("table_snapshot_retain_last", 0)])
def test_bad_retention_settings_are_refused_naming_the_field(field, value):
    with pytest.raises(ValidationError, match=field):
        Settings(**{field: value})


@pytest.mark.parametrize(("kw", "error"), [({"older_than_hours": float("nan")}, "older_than_hours"),
                                           ({"older_than_hours": -1.0}, "older_than_hours"),
                                           ({"retain_last": 0}, "retain_last"),
                                           ({"min_files": 1}, "min_files")])
def test_bad_maintenance_arguments_are_refused_naming_them(iceberg, kw, error):
    with pytest.raises(ValueError, match=error):
        maintain(iceberg, **kw)


def test_no_tables_is_said(iceberg):
    result = maintain(iceberg)
    assert result["ok"] and result["tables"] == [] and result["message"] == "no tables in the catalog"


def test_an_unpartitioned_table_is_compacted_whole_and_an_empty_one_is_left_alone(iceberg):
    t = Tables(iceberg)
    for i in range(9):
        t.commit_batch("ds", "predictions", f"p{i}", day_rows(2, 1 + i % 3, f"p{i}"))  # no time column: no partitions
    t.table("ds", "labels", SCHEMA, "ts")  # created, never committed
    before = _ordered(t.read("ds", "predictions"))
    result = maintain(iceberg, older_than_hours=KEEP_ALL, min_files=8)
    by_name = {r["table"]: r for r in result["tables"]}
    assert by_name["ds.predictions"]["compacted"] == ["(whole table)"]
    assert (by_name["ds.predictions"]["data_files_before"], by_name["ds.predictions"]["data_files_after"]) == (9, 1)
    assert _ordered(Tables(iceberg).read("ds", "predictions")).equals(before)
    assert by_name["ds.labels"] | {"table": None} == {
        "table": None, "data_files_before": 0, "data_files_after": 0, "snapshots_before": 0, "snapshots_after": 0,
        "rows_before": 0, "rows_after": 0, "compacted": [], "snapshots_expired": [], "files_deleted": 0}


# --- commit cost: table properties, bounded snapshots, lineage tags ---------------------------------------
def test_tables_get_the_commit_cost_properties_and_an_older_table_is_upgraded(settings):
    from rtml.tables import TABLE_PROPERTIES

    t = Tables(settings)
    t.commit_batch("ds", "events", "b1", rows(3, 1), time_column="ts")
    assert all(t.table("ds", "events").properties.get(k) == v for k, v in TABLE_PROPERTIES.items())
    t.catalog.create_namespace_if_not_exists("old")
    t.catalog.create_table("old.events", schema=SCHEMA.append(pa.field(BATCH_COLUMN, pa.string(), nullable=False)))
    assert Tables(settings).table("old", "events").properties.get("commit.manifest-merge.enabled") is None  # a reader
    Tables(settings).commit_batch("old", "events", "b1", rows(3, 1), time_column="ts")  # a writer upgrades it
    props = Tables(settings).table("old", "events").properties
    assert all(props.get(k) == v for k, v in TABLE_PROPERTIES.items())


def test_a_rerun_drops_its_earlier_file_by_metadata_and_reads_no_other_batch(settings):
    """Full bounds of _batch: batch ids sharing their first 16 characters are told apart, so a re-run
    deletes its earlier file outright (a ``delete`` snapshot) instead of reading and rewriting files."""
    t = Tables(settings)
    ids = ["20260101T000000-20260101T000500", "20260101T000000-20260101T001000"]  # same 16-character prefix
    for k, bid in enumerate(ids):
        t.commit_batch("ds", "events", bid, rows(4, 1, f"p{k}"), time_column="ts")
    t.commit_batch("ds", "events", ids[0], rows(2, 1, "again"), time_column="ts")
    table = t.table("ds", "events").refresh()
    ops = [s.summary.operation.value for s in table.metadata.snapshots if s.summary]
    assert ops == ["append", "append", "delete", "append"]
    got = t.read("ds", "events").to_pandas()
    assert got.groupby(BATCH_COLUMN).size().to_dict() == {ids[0]: 2, ids[1]: 4}


def test_a_writer_keeps_the_snapshots_bounded_and_a_trained_windows_snapshots_are_kept(tmp_path):
    """Past table_snapshot_max (+ half) the writer expires the oldest snapshots; the snapshots a
    training window read are tagged and stay: the version's data reads back exactly, after a re-run."""
    from rtml.tables import LINEAGE_TAG
    from rtml.train import frame_digest, load_window, read_lineage

    settings = Settings(storage="local", home=tmp_path / "home", lake_uri=str(tmp_path / "lake"),
                        table_snapshot_max=4)
    produce(settings, rows=2400, bad_fraction=0.0)
    lake = Lake(settings)
    for k in range(2):
        for kind in ("events", "labels"):
            ingest_interval(SPEC, kind, T0 + k * FIVE, T0 + (k + 1) * FIVE, settings=settings, lake=lake)
    then, lineage = load_window(SPEC, lake, window_days=30)
    kept = {k: v["snapshot_id"] for k, v in lineage["tables"].items()}
    for k in range(2, 8):  # later batches land, and one of the window's batches is re-written smaller
        for kind in ("events", "labels"):
            ingest_interval(SPEC, kind, T0 + k * FIVE, T0 + (k + 1) * FIVE, settings=settings, lake=lake)
    first = lineage["events_batches"][0]
    current = Tables(settings).read(DS, "events", {first}).drop_columns([BATCH_COLUMN])
    Tables(settings).commit_batch(DS, "events", first, current.slice(0, 10), time_column=SPEC.event_time)
    for kind in ("events", "labels"):
        table = Tables(settings).table(DS, kind)
        snaps = {s.snapshot_id for s in table.metadata.snapshots}
        assert len(snaps) <= 4 + 2 + 1  # the bound, the slack, the lineage tag
        assert kept[kind] in snaps and f"{LINEAGE_TAG}{kept[kind]}" in table.metadata.refs
    back = read_lineage(SPEC, lineage, Lake(settings))
    now, _ = Lake(settings).labelled(SPEC)
    assert frame_digest(back) == frame_digest(then) == lineage["rows_digest"] != frame_digest(now)
    per_batch = Tables(settings).read(DS, "events").to_pandas().groupby(BATCH_COLUMN).size().to_dict()
    want = {m["batch_id"]: m["accepted"] for m in lake.manifests(DS, "events") if m["accepted"]}
    assert per_batch == {**want, first: 10}  # no batch lost or doubled by the expiries


def test_has_batch_answers_from_file_metadata(settings):
    tables = Tables(settings)
    assert tables.has_batch("ds", "events", "b1") is False  # no table yet
    tables.commit_batch("ds", "events", "b1", rows(3, 1), time_column="ts")
    tables.commit_batch("ds", "events", "b2", rows(2, 2), time_column="ts")
    assert tables.has_batch("ds", "events", "b1") and tables.has_batch("ds", "events", "b2")
    assert not tables.has_batch("ds", "events", "b")  # a prefix of both is neither
    tables.commit_batch("ds", "events", "b1", rows(0, 1), time_column="ts")  # re-run with no rows
    assert not tables.has_batch("ds", "events", "b1") and tables.has_batch("ds", "events", "b2")


def test_a_table_of_another_lake_is_refused_not_written(tmp_path):
    """A catalog shared by two lakes by mistake (RTML_CATALOG_URI set for both): the second lake's
    writer must not put its rows in the first lake's table."""
    shared = f"sqlite:///{tmp_path / 'shared.db'}"
    first = Settings(storage="local", home=tmp_path / "h", lake_uri=str(tmp_path / "one"), catalog_uri=shared)
    second = first.model_copy(update={"lake_uri": str(tmp_path / "two")})
    Tables(first).commit_batch("ds", "events", "b1", rows(2, 1), time_column="ts")
    with pytest.raises(TableError, match=r"ds\.events .*one.*not in this lake.*two"):
        Tables(second).commit_batch("ds", "events", "b1", rows(2, 1), time_column="ts")
    assert not (tmp_path / "two").exists() or not any((tmp_path / "two").rglob("*.parquet"))
