"""The lake's Apache Iceberg tables (pyiceberg, SQL catalog): one table per dataset and kind.

The accepted rows of every micro-batch go to a table ``<dataset>.<kind>``: one Iceberg commit per batch, atomic (a reader
sees all of a batch or none of it) and idempotent (a re-run batch *replaces* its rows: the commit
overwrites the rows whose ``_batch`` is that batch id, in the same transaction that adds the new
ones). The snapshot summary carries the batch's counts (``rtml.batch``, ``rtml.records_in``,
``rtml.accepted``, ``rtml.quarantined``), so a version's training data is "these batches of
snapshot S", readable exactly as it was after later batches landed.

Tables are partitioned by day of their time column (events: the spec's event time; labels: the
label time), so a window reads the days it covers. The schema is the contract's (the spec's
feature types); when the spec gains a feature the table's schema is evolved by name (new columns
nullable; nothing renamed or dropped).

Catalog: ``RTML_CATALOG_URI`` (a SQLAlchemy URI: SQLite under ``RTML_HOME`` by default, PostgreSQL in
the compose file); data and metadata under ``<lake>/_iceberg`` on the lake's own store (a folder or
S3). Spark, Trino or DuckDB read the same catalog (see the README).
"""

from __future__ import annotations

import logging
import time
import warnings
from typing import TYPE_CHECKING, Any

from rtml.settings import Settings, get_settings

if TYPE_CHECKING:
    import pyarrow as pa
    from pyiceberg.catalog import Catalog
    from pyiceberg.table import Table

    from rtml.storage import ObjectStore

log = logging.getLogger("rtml.tables")

BATCH_COLUMN = "_batch"  # the micro-batch a row came in: what a re-run of the batch replaces
NAMESPACE_SUFFIX = ""  # tables are <dataset>.<kind>: the dataset is the namespace
SUMMARY_PREFIX = "rtml."
_COMMIT_ATTEMPTS = 8  # concurrent writers (events and labels, the endpoint's log) retry a lost race
LINEAGE_TAG = "rtml-lineage-"  # tags of the snapshots a training run read: never expired
# What keeps a commit's cost flat as batches accumulate (pyiceberg 0.12):
# - an overwrite's delete opens every manifest of the current snapshot to find the batch's earlier
#   rows (its filter is on ``_batch``, which no partition summary prunes): merging the small
#   manifests of each append keeps that a few files, not one per batch ever committed;
# - full (not 16-character truncated) bounds of ``_batch``: a re-run's earlier files are dropped by
#   their metadata alone, and other batches' files are never read as "might match";
# - old metadata.json files are deleted (their log is copied into every new one).
# The other cost, copies of the metadata with every snapshot, is bounded by the writer's expiry
# (:meth:`Tables.commit_batch`, ``table_snapshot_max``).
TABLE_PROPERTIES = {
    "commit.manifest-merge.enabled": "true",
    "commit.manifest.min-count-to-merge": "16",
    "write.metadata.metrics.column._batch": "full",
    "write.metadata.delete-after-commit.enabled": "true",
    "write.metadata.previous-versions-max": "20",
}


class TableError(RuntimeError):
    """A table could not be opened, written or read; the message names the table."""


WAREHOUSE = "_iceberg"  # under the lake: the tables' data and metadata


def table_prefix(dataset: str, kind: str) -> str:
    """The keys of table ``<dataset>.<kind>`` under the lake (its data and metadata; set at creation,
    so that a service's storage grant can name exactly the tables it writes)."""
    return f"{WAREHOUSE}/{dataset}.db/{kind}/"


def warehouse_uri(settings: Settings) -> str:
    """Where table data and metadata live: ``_iceberg`` under the lake (same store, same credentials)."""
    lake = settings.lake_uri.rstrip("/")
    if lake.startswith("s3://"):
        return f"{lake}/{WAREHOUSE}"
    path = lake.removeprefix("file://")
    return f"file://{path}/{WAREHOUSE}"


