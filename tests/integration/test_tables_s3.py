"""The lake's Iceberg tables on the REAL S3 server of the stack (SeaweedFS),
with the SQL catalog in the local PostgreSQL (a fresh database per test, dropped afterwards):
ingestion conserves records, a re-run replaces a batch's rows, a reader sees all of a batch or none
of it, and the tables' data and metadata files are on the store under ``<lake>/_iceberg``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pyarrow as pa
import pytest

from rtml.ingest import produce as prod
from rtml.ingest.batches import ingest_interval
from rtml.lake import Lake
from rtml.settings import Settings
from rtml.spec import load_spec
from rtml.tables import BATCH_COLUMN, Tables, warehouse_uri

pytestmark = pytest.mark.integration

SPEC = load_spec()
DS = SPEC.dataset.name
# An hour no other test of the session lands files in (each lake below also has its own prefix).
T0 = datetime(2026, 6, 3, 8, 0, tzinfo=UTC)
FIVE = timedelta(minutes=5)
@pytest.fixture
def pg_catalog() -> Iterator[str]:
    """A fresh PostgreSQL database for the catalog (SQLAlchemy URI), dropped with its tables afterwards.
    One per test: a catalog names each table once, and each test's lake has its own prefix."""
    from support.postgres import temporary_database

    with temporary_database("rtml_iceberg") as uri:
        yield uri.replace("postgresql://", "postgresql+psycopg2://", 1)


def _lake_settings(s3_settings: Settings, catalog: str) -> Settings:
    prefix = f"s3://{s3_settings.lake_bucket}/test-{uuid.uuid4().hex[:10]}"
    return s3_settings.model_copy(update={"lake_uri": prefix, "catalog_uri": catalog})


def _wipe(settings: Settings) -> None:
    store = Lake(settings).store
    for key in store.list(""):
        store.delete(key)


@pytest.fixture
def iceberg_s3(s3_settings: Settings, pg_catalog: str) -> Iterator[Settings]:
    """A fresh prefix of the stack's lake bucket, removed afterwards."""
    settings = _lake_settings(s3_settings, pg_catalog)
    yield settings
    _wipe(settings)


def _ingest(settings: Settings, lake: Lake, intervals: int = 3) -> list[dict]:
    out = []
    for k in range(intervals):
        for kind in ("events", "labels"):
            out.append(ingest_interval(SPEC, kind, T0 + k * FIVE, T0 + (k + 1) * FIVE, settings=settings, lake=lake))
    return out


def _produce(settings: Settings, rows: int = 600, **kw) -> dict:
    args = dict(rows=rows, start=T0, rate=1.0, seed=11, label_delay=300.0, file_seconds=60.0)
    args.update(kw)
    return prod.produce(SPEC, to="landing", settings=settings, **args)


