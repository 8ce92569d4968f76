"""What a committed batch is, in either lake format, for tests that compare it before and after a retry."""

from __future__ import annotations

from typing import Any

from rtml.lake import Lake


def batch_state(lake: Lake, dataset: str, kind: str, batch_id: str, order_by: str) -> tuple[dict[str, Any], str]:
    """The batch's manifest, without ``snapshot_id`` (a retried batch is a new table commit by design),
    and its rows (ordered by ``order_by``) as JSON: equal states mean the same batch, counts and rows."""
    manifest = lake.manifest(dataset, kind, batch_id)
    assert manifest is not None, f"no manifest for batch {batch_id}"
    manifest = {k: v for k, v in manifest.items() if k != "snapshot_id"}
    rows = lake.read_batches(dataset, kind, [batch_id]).sort_values(order_by).reset_index(drop=True)
    return manifest, rows.to_json(orient="records", date_format="iso")


def lake_state(lake: Lake, dataset: str, order_by: str) -> dict[str, bytes]:
    """What the lake holds for ``dataset``: every stored key's bytes (a manifest's without
    ``snapshot_id``) and, in a table lake, each batch's rows in its table, keyed ``table/<kind>/<batch>``."""
    import json

    from rtml.tables import BATCH_COLUMN

    out = {}
    for key in lake.store.list(dataset):
        data = lake.store.get(key)
        if "/_manifests/" in key:
            data = json.dumps({k: v for k, v in json.loads(data).items() if k != "snapshot_id"}, sort_keys=True).encode()
        out[key] = data
    if lake.iceberg:
        for kind in ("events", "labels"):
            if lake.tables.exists(dataset, kind):
                rows = lake.tables.read(dataset, kind).to_pandas()
                for batch, part in rows.groupby(BATCH_COLUMN):
                    part = part.sort_values(order_by).reset_index(drop=True)
                    out[f"table/{kind}/{batch}"] = part.to_json(orient="records", date_format="iso").encode()
    return out