def catalog_properties(settings: Settings) -> dict[str, str]:
    """The SQL catalog's properties (what Spark's or another engine's catalog must match)."""
    props = {"type": "sql", "uri": settings.resolved_catalog_uri(), "warehouse": warehouse_uri(settings)}
    if settings.lake_uri.startswith("s3://"):
        props.update({
            "s3.endpoint": settings.s3_endpoint_url,
            "s3.access-key-id": settings.s3_access_key,
            "s3.secret-access-key": settings.s3_secret_key,
            "s3.region": settings.s3_region,
            "s3.force-virtual-addressing": "false",  # path-style: SeaweedFS and MinIO on one host
        })
    return props


def open_catalog(settings: Settings | None = None) -> Catalog:
    from pyiceberg.catalog import load_catalog

    s = settings or get_settings()
    uri = s.resolved_catalog_uri()
    if uri.startswith("sqlite:///"):
        from pathlib import Path

        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    if not s.lake_uri.startswith("s3://"):
        from pathlib import Path

        Path(s.lake_uri.removeprefix("file://"), "_iceberg").mkdir(parents=True, exist_ok=True)
    return load_catalog("rtml", **catalog_properties(s))


def _with_batch(schema: pa.Schema) -> pa.Schema:
    import pyarrow as pa

    if BATCH_COLUMN in schema.names:
        return schema
    return schema.append(pa.field(BATCH_COLUMN, pa.string(), nullable=False))


