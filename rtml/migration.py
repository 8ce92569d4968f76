"""Moving a manifest-and-Parquet lake into Iceberg tables: ``rtml lake migrate``.

Beside :mod:`rtml.lake` and :mod:`rtml.tables` (it uses both; neither uses it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rtml.settings import Settings, get_settings
from rtml.tables import BATCH_COLUMN, TableError, Tables, microsecond_times

if TYPE_CHECKING:
    import pyarrow as pa


# --- migration of a manifest-and-files lake into tables -------------------------------------------
MIGRATED_FILES = "migrated_files"  # a migrated manifest keeps the Parquet keys it listed (audit, resume)


def _migration_step(stage: str, batch_id: str) -> None:
    """Test hook between the steps of one batch's migration (``committed``: the table has the batch,
    the manifest still lists its files; ``manifest``: the manifest names the table, the files are
    still there). Tests patch it to raise, as a process killed at that point would stop."""


def _lake_datasets(lake: Any) -> list[str]:
    """The datasets of the lake: the folders that hold a ``_manifests`` folder."""
    return sorted({key.split("/_manifests/", 1)[0] for key in lake.store.list("") if "/_manifests/" in key})


def _batch_rows(lake: Any, keys: list[str]) -> pa.Table:
    """The rows of a file-based batch (its Parquet parts, in order), timestamps in microseconds
    (:func:`rtml.tables.microsecond_times`)."""
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    parts = [pq.read_table(io.BytesIO(lake.store.get(key))) for key in keys]
    return microsecond_times(pa.concat_tables(parts, promote_options="default") if len(parts) > 1 else parts[0])


def _parquet_rows(lake: Any, keys: list[str]) -> int:
    import io

    import pyarrow.parquet as pq

    return sum(pq.ParquetFile(io.BytesIO(lake.store.get(key))).metadata.num_rows for key in keys)


def _delete_files(lake: Any, keys: list[str]) -> int:
    gone = 0
    for key in keys:
        if lake.store.exists(key):
            lake.store.delete(key)
            gone += 1
    return gone


def migrate(
    settings: Settings | None = None,
    lake: Any = None,
    datasets: list[str] | None = None,
    kinds: tuple[str, ...] | None = None,
    dry_run: bool = False,
) -> dict[str, Any]:
    """Move a manifest-and-Parquet lake into tables: ``rtml lake migrate``.

    For each dataset and kind (events, labels, predictions, shadow: those with manifests), each
    batch whose manifest lists Parquet ``files``, in batch order:

    1. its rows are committed with :meth:`Tables.commit_batch` (same batch id, the manifest's counts
       in the snapshot summary) and read back from that snapshot: the row count must equal the files';
    2. its manifest is rewritten with ``table``/``snapshot_id``, ``files: []`` and the old keys in
       ``migrated_files``;
    3. only then are its Parquet files deleted.

    Killed anywhere and run again, nothing is lost or doubled: before 2 the batch is committed
    again (a commit replaces the batch's rows), after 2 only the files left over are deleted.
    Batches without rows stay as they are. At the end, every table batch of a kind is counted in the
    current table and compared with its manifest's ``accepted``. Until then readers (:class:`rtml.lake.Lake`)
    refuse the lake's Parquet batches (:class:`rtml.lake.UnmigratedBatches`, naming this command).
    ``dry_run`` only reports what would be done.
    """
    from rtml.lake import KINDS, Lake

    s = settings or get_settings()
    lake = lake or Lake(s)
    names = datasets if datasets is not None else _lake_datasets(lake)
    report: dict[str, Any] = {"ok": True, "dry_run": dry_run, "lake": lake.uri, "kinds": {}, "mismatches": []}
    lines = []
    for ds in names:
        for kind in kinds or KINDS:
            manifests = lake.manifests(ds, kind)
            if not manifests:
                continue
            counts = _migrate_kind(lake, ds, kind, manifests, dry_run, report["mismatches"])
            report["kinds"][f"{ds}/{kind}"] = counts
            verb = "would migrate" if dry_run else "migrated"
            line = (f"{ds}/{kind}: {counts['batches']} batch(es): {verb} {counts['migrated']} "
                    f"({counts['rows']} rows), {counts['already']} already in {Tables.identifier(ds, kind)} "
                    f"({counts['rows_in_table']} rows), {counts['empty']} without rows")
            if counts["files_deleted"]:
                line += f"; {counts['files_deleted']} Parquet file(s) deleted"
            if not dry_run:
                line += ("; rows read after = rows read before for every batch" if counts["checked"]
                         else "; ROW COUNTS DIFFER (see mismatches)")
            lines.append(line)
    if report["mismatches"]:
        report["ok"] = False
        lines += [f"  MISMATCH {m['dataset']}/{m['kind']} batch {m['batch_id']}: {m['detail']}"
                  for m in report["mismatches"]]
    if not lines:
        lines.append(f"nothing to migrate: no batch manifests in {lake.uri}")
    report["message"] = "\n".join(lines)
    return report


def _migrate_kind(lake: Any, ds: str, kind: str, manifests: list[dict[str, Any]], dry_run: bool,
                  mismatches: list[dict[str, Any]]) -> dict[str, Any]:
    counts = {"batches": len(manifests), "migrated": 0, "already": 0, "empty": 0, "rows": 0, "rows_in_table": 0,
              "files_deleted": 0, "checked": True}
    ident = Tables.identifier(ds, kind)
    for m in manifests:
        bid = m["batch_id"]
        if m.get("table") and not m.get("files"):
            counts["already"] += 1
            counts["rows_in_table"] += int(m.get("accepted") or 0)
            if not dry_run:  # a run killed after rewriting the manifest left the files behind
                counts["files_deleted"] += _delete_files(lake, list(m.get(MIGRATED_FILES) or []))
            continue
        files = list(m.get("files") or [])
        if not files:
            counts["empty"] += 1
            continue
        if dry_run:
            counts["migrated"] += 1
            counts["rows"] += _parquet_rows(lake, files)
            continue
        data = _batch_rows(lake, files)
        time_column = m.get("time_column") or ("time" if "time" in data.column_names else None)
        summary = {k: m[k] for k in ("records_in", "accepted", "quarantined") if m.get(k) is not None}
        summary["migrated_from"] = "files"
        snap = lake.tables.commit_batch(ds, kind, bid, data, summary=summary,
                                        time_column=time_column if time_column in data.column_names else None)
        back = lake.tables.read(ds, kind, {bid}, snapshot_id=snap["snapshot_id"]).num_rows
        if back != data.num_rows:  # keep the files and the manifest: the batch still reads from them
            raise TableError(f"{ident}: batch {bid} reads back {back} rows from snapshot {snap['snapshot_id']}, "
                             f"its files hold {data.num_rows}; its manifest and files are left as they were")
        _migration_step("committed", bid)
        lake.write_manifest(ds, kind, bid, {**m, **snap, "files": [], MIGRATED_FILES: files})
        _migration_step("manifest", bid)
        counts["files_deleted"] += _delete_files(lake, files)
        counts["migrated"] += 1
        counts["rows"] += data.num_rows
    if not dry_run and (counts["migrated"] or counts["already"]):
        counts["checked"] = _check_table_counts(lake, ds, kind, mismatches)
    return counts


def _check_table_counts(lake: Any, ds: str, kind: str, mismatches: list[dict[str, Any]]) -> bool:
    """Every table batch of ``kind``: the rows the current table holds for it == its manifest's ``accepted``."""
    import pyarrow.compute as pc

    table_batches = {m["batch_id"]: int(m.get("accepted") or 0) for m in lake.manifests(ds, kind) if m.get("table")}
    ids = lake.tables.read(ds, kind, set(table_batches)).column(BATCH_COLUMN)
    found = {row["values"]: row["counts"] for row in pc.value_counts(ids).to_pylist()} if len(ids) else {}
    ok = True
    for bid, want in table_batches.items():
        if found.get(bid, 0) != want:
            ok = False
            mismatches.append({"dataset": ds, "kind": kind, "batch_id": bid,
                               "detail": f"{found.get(bid, 0)} rows in the table, its manifest says {want}"})
    return ok


