"""Batches put in a lake without an ingestion source, and what a committed batch is, for tests that
compare it before and after a retry."""

from __future__ import annotations

import json
from typing import Any

from rtml.lake import BatchRef, Lake, arrow_to_parquet_bytes


def _arrow(df: Any) -> Any:
    """A frame as Arrow, timestamps in microseconds (what Iceberg stores)."""
    import pyarrow as pa

    from rtml.tables import microsecond_times

    return microsecond_times(pa.Table.from_pandas(df.reset_index(drop=True), preserve_index=False))


def commit_frame(lake: Lake, dataset: str, kind: str, batch_id: str, df: Any, /, time_column: str | None = None,
                 **manifest: Any) -> BatchRef:
    """``df`` as batch ``batch_id`` of ``kind``: one commit to its table, then its manifest (the
    counts, the time range of ``time_column`` and ``manifest``'s fields), as ingestion commits one."""
    import pandas as pd

    fields: dict[str, Any] = {"batch_id": batch_id, "dataset": dataset, "kind": kind, "records_in": len(df),
                              "accepted": len(df), "quarantined": 0}
    if time_column is not None and len(df):
        when = pd.to_datetime(df[time_column], utc=True)
        fields.update(time_column=time_column, min_time=when.min().isoformat(), watermark=when.max().isoformat())
    if len(df):
        fields.update(lake.tables.commit_batch(dataset, kind, batch_id, _arrow(df), time_column=time_column))
    fields.update(manifest)
    return lake.write_manifest(dataset, kind, batch_id, fields)


def legacy_key(dataset: str, kind: str, batch_id: str, part: int = 0) -> str:
    """Where a lake written before tables kept a batch's Parquet part."""
    from rtml.lake import _date_of

    return f"{dataset}/{kind}/date={_date_of(batch_id)}/batch={batch_id}/part-{part:05d}.parquet"


def legacy_batch(lake: Lake, dataset: str, kind: str, batch_id: str, parts: list[Any], /, **manifest: Any) -> BatchRef:
    """A batch as a lake written before tables held it: Parquet parts listed by its manifest's ``files``."""
    keys = []
    for i, df in enumerate(parts):
        keys.append(legacy_key(dataset, kind, batch_id, i))
        lake.store.put(keys[-1], arrow_to_parquet_bytes(_arrow(df)))
    rows = sum(len(df) for df in parts)
    fields = {"batch_id": batch_id, "dataset": dataset, "kind": kind, "records_in": rows, "accepted": rows,
              "quarantined": 0, "files": keys, **manifest}
    return lake.write_manifest(dataset, kind, batch_id, fields)


def legacy_copy(src: Lake, dst: Lake, dataset: str, kinds: tuple[str, ...] = ("events", "labels")) -> None:
    """``src``'s batches of ``kinds`` written into ``dst`` as a lake before tables held them (same ids,
    counts and time ranges; its quarantine files beside)."""
    for kind in kinds:
        for m in src.manifests(dataset, kind):
            rows = src.read_batches(dataset, kind, [m["batch_id"]])
            old = {k: v for k, v in m.items() if k not in ("table", "snapshot_id")}
            legacy_batch(dst, dataset, kind, m["batch_id"], [rows] if len(rows) else [], **old)
    for key in src.store.list(f"{dataset}/quarantine/"):
        dst.store.put(key, src.store.get(key))


def _without_snapshot(manifest: dict[str, Any]) -> dict[str, Any]:
    # A retried batch is a new table commit by design: its snapshot differs, nothing else may.
    return {k: v for k, v in manifest.items() if k != "snapshot_id"}


def _rows_json(rows: Any, order_by: str) -> str:
    return rows.sort_values(order_by).reset_index(drop=True).to_json(orient="records", date_format="iso")


def batch_state(lake: Lake, dataset: str, kind: str, batch_id: str, order_by: str) -> tuple[dict[str, Any], str]:
    """The batch's manifest, without ``snapshot_id``, and its rows (ordered by ``order_by``) as JSON:
    equal states mean the same batch, counts and rows."""
    manifest = lake.manifest(dataset, kind, batch_id)
    assert manifest is not None, f"no manifest for batch {batch_id}"
    return _without_snapshot(manifest), _rows_json(lake.read_batches(dataset, kind, [batch_id]), order_by)


def lake_state(lake: Lake, dataset: str, order_by: str) -> dict[str, bytes]:
    """What the lake holds for ``dataset``: every stored key's bytes (a manifest's without
    ``snapshot_id``) and each batch's rows in its table, keyed ``table/<kind>/<batch>``."""
    from rtml.tables import BATCH_COLUMN

    out = {}
    for key in lake.store.list(dataset):
        data = lake.store.get(key)
        if "/_manifests/" in key:
            data = json.dumps(_without_snapshot(json.loads(data)), sort_keys=True).encode()
        out[key] = data
    for kind in ("events", "labels"):
        if lake.tables.exists(dataset, kind):
            rows = lake.tables.read(dataset, kind).to_pandas()
            for batch, part in rows.groupby(BATCH_COLUMN):
                out[f"table/{kind}/{batch}"] = _rows_json(part, order_by).encode()
    return out