class Tables:
    """The lake's tables for one settings object; tables are created on first write."""

    def __init__(self, settings: Settings | None = None, catalog: Catalog | None = None) -> None:
        self.settings = settings or get_settings()
        self.catalog = catalog or open_catalog(self.settings)
        self._open: dict[str, Table] = {}
        self._store: ObjectStore | None = None

    @staticmethod
    def identifier(dataset: str, kind: str) -> str:
        return f"{dataset}.{kind}"

    def exists(self, dataset: str, kind: str) -> bool:
        ident = self.identifier(dataset, kind)
        if ident in self._open or self.catalog.table_exists(ident):
            return True
        table = self._adopt(dataset, kind)
        if table is not None:
            self._open[ident] = table
        return table is not None

    def _adopt(self, dataset: str, kind: str) -> Table | None:
        """The table ``<dataset>.<kind>`` that this lake holds but this catalog does not know (a new
        ``RTML_HOME`` over an existing lake, a lost catalog file), registered from its newest metadata
        file: its batches stay readable, and a writer never starts a second table over them. None
        when the lake holds no such table."""
        from pyiceberg.exceptions import TableAlreadyExistsError

        from rtml.storage import open_store

        if self._store is None:  # opened once: exists() may ask for a table not written yet every batch
            self._store = open_store(self.settings.lake_uri, self.settings)
        found = [k for k in self._store.list(f"{table_prefix(dataset, kind)}metadata/") if k.endswith(".metadata.json")]
        if not found:
            return None
        newest = max(found, key=_metadata_version)
        ident = self.identifier(dataset, kind)
        self.catalog.create_namespace_if_not_exists(dataset)
        try:
            table = self.catalog.register_table(ident, self._in_lake(newest))
            log.warning("table %s: registered in catalog %s from the lake's %s (the catalog did not know it)",
                        ident, self.settings.resolved_catalog_uri(), newest)
        except TableAlreadyExistsError:  # another process registered or created it meanwhile
            table = self.catalog.load_table(ident)
        self._check_location(ident, table)
        return table

    def table(self, dataset: str, kind: str, schema: pa.Schema | None = None, time_column: str | None = None) -> Table:
        """The table ``<dataset>.<kind>``; with ``schema``, created if absent (partitioned by day of
        ``time_column``) and evolved to include every column of ``schema``."""
        ident = self.identifier(dataset, kind)
        table = self._open.get(ident)
        if table is None:
            if self.catalog.table_exists(ident):
                table = self.catalog.load_table(ident)
                self._check_location(ident, table)
            else:
                table = self._adopt(dataset, kind)
            if table is not None and schema is not None:  # a writer: tables of an older rtml get the properties
                table = _ensure_properties(table)
            elif table is None and schema is None:
                raise TableError(f"table {ident} does not exist (nothing was written to it yet)")
            elif table is None:
                table = self._create(dataset, kind, _with_batch(schema), time_column)
            self._open[ident] = table
        if schema is not None:
            table = self._evolve(table, _with_batch(schema))
            self._open[ident] = table
        return table

    def _in_lake(self, key: str) -> str:
        """The URI of the lake key ``key`` (as the warehouse is written: ``file://`` or ``s3://``)."""
        return warehouse_uri(self.settings).removesuffix(WAREHOUSE) + key

    def _check_location(self, ident: str, table: Table) -> None:
        """A catalog shared by two lakes would hand one lake's writer the other's table."""
        warehouse = warehouse_uri(self.settings)
        location = table.location().rstrip("/")
        if not (location + "/").startswith(warehouse + "/") and not (location + "/").startswith(
                warehouse.removeprefix("file://") + "/"):
            raise TableError(f"table {ident} of catalog {self.settings.resolved_catalog_uri()} is at {location}, "
                             f"not in this lake ({warehouse}): give each lake its own catalog (RTML_CATALOG_URI)")

    def _create(self, dataset: str, kind: str, schema: pa.Schema, time_column: str | None) -> Table:
        from pyiceberg.exceptions import TableAlreadyExistsError
        from pyiceberg.transforms import DayTransform

        ident = self.identifier(dataset, kind)
        self.catalog.create_namespace_if_not_exists(dataset)
        # The location pyiceberg would pick, stated: access grants (rtml.platform.access) name it.
        location = self._in_lake(table_prefix(dataset, kind).rstrip("/"))
        try:
            table = self.catalog.create_table(ident, schema=schema, location=location, properties=TABLE_PROPERTIES)
        except TableAlreadyExistsError:  # another writer created it meanwhile
            return self.catalog.load_table(ident)
        if time_column and time_column in schema.names:
            try:
                with table.update_spec() as spec:
                    spec.add_field(time_column, DayTransform(), f"{time_column}_day")
            except Exception as err:  # noqa: BLE001 - another writer partitioned it first
                log.info("partition spec of %s not changed: %s", ident, err)
                table = self.catalog.load_table(ident)
        return table

    def _evolve(self, table: Table, schema: pa.Schema) -> Table:
        """New columns of the contract are added by name (nullable); existing ones are untouched."""
        import pyarrow as pa

        known = {f.name for f in table.schema().fields}
        if all(name in known for name in schema.names):
            return table
        with table.update_schema() as update:  # only the new columns: a changed type is refused by _align
            update.union_by_name(pa.schema([f for f in schema if f.name not in known]))
        log.info("table %s: added columns %s", table.name(), [n for n in schema.names if n not in known])
        return table

    # --- writing ----------------------------------------------------------------------------------
    def commit_batch(
        self, dataset: str, kind: str, batch_id: str, data: pa.Table, summary: dict[str, Any] | None = None,
        time_column: str | None = None,
    ) -> dict[str, Any]:
        """Make ``data`` the rows of batch ``batch_id`` in one commit (replacing any rows an earlier
        attempt of the batch committed); returns ``{"table", "snapshot_id"}``."""
        import pyarrow as pa
        from pyiceberg.exceptions import CommitFailedException, ValidationException

        from_pyiceberg = _expressions()

        rows = data.append_column(pa.field(BATCH_COLUMN, pa.string(), nullable=False),
                                  pa.array([batch_id] * data.num_rows, pa.string()))
        props = {f"{SUMMARY_PREFIX}batch": batch_id}
        props.update({f"{SUMMARY_PREFIX}{k}": str(v) for k, v in (summary or {}).items()})
        ident = self.identifier(dataset, kind)
        for attempt in range(_COMMIT_ATTEMPTS):
            table = self.table(dataset, kind, data.schema, time_column)
            try:
                # The table's column order and nullability; extra table columns (an older spec's
                # features) stay null in this batch.
                aligned = _align(rows, table)
                with warnings.catch_warnings():  # a first attempt has no earlier rows to delete: expected
                    warnings.filterwarnings("ignore", "Delete operation did not match any records")
                    table.overwrite(aligned, overwrite_filter=from_pyiceberg.EqualTo(BATCH_COLUMN, batch_id),
                                    snapshot_properties=props)
                break
            except (CommitFailedException, ValidationException, FileNotFoundError) as err:
                # Another writer committed first (or compaction rewrote this batch's day meanwhile, or
                # expired the snapshot this writer's cached metadata still starts from, deleting its
                # manifests): reload and replay (the overwrite is idempotent).
                self._open.pop(ident, None)
                if attempt == _COMMIT_ATTEMPTS - 1:
                    raise TableError(f"table {ident}: batch {batch_id} not committed after {attempt + 1} tries: {err}") from err
                time.sleep(min(0.05 * 2 ** attempt, 1.0))
        snap = table.current_snapshot()
        self._bound_snapshots(ident, table)
        return {"table": ident, "snapshot_id": snap.snapshot_id if snap else None}

    def has_batch(self, dataset: str, kind: str, batch_id: str) -> bool:
        """Whether the table holds rows of ``batch_id`` (planned from file metadata: the full bounds
        of ``_batch`` prune every other batch's files, no data file is read)."""
        if not self.exists(dataset, kind):
            return False
        table = self.table(dataset, kind)
        scan = table.scan(row_filter=_expressions().EqualTo(BATCH_COLUMN, batch_id), selected_fields=(BATCH_COLUMN,))
        return any(True for _ in scan.plan_files())

    def _bound_snapshots(self, ident: str, table: Table) -> None:
        """Past ``table_snapshot_max`` snapshots by half as many again, expire the oldest down to it
        (tags and branch heads kept): the metadata every commit copies stays the same size."""
        from datetime import UTC, datetime

        limit = self.settings.table_snapshot_max
        if len(table.metadata.snapshots) <= limit + max(limit // 2, 1):
            return
        try:
            _expire(self, ident, datetime.now(UTC), limit, set())
        except Exception as err:  # noqa: BLE001 - the batch is committed; the next commit tries again
            log.warning("table %s: old snapshots not expired: %s", ident, err)
        self._open.pop(ident, None)

    def keep(self, dataset: str, kind: str, snapshot_id: int | None) -> None:
        """Tag ``snapshot_id`` (``rtml-lineage-<id>``) so that no expiry removes it: what a training
        run read stays readable exactly as it was."""
        if snapshot_id is None:
            return
        table = self.table(dataset, kind)
        name = f"{LINEAGE_TAG}{snapshot_id}"
        for _ in range(_COMMIT_ATTEMPTS):
            table = table.refresh()
            if name in table.metadata.refs:
                return
            if table.metadata.snapshot_by_id(snapshot_id) is None:  # expired meanwhile: reads fall back
                log.warning("table %s: snapshot %s was expired before it could be kept", table.name(), snapshot_id)
                return
            try:
                table.manage_snapshots().create_tag(snapshot_id, name).commit()
                return
            except Exception as err:  # noqa: BLE001 - another writer committed meanwhile: refresh, again
                log.info("table %s: tag %s not created yet: %s", table.name(), name, err)
        raise TableError(f"table {'.'.join(table.name())}: snapshot {snapshot_id} could not be tagged {name}")

    # --- reading ----------------------------------------------------------------------------------
    def read(
        self,
        dataset: str,
        kind: str,
        batch_ids: set[str] | None = None,
        time_column: str | None = None,
        start: Any = None,
        end: Any = None,
        snapshot_id: int | None = None,
        columns: tuple[str, ...] | None = None,
        keep_null_time: bool = False,
    ) -> pa.Table:
        """Rows of the table (at ``snapshot_id``, default the current one), of the given batches,
        with ``time_column`` in [start, end) when given (and null, with ``keep_null_time``): a window
        prunes the days it does not cover, reading neither their data files nor their manifests."""
        e = _expressions()
        cached = self.identifier(dataset, kind) in self._open
        table = self.table(dataset, kind)
        if snapshot_id is not None and table.metadata.snapshot_by_id(snapshot_id) is None:
            table = table.refresh() if cached else table
            cached = False
            if table.metadata.snapshot_by_id(snapshot_id) is None:
                # Expired by maintenance (older than the retention, see maintain): the batches are read
                # from the current table instead (a re-run batch then reads its new rows).
                log.warning("table %s: snapshot %s was expired; reading the current table", table.name(), snapshot_id)
                snapshot_id = None
        if snapshot_id is None and cached:  # a table loaded just now is current already
            table = table.refresh()
            self._open[self.identifier(dataset, kind)] = table
        expr: Any = e.AlwaysTrue()
        if time_column and time_column not in {f.name for f in table.schema().fields}:
            time_column = None  # a table without that column: nothing to prune by
        if time_column and start is not None:
            expr = e.And(expr, e.GreaterThanOrEqual(time_column, _iso(start)))
        if time_column and end is not None:
            expr = e.And(expr, e.LessThan(time_column, _iso(end)))
        if time_column and keep_null_time and (start is not None or end is not None):
            expr = e.Or(expr, e.IsNull(time_column))
        if batch_ids is not None and not batch_ids:
            return table.schema().as_arrow().empty_table()
        # A window's days prune the files; then the batches are picked from its rows (an In filter
        # over a window's many batch ids costs more, bound to every file planned, than it prunes).
        by_rows = batch_ids is not None and time_column is not None and (start is not None or end is not None)
        if batch_ids is not None and not by_rows:
            expr = e.And(expr, e.In(BATCH_COLUMN, set(batch_ids)))
        fields = ("*",) if columns is None else (*columns, BATCH_COLUMN)
        rows = table.scan(row_filter=expr, snapshot_id=snapshot_id, selected_fields=fields).to_arrow()
        if by_rows and batch_ids is not None:
            import pyarrow as pa
            import pyarrow.compute as pc

            rows = rows.filter(pc.is_in(rows.column(BATCH_COLUMN), value_set=pa.array(sorted(batch_ids), pa.string())))
        return rows

    def snapshot(self, dataset: str, kind: str) -> int | None:
        """The current snapshot id of the table (None before its first commit): what lineage records."""
        if not self.exists(dataset, kind):
            return None
        snap = self.table(dataset, kind).refresh().current_snapshot()
        return snap.snapshot_id if snap else None


def microsecond_times(data: pa.Table) -> pa.Table:
    """``data`` with nanosecond timestamps as microseconds and no pandas schema metadata: Iceberg
    (format 2) stores no nanoseconds, and rtml's times carry no more than microseconds (a lossy cast
    raises rather than change a value)."""
    import pyarrow as pa

    fields = [pa.field(f.name, pa.timestamp("us", tz=f.type.tz), f.nullable)
              if pa.types.is_timestamp(f.type) and f.type.unit == "ns" else f for f in data.schema]
    return data.cast(pa.schema(fields)).replace_schema_metadata(None)


def _metadata_version(key: str) -> int:
    """The version of a metadata file named ``<version>-<uuid>.metadata.json`` (-1 if another name)."""
    head = key.rsplit("/", 1)[-1].split("-", 1)[0]
    return int(head) if head.isdigit() else -1


def _ensure_properties(table: Table) -> Table:
    """``table`` with :data:`TABLE_PROPERTIES` set (one commit, only when one differs)."""
    if all(table.properties.get(k) == v for k, v in TABLE_PROPERTIES.items()):
        return table
    try:
        with table.transaction() as tx:
            tx.set_properties(TABLE_PROPERTIES)
    except Exception as err:  # noqa: BLE001 - another writer set them meanwhile
        log.info("table %s: properties not set: %s", table.name(), err)
    return table.refresh()


def _expressions() -> Any:
    """pyiceberg's row filters; typed ``Any``: their constructors take (term, value) at run time,
    which their pydantic signatures hide from a type checker."""
    import pyiceberg.expressions

    return pyiceberg.expressions


def _iso(value: Any) -> str:
    import pandas as pd

    ts = pd.Timestamp(value)
    ts = ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")
    return ts.isoformat()


def _family(dt: pa.DataType) -> str:
    """The kind of an Arrow type, for what a table column may take (string and large_string alike)."""
    import pyarrow as pa

    t = pa.types
    for name, test in (("null", t.is_null), ("bool", t.is_boolean), ("int", t.is_integer), ("float", t.is_floating),
                       ("decimal", t.is_decimal), ("string", lambda d: t.is_string(d) or t.is_large_string(d)),
                       ("binary", lambda d: t.is_binary(d) or t.is_large_binary(d) or t.is_fixed_size_binary(d)),
                       ("timestamp", t.is_timestamp), ("date", t.is_date), ("time", t.is_time),
                       ("list", lambda d: t.is_list(d) or t.is_large_list(d)), ("struct", t.is_struct),
                       ("map", t.is_map)):
        if test(dt):
            return name
    return str(dt)


def _align(rows: pa.Table, table: Table) -> pa.Table:
    """``rows`` in the table's column order and types (missing columns as nulls). A column whose kind
    differs from the table's (a spec that turned a numeric feature categorical) is refused: a cast
    would fail on some values and silently convert others ("02134" to 2134.0)."""
    import pyarrow as pa

    target = table.schema().as_arrow()
    cols = []
    for field in target:
        if field.name in rows.column_names:
            column = rows.column(field.name)
            have, want = _family(column.type), _family(field.type)
            if have != want and have != "null" and (have, want) != ("int", "float"):
                raise TableError(
                    f"table {'.'.join(table.name())}: column {field.name!r} is {field.type} in the table but {column.type} "
                    "in this batch; a column keeps its type (did the spec change this feature's type?): keep "
                    "it, or give the data of the new type a dataset of its own")
            cols.append(column.cast(field.type))
        else:
            cols.append(pa.nulls(rows.num_rows, field.type))
    return pa.Table.from_arrays(cols, schema=target)


# --- maintenance: compaction and snapshot expiry ---------------------------------------------------
COMPACT_MIN_FILES = 8  # a day with at least this many small data files is rewritten into one
COMPACT_SMALL_FILE_BYTES = 32 * 1024 * 1024


def maintain(
    settings: Settings | None = None,
    older_than_hours: float | None = None,
    retain_last: int | None = None,
    min_files: int = COMPACT_MIN_FILES,
    small_file_bytes: int = COMPACT_SMALL_FILE_BYTES,
    keep_snapshots: set[int] | frozenset[int] = frozenset(),
    now: Any = None,
    tables: Tables | None = None,
) -> dict[str, Any]:
    """Compact and expire every table of the catalog: what the ``rtml_maintenance`` DAG runs daily.

    **Compaction**: a partition (a day of the table's time column) with at least ``min_files`` data
    files smaller than ``small_file_bytes`` is rewritten into one file (pyiceberg 0.12 has no
    ``rewrite_data_files``): its rows are read at the current snapshot and written back with an
    overwrite of that day, in one commit. Readers see the old files or the new one, never a mix;
    a batch committed meanwhile makes the commit fail and the day is read again (no row is lost).
    Rows keep their ``_batch``, so batch reads and lineage read the same rows.

    **Expiry**: snapshots older than ``older_than_hours`` (default: ``table_snapshot_retention_days``)
    are removed, except the ``retain_last`` newest (default ``table_snapshot_retain_last``), the
    current one, branch and tag heads (tag a snapshot to keep it forever) and ``keep_snapshots``;
    then the data files, manifests and manifest lists only they referenced are deleted. A model
    version trained on an expired snapshot can no longer be read exactly as it was:
    :meth:`Tables.read` then reads its batches from the current table (the lineage check says
    whether those rows still match).

    Returns per table: data files, snapshots and rows before/after, the days compacted, the snapshots
    expired and the files deleted; ``message`` says it in a few lines.
    """
    from datetime import UTC, datetime, timedelta

    s = settings or get_settings()
    hours = older_than_hours if older_than_hours is not None else s.table_snapshot_retention_days * 24
    keep_last = retain_last if retain_last is not None else s.table_snapshot_retain_last
    if not hours >= 0:  # also refuses NaN
        raise ValueError(f"older_than_hours must be a number >= 0, got {older_than_hours!r}")
    if keep_last < 1:
        raise ValueError(f"retain_last must be at least 1 (the current snapshot), got {retain_last!r}")
    if min_files < 2:
        raise ValueError(f"min_files must be at least 2, got {min_files!r}")
    t = tables or Tables(s)
    cutoff = (now or datetime.now(UTC)) - timedelta(hours=hours)
    results = []
    for ns in sorted(t.catalog.list_namespaces()):
        for ident in sorted(t.catalog.list_tables(ns)):
            name = ".".join(ident)
            results.append(_maintain_table(t, name, cutoff, keep_last, min_files, small_file_bytes,
                                           set(keep_snapshots)))
    lines = [
        f"{r['table']}: data files {r['data_files_before']} -> {r['data_files_after']}"
        f" ({len(r['compacted'])} day(s) compacted), snapshots {r['snapshots_before']} -> {r['snapshots_after']}"
        f", {r['files_deleted']} unreferenced file(s) deleted, rows {r['rows_before']} -> {r['rows_after']}"
        for r in results
    ] or ["no tables in the catalog"]
    ok = all(r["rows_before"] == r["rows_after"] for r in results)
    if not ok:
        lines.append("ROWS CHANGED during maintenance (batches committed meanwhile, or a fault): see the tables above")
    return {"ok": ok, "tables": results, "older_than": cutoff.isoformat(), "retain_last": keep_last,
            "message": "\n".join(lines)}


def _live_files(table: Table) -> pa.Table:
    """The data files of the current snapshot (no delete files): path, partition, rows, size."""
    import pyarrow.compute as pc

    if table.current_snapshot() is None:
        return table.schema().as_arrow().empty_table()
    files = table.inspect.files()
    return files.filter(pc.equal(files["content"], 0))


def _maintain_table(t: Tables, name: str, cutoff: Any, keep_last: int, min_files: int, small_bytes: int,
                    keep: set[int]) -> dict[str, Any]:
    table = t.catalog.load_table(name)
    table = _ensure_properties(table)  # tables of an older rtml: old metadata.json files, small manifests
    files = _live_files(table)
    before = {"data_files_before": files.num_rows, "snapshots_before": len(table.metadata.snapshots),
              "rows_before": sum(files["record_count"].to_pylist()) if files.num_rows else 0}
    compacted = _compact(t, name, min_files, small_bytes)
    expired, deleted = _expire(t, name, cutoff, keep_last, keep)
    table = t.catalog.load_table(name)
    t._open.pop(name, None)  # the Tables cache holds the metadata from before
    after = _live_files(table)
    return {"table": name, **before, "data_files_after": after.num_rows,
            "snapshots_after": len(table.metadata.snapshots),
            "rows_after": sum(after["record_count"].to_pylist()) if after.num_rows else 0,
            "compacted": compacted, "snapshots_expired": expired, "files_deleted": deleted}


def _day_column(table: Table) -> str | None:
    """The source column of a table partitioned by day only (rtml's tables); None for anything else."""
    from pyiceberg.transforms import DayTransform

    fields = table.spec().fields
    if len(fields) != 1 or not isinstance(fields[0].transform, DayTransform):
        return None
    return table.schema().find_column_name(fields[0].source_id)


def _compact(t: Tables, name: str, min_files: int, small_bytes: int) -> list[str]:
    """Rewrite each day with at least ``min_files`` small data files into one file; the days rewritten."""
    from datetime import date, datetime, timedelta

    import pyarrow.compute as pc
    from pyiceberg.exceptions import CommitFailedException, ValidationException

    e = _expressions()
    done: list[str] = []
    table = t.catalog.load_table(name)
    column = _day_column(table)
    if table.current_snapshot() is None:
        return done
    if column is None and table.spec().fields:
        log.info("table %s: not partitioned by day only; not compacted", name)
        return done
    files = _live_files(table)
    files = files.filter(pc.and_(pc.equal(files["spec_id"], table.spec().spec_id),
                                 pc.less(files["file_size_in_bytes"], small_bytes)))
    per_day: dict[date | None, int] = {}
    for part in files["partition"].to_pylist():
        key = next(iter(part.values()), None) if part else None  # unpartitioned: the whole table
        per_day[key] = per_day.get(key, 0) + 1
    todo = sorted((d for d, n in per_day.items() if n >= min_files and (d is not None or column is None)), key=str)
    for day in todo:
        if column is None or day is None:
            where: Any = e.AlwaysTrue()
        else:
            start = datetime.combine(day, datetime.min.time())
            where = e.And(e.GreaterThanOrEqual(column, _iso(start)), e.LessThan(column, _iso(start + timedelta(days=1))))
        for attempt in range(_COMMIT_ATTEMPTS):
            try:
                rows = table.scan(row_filter=where).to_arrow()
                # Grouped by batch (a stable sort keeps each batch's row order): what batch reads expect.
                rows = rows.take(pc.sort_indices(rows, sort_keys=[(BATCH_COLUMN, "ascending")]))
                props = {f"{SUMMARY_PREFIX}maintenance": "compact", f"{SUMMARY_PREFIX}partition": str(day or "(whole table)"),
                         f"{SUMMARY_PREFIX}rows": str(rows.num_rows)}
                with warnings.catch_warnings():
                    warnings.filterwarnings("ignore", "Delete operation did not match any records")
                    # The transaction asserts the snapshot it read: a batch committed meanwhile fails it.
                    table.overwrite(rows, overwrite_filter=where, snapshot_properties=props)
                break
            except (CommitFailedException, ValidationException) as err:
                # Another writer committed: pyiceberg's own retry refuses (ValidationException) when it
                # added rows to this day; read the day again so that its rows are in the new file.
                table = t.catalog.load_table(name)
                if attempt == _COMMIT_ATTEMPTS - 1:
                    raise TableError(f"table {name}: day {day} not compacted after {attempt + 1} tries: {err}") from err
                time.sleep(min(0.05 * 2 ** attempt, 1.0))
        done.append(str(day) if day is not None else "(whole table)")
        table = t.catalog.load_table(name)
    if done:
        log.info("table %s: compacted %s", name, ", ".join(done))
    return done


def _reachable(table: Table, snapshot_ids: set[int], cache: dict[str, set[str]]) -> set[str]:
    """Every file the given snapshots reference: manifest lists, manifests, data and delete files
    (entries of any status: a conservative set for deciding what may be deleted)."""
    out: set[str] = set()
    for sid in snapshot_ids:
        snap = table.metadata.snapshot_by_id(sid)
        if snap is None:
            continue
        out.add(snap.manifest_list)
        for manifest in snap.manifests(table.io):
            if manifest.manifest_path not in cache:
                cache[manifest.manifest_path] = {entry.data_file.file_path for entry in
                                                 manifest.fetch_manifest_entry(table.io, discard_deleted=False)}
            out.add(manifest.manifest_path)
            out |= cache[manifest.manifest_path]
    return out


def _expire(t: Tables, name: str, cutoff: Any, keep_last: int, keep: set[int]) -> tuple[list[int], int]:
    """Expire the snapshots outside the retention, then delete the files only they referenced."""
    from pyiceberg.exceptions import CommitFailedException

    cut_ms = int(cutoff.timestamp() * 1000)
    for attempt in range(_COMMIT_ATTEMPTS):
        table = t.catalog.load_table(name)
        snaps = sorted(table.metadata.snapshots, key=lambda sn: (sn.timestamp_ms, sn.sequence_number or 0))
        current = table.current_snapshot()
        protected = {ref.snapshot_id for ref in table.metadata.refs.values()}  # branch and tag heads
        kept = {sn.snapshot_id for sn in snaps[-keep_last:]} | protected | (keep & {sn.snapshot_id for sn in snaps})
        kept |= {sn.snapshot_id for sn in snaps if sn.timestamp_ms >= cut_ms}
        if current is not None:
            kept.add(current.snapshot_id)
        expire = [sn.snapshot_id for sn in snaps if sn.snapshot_id not in kept]
        if not expire:
            return [], 0
        cache: dict[str, set[str]] = {}
        unreferenced = _reachable(table, set(expire), cache) - _reachable(table, kept, cache)
        try:
            table.maintenance.expire_snapshots().by_ids(expire).commit()
            break
        except CommitFailedException as err:
            if attempt == _COMMIT_ATTEMPTS - 1:
                raise TableError(f"table {name}: snapshots not expired after {attempt + 1} tries: {err}") from err
            time.sleep(min(0.05 * 2 ** attempt, 1.0))
    deleted = 0
    for path in sorted(unreferenced):  # only after the commit: until then a reader may need them
        try:
            table.io.delete(path)
            deleted += 1
        except FileNotFoundError:
            pass
    log.info("table %s: expired %d snapshot(s), deleted %d file(s)", name, len(expire), deleted)
    return expire, deleted
