"""The data lake: batch manifests over Iceberg tables, and readers for later stages.

Layout under the lake root (an S3 prefix or a folder), per dataset::

    _iceberg/<dataset>.db/<kind>/                                            the table <dataset>.<kind> (rtml.tables)
    <dataset>/quarantine/<kind>/date=YYYY-MM-DD/batch=<batch_id>/rejected.jsonl   with reasons
    <dataset>/_manifests/<kind>/<batch_id>.json                              one per batch
    _index/<dataset>/<kind>/<YYYY-MM-DD|wide|undated>/<batch_id>.json        the day index (beside the datasets)

``kind`` is ``events`` (features, no label), ``labels`` (delayed outcomes, joined by event id),
``predictions`` or ``shadow`` (the serving log). A batch is identified by ``batch_id``: its rows are
one commit to its table (a retry or a backfill of the same batch replaces them instead of adding
any), and its manifest names the table and snapshot. The manifest is written last: a batch without
a manifest is not visible to readers. Lakes written before tables held a batch's rows in Parquet
files listed in its manifest (``files``); ``rtml lake migrate`` moves them into tables, and readers
refuse such batches with a message that says so (:class:`UnmigratedBatches`).
Each manifest records the ``schema_hash`` of the contract its rows were checked against; readers
that build training data (:meth:`Lake.labelled`, :meth:`Lake.latest_labels`) refuse to mix batches
of another schema (:class:`SchemaMismatch`, naming the batches) instead of silently mixing them.
Stages hand each other these references (lake URI, manifest keys, batch ids), never DataFrames.

The day index makes a window read cost what the window costs, not what the lake's history costs:
beside each manifest (written just before it) a small entry per day of event time the batch covers
(``min_time``..``watermark``, UTC days) carries what a reader needs (batch id, schema hash, time
range, table). A window lists only its days' entries (plus ``wide``: batches spanning more
than :data:`INDEX_MAX_DAYS` days, and ``undated``: rows without a time range) instead of every
manifest ever written. A re-run batch rewrites its entries and drops those of days it left; an
entry that disagrees with another of its batch, or names a file gone since, is settled by the
batch's manifest. A lake written before the index gets it at its next batch (one full listing,
then ``_index/<dataset>/<kind>/_complete``); until then readers list the manifests as before.
"""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from rtml.settings import Settings, get_settings
from rtml.storage import ObjectStore, open_store, store_uri

if TYPE_CHECKING:
    import pandas as pd

    from rtml.spec import ProjectSpec
    from rtml.tables import Tables

KINDS = ("events", "labels", "predictions", "shadow")
LABEL_TIME = "label_time"  # the labels' time column (rtml.ingest.contract.LABEL_TIME)
# How far a label's time may precede its event's and still be joined: producers' clocks disagree.
LABEL_CLOCK_SKEW = timedelta(days=1)
INDEX_MAX_DAYS = 31  # a batch spanning more days of event time is indexed once, under "wide"
INDEX_MAX_WINDOW_DAYS = 400  # a longer window lists every manifest instead of its days
INDEX_COMPLETE = "_complete"
INDEX_FIELDS = ("batch_id", "schema_hash", "min_time", "watermark", "accepted", "files", "table", "snapshot_id")
_DAY = re.compile(r"\d{4}-\d{2}-\d{2}")

log = logging.getLogger("rtml.lake")


def _date_of(batch_id: str) -> str:
    # batch ids start with a UTC timestamp (YYYYMMDDTHHMMSS...), which gives the date partition;
    # the length check keeps a short all-digit id ("2026") from making a partition "date=2026--".
    dated = len(batch_id) >= 8 and batch_id[:8].isdigit()
    return f"{batch_id[0:4]}-{batch_id[4:6]}-{batch_id[6:8]}" if dated else "undated"


def _utc(value: Any) -> pd.Timestamp:
    import pandas as pd

    t = pd.Timestamp(value)
    return t.tz_convert("UTC") if t.tzinfo else t.tz_localize("UTC")


def _has_rows(m: dict[str, Any]) -> bool:
    return bool(m.get("files") or (m.get("table") and m.get("accepted")))


def index_days(m: dict[str, Any]) -> list[str]:
    """The day-index folders of a manifest: the UTC days of its time range, ``wide`` past
    :data:`INDEX_MAX_DAYS`, ``undated`` without a (readable) range; none for a batch without rows."""
    import pandas as pd

    if not _has_rows(m):
        return []
    first, last = m.get("min_time"), m.get("watermark")
    if first is None or last is None:
        return ["undated"]
    try:
        lo, hi = _utc(first).normalize(), _utc(last).normalize()
    except (TypeError, ValueError):
        return ["undated"]
    n = (hi - lo).days + 1
    if n < 1 or n > INDEX_MAX_DAYS:
        return ["wide"]
    return [f"{d:%Y-%m-%d}" for d in pd.date_range(lo, hi, freq="D")]


