"""rtml.migration.migrate and rtml.tables.maintain on a local folder lake and a SQLite catalog:
a file lake moved into tables reads the same frames (batches, labelled windows), resumably and
idempotently; compaction of a day's small files keeps every row; snapshot expiry keeps the current
(and the retained) snapshots, deletes what only expired ones referenced, and a lineage read at an
expired snapshot falls back to the current table."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyiceberg.table
import pytest
from pydantic import ValidationError

from rtml import migration as mg
from rtml.ingest import produce as prod
from rtml.ingest.batches import ingest_interval
from rtml.lake import Lake
from rtml.migration import migrate
from rtml.settings import Settings
from rtml.spec import load_spec
from rtml.tables import BATCH_COLUMN, TableError, Tables, maintain

SPEC = load_spec()
DS = SPEC.dataset.name
T0 = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
FIVE = timedelta(minutes=5)
SCHEMA = pa.schema([pa.field("id", pa.string()), pa.field("ts", pa.timestamp("us", tz="UTC")),
                    pa.field("x", pa.float64())])
WINDOWS = ((None, None), (T0, T0 + FIVE), (T0 + FIVE, T0 + 3 * FIVE))


def _settings(tmp_path: Path, fmt: str) -> Settings:
    return Settings(storage="local", home=tmp_path / "home", lake_uri=str(tmp_path / "lake"), lake_format=fmt)


@pytest.fixture
def files_lake(tmp_path: Path) -> Lake:
    """A lake_format files lake: 3 intervals of events and labels (some quarantined), 1 predictions batch."""
    settings = _settings(tmp_path, "files")
    prod.produce(SPEC, to="landing", settings=settings, rows=600, start=T0, rate=1.0, seed=3, label_delay=300.0,
                 file_seconds=60.0, bad_fraction=0.03)
    lake = Lake(settings)
    for k in range(3):
        for kind in ("events", "labels"):
            ingest_interval(SPEC, kind, T0 + k * FIVE, T0 + (k + 1) * FIVE, settings=settings, lake=lake)
    # The serving log writes pandas Parquet (nanosecond times) with its own manifest.
    preds = pd.DataFrame({"request_id": ["r1", "r2", "r3"], "version": ["1", "1", "2"], "score": [0.1, 0.7, 0.4],
                          "time": pd.to_datetime(["2026-11-25T12:00:01.5", "2026-11-25T12:00:02.0", "2026-11-25T12:01:00.0"],
                                                 utc=True)})
    key = lake.data_key(DS, "predictions", "20261125T120100000000-1-00001-abcdef")
    lake.write_table(key, preds)
    lake.write_manifest(DS, "predictions", "20261125T120100000000-1-00001-abcdef",
                        {"batch_id": "20261125T120100000000-1-00001-abcdef", "kind": "predictions", "files": [key],
                         "records_in": 3, "accepted": 3, "quarantined": 0, "schema_hash": SPEC.schema_hash()})
    return lake


def _frames(lake: Lake) -> dict:
    out = {kind: lake.read_batches(DS, kind) for kind in ("events", "labels", "predictions")}
    out.update({f"labelled{i}": lake.labelled(SPEC, *w) for i, w in enumerate(WINDOWS)})
    return out


def _assert_same(got: dict, want: dict) -> None:
    for name, frame in want.items():
        if name == "predictions":  # the table stores microseconds: same values, another resolution
            pd.testing.assert_frame_equal(got[name], frame, check_dtype=False)
        elif name.startswith("labelled"):
            assert got[name][0].equals(frame[0]) and got[name][1] == frame[1] and len(frame[0]), name
        else:
            assert got[name].equals(frame) and len(frame), name


def _parquet_keys(lake: Lake) -> list[str]:
    return [k for kind in ("events", "labels", "predictions") for k in lake.store.list(f"{DS}/{kind}/")]


def test_migration_moves_every_batch_and_readers_get_the_same_frames(files_lake, tmp_path):
    before = _frames(files_lake)
    manifests = {kind: files_lake.manifests(DS, kind) for kind in ("events", "labels", "predictions")}
    with_rows = {kind: [m for m in ms if m["files"]] for kind, ms in manifests.items()}
    quarantine = files_lake.store.list(f"{DS}/quarantine/")
    assert quarantine and _parquet_keys(files_lake)

    result = migrate(_settings(tmp_path, "iceberg"))
    assert result["ok"] and not result["mismatches"]
    for kind, ms in with_rows.items():
        counts = result["kinds"][f"{DS}/{kind}"]
        assert counts["migrated"] == len(ms) and counts["rows"] == sum(m["accepted"] for m in ms)
        assert counts["empty"] == len(manifests[kind]) - len(ms) and counts["checked"]
        assert f"{DS}/{kind}: {len(manifests[kind])} batch(es): migrated {len(ms)}" in result["message"]

    lake = Lake(_settings(tmp_path, "iceberg"))
    _assert_same(_frames(lake), before)
    assert _parquet_keys(lake) == [] and lake.store.list(f"{DS}/quarantine/") == quarantine
    table = lake.tables.table(DS, "events")
    for old in with_rows["events"]:
        m = json.loads(lake.store.get(lake.manifest_key(DS, "events", old["batch_id"])))
        assert m["table"] == f"{DS}.events" and m["files"] == [] and m["migrated_files"] == old["files"]
        summary = table.snapshot_by_id(m["snapshot_id"]).summary
        assert summary["rtml.batch"] == old["batch_id"] and summary["rtml.accepted"] == str(old["accepted"])
        assert summary["rtml.migrated_from"] == "files"
    assert "day" in str(table.spec())  # partitioned by the manifest's time column


def test_a_second_migration_changes_nothing(files_lake, tmp_path):
    settings = _settings(tmp_path, "iceberg")
    first = migrate(settings)
    snaps = Lake(settings).snapshots(DS)
    again = migrate(settings)
    assert again["ok"] and Lake(settings).snapshots(DS) == snaps
    for key, counts in again["kinds"].items():
        assert counts["migrated"] == 0 and counts["already"] == first["kinds"][key]["migrated"]
        assert counts["rows_in_table"] == first["kinds"][key]["rows"]


def test_dry_run_reports_and_changes_nothing(files_lake, tmp_path):
    settings = _settings(tmp_path, "iceberg")
    manifests = {k: files_lake.store.get(k) for k in files_lake.store.list(f"{DS}/_manifests/")}
    keys = _parquet_keys(files_lake)
    result = migrate(settings, dry_run=True)
    assert result["dry_run"] and "would migrate" in result["message"]
    want = sum(m["accepted"] for m in files_lake.manifests(DS, "events"))
    assert result["kinds"][f"{DS}/events"]["rows"] == want > 0
    assert {k: files_lake.store.get(k) for k in files_lake.store.list(f"{DS}/_manifests/")} == manifests
    assert _parquet_keys(files_lake) == keys and not Tables(settings).exists(DS, "events")


def test_only_the_chosen_datasets_and_kinds_move(files_lake, tmp_path):
    settings = _settings(tmp_path, "iceberg")
    assert migrate(settings, datasets=["other"])["message"].startswith("nothing to migrate")
    result = migrate(settings, datasets=[DS], kinds=("labels",))
    assert list(result["kinds"]) == [f"{DS}/labels"]
    assert files_lake.store.list(f"{DS}/events/") and not files_lake.store.list(f"{DS}/labels/")


@pytest.mark.parametrize("stage", ["committed", "manifest"])
def test_a_migration_killed_half_way_resumes_with_no_batch_twice_and_none_lost(files_lake, tmp_path, monkeypatch,
                                                                             stage):
    settings = _settings(tmp_path, "iceberg")
    before = _frames(files_lake)
    victim = [m for m in files_lake.manifests(DS, "events") if m["files"]][1]["batch_id"]

    def crash(at: str, batch_id: str) -> None:
        if at == stage and batch_id == victim:
            raise KeyboardInterrupt(f"killed at {at}")

    monkeypatch.setattr(mg, "_migration_step", crash)
    with pytest.raises(KeyboardInterrupt):
        migrate(settings)
    # Half-way: every batch still reads once, from its files or from the table.
    _assert_same(_frames(Lake(settings)), {k: v for k, v in before.items() if k in ("events", "labels")})
    monkeypatch.undo()
    result = migrate(settings)
    assert result["ok"] and _parquet_keys(Lake(settings)) == []
    lake = Lake(settings)
    _assert_same(_frames(lake), before)
    counts = lake.tables.read(DS, "events").to_pandas().groupby(BATCH_COLUMN).size().to_dict()
    assert counts == {m["batch_id"]: m["accepted"] for m in lake.manifests(DS, "events") if m["accepted"]}
    if stage == "manifest":  # the manifest was rewritten: the second run only deletes the files
        assert result["kinds"][f"{DS}/events"]["files_deleted"] >= 1


def test_a_batch_that_reads_back_short_keeps_its_files_and_manifest(files_lake, tmp_path, monkeypatch):
    settings = _settings(tmp_path, "iceberg")
    first = [m for m in files_lake.manifests(DS, "events") if m["files"]][0]
    real = Tables.read
    monkeypatch.setattr(Tables, "read", lambda self, *a, **kw: real(self, *a, **kw).slice(1))
    with pytest.raises(TableError, match=f"batch {first['batch_id']} reads back {first['accepted'] - 1} rows"):
        migrate(settings, kinds=("events",))
    assert files_lake.manifests(DS, "events")[0] == first
    assert all(files_lake.store.exists(k) for k in first["files"])


def test_a_table_batch_that_differs_from_its_manifest_is_reported(files_lake, tmp_path):
    settings = _settings(tmp_path, "iceberg")
    migrate(settings)
    m = [m for m in files_lake.manifests(DS, "events") if m["accepted"]][0]
    t = Tables(settings)
    t.commit_batch(DS, "events", m["batch_id"], t.read(DS, "events", {m["batch_id"]}).drop_columns([BATCH_COLUMN])
                   .slice(0, 5))
    result = migrate(settings)
    assert not result["ok"]
    assert result["mismatches"] == [{"dataset": DS, "kind": "events", "batch_id": m["batch_id"],
                                     "detail": f"5 rows in the table, its manifest says {m['accepted']}"}]
    assert f"MISMATCH {DS}/events batch {m['batch_id']}" in result["message"]


# --- maintenance -----------------------------------------------------------------------------------
@pytest.fixture
def iceberg(tmp_path: Path) -> Settings:
    return _settings(tmp_path, "iceberg")


def rows(n: int, day: int, prefix: str) -> pa.Table:
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
        t.commit_batch("ds", "events", f"b{i:02d}", rows(3, 1, f"d1b{i}"), time_column="ts")
    for i in range(2):
        t.commit_batch("ds", "events", f"c{i}", rows(2, 2, f"d2c{i}"), time_column="ts")
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
        t.commit_batch("ds", "events", f"b{i:02d}", rows(3, 1, f"b{i}"), time_column="ts")
    real = pyiceberg.table.Table.overwrite
    raced = []

    def overwrite(self, df, *args, **kw):
        if "rtml.maintenance" in (kw.get("snapshot_properties") or {}) and not raced:
            # Another writer commits a batch of the same day after the compaction read it.
            raced.append(Tables(iceberg).commit_batch("ds", "events", "late", rows(4, 1, "late"), time_column="ts"))
        return real(self, df, *args, **kw)

    monkeypatch.setattr(pyiceberg.table.Table, "overwrite", overwrite)
    result = maintain(iceberg, older_than_hours=KEEP_ALL, min_files=8)
    assert raced and result["tables"][0]["compacted"] == ["2026-01-01"]
    got = Tables(iceberg).read("ds", "events").to_pandas()
    assert len(got) == 34 and got.groupby(BATCH_COLUMN).size()["late"] == 4
    assert _day_files(iceberg) == {"2026-01-01": 1}


def test_expiry_keeps_the_retained_and_current_snapshots_and_deletes_unreferenced_files(iceberg, tmp_path):
    t = Tables(iceberg)
    first = t.commit_batch("ds", "events", "b1", rows(5, 1, "first"), time_column="ts")
    t.commit_batch("ds", "events", "b2", rows(3, 2, "b2"), time_column="ts")
    t.commit_batch("ds", "events", "b1", rows(4, 1, "again"), time_column="ts")  # replaces b1: 2 snapshots
    t.commit_batch("ds", "events", "b3", rows(2, 3, "b3"), time_column="ts")
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
    old = t.commit_batch("ds", "events", "b1", rows(5, 1, "old"), time_column="ts")["snapshot_id"]
    t.commit_batch("ds", "events", "b1", rows(2, 1, "new"), time_column="ts")
    maintain(iceberg, older_than_hours=0, retain_last=1, now=datetime.now(UTC) + timedelta(hours=1))
    got = Tables(iceberg).read("ds", "events", {"b1"}, snapshot_id=old).to_pandas()
    assert sorted(got["id"]) == ["new-0", "new-1"]
    assert f"snapshot {old} was expired; reading the current table" in caplog.text


def test_retention_defaults_come_from_the_settings(tmp_path):
    settings = Settings(storage="local", home=tmp_path / "home", lake_uri=str(tmp_path / "lake"), lake_format="iceberg",
                        table_snapshot_retention_days=0, table_snapshot_retain_last=2)
    t = Tables(settings)
    for i in range(4):
        t.commit_batch("ds", "events", f"b{i}", rows(1, 1, f"b{i}"), time_column="ts")
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
        t.commit_batch("ds", "predictions", f"p{i}", rows(2, 1 + i % 3, f"p{i}"))  # no time column: no partitions
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
