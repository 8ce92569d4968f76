"""rtml.migration on a local folder lake and a SQLite catalog: a file lake moved into tables reads
the same frames (batches, labelled windows), resumably and idempotently."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest
from support.lake import commit_frame, legacy_copy, legacy_key

from rtml import migration as mg
from rtml.ingest import produce as prod
from rtml.ingest.batches import ingest_interval
from rtml.lake import Lake, UnmigratedBatches, to_parquet_bytes
from rtml.migration import migrate
from rtml.settings import Settings
from rtml.spec import load_spec
from rtml.tables import BATCH_COLUMN, TableError, Tables

SPEC = load_spec()
DS = SPEC.dataset.name
T0 = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
FIVE = timedelta(minutes=5)
SCHEMA = pa.schema([pa.field("id", pa.string()), pa.field("ts", pa.timestamp("us", tz="UTC")),
                    pa.field("x", pa.float64())])
WINDOWS = ((None, None), (T0, T0 + FIVE), (T0 + FIVE, T0 + 3 * FIVE))


def _settings(tmp_path: Path) -> Settings:
    return Settings(storage="local", home=tmp_path / "home", lake_uri=str(tmp_path / "lake"))


PRED_BATCH = "20261125T120100000000-1-00001-abcdef"


@pytest.fixture
def tables_lake(tmp_path: Path) -> Lake:
    """What rtml ingests today: 3 intervals of events and labels (some quarantined), 1 predictions batch."""
    settings = Settings(storage="local", home=tmp_path / "a-home", lake_uri=str(tmp_path / "a-lake"))
    prod.produce(SPEC, to="landing", settings=settings, rows=600, start=T0, rate=1.0, seed=3, label_delay=300.0,
                 file_seconds=60.0, bad_fraction=0.03)
    lake = Lake(settings)
    for k in range(3):
        for kind in ("events", "labels"):
            ingest_interval(SPEC, kind, T0 + k * FIVE, T0 + (k + 1) * FIVE, settings=settings, lake=lake)
    commit_frame(lake, DS, "predictions", PRED_BATCH, _predictions(), time_column="time", schema_hash=SPEC.schema_hash())
    return lake


def _predictions() -> pd.DataFrame:
    return pd.DataFrame({"request_id": ["r1", "r2", "r3"], "version": ["1", "1", "2"], "score": [0.1, 0.7, 0.4],
                         "time": pd.to_datetime(["2026-11-25T12:00:01.5", "2026-11-25T12:00:02.0",
                                                 "2026-11-25T12:01:00.0"], utc=True)})


@pytest.fixture
def files_lake(tables_lake: Lake, tmp_path: Path) -> Lake:
    """The same batches as a lake written before tables held them: each batch's rows as Parquet
    listed by its manifest's ``files`` (same ids, counts, time ranges), its quarantine file beside."""
    lake = Lake(_settings(tmp_path))
    legacy_copy(tables_lake, lake, DS)
    # The serving log wrote pandas Parquet (nanosecond times) with its own manifest.
    key = legacy_key(DS, "predictions", PRED_BATCH)
    lake.store.put(key, to_parquet_bytes(_predictions()))
    lake.write_manifest(DS, "predictions", PRED_BATCH,
                        {"batch_id": PRED_BATCH, "kind": "predictions", "files": [key], "records_in": 3, "accepted": 3,
                         "quarantined": 0, "schema_hash": SPEC.schema_hash(), "time_column": "time",
                         "min_time": "2026-11-25T12:00:01.5+00:00", "watermark": "2026-11-25T12:01:00+00:00"})
    return lake


def _frames(lake: Lake) -> dict:
    out = {kind: lake.read_batches(DS, kind) for kind in ("events", "labels", "predictions")}
    out.update({f"labelled{i}": lake.labelled(SPEC, *w) for i, w in enumerate(WINDOWS)})
    return out


def _assert_same(got: dict, want: dict) -> None:
    for name, frame in want.items():
        if name.startswith("labelled"):
            assert got[name][0].equals(frame[0]) and got[name][1] == frame[1] and len(frame[0]), name
        else:
            assert got[name].equals(frame) and len(frame), name


def _parquet_keys(lake: Lake) -> list[str]:
    return [k for kind in ("events", "labels", "predictions") for k in lake.store.list(f"{DS}/{kind}/")]