def _children(store: ObjectStore, prefix: str, after: str = "") -> list[str]:
    """The names directly below ``prefix`` that sort after ``after`` (stores without ``children``
    list every key below it)."""
    children = getattr(store, "children", None)
    if children is not None:
        names = children(prefix, after) if after else children(prefix)
        return [n for n in names if n > after]
    cut = len(prefix.strip("/")) + 1
    return sorted({name for key in store.list(prefix) if (name := key[cut:].split("/", 1)[0]) > after})


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


class UnmigratedBatches(RuntimeError):
    """Batches whose rows are Parquet files of a lake written before tables (``rtml lake migrate``)."""

    def __init__(self, lake_uri: str, dataset: str, kind: str, batch_ids: list[str]) -> None:
        shown = ", ".join(batch_ids[:3]) + (f" and {len(batch_ids) - 3} more" if len(batch_ids) > 3 else "")
        super().__init__(
            f"{dataset}/{kind}: {len(batch_ids)} batch(es) ({shown}) are Parquet files of a lake written "
            f"before tables, which rtml no longer reads: run `rtml lake migrate --lake {lake_uri}` once "
            "to move them into its tables (batch ids and counts kept)")
        self.batch_ids = batch_ids


def check_schema(manifests: list[dict[str, Any]], expected: str, what: str) -> None:
    """Raise :class:`SchemaMismatch` if a batch with rows was written under another schema hash."""
    other: dict[str, list[str]] = {}
    for m in manifests:
        if _has_rows(m) and m.get("schema_hash") != expected:
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
        settings = settings or get_settings()
        self.store = store or open_store(settings.lake_uri, settings)
        if store is not None and store.uri != store_uri(settings.lake_uri):
            # Another lake than the settings' (a model's lineage, ``--lake``): its own tables and
            # default catalog, never the settings' lake's.
            settings = settings.model_copy(update={"lake_uri": store.uri})
        self.settings = settings
        self._tables: Tables | None = None

    @property
    def tables(self) -> Tables:
        """The lake's Iceberg tables: ``<dataset>.<kind>`` in its catalog, under ``<lake>/_iceberg``."""
        if self._tables is None:
            from rtml.tables import Tables

            self._tables = Tables(self.settings)
        return self._tables

    @property
    def uri(self) -> str:
        return self.store.uri

    # --- layout ---------------------------------------------------------------------------------
    def quarantine_key(self, dataset: str, kind: str, batch_id: str) -> str:
        return f"{dataset}/quarantine/{kind}/date={_date_of(batch_id)}/batch={batch_id}/rejected.jsonl"

    def manifest_key(self, dataset: str, kind: str, batch_id: str) -> str:
        return f"{dataset}/_manifests/{kind}/{batch_id}.json"

    # --- writing --------------------------------------------------------------------------------
    def index_key(self, dataset: str, kind: str, day: str, batch_id: str) -> str:
        return f"_index/{dataset}/{kind}/{day}/{batch_id}.json"

    def write_manifest(self, dataset: str, kind: str, batch_id: str, manifest: dict[str, Any]) -> BatchRef:
        """Commit a batch: its day-index entries, then the manifest (the commit point), then drop
        the entries of days an earlier attempt of the batch covered and this one does not."""
        key = self.manifest_key(dataset, kind, batch_id)
        try:
            old = json.loads(self.store.get(key))
        except KeyError:
            old = None
        if not self.store.exists(f"_index/{dataset}/{kind}/{INDEX_COMPLETE}"):
            self._build_index(dataset, kind)
        days = self._write_index(dataset, kind, manifest)
        body = json.dumps(manifest, sort_keys=True, indent=2, default=str).encode()
        self.store.put(key, body)
        for day in sorted(set(index_days(old or {})) - set(days)):
            self.store.delete(self.index_key(dataset, kind, day, batch_id))
        return BatchRef(dataset, kind, batch_id, key)

    def _write_index(self, dataset: str, kind: str, manifest: dict[str, Any]) -> list[str]:
        days = index_days(manifest)
        entry = {k: manifest[k] for k in INDEX_FIELDS if k in manifest}
        body = json.dumps(entry, sort_keys=True, default=str).encode()
        for day in days:
            self.store.put(self.index_key(dataset, kind, day, manifest["batch_id"]), body)
        return days

    def _build_index(self, dataset: str, kind: str) -> None:
        """Index a lake written before the day index (once: one full listing of the manifests)."""
        found = self.manifests(dataset, kind)
        for m in found:
            self._write_index(dataset, kind, m)
        self.store.put(f"_index/{dataset}/{kind}/{INDEX_COMPLETE}", b"")
        if found:
            log.info("%s/%s: day index built for %d batch(es)", dataset, kind, len(found))

    def _manifest(self, dataset: str, kind: str, batch_id: str) -> dict[str, Any] | None:
        try:
            return dict(json.loads(self.store.get(self.manifest_key(dataset, kind, batch_id))))
        except KeyError:
            return None

    def window_manifests(self, dataset: str, kind: str, start: Any = None, end: Any = None) -> list[dict[str, Any]] | None:
        """The committed batches with rows whose time range may meet [start, end) (``end`` None: up to
        now), from the day index: what a window read lists instead of every manifest. Entries carry
        :data:`INDEX_FIELDS` only. None when the index cannot answer (no start, a window longer than
        :data:`INDEX_MAX_WINDOW_DAYS`, or a lake not indexed yet): then read :meth:`manifests`."""
        import pandas as pd

        if start is None:
            return None
        lo = _utc(start)
        hi = _utc(end) if end is not None else None
        base = f"_index/{dataset}/{kind}"
        if hi is not None and (hi - lo) > pd.Timedelta(days=INDEX_MAX_WINDOW_DAYS):
            return None
        if not self.store.exists(f"{base}/{INDEX_COMPLETE}"):
            return None
        if hi is not None:
            last = (hi - pd.Timedelta(microseconds=1)).normalize()
            days = [f"{d:%Y-%m-%d}" for d in pd.date_range(lo.normalize(), last, freq="D")] if hi > lo else []
        else:  # open-ended: the days from the start on (one delimited listing of the day folders)
            days = [d for d in _children(self.store, base) if _DAY.fullmatch(d) and d >= f"{lo:%Y-%m-%d}"]
        entries: dict[str, list[dict[str, Any]]] = {}
        for day in [*days, "wide", "undated"]:
            for key in self.store.list(f"{base}/{day}"):
                if key.endswith(".json"):
                    try:
                        e = json.loads(self.store.get(key))
                    except KeyError:  # dropped meanwhile by a re-run of its batch
                        continue
                    entries.setdefault(e["batch_id"], []).append(e)
        out = []
        for bid, found in entries.items():
            m: dict[str, Any] | None = found[0]
            if any(e != found[0] for e in found[1:]):  # a re-run changed the batch meanwhile
                m = self._manifest(dataset, kind, bid)
            if m is not None:
                out.append({**m, "_indexed": True})
        return sorted(out, key=lambda m: m["batch_id"])

    def newest_watermark(self, dataset: str, kind: str) -> pd.Timestamp | None:
        """The latest ``watermark`` of the committed batches with rows, from the day index: the
        newest day folder that a committed batch still covers, plus the ``wide`` batches; each
        entry looked at is settled by its batch's manifest (an entry of a crashed or since re-run
        attempt does not count). None when the index cannot say (a lake not indexed yet, a batch
        with rows but no time range, no batch with rows): then read :meth:`manifests`."""
        base = f"_index/{dataset}/{kind}"
        if not self.store.exists(f"{base}/{INDEX_COMPLETE}"):
            return None

        def committed(day: str) -> list[dict[str, Any]]:
            out = []
            for key in self.store.list(f"{base}/{day}"):
                m = self._manifest(dataset, kind, key.rsplit("/", 1)[-1].removesuffix(".json")) if key.endswith(".json") else None
                if m is not None and _has_rows(m) and day in index_days(m):
                    out.append(m)
            return out

        if committed("undated"):
            return None
        found = committed("wide")
        for day in sorted((d for d in _children(self.store, base) if _DAY.fullmatch(d)), reverse=True):
            # A committed batch has an entry in the day of its watermark, so the first day that a
            # committed batch covers holds the newest watermark (no batch ends in a later day).
            newest = committed(day)
            if newest:
                found += newest
                break
        try:
            return max(_utc(m["watermark"]) for m in found) if found else None
        except (TypeError, ValueError):  # an unreadable watermark: the full listing decides
            return None

    # --- reading --------------------------------------------------------------------------------
    def manifests(self, dataset: str, kind: str) -> list[dict[str, Any]]:
        """Every committed batch of a kind, oldest batch id first."""
        out = []
        for key in self.store.list(f"{dataset}/_manifests/{kind}"):
            if key.endswith(".json"):
                out.append(json.loads(self.store.get(key)))
        return sorted(out, key=lambda m: m["batch_id"])

    def batch_ids(self, dataset: str, kind: str, after: str = "") -> list[str]:
        """Every committed batch id of a kind (that sorts after ``after``), oldest first: the
        manifests' names, none of them read (read the few needed with :meth:`manifest`)."""
        # One delimited listing of the names (no stat of each file, as a full listing does).
        names = _children(self.store, f"{dataset}/_manifests/{kind}", after)
        return sorted(bid for name in names if name.endswith(".json") and (bid := name.removesuffix(".json")) > after)

    def manifest(self, dataset: str, kind: str, batch_id: str) -> dict[str, Any] | None:
        """One committed batch's manifest (None: not committed)."""
        return self._manifest(dataset, kind, batch_id)

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
        candidates: list[dict[str, Any]] | None = None,
        keep_null_time: bool = False,
    ) -> pd.DataFrame:
        """Rows of the committed batches that ``keep`` accepts, in batch order, with ``_batch``;
        with ``schema_hash``, all of them must have been written under it (:func:`check_schema`).
        ``time_column`` in [start, end) lets a table skip the days outside (callers filter rows too;
        ``keep_null_time`` keeps rows without a time); ``snapshot_id`` reads a table as it was at
        that snapshot (lineage); ``candidates`` (from :meth:`window_manifests`) instead of every manifest."""
        import pandas as pd

        found = self.manifests(dataset, kind) if candidates is None else candidates
        chosen = [m for m in found if keep is None or keep(m)]
        if schema_hash is not None:
            check_schema(chosen, schema_hash, f"{dataset}/{kind}")
        chosen = self.in_tables(dataset, kind, chosen)
        in_table = {m["batch_id"]: i for i, m in enumerate(chosen) if m.get("table")}
        if not in_table:
            return pd.DataFrame()
        # One scan for every chosen batch of the table (a window prunes by day), then batch order.
        rows = self.tables.read(dataset, kind, set(in_table), time_column=time_column, start=start, end=end,
                                snapshot_id=snapshot_id, keep_null_time=keep_null_time)
        if not rows.num_rows:
            return pd.DataFrame()
        df = rows.to_pandas()
        df["_order"] = df["_batch"].map(in_table)
        return df.sort_values("_order", kind="stable").drop(columns="_order").reset_index(drop=True)

    def in_tables(self, dataset: str, kind: str, manifests: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """``manifests`` with every batch in a table; an index entry written before its batch was
        migrated is settled by the manifest. Raises :class:`UnmigratedBatches` for batches whose
        rows are still Parquet files (a lake written before tables)."""
        out, legacy = [], []
        for m in manifests:
            if m.get("files"):
                fresh = self._manifest(dataset, kind, m["batch_id"]) if m.get("_indexed") else m
                if fresh is None:  # re-run or dropped meanwhile: nothing committed to read
                    continue
                if fresh.get("files"):
                    legacy.append(m["batch_id"])
                    continue
                m = {**fresh, "_indexed": True} if m.get("_indexed") else fresh
            out.append(m)
        if legacy:
            raise UnmigratedBatches(self.uri, dataset, kind, legacy)
        return out

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
        contract raise :class:`SchemaMismatch`. A time window's rows: :meth:`read_window`."""
        wanted = None if batch_ids is None else set(batch_ids)
        # Named batches: only their manifests are fetched, not every manifest of the kind.
        candidates = None if wanted is None else sorted(
            (m for bid in wanted if (m := self._manifest(dataset, kind, bid)) is not None), key=lambda m: m["batch_id"])

        def chosen(m: dict[str, Any]) -> bool:
            return (wanted is None or m["batch_id"] in wanted) and (keep is None or keep(m))

        df = self._read(dataset, kind, chosen, schema_hash, candidates=candidates)
        return df.drop(columns="_batch") if not df.empty else df

    def read_window(self, dataset: str, kind: str, time_column: str, start: Any, end: Any = None) -> pd.DataFrame:
        """The rows of ``kind`` (the serving log: ``predictions``, ``shadow``) with ``time_column`` in
        [start, end), in batch order: only the batches the day index lists for those days are read,
        and a table prunes the days outside."""
        import pandas as pd

        lo = _utc(start)
        hi = _utc(end) if end is not None else None

        def meets(m: dict[str, Any]) -> bool:  # a batch whose newest row is older than the window has none for it
            return m.get("watermark") is None or _utc(m["watermark"]) >= lo

        candidates = self.window_manifests(dataset, kind, lo, hi)
        df = self._read(dataset, kind, meets, time_column=time_column, start=lo, end=hi, candidates=candidates)
        if df.empty:
            return df
        df = df.drop(columns="_batch")
        when = pd.to_datetime(df[time_column], utc=True)
        inside = (when >= lo) if hi is None else (when >= lo) & (when < hi)
        return df[inside].reset_index(drop=True)

    def snapshots(self, dataset: str) -> dict[str, int | None]:
        """The current snapshot of each table of ``dataset``: read a window at these and later
        commits cannot change what it returns."""
        return {kind: self.tables.snapshot(dataset, kind) for kind in ("events", "labels")}

    def latest_labels(self, spec: ProjectSpec, snapshot_id: int | None = None,
                      batch_ids: Iterable[str] | None = None, since: Any = None) -> pd.DataFrame:
        """Each event's latest label (a later batch corrects an earlier one), with its batch in ``_batch``.

        ``since``: only labels stamped from then on (and those without a ``label_time``), read from
        the day index's days from ``since`` on instead of every labels batch."""
        import pandas as pd

        if since is None:
            labels = self._labels(spec, snapshot_id, batch_ids)
        else:
            labels = self._labels(spec, snapshot_id, batch_ids, since=_utc(since))
            if not labels.empty and LABEL_TIME in labels.columns:  # the same rows whichever way they were listed
                stamped = pd.to_datetime(labels[LABEL_TIME], utc=True)
                labels = labels[stamped.isna() | (stamped >= _utc(since))]
        return labels.drop_duplicates(subset=[spec.event_id], keep="last") if not labels.empty else labels

    def _labels(self, spec: ProjectSpec, snapshot_id: int | None = None, batch_ids: Iterable[str] | None = None,
                since: pd.Timestamp | None = None) -> pd.DataFrame:
        """Every label row in batch order; with ``since``, at least those with label time from
        ``since`` on, or none (the day index lists only the label days from ``since`` on)."""
        wanted = None if batch_ids is None else set(batch_ids)
        candidates = self.window_manifests(spec.dataset.name, "labels", since) if since is not None else None
        return self._read(spec.dataset.name, "labels", None if wanted is None else (lambda m: m["batch_id"] in wanted),
                          schema_hash=spec.schema_hash(), snapshot_id=snapshot_id, candidates=candidates,
                          time_column=LABEL_TIME if candidates is not None else None, start=since,
                          keep_null_time=True)

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

        A label whose ``label_time`` is more than ``LABEL_CLOCK_SKEW`` before its event's time cannot
        be an outcome of it and is not joined (a smaller lead is taken for clock skew between
        producers); so a window from ``start`` reads only the labels from ``start - LABEL_CLOCK_SKEW``
        on (and those without a label time), and both reads, the day index's and the full listing's,
        return the same rows.

        Returns the frame, sorted by event time then event id, and the lineage: the batch ids of
        the events and labels that contributed at least one joined row. Event batches whose
        manifest time range (``min_time``..``watermark``) lies outside [start, end) are not read;
        with both ``start`` and ``end`` only the window's days are listed (the day index).
        """
        import pandas as pd

        ds, eid, ts = spec.dataset.name, spec.event_id, spec.event_time
        lo = _utc(start) if start is not None else None
        hi = _utc(end) if end is not None else None

        def overlaps(m: dict[str, Any]) -> bool:
            first, last = m.get("min_time"), m.get("watermark")
            if not _has_rows(m):
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

        candidates = self.window_manifests(ds, "events", lo, hi) if lo is not None and hi is not None else None
        events = self._read(ds, "events", chosen, schema_hash=spec.schema_hash(), time_column=ts, start=lo, end=hi,
                            snapshot_id=snaps.get("events"), candidates=candidates)
        labels = self._labels(spec, snaps.get("labels"), None if batches is None else batches.get("labels", []),
                              since=None if lo is None else lo - LABEL_CLOCK_SKEW)
        empty = pd.DataFrame(columns=[eid, ts, *spec.feature_names, spec.target.name])
        if events.empty or labels.empty:
            return empty, {"events": [], "labels": []}
        events[ts] = pd.to_datetime(events[ts], utc=True)
        if lo is not None:
            events = events[events[ts] >= lo]
        if hi is not None:
            events = events[events[ts] < hi]
        if LABEL_TIME in labels.columns:  # a label stamped well before its event is not an outcome of it
            when = labels[eid].map(events.drop_duplicates(subset=[eid], keep="last").set_index(eid)[ts])
            stamped = pd.to_datetime(labels[LABEL_TIME], utc=True)
            labels = labels[stamped.isna() | when.isna() | (stamped >= when - LABEL_CLOCK_SKEW)]
        labels = labels.drop_duplicates(subset=[eid], keep="last")
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
