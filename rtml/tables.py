"""The lake's Apache Iceberg tables (pyiceberg, SQL catalog): one table per dataset and kind.

``RTML_LAKE_FORMAT=iceberg`` puts the accepted rows of every micro-batch in a table
``<dataset>.<kind>`` instead of loose Parquet files: one Iceberg commit per batch, atomic (a reader
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

log = logging.getLogger("rtml.tables")

BATCH_COLUMN = "_batch"  # the micro-batch a row came in: what a re-run of the batch replaces
NAMESPACE_SUFFIX = ""  # tables are <dataset>.<kind>: the dataset is the namespace
SUMMARY_PREFIX = "rtml."
_COMMIT_ATTEMPTS = 8  # concurrent writers (events and labels, the endpoint's log) retry a lost race


class TableError(RuntimeError):
    """A table could not be opened, written or read; the message names the table."""


def warehouse_uri(settings: Settings) -> str:
    """Where table data and metadata live: ``_iceberg`` under the lake (same store, same credentials)."""
    lake = settings.lake_uri.rstrip("/")
    if lake.startswith("s3://"):
        return f"{lake}/_iceberg"
    path = lake.removeprefix("file://")
    return f"file://{path}/_iceberg"


def catalog_properties(settings: Settings) -> dict[str, str]:
    """The SQL catalog's properties (what Spark's or another engine's catalog must match)."""
    props = {"type": "sql", "uri": settings.catalog_uri, "warehouse": warehouse_uri(settings)}
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
    if s.catalog_uri.startswith("sqlite:///"):
        from pathlib import Path

        Path(s.catalog_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
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

    @staticmethod
    def identifier(dataset: str, kind: str) -> str:
        return f"{dataset}.{kind}"

    def exists(self, dataset: str, kind: str) -> bool:
        return bool(self.catalog.table_exists(self.identifier(dataset, kind)))

    def table(self, dataset: str, kind: str, schema: pa.Schema | None = None, time_column: str | None = None) -> Table:
        """The table ``<dataset>.<kind>``; with ``schema``, created if absent (partitioned by day of
        ``time_column``) and evolved to include every column of ``schema``."""
        ident = self.identifier(dataset, kind)
        table = self._open.get(ident)
        if table is None:
            if self.catalog.table_exists(ident):
                table = self.catalog.load_table(ident)
            elif schema is None:
                raise TableError(f"table {ident} does not exist (nothing was written to it yet)")
            else:
                table = self._create(dataset, ident, _with_batch(schema), time_column)
            self._open[ident] = table
        if schema is not None:
            table = self._evolve(table, _with_batch(schema))
            self._open[ident] = table
        return table

    def _create(self, dataset: str, ident: str, schema: pa.Schema, time_column: str | None) -> Table:
        from pyiceberg.exceptions import TableAlreadyExistsError
        from pyiceberg.transforms import DayTransform

        self.catalog.create_namespace_if_not_exists(dataset)
        try:
            table = self.catalog.create_table(ident, schema=schema)
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
        known = {f.name for f in table.schema().fields}
        if all(name in known for name in schema.names):
            return table
        with table.update_schema() as update:
            update.union_by_name(schema)
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
        from pyiceberg.exceptions import CommitFailedException

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
            except CommitFailedException as err:
                # Another writer committed first: reload and replay (the overwrite is idempotent).
                self._open.pop(ident, None)
                if attempt == _COMMIT_ATTEMPTS - 1:
                    raise TableError(f"table {ident}: batch {batch_id} not committed after {attempt + 1} tries: {err}") from err
                time.sleep(min(0.05 * 2 ** attempt, 1.0))
        snap = table.current_snapshot()
        return {"table": ident, "snapshot_id": snap.snapshot_id if snap else None}

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
    ) -> pa.Table:
        """Rows of the table (at ``snapshot_id``, default the current one), of the given batches,
        with ``time_column`` in [start, end) when given: a window prunes the days it does not cover."""
        e = _expressions()
        table = self.table(dataset, kind)
        if snapshot_id is None:
            table = table.refresh()
            self._open[self.identifier(dataset, kind)] = table
        expr: Any = e.AlwaysTrue()
        if time_column and start is not None:
            expr = e.And(expr, e.GreaterThanOrEqual(time_column, _iso(start)))
        if time_column and end is not None:
            expr = e.And(expr, e.LessThan(time_column, _iso(end)))
        if batch_ids is not None:
            if not batch_ids:
                return table.schema().as_arrow().empty_table()
            expr = e.And(expr, e.In(BATCH_COLUMN, set(batch_ids)))
        return table.scan(row_filter=expr, snapshot_id=snapshot_id).to_arrow()

    def snapshot(self, dataset: str, kind: str) -> int | None:
        """The current snapshot id of the table (None before its first commit): what lineage records."""
        if not self.exists(dataset, kind):
            return None
        snap = self.table(dataset, kind).refresh().current_snapshot()
        return snap.snapshot_id if snap else None


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


def _align(rows: pa.Table, table: Table) -> pa.Table:
    """``rows`` in the table's column order and types (missing columns as nulls)."""
    import pyarrow as pa

    target = table.schema().as_arrow()
    cols = []
    for field in target:
        if field.name in rows.column_names:
            cols.append(rows.column(field.name).cast(field.type))
        else:
            cols.append(pa.nulls(rows.num_rows, field.type))
    return pa.Table.from_arrays(cols, schema=target)
