"""The data lake: layout, deterministic Parquet, batch manifests, and readers for later stages.

Layout under the lake root (an S3 prefix or a folder), per dataset::

    <dataset>/<kind>/date=YYYY-MM-DD/batch=<batch_id>/part-00000.parquet     accepted records
    <dataset>/quarantine/<kind>/date=YYYY-MM-DD/batch=<batch_id>/rejected.jsonl   with reasons
    <dataset>/_manifests/<kind>/<batch_id>.json                              one per batch

``kind`` is ``events`` (features, no label), ``labels`` (delayed outcomes, joined by event id) or
``predictions`` (the serving log). A batch is identified by ``batch_id`` and always written to the
same keys, so a retry or a backfill of the same batch replaces its files instead of adding any.
The manifest is written last: a batch without a manifest is not visible to readers.
Each manifest records the ``schema_hash`` of the contract its rows were checked against; readers
that build training data (:meth:`Lake.labelled`, :meth:`Lake.latest_labels`) refuse to mix batches
of another schema (:class:`SchemaMismatch`, naming the batches) instead of silently mixing them.
Stages hand each other these references (lake URI, manifest keys, batch ids), never DataFrames.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from rtml.settings import Settings, get_settings
from rtml.storage import ObjectStore, open_store

if TYPE_CHECKING:
    import pandas as pd

    from rtml.spec import ProjectSpec
    from rtml.tables import Tables

KINDS = ("events", "labels", "predictions", "shadow")


def _date_of(batch_id: str) -> str:
    # batch ids start with a UTC timestamp (YYYYMMDDTHHMMSS...), which gives the date partition;
    # the length check keeps a short all-digit id ("2026") from making a partition "date=2026--".
    dated = len(batch_id) >= 8 and batch_id[:8].isdigit()
    return f"{batch_id[0:4]}-{batch_id[4:6]}-{batch_id[6:8]}" if dated else "undated"


def _utc(value: Any) -> pd.Timestamp:
    import pandas as pd

    t = pd.Timestamp(value)
    return t.tz_convert("UTC") if t.tzinfo else t.tz_localize("UTC")


def to_parquet_bytes(df: pd.DataFrame) -> bytes:
    """Parquet with fixed options, so the same rows always give the same bytes."""
    import pyarrow as pa

    return arrow_to_parquet_bytes(pa.Table.from_pandas(df, preserve_index=False))


def arrow_to_parquet_bytes(table: Any) -> bytes:
    """An Arrow table as Parquet with the same fixed options (no pandas round trip)."""
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd", write_statistics=True, use_dictionary=True)
    return buf.getvalue()


def from_parquet_bytes(data: bytes) -> pd.DataFrame:
    import pyarrow.parquet as pq

    return pq.read_table(io.BytesIO(data)).to_pandas()


class SchemaMismatch(ValueError):
    """Committed batches written under another data contract than the one being read with."""


def check_schema(manifests: list[dict[str, Any]], expected: str, what: str) -> None:
    """Raise :class:`SchemaMismatch` if a batch with rows was written under another schema hash."""
    other: dict[str, list[str]] = {}
    for m in manifests:
        has_rows = m.get("files") or (m.get("table") and m.get("accepted"))
        if has_rows and m.get("schema_hash") != expected:
            other.setdefault(str(m.get("schema_hash")), []).append(m["batch_id"])
    if other:
        detail = "; ".join(
            f"{len(ids)} batch(es) under schema {h} (e.g. {ids[0]})" for h, ids in sorted(other.items())
        )
        raise SchemaMismatch(
            f"{what}: the spec's data contract has schema hash {expected}, but {detail}. Mixing them would "
            "train on rows checked against different rules: re-ingest those batches under the current spec, "
            "or narrow the window to batches of one schema"
        )


@dataclass(frozen=True)
class BatchRef:
    """A reference to one written batch: what stages pass to each other."""

    dataset: str
    kind: str
    batch_id: str
    manifest_key: str

    def as_dict(self) -> dict[str, str]:
        return {"dataset": self.dataset, "kind": self.kind, "batch_id": self.batch_id, "manifest": self.manifest_key}


class Lake:
    def __init__(self, settings: Settings | None = None, store: ObjectStore | None = None) -> None:
        self.settings = settings or get_settings()
        self.store = store or open_store(self.settings.lake_uri, self.settings)
        self._tables: Tables | None = None

    @property
    def tables(self) -> Tables:
        """The lake's Iceberg tables (``lake_format: iceberg``; a manifest naming a ``table``)."""
        if self._tables is None:
            from rtml.tables import Tables

            self._tables = Tables(self.settings)
        return self._tables

    @property
    def iceberg(self) -> bool:
        return self.settings.lake_format == "iceberg"

    @property
    def uri(self) -> str:
        return self.store.uri

    # --- layout ---------------------------------------------------------------------------------
    def data_key(self, dataset: str, kind: str, batch_id: str, part: int = 0) -> str:
        return f"{dataset}/{kind}/date={_date_of(batch_id)}/batch={batch_id}/part-{part:05d}.parquet"

    def quarantine_key(self, dataset: str, kind: str, batch_id: str) -> str:
        return f"{dataset}/quarantine/{kind}/date={_date_of(batch_id)}/batch={batch_id}/rejected.jsonl"

    def manifest_key(self, dataset: str, kind: str, batch_id: str) -> str:
        return f"{dataset}/_manifests/{kind}/{batch_id}.json"

    # --- writing --------------------------------------------------------------------------------
    def write_table(self, key: str, df: pd.DataFrame) -> int:
        data = to_parquet_bytes(df)
        self.store.put(key, data)
        return len(data)

    def read_table(self, key: str) -> pd.DataFrame:
        return from_parquet_bytes(self.store.get(key))

    def write_manifest(self, dataset: str, kind: str, batch_id: str, manifest: dict[str, Any]) -> BatchRef:
        key = self.manifest_key(dataset, kind, batch_id)
        body = json.dumps(manifest, sort_keys=True, indent=2, default=str).encode()
        self.store.put(key, body)
        return BatchRef(dataset, kind, batch_id, key)

    # --- reading --------------------------------------------------------------------------------
    def manifests(self, dataset: str, kind: str) -> list[dict[str, Any]]:
        """Every committed batch of a kind, oldest batch id first."""
        out = []
        for key in self.store.list(f"{dataset}/_manifests/{kind}"):
            if key.endswith(".json"):
                out.append(json.loads(self.store.get(key)))
        return sorted(out, key=lambda m: m["batch_id"])

    def _read(
        self,
        dataset: str,
        kind: str,
        keep: Callable[[dict[str, Any]], bool] | None = None,
        schema_hash: str | None = None,
        time_column: str | None = None,
        start: Any = None,
        end: Any = None,
        snapshot_id: int | None = None,
    ) -> pd.DataFrame:
        """Rows of the committed batches that ``keep`` accepts, in batch order, with ``_batch``;
        with ``schema_hash``, all of them must have been written under it (:func:`check_schema`).
        ``time_column`` in [start, end) lets a table skip the days outside (callers filter rows too);
        ``snapshot_id`` reads a table as it was at that snapshot (lineage)."""
        import pandas as pd

        chosen = [m for m in self.manifests(dataset, kind) if keep is None or keep(m)]
        if schema_hash is not None:
            check_schema(chosen, schema_hash, f"{dataset}/{kind}")
        frames = []
        in_table = {m["batch_id"]: i for i, m in enumerate(chosen) if m.get("table")}
        if in_table:
            # One scan for every chosen batch of the table (a window prunes by day), then batch order.
            rows = self.tables.read(dataset, kind, set(in_table), time_column=time_column, start=start, end=end,
                                    snapshot_id=snapshot_id)
            if rows.num_rows:
                df = rows.to_pandas()
                df["_order"] = df["_batch"].map(in_table)
                frames.append(df.sort_values("_order", kind="stable").drop(columns="_order"))
        for m in chosen:
            for key in m.get("files", []):
                frames.append(self.read_table(key).assign(_batch=m["batch_id"]))
        if len(frames) > 1 and in_table:
            order = {m["batch_id"]: i for i, m in enumerate(chosen)}
            df = pd.concat(frames, ignore_index=True)
            return df.iloc[df["_batch"].map(order).argsort(kind="stable")].reset_index(drop=True)
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()

    def read_batches(
        self,
        dataset: str,
        kind: str,
        batch_ids: Iterable[str] | None = None,
        keep: Callable[[dict[str, Any]], bool] | None = None,
        schema_hash: str | None = None,
    ) -> pd.DataFrame:
        """The accepted rows of the given committed batches (all when None, or those whose manifest
        ``keep`` accepts), in batch order. With ``schema_hash``, batches written under another
        contract raise :class:`SchemaMismatch`."""
        wanted = None if batch_ids is None else set(batch_ids)

        def chosen(m: dict[str, Any]) -> bool:
            return (wanted is None or m["batch_id"] in wanted) and (keep is None or keep(m))

        df = self._read(dataset, kind, chosen, schema_hash)
        return df.drop(columns="_batch") if not df.empty else df

    def snapshots(self, dataset: str) -> dict[str, int | None]:
        """The current snapshot of each table of ``dataset`` (``lake_format: iceberg``; else empty):
        read a window at these and later commits cannot change what it returns."""
        if not self.iceberg:
            return {}
        return {kind: self.tables.snapshot(dataset, kind) for kind in ("events", "labels")}

    def latest_labels(self, spec: ProjectSpec, snapshot_id: int | None = None,
                      batch_ids: Iterable[str] | None = None) -> pd.DataFrame:
        """Each event's latest label (a later batch corrects an earlier one), with its batch in ``_batch``."""
        wanted = None if batch_ids is None else set(batch_ids)
        labels = self._read(spec.dataset.name, "labels", None if wanted is None else (lambda m: m["batch_id"] in wanted),
                            schema_hash=spec.schema_hash(), snapshot_id=snapshot_id)
        return labels.drop_duplicates(subset=[spec.event_id], keep="last") if not labels.empty else labels

    def labelled(
        self,
        spec: ProjectSpec,
        start: datetime | None = None,
        end: datetime | None = None,
        snapshots: dict[str, int | None] | None = None,
        batches: dict[str, list[str]] | None = None,
    ) -> tuple[pd.DataFrame, dict[str, list[str]]]:
        """Events joined to their (latest) label by event id, event time in [start, end).

        ``snapshots`` (from :meth:`snapshots`) reads the tables as they were then; ``batches``
        (a lineage's ``events``/``labels`` batch ids) reads only those: together they read back a
        training window exactly, whatever landed or was re-run since.

        Returns the frame, sorted by event time then event id, and the lineage: the batch ids of
        the events and labels that contributed at least one joined row. Event batches whose
        manifest time range (``min_time``..``watermark``) lies outside [start, end) are not read.
        """
        import pandas as pd

        ds, eid, ts = spec.dataset.name, spec.event_id, spec.event_time
        lo = _utc(start) if start is not None else None
        hi = _utc(end) if end is not None else None

        def overlaps(m: dict[str, Any]) -> bool:
            first, last = m.get("min_time"), m.get("watermark")
            if not m.get("files") and not (m.get("table") and m.get("accepted")):
                return False
            if first is None or last is None:  # a manifest without a time range: read it
                return True
            try:
                return (hi is None or _utc(first) < hi) and (lo is None or _utc(last) >= lo)
            except (TypeError, ValueError):  # an unreadable range: read the batch
                return True

        snaps = snapshots or {}
        only = None if batches is None else set(batches.get("events", []))

        def chosen(m: dict[str, Any]) -> bool:
            return (only is None or m["batch_id"] in only) and overlaps(m)

        events = self._read(ds, "events", chosen, schema_hash=spec.schema_hash(), time_column=ts, start=lo, end=hi,
                            snapshot_id=snaps.get("events"))
        labels = self.latest_labels(spec, snaps.get("labels"), None if batches is None else batches.get("labels", []))
        empty = pd.DataFrame(columns=[eid, ts, *spec.feature_names, spec.target.name])
        if events.empty or labels.empty:
            return empty, {"events": [], "labels": []}
        events[ts] = pd.to_datetime(events[ts], utc=True)
        if lo is not None:
            events = events[events[ts] >= lo]
        if hi is not None:
            events = events[events[ts] < hi]
        label_cols = [eid, spec.target.name, "_batch"]
        joined = events.merge(labels[label_cols], on=eid, how="inner", validate="many_to_one", suffixes=("", "_label"))
        joined = joined.drop_duplicates(subset=[eid], keep="last").sort_values([ts, eid], kind="stable")
        lineage = {
            "events": sorted(joined["_batch"].unique().tolist()),
            "labels": sorted(joined["_batch_label"].unique().tolist()),
        }
        joined = joined.drop(columns=["_batch", "_batch_label"])
        if joined.empty:
            return empty, {"events": [], "labels": []}
        return joined.reset_index(drop=True), lineage
