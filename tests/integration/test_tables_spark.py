"""PySpark (local mode, Java 17) reads the lake's Iceberg tables through the same SQL catalog rtml
writes (a SQLite file under a temporary RTML_HOME, a folder warehouse), with the jars that
``rtml.platform.spark`` resolves into its cache: its counts of a window's events, labelled events,
batches and snapshots equal rtml's own readers (``Tables.read``, ``Lake.labelled``)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from rtml.ingest import produce as prod
from rtml.ingest.batches import ingest_interval
from rtml.lake import Lake
from rtml.settings import Settings
from rtml.spec import load_spec
from rtml.tables import Tables

pytestmark = pytest.mark.integration

SPEC = load_spec()
DS = SPEC.dataset.name
T0 = datetime(2026, 6, 4, 8, 0, tzinfo=UTC)
FIVE = timedelta(minutes=5)
EVENTS, LABELS = f"rtml.`{DS}`.events", f"rtml.`{DS}`.labels"


@pytest.fixture(scope="module")
def lake_settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """Three intervals ingested into tables (SQLite catalog, folder warehouse); the first re-run."""
    root = tmp_path_factory.mktemp("spark-lake")
    settings = Settings(storage="local", home=root / "home", lake_uri=str(root / "lake"))
    prod.produce(SPEC, to="landing", settings=settings, rows=900, start=T0, rate=1.0, seed=5, label_delay=300.0,
                 file_seconds=60.0, bad_fraction=0.02)
    lake = Lake(settings)
    for k in (0, 1, 2, 0):  # the last is a re-run of the first interval: its rows are replaced
        for kind in ("events", "labels"):
            ingest_interval(SPEC, kind, T0 + k * FIVE, T0 + (k + 1) * FIVE, settings=settings, lake=lake)
    return settings


@pytest.fixture(scope="module")
def spark(lake_settings: Settings) -> Iterator[object]:
    pytest.importorskip("pyspark")
    from rtml.platform.spark import spark_session, stop_spark

    session = spark_session(lake_settings)
    try:
        yield session
    finally:
        stop_spark(session)  # and its JVM: nothing the test started outlives it


def _count(spark, sql: str) -> int:
    return int(spark.sql(sql).collect()[0][0])


def _window(start: datetime | None, end: datetime | None, alias: str = "") -> str:
    col = f"{alias}`{SPEC.event_time}`"
    conds = ["true"]
    if start is not None:
        conds.append(f"{col} >= TIMESTAMP '{start.isoformat()}'")
    if end is not None:
        conds.append(f"{col} < TIMESTAMP '{end.isoformat()}'")
    return " AND ".join(conds)


def test_the_jars_are_cached_and_match_the_pinned_pyspark(lake_settings, spark):
    import pyspark

    from rtml.platform.spark import SPARK_LINE, jars_cache, spark_jars

    assert pyspark.__version__.startswith(SPARK_LINE + ".")
    jars = spark_jars(lake_settings)
    assert all(j.parent == jars_cache() and j.stat().st_size > 0 for j in jars)
    assert any(j.name.startswith(f"iceberg-spark-runtime-{SPARK_LINE}_2.13-") for j in jars)
    assert any(j.name.startswith("sqlite-jdbc-") for j in jars)


@pytest.mark.parametrize("window", [(None, None), (T0, T0 + FIVE), (T0 + FIVE, T0 + 3 * FIVE),
                                    (T0 + timedelta(minutes=2), T0 + timedelta(minutes=7))])
def test_spark_counts_a_window_like_rtml(lake_settings, spark, window):
    start, end = window
    tables, lake = Tables(lake_settings), Lake(lake_settings)
    ours = tables.read(DS, "events", time_column=SPEC.event_time, start=start, end=end).num_rows
    assert ours > 0
    assert _count(spark, f"SELECT count(*) FROM {EVENTS} WHERE {_window(start, end)}") == ours
    # Events joined to a label, as Lake.labelled builds training data (one row per event id).
    labelled, _ = lake.labelled(SPEC, start, end)
    joined = (f"SELECT count(DISTINCT e.`{SPEC.event_id}`) FROM {EVENTS} e JOIN {LABELS} l "
              f"ON e.`{SPEC.event_id}` = l.`{SPEC.event_id}` WHERE {_window(start, end, 'e.')}")
    assert _count(spark, joined) == len(labelled) > 0


def test_spark_sees_the_batches_and_snapshots_rtml_committed(lake_settings, spark):
    lake, tables = Lake(lake_settings), Tables(lake_settings)
    manifests = lake.manifests(DS, "events")
    per_batch = {r[0]: r[1] for r in spark.sql(f"SELECT _batch, count(*) FROM {EVENTS} GROUP BY _batch").collect()}
    assert per_batch == {m["batch_id"]: m["accepted"] for m in manifests if m["accepted"]}  # re-run replaced
    # Snapshot summaries carry rtml's counts; the last commit of each batch is what its manifest says.
    snaps = spark.sql(f"SELECT snapshot_id, summary FROM {EVENTS}.snapshots ORDER BY committed_at").collect()
    assert len(snaps) >= 4  # three batches, one re-run (plus any schema or spec commits)
    last = {row.summary["rtml.batch"]: row for row in snaps if "rtml.batch" in row.summary}
    assert {b: int(r.summary["rtml.accepted"]) for b, r in last.items()} == {m["batch_id"]: m["accepted"] for m in manifests}
    # Time travel reads what rtml's reader reads at the same snapshot.
    first = snaps[0].snapshot_id
    assert _count(spark, f"SELECT count(*) FROM {EVENTS} VERSION AS OF {first}") == \
        tables.read(DS, "events", snapshot_id=first).num_rows


def test_the_catalog_file_is_the_one_rtml_writes(lake_settings):
    from rtml.platform.spark import jdbc_catalog

    path = Path(lake_settings.resolved_catalog_uri().removeprefix("sqlite:///"))
    assert path.is_file() and jdbc_catalog(lake_settings.resolved_catalog_uri()) == {"uri": f"jdbc:sqlite:{path}"}