def test_ingestion_onto_s3_conserves_records_and_a_rerun_replaces(iceberg_s3, pg_catalog, tmp_path):
    import psycopg2

    settings = iceberg_s3
    folder = Settings(storage="local", home=tmp_path / "home", lake_uri=str(tmp_path / "lake"))
    for s in (settings, folder):
        _produce(s, bad_fraction=0.03)
    lake, files = Lake(settings), Lake(folder)
    _ingest(folder, files)
    _ingest(settings, lake)

    manifests = lake.manifests(DS, "events")
    assert len(manifests) == 3
    assert all(m["table"] == f"{DS}.events" and m["snapshot_id"] and "files" not in m for m in manifests)
    assert sum(m["records_in"] for m in manifests) == 600  # every record accepted or quarantined
    for m in manifests + lake.manifests(DS, "labels"):
        assert m["records_in"] == m["accepted"] + m["quarantined"]
    tables = Tables(settings)
    assert tables.read(DS, "events").num_rows == sum(m["accepted"] for m in manifests) > 0
    # The tables on S3 (PostgreSQL catalog) read exactly like a folder lake's (SQLite) fed the same files.
    for kind in ("events", "labels"):
        assert lake.read_batches(DS, kind).equals(files.read_batches(DS, kind))
    for window in ((None, None), (T0, T0 + FIVE), (T0 + FIVE, T0 + 3 * FIVE)):
        got, lineage = lake.labelled(SPEC, *window)
        want, want_lineage = files.labelled(SPEC, *window)
        assert len(got) and got.equals(want) and lineage == want_lineage

    # A re-run of every batch: new commits, the same rows and counts (replaced, not appended).
    before = {kind: lake.read_batches(DS, kind) for kind in ("events", "labels")}
    snaps = lake.snapshots(DS)
    _ingest(settings, lake)
    assert lake.snapshots(DS) != snaps
    for kind in ("events", "labels"):
        assert lake.read_batches(DS, kind).equals(before[kind])
    per_batch = Tables(settings).read(DS, "events").to_pandas().groupby(BATCH_COLUMN).size().to_dict()
    assert per_batch == {m["batch_id"]: m["accepted"] for m in manifests if m["accepted"]}

    # Data and metadata are on the lake's store under _iceberg; the catalog rows are in PostgreSQL.
    warehouse = warehouse_uri(settings)
    assert warehouse == f"{settings.lake_uri}/_iceberg"
    keys = set(lake.store.list("_iceberg"))
    prefix = f"{settings.lake_uri}/"
    for kind in ("events", "labels"):
        table = Tables(settings).table(DS, kind)
        assert table.metadata_location.startswith(f"{warehouse}/")
        assert table.metadata_location.removeprefix(prefix) in keys
        data = [t.file.file_path for t in table.scan().plan_files()]
        assert data and all(p.startswith(f"{warehouse}/") and p.removeprefix(prefix) in keys for p in data)
    assert any(k.endswith(".parquet") for k in keys) and any(k.endswith(".metadata.json") for k in keys)
    assert any(k.endswith(".avro") for k in keys)  # manifest lists and manifests
    assert not [k for k in lake.store.list(DS) if k.endswith(".parquet")]  # no loose Parquet beside the tables
    with psycopg2.connect(pg_catalog.replace("+psycopg2", "")) as conn, conn.cursor() as cur:
        cur.execute("SELECT table_namespace, table_name, metadata_location FROM iceberg_tables ORDER BY 2")
        rows = cur.fetchall()
    # The rejects (3 % of the events were broken) are rows of the quarantine table, once each.
    assert [(ns, name) for ns, name, _ in rows if ns == DS] == [(DS, "events"), (DS, "labels"), (DS, "quarantine")]
    rejected = Tables(settings).read(DS, "quarantine").to_pandas()
    assert len(rejected) == sum(m["quarantined"] for m in manifests + lake.manifests(DS, "labels")) > 0
    assert all(loc.startswith(f"{warehouse}/") for ns, _, loc in rows if ns == DS)


def _batch(n: int, tag: str) -> pa.Table:
    times = [T0 + timedelta(seconds=i) for i in range(n)]
    return pa.table({"id": [f"{tag}-{i}" for i in range(n)], "ts": pa.array(times, pa.timestamp("us", tz="UTC")),
                     "x": [float(i) for i in range(n)]})


def test_a_reader_sees_all_of_a_batch_or_none_while_another_process_commits(iceberg_s3):
    """A reader polling the table while a writer commits and re-writes batches never sees part of one."""
    settings = iceberg_s3
    sizes = {f"b{k}": 40 + 7 * k for k in range(6)}
    rewritten = {"b0": 13, "b2": 90}  # later attempts of the same batches, other sizes
    Tables(settings).commit_batch("probe", "events", "b0", _batch(sizes["b0"], "b0"), time_column="ts")
    done = threading.Event()
    errors: list[BaseException] = []

    def write() -> None:
        try:
            w = Tables(settings)
            for batch, n in [*list(sizes.items())[1:], *rewritten.items()]:
                w.commit_batch("probe", "events", batch, _batch(n, batch), time_column="ts")
        except BaseException as err:  # noqa: BLE001 - reported by the main thread
            errors.append(err)
        finally:
            done.set()

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    reader, seen = Tables(settings), []
    for _ in range(400):  # bounded: the writer's 7 commits take a few seconds on loopback
        finished = done.is_set()
        counts = reader.read("probe", "events").to_pandas().groupby(BATCH_COLUMN).size().to_dict()
        seen.append(counts)
        for batch, n in counts.items():
            assert n in {sizes[batch], rewritten.get(batch)}, f"a partial batch {batch}: {n} rows in {counts}"
        if finished:
            break
    writer.join(60)
    assert not errors, errors
    assert done.is_set() and seen[-1] == {**sizes, **rewritten}
    assert len({tuple(sorted(c.items())) for c in seen}) > 1  # the reader did read between commits