def test_migration_moves_every_batch_and_readers_get_the_same_frames(files_lake, tables_lake, tmp_path):
    before = _frames(tables_lake)
    with pytest.raises(UnmigratedBatches, match="rtml lake migrate"):  # not read before it is migrated
        _frames(files_lake)
    manifests = {kind: files_lake.manifests(DS, kind) for kind in ("events", "labels", "predictions")}
    with_rows = {kind: [m for m in ms if m["files"]] for kind, ms in manifests.items()}
    quarantine = files_lake.store.list(f"{DS}/quarantine/")
    assert quarantine and _parquet_keys(files_lake)

    result = migrate(_settings(tmp_path))
    assert result["ok"] and not result["mismatches"]
    for kind, ms in with_rows.items():
        counts = result["kinds"][f"{DS}/{kind}"]
        assert counts["migrated"] == len(ms) and counts["rows"] == sum(m["accepted"] for m in ms)
        assert counts["empty"] == len(manifests[kind]) - len(ms) and counts["checked"]
        assert f"{DS}/{kind}: {len(manifests[kind])} batch(es): migrated {len(ms)}" in result["message"]

    lake = Lake(_settings(tmp_path))
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
    settings = _settings(tmp_path)
    first = migrate(settings)
    snaps = Lake(settings).snapshots(DS)
    again = migrate(settings)
    assert again["ok"] and Lake(settings).snapshots(DS) == snaps
    for key, counts in again["kinds"].items():
        assert counts["migrated"] == 0 and counts["already"] == first["kinds"][key]["migrated"]
        assert counts["rows_in_table"] == first["kinds"][key]["rows"]


def test_dry_run_reports_and_changes_nothing(files_lake, tmp_path):
    settings = _settings(tmp_path)
    manifests = {k: files_lake.store.get(k) for k in files_lake.store.list(f"{DS}/_manifests/")}
    keys = _parquet_keys(files_lake)
    result = migrate(settings, dry_run=True)
    assert result["dry_run"] and "would migrate" in result["message"]
    want = sum(m["accepted"] for m in files_lake.manifests(DS, "events"))
    assert result["kinds"][f"{DS}/events"]["rows"] == want > 0
    assert {k: files_lake.store.get(k) for k in files_lake.store.list(f"{DS}/_manifests/")} == manifests
    assert _parquet_keys(files_lake) == keys and not Tables(settings).exists(DS, "events")


def test_only_the_chosen_datasets_and_kinds_move(files_lake, tmp_path):
    settings = _settings(tmp_path)
    assert migrate(settings, datasets=["other"])["message"].startswith("nothing to migrate")
    result = migrate(settings, datasets=[DS], kinds=("labels",))
    assert list(result["kinds"]) == [f"{DS}/labels"]
    assert files_lake.store.list(f"{DS}/events/") and not files_lake.store.list(f"{DS}/labels/")


@pytest.mark.parametrize("stage", ["committed", "manifest"])
def test_a_migration_killed_half_way_resumes_with_no_batch_twice_and_none_lost(files_lake, tables_lake, tmp_path,
                                                                             monkeypatch, stage):
    settings = _settings(tmp_path)
    before = _frames(tables_lake)
    with_rows = [m["batch_id"] for m in files_lake.manifests(DS, "events") if m["files"]]
    assert len(with_rows) >= 2
    victim = with_rows[0]

    def crash(at: str, batch_id: str) -> None:
        if at == stage and batch_id == victim:
            raise KeyboardInterrupt(f"killed at {at}")

    monkeypatch.setattr(mg, "_migration_step", crash)
    with pytest.raises(KeyboardInterrupt):
        migrate(settings)
    # Half-way: the batches moved read from the table; the others are refused, naming the migration.
    half = Lake(settings)
    with pytest.raises(UnmigratedBatches) as err:
        half.read_batches(DS, "events")
    assert err.value.batch_ids == (with_rows if stage == "committed" else with_rows[1:])
    moved = [] if stage == "committed" else with_rows[:1]
    assert half.read_batches(DS, "events", moved).equals(tables_lake.read_batches(DS, "events", moved))
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
    settings = _settings(tmp_path)
    first = [m for m in files_lake.manifests(DS, "events") if m["files"]][0]
    real = Tables.read
    monkeypatch.setattr(Tables, "read", lambda self, *a, **kw: real(self, *a, **kw).slice(1))
    with pytest.raises(TableError, match=f"batch {first['batch_id']} reads back {first['accepted'] - 1} rows"):
        migrate(settings, kinds=("events",))
    assert files_lake.manifests(DS, "events")[0] == first
    assert all(files_lake.store.exists(k) for k in first["files"])


def test_a_table_batch_that_differs_from_its_manifest_is_reported(files_lake, tmp_path):
    settings = _settings(tmp_path)
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