@pytest.mark.parametrize("stage", ["before-data", "data"])
def test_a_writer_killed_around_its_commit_leaves_all_or_none_on_s3(iceberg_s3, stage):
    """``rtml ingest`` killed before or after its table commit (before the manifest): readers of the
    lake see nothing, the table has all of the batch or none; the retry leaves exactly one copy."""
    settings = iceberg_s3
    _produce(settings, rows=120)
    env = {**os.environ, "RTML_STORAGE": "s3", "RTML_LAKE_URI": settings.lake_uri,
           "RTML_CATALOG_URI": settings.resolved_catalog_uri(), "RTML_S3_ENDPOINT_URL": settings.s3_endpoint_url,
           "RTML_TEST_CRASH_AFTER_WRITE": stage}
    cmd = [sys.executable, "-m", "rtml.cli", "ingest", "--kind", "events", "--source", "landing",
           "--start", T0.isoformat(), "--end", (T0 + FIVE).isoformat(), "--json"]
    crashed = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert crashed.returncode == 75, crashed.stderr[-2000:]
    lake = Lake(settings)
    assert lake.manifests(DS, "events") == [] and lake.read_batches(DS, "events").empty
    tables = Tables(settings)
    committed = tables.read(DS, "events").num_rows if tables.exists(DS, "events") else 0
    assert committed == (120 if stage == "data" else 0)
    env.pop("RTML_TEST_CRASH_AFTER_WRITE")
    ok = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert json.loads(ok.stdout)["events"]["accepted"] == 120
    assert len(lake.read_batches(DS, "events")) == 120 == Tables(settings).read(DS, "events").num_rows


def test_spark_reads_the_s3_tables_through_the_postgres_catalog(iceberg_s3):
    """PySpark (local, Iceberg's S3FileIO, PostgreSQL JDBC catalog) counts what rtml's reader reads."""
    pytest.importorskip("pyspark")
    from rtml.platform.spark import spark_session, stop_spark

    settings = iceberg_s3
    _produce(settings, rows=400, seed=12)
    lake = Lake(settings)
    _ingest(settings, lake, intervals=2)
    _ingest(settings, lake, intervals=1)  # a re-run: Spark must see its rows once
    start, end = T0 + timedelta(minutes=2), T0 + timedelta(minutes=8)
    ours = Tables(settings).read(DS, "events", time_column=SPEC.event_time, start=start, end=end).num_rows
    per_batch = {m["batch_id"]: m["accepted"] for m in lake.manifests(DS, "events") if m["accepted"]}
    spark = spark_session(settings)
    try:
        events = f"rtml.`{DS}`.events"
        counted = spark.sql(f"SELECT count(*) FROM {events} WHERE `{SPEC.event_time}` >= TIMESTAMP "
                            f"'{start.isoformat()}' AND `{SPEC.event_time}` < TIMESTAMP '{end.isoformat()}'").collect()
        batches = spark.sql(f"SELECT _batch, count(*) FROM {events} GROUP BY _batch").collect()
    finally:
        stop_spark(spark)
    assert counted[0][0] == ours > 0
    assert {r[0]: r[1] for r in batches} == per_batch and len(per_batch) == 2
