"""The micro-batch step: source -> contract -> lake, exactly once per batch.

One call of :func:`ingest_batch`:

1. reads what is new for one batch from a :mod:`rtml.ingest.sources` source (the files of a data
   interval, or the next stream entries / the entries a crashed attempt left pending);
2. validates every record against the spec's contract (:mod:`rtml.ingest.contract`), including duplicate
   event ids inside the batch and against *earlier* committed batches;
3. commits the accepted rows to the table ``<dataset>.<kind>`` in one Iceberg commit that replaces
   whatever an earlier attempt of the same batch id committed, and the rejected ones with their
   reasons to quarantine (a file and the table ``<dataset>.quarantine``);
4. writes the batch manifest LAST (counts, watermark, source position, schema hash, table and
   snapshot): until then readers do not see the batch;
5. only then acknowledges the source (Redis XACK).

A crash anywhere before 5 leaves the source entries pending; the retry reads the same entries, so
it computes the same batch id and replaces the same batch's rows. ``records_in == accepted +
quarantined`` holds in every manifest (a refused file or line counts as one quarantined item).

``rtml ingest SPEC`` runs it from the command line; the ``rtml_ingest`` DAG calls
:func:`ingest_run` with its data interval.
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from rtml.settings import Settings, get_settings

if TYPE_CHECKING:
    from rtml.ingest.sources import Source, SourceBatch
    from rtml.lake import Lake
    from rtml.spec import ProjectSpec

QUARANTINE_KIND = "quarantine"  # the table <dataset>.quarantine: rejects of every kind
SETTLE_SECONDS = 5.0
# Duplicate ids are looked for in the batches of this many days before the current one.
DEDUPE_LOOKBACK_DAYS = 2.0
CRASH_ENV = "RTML_TEST_CRASH_AFTER_WRITE"  # test hook: "data" (before the manifest) or "1"/"manifest"


def _crash_point(stage: str) -> None:
    value = os.environ.get(CRASH_ENV, "")
    if value and (value == stage or (value == "1" and stage == "manifest")):
        # Simulates a process killed at this point: no cleanup, no acknowledgement.
        os._exit(75)


def _batch_time(batch_id: str) -> datetime | None:
    try:
        return datetime.strptime(batch_id[:15], "%Y%m%dT%H%M%S").replace(tzinfo=UTC)
    except ValueError:
        return None


def committed_ids(
    lake: Lake,
    spec: ProjectSpec,
    kind: str,
    before: str,
    lookback_days: float = DEDUPE_LOOKBACK_DAYS,
) -> dict[str, Any]:
    """Event ids in committed batches that sort before ``before`` (within the lookback).

    Only *earlier* batches count, so re-running a batch (or backfilling an old one after newer
    ones were committed) gives the same result as the first run. For labels the value also holds
    the label, because a different label for the same event is a correction, not a duplicate.
    Ingestion asks :class:`CommittedIds` only about the ids of the batch at hand instead.
    """
    return CommittedIds(lake, spec, kind, lookback_days).all(before)


class CommittedIds:
    """The ids of the committed batches in the duplicate lookback, kept for the batches of one drain.

    Each earlier batch's ids are read from the lake once and kept in one index (id -> batch, for
    labels ``(batch, label)``); a batch the drain commits itself is added from memory. A batch is
    then checked by looking up *its* ids only (:meth:`lookup`): the check costs what the batch
    costs, not what the lookback holds (rebuilding every id of the lookback per batch made a
    drain's cost grow with the square of its batches). Which batches count is decided at each
    lookup by the manifests (the commit points): a batch committed meanwhile by another process is
    read then, one that crashed before its manifest never counts, and the index answers only with
    the batches that count for the batch at hand (same values as :func:`committed_ids`). Batches are
    immutable once committed (a re-run rewrites the same rows), so what was read stays right.
    """

    def __init__(self, lake: Lake, spec: ProjectSpec, kind: str, lookback_days: float = DEDUPE_LOOKBACK_DAYS) -> None:
        self.lake, self.spec, self.kind, self.lookback_days = lake, spec, kind, lookback_days
        self.cols = [spec.event_id] if kind == "events" else [spec.event_id, spec.target.name]
        self._chunks: dict[str, list[tuple[Any, Any]]] = {}  # batch id -> [(ids, labels or None)], Arrow
        # id -> its entry (events: the batch id; labels: (batch id, label)), or a list of entries
        # when several indexed batches hold the id.
        self._index: dict[Any, Any] = {}

    def _earlier(self, before: str) -> list[str]:
        """The committed batch ids that count for ``before``, oldest first (from the manifest names)."""
        t0 = _batch_time(before)
        horizon = t0 - timedelta(days=self.lookback_days) if t0 else None
        # Ingestion's batch ids start with their time (intervals, Kafka offsets, stream ids): the
        # listing starts at the lookback's horizon, so it costs what the lookback holds, not the history.
        after = f"{horizon:%Y%m%dT%H%M%S}" if horizon is not None else ""
        out = []
        for bid in self.lake.batch_ids(self.spec.dataset.name, self.kind, after):
            if bid >= before:
                continue
            bt = _batch_time(bid)
            if horizon is not None and bt is not None and bt < horizon:
                continue
            out.append(bid)
        return out

    def _load(self, bids: list[str]) -> None:
        import pyarrow as pa
        import pyarrow.compute  # noqa: F401 - pa.compute

        lake, ds = self.lake, self.spec.dataset.name
        parts: dict[str, list[Any]] = {bid: [] for bid in bids}
        found = [json.loads(lake.store.get(lake.manifest_key(ds, self.kind, bid))) for bid in bids]
        in_table = [m["batch_id"] for m in lake.in_tables(ds, self.kind, found) if m.get("table") and m.get("accepted")]
        if in_table:  # one scan for the table's batches
            rows = lake.tables.read(ds, self.kind, set(in_table), columns=tuple(self.cols))
            for bid in in_table:
                parts[bid].append(rows.filter(pa.compute.equal(rows.column("_batch"), bid)))
        for bid, found in parts.items():
            self._set(bid, [t for t in found if t.num_rows])

    def add(self, batch_id: str, table: Any) -> None:
        """A batch this drain just committed (its accepted rows): counted by later lookups without a read."""
        self._set(batch_id, [table] if table.num_rows else [])

    def _entries(self, bid: str, ids: Any, labels: Any) -> dict[Any, Any]:
        # Within a batch the last row of an id wins, as when the batch is read in order.
        if labels is None:
            return dict.fromkeys(ids.to_pylist(), bid)
        return dict(zip(ids.to_pylist(), zip(itertools.repeat(bid), labels.to_pylist(), strict=False), strict=True))

    def _set(self, bid: str, tables: list[Any]) -> None:
        """Index the rows of batch ``bid`` (replacing what an earlier read of it indexed)."""
        self._drop(bid)
        chunks = [(t.column(self.spec.event_id), t.column(self.spec.target.name) if self.kind != "events" else None)
                  for t in tables]
        self._chunks[bid] = chunks
        index = self._index
        for ids, labels in chunks:
            new = self._entries(bid, ids, labels)
            for key in new.keys() & index.keys():  # held by another batch too: keep both (rare)
                old = index[key]
                new[key] = [*(old if isinstance(old, list) else [old]), new[key]]
            index.update(new)

    def _drop(self, bid: str) -> None:
        index = self._index
        for ids, _labels in self._chunks.pop(bid, []):
            for key in ids.to_pylist():
                v = index.get(key)
                if isinstance(v, list):
                    rest = [e for e in v if _entry_batch(e) != bid]
                    if len(rest) > 1:
                        index[key] = rest
                    elif rest:
                        index[key] = rest[0]
                    else:
                        del index[key]
                elif v is not None and _entry_batch(v) == bid:
                    del index[key]

    def _counting(self, before: str) -> list[str]:
        """The batches that count for ``before``, read if new; the index forgets those past the lookback."""
        bids = self._earlier(before)
        self._load([b for b in bids if b not in self._chunks])
        t0 = _batch_time(before)
        for old in set(self._chunks) - set(bids):
            bt = _batch_time(old)
            if t0 is not None and bt is not None and bt < t0 - timedelta(days=self.lookback_days):
                self._drop(old)  # the drain's later batches never count it again
        return bids

    def all(self, before: str) -> dict[str, Any]:
        """Every id of the batches that count for ``before`` (see :func:`committed_ids`)."""
        out: dict[str, Any] = {}
        for bid in self._counting(before):  # batch order: a later label is a correction
            for ids, labels in self._chunks[bid]:
                out.update(self._entries(bid, ids, labels))
        return out

    def lookup(self, before: str) -> IdsLookup:
        """What :meth:`rtml.ingest.contract.Contract.validate` asks about the ids of batch ``before``."""
        return IdsLookup(self, before)

    def among(self, ids: Iterable[Any], counting: set[str]) -> dict[str, Any]:
        """The entries of ``ids`` in the batches ``counting``: the latest batch's, as :meth:`all`."""
        index, out = self._index, dict[Any, Any]()
        for key in index.keys() & set(ids):
            v = index[key]
            if isinstance(v, list):
                for e in v:  # the latest batch's; within a batch, its last part's
                    if _entry_batch(e) in counting and (key not in out or _entry_batch(e) >= _entry_batch(out[key])):
                        out[key] = e
            elif _entry_batch(v) in counting:
                out[key] = v
        return out


def _entry_batch(entry: Any) -> str:
    return entry if isinstance(entry, str) else entry[0]


class IdsLookup:
    """The committed ids that count for one batch, asked about that batch's ids only: ``among(ids)``
    is :func:`committed_ids` restricted to ``ids`` (same values, same batch order)."""

    def __init__(self, committed: CommittedIds, before: str) -> None:
        self.committed, self.before = committed, before
        self._counting: set[str] | None = None

    def among(self, ids: Any) -> dict[str, Any]:
        if self._counting is None:  # once per batch (validation may ask again about a part of it)
            self._counting = set(self.committed._counting(self.before))
        return self.committed.among((i for i in ids if i is not None), self._counting)


def _committed_ranges(lake: Lake, dataset: str, kind: str, stream: str) -> dict[str, tuple[str, str]]:
    out = {}
    for m in lake.manifests(dataset, kind):
        src = m.get("source") or {}
        if src.get("type") == "redis" and src.get("stream") == stream:
            out[m["batch_id"]] = (src["first_id"], src["last_id"])
    return out


def _iso(t: Any) -> str | None:
    import pandas as pd

    return None if t is None or pd.isna(t) else pd.Timestamp(t).isoformat()


def ingest_batch(
    spec: ProjectSpec,
    kind: str,
    source: Source,
    lake: Lake | None = None,
    settings: Settings | None = None,
    batch: SourceBatch | None = None,
    committed: CommittedIds | None = None,
) -> dict[str, Any]:
    """Read, validate, write and commit one batch; returns the summary (also the XCom value).

    ``committed``: the earlier batches' ids as a drain keeps them (:class:`CommittedIds`, told of
    this batch once it is committed); without it they are read for this batch alone."""
    import pyarrow.compute as pc

    from rtml.ingest.contract import Contract, quarantine_lines
    from rtml.lake import Lake

    settings = settings or get_settings()
    lake = lake or Lake(settings)
    ds = spec.dataset.name
    contract = Contract(spec, kind)
    if batch is None:
        batch = source.read(contract)
    if batch is None:
        return {
            "ok": True,
            "dataset": ds,
            "kind": kind,
            "batch_id": None,
            "records_in": 0,
            "accepted": 0,
            "quarantined": 0,
            "unknown_fields": {},
            "missing_fields": {},
            "alerts": [],
            "message": f"{ds}/{kind}: nothing new",
        }
    bid = batch.batch_id
    earlier = committed if committed is not None else CommittedIds(lake, spec, kind)
    result = contract.validate(batch.raw, earlier.lookup(bid))
    table, rejects = result.table, result.rejects
    n_acc = table.num_rows
    if result.records_in != n_acc + len(rejects):  # the contract's own invariant
        raise RuntimeError(f"conservation broken in batch {bid}: {result.records_in} in, {n_acc}+{len(rejects)} out")

    _crash_point("before-data")
    # One Iceberg commit: the batch's rows replace whatever an earlier attempt committed.
    snapshot = lake.tables.commit_batch(
        ds, kind, bid, table, time_column=contract.time_column,
        summary={"records_in": result.records_in, "accepted": n_acc, "quarantined": len(rejects)})
    qkey = lake.quarantine_key(ds, kind, bid)
    if rejects:
        lake.store.put(qkey, quarantine_lines(rejects))
    elif lake.store.exists(qkey):
        lake.store.delete(qkey)
    _commit_quarantine(lake, ds, kind, bid, rejects, contract.time_column)
    _crash_point("data")

    tcol = contract.time_column
    span = pc.min_max(table.column(tcol)).as_py() if n_acc else {"min": None, "max": None}
    manifest = {
        "batch_id": bid,
        "dataset": ds,
        "kind": kind,
        **snapshot,  # the table and the snapshot that committed the batch
        "quarantine": qkey if rejects else None,
        "records_in": result.records_in,
        "accepted": n_acc,
        "quarantined": len(rejects),
        "reasons": result.reason_counts,
        "time_column": tcol,
        "min_time": _iso(span["min"]),
        "watermark": _iso(span["max"]),
        "columns": table.column_names,
        "schema_hash": spec.schema_hash(),
        "unknown_fields": result.drift["unknown_fields"],
        "missing_fields": result.drift["missing_fields"],
        "renamed": result.drift["renamed"],
        "source": batch.position,
    }
    ref = lake.write_manifest(ds, kind, bid, manifest)
    earlier.add(bid, table)
    _crash_point("manifest")
    source.commit(batch)

    msg = (
        f"{ds}/{kind} batch {bid}: {result.records_in} in, {n_acc} accepted, {len(rejects)} quarantined"
        + (f" ({', '.join(f'{k}: {v}' for k, v in result.reason_counts.items())})" if rejects else "")
    )
    alerts = list(result.drift["alerts"])
    if alerts:
        msg += "".join(f"\n  ALERT {a}" for a in alerts)
    return {
        "ok": True,
        "dataset": ds,
        "kind": kind,
        "batch_id": bid,
        "manifest": ref.manifest_key,
        "lake": lake.uri,
        **snapshot,
        "quarantine": manifest["quarantine"],
        "records_in": result.records_in,
        "accepted": n_acc,
        "quarantined": len(rejects),
        "reasons": result.reason_counts,
        "watermark": manifest["watermark"],
        "unknown_fields": manifest["unknown_fields"],
        "missing_fields": manifest["missing_fields"],
        "renamed": manifest["renamed"],
        "alerts": alerts,
        "source": {k: v for k, v in batch.position.items() if k != "files"} | batch.info,
        "message": msg,
    }


# --- the two ways to pick a batch ----------------------------------------------------------------
def _commit_quarantine(lake: Lake, ds: str, kind: str, bid: str, rejects: list[dict[str, Any]],
                       time_column: str | None) -> None:
    """The batch's rejects as its rows of the table ``<ds>.quarantine`` (the file stays the manifest's
    pointer; the table is what SQL and Spark query). Events and labels batches of one interval share
    an id, so the table's batch is ``<kind>/<id>``. A batch without rejects costs no commit, unless
    an earlier attempt of it left rows: they are replaced by none."""
    from rtml.ingest.contract import quarantine_table

    key = f"{kind}/{bid}"
    if rejects or lake.tables.has_batch(ds, QUARANTINE_KIND, key):
        lake.tables.commit_batch(ds, QUARANTINE_KIND, key, quarantine_table(kind, bid, rejects, time_column),
                                 time_column="time")


def ingest_interval(
    spec: ProjectSpec,
    kind: str,
    start: datetime,
    end: datetime,
    settings: Settings | None = None,
    lake: Lake | None = None,
    landing_uri: str | None = None,
    settle_seconds: float = SETTLE_SECONDS,
    batch_tag: str | None = None,
) -> dict[str, Any]:
    """The landing-zone batch of the data interval ``[start, end)``: every landing file keyed
    before ``end`` that no committed batch consumed yet (see :mod:`rtml.ingest.sources`, the ledger).

    An interval that has not closed yet is refused (:class:`~rtml.ingest.sources.IntervalNotClosed`). A run
    that starts right at the end of its interval first waits ``settle_seconds`` past it, so a file
    keyed just before the end whose upload is still finishing is not left to the next batch."""
    import time

    from rtml.ingest.sources import IntervalNotClosed, LandingSource, landing_store
    from rtml.lake import Lake

    now = datetime.now(UTC)
    if end > now:
        raise IntervalNotClosed(
            f"the interval [{start.isoformat()}, {end.isoformat()}) has not closed yet (it ends in "
            f"{(end - now).total_seconds():.0f}s): files may still arrive in it; ingest it after its end"
        )
    wait = (end + timedelta(seconds=settle_seconds) - now).total_seconds()
    if 0 < wait <= settle_seconds:
        time.sleep(wait)
    settings = settings or get_settings()
    lake = lake or Lake(settings)
    source = LandingSource(landing_store(settings, landing_uri), spec.dataset.name, kind, start, end, lake.store,
                           batch_tag=batch_tag)
    return ingest_batch(spec, kind, source, lake=lake, settings=settings)


def ingest_stream(
    spec: ProjectSpec,
    kind: str,
    settings: Settings | None = None,
    lake: Lake | None = None,
    stream: str | None = None,
    group: str | None = None,
    max_records: int = 100_000,
    max_batches: int = 1,
    claim_idle_ms: int = 0,
    client=None,
) -> dict[str, Any]:
    """Up to ``max_batches`` batches from the Redis stream of ``kind``; returns the totals."""
    from rtml.ingest.contract import Contract
    from rtml.ingest.sources import DEFAULT_GROUP, RedisStreamSource, stream_key
    from rtml.lake import Lake

    settings = settings or get_settings()
    lake = lake or Lake(settings)
    ds = spec.dataset.name
    key = stream or stream_key(ds, kind)
    gaps = _GapLog(lake, lambda g: f"{ds}/_gaps/{kind}/{key.replace(':', '_')}/"
                                   + f"{g['after_id']}-{g['before_id']}".replace(":", "_") + ".json")
    source = RedisStreamSource(
        key,
        group=group or DEFAULT_GROUP,
        client=client,
        settings=settings,
        max_records=max_records,
        claim_idle_ms=claim_idle_ms,
        kind=kind,
        max_deliveries=spec.ingestion.max_deliveries,
        on_gap=gaps.record,
    )
    contract = Contract(spec, kind)

    def describe(g: dict[str, Any]) -> str:
        lost = "an unknown number of" if g["lost_unread"] < 0 else str(g["lost_unread"])
        return (f"stream gap in {key}: {lost} unread and {g['lost_pending']} pending entries were trimmed before "
                f"being committed (after id {g['after_id']}, stream now starts at {g['before_id']}); see {g['record']}")

    return _drain(spec, kind, source, lake, settings, max_batches, gaps, describe,
                  read=lambda: source.read(contract, committed=lambda: _committed_ranges(lake, ds, kind, key)))


class _GapLog:
    """The gaps a stream source reports (entries trimmed before they were committed), each written
    to the lake before the source reads past it. Same gap, same key: a retry rewrites it."""

    def __init__(self, lake: Any, key_of: Callable[[dict[str, Any]], str]):
        self.lake, self.key_of = lake, key_of
        self.found: list[dict[str, Any]] = []

    def record(self, gap: dict[str, Any]) -> None:
        where = self.key_of(gap)
        self.lake.store.put(where, json.dumps(gap, sort_keys=True, indent=2).encode())
        self.found.append({**gap, "record": where})


def _drain(
    spec: Any, kind: str, source: Any, lake: Any, settings: Settings, max_batches: int, gaps: _GapLog,
    describe: Callable[[dict[str, Any]], str], read: Callable[[], Any], close: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Up to ``max_batches`` batches from a stream source into the lake; the totals, gap alerts first-class."""
    ds = spec.dataset.name
    # The lake must answer before any entry is handed out: a delivery is counted then, and an
    # unreachable lake must not turn good entries into dead letters.
    lake.store.list(f"{ds}/_manifests/{kind}")
    batches = []
    committed = CommittedIds(lake, spec, kind)  # the lookback's ids, read once for the whole drain
    try:
        for _ in range(max_batches):
            batch = read()
            if batch is None:
                break
            batches.append(ingest_batch(spec, kind, source, lake=lake, settings=settings, batch=batch,
                                        committed=committed))
    finally:
        if close is not None:
            close()
    out = _totals(ds, kind, batches)
    if gaps.found:
        out["gaps"] = gaps.found
        alerts = [describe(g) for g in gaps.found]
        out["alerts"].extend(alerts)
        out["message"] += "".join(f"\n  ALERT {a}" for a in alerts)
    return out


def _totals(dataset: str, kind: str, batches: list[dict[str, Any]]) -> dict[str, Any]:
    tot = {k: sum(b["records_in" if k == "records_in" else k] for b in batches) for k in ("records_in", "accepted", "quarantined")}
    reasons: dict[str, int] = {}
    for b in batches:
        for r, c in b.get("reasons", {}).items():
            reasons[r] = reasons.get(r, 0) + c
    marks = [b["watermark"] for b in batches if b.get("watermark")]
    unknown: dict[str, int] = {}
    missing: dict[str, int] = {}
    for b in batches:
        for name, c in b.get("unknown_fields", {}).items():
            unknown[name] = unknown.get(name, 0) + c
        for name, c in b.get("missing_fields", {}).items():
            missing[name] = missing.get(name, 0) + c
    return {
        "ok": True,
        "dataset": dataset,
        "kind": kind,
        "batches": batches,
        "batch_ids": [b["batch_id"] for b in batches],
        "manifests": [b["manifest"] for b in batches],
        **tot,
        "reasons": dict(sorted(reasons.items())),
        "watermark": max(marks) if marks else None,
        "unknown_fields": dict(sorted(unknown.items())),
        "missing_fields": dict(sorted(missing.items())),
        "alerts": [a for b in batches for a in b.get("alerts", [])],
        "dead_letters": sum((b.get("source") or {}).get("dead_letters", 0) for b in batches),
        "message": f"{dataset}/{kind}: {len(batches)} batch(es), {tot['records_in']} in, "
        f"{tot['accepted']} accepted, {tot['quarantined']} quarantined",
    }


def last_interval(now: datetime, minutes: int) -> tuple[datetime, datetime]:
    """The last complete ``minutes``-long interval before ``now`` (aligned to the epoch)."""
    now = now.astimezone(UTC)
    step = minutes * 60
    end_ts = int(now.timestamp()) // step * step
    end = datetime.fromtimestamp(end_ts, tz=UTC)
    return end - timedelta(minutes=minutes), end


def ingest_run(
    kinds: list[str] | tuple[str, ...] = ("events", "labels"),
    start: datetime | None = None,
    end: datetime | None = None,
    spec_path: str | None = None,
    source: str | None = None,
    settings: Settings | None = None,
    **stream_kw: Any,
) -> dict[str, Any]:
    """What the DAG task and the CLI call: each kind from the configured source.

    Landing: the batch is the data interval (default: the last complete one); ``batch_tag`` (a
    manual run's id) makes it a batch of its own that sweeps what is new. Redis/Kafka: the
    interval is ignored; the stream is drained in batches (``max_batches`` per call).
    """
    from rtml.spec import load_spec

    settings = settings or get_settings()
    spec = load_spec(spec_path)
    source = source or settings.source
    out: dict[str, Any] = {"ok": True, "source": source}
    if source == "landing":
        if start is None or end is None:
            start, end = last_interval(datetime.now(UTC), settings.ingest_interval_minutes)
        out["interval"] = [start.isoformat(), end.isoformat()]
        for kind in kinds:
            out[kind] = ingest_interval(spec, kind, start, end, settings=settings, landing_uri=stream_kw.get("landing_uri"),
                                        batch_tag=stream_kw.get("batch_tag"))
    elif source == "redis":
        kw = {k: v for k, v in stream_kw.items() if k not in ("landing_uri", "max_wait", "batch_tag") and v is not None}
        kw.setdefault("max_batches", 10)
        for kind in kinds:
            out[kind] = ingest_stream(spec, kind, settings=settings, **kw)
    elif source == "kafka":

        kw = {k: v for k, v in stream_kw.items() if k not in ("landing_uri", "claim_idle_ms", "batch_tag") and v is not None}
        kw.setdefault("max_batches", 10)
        if "stream" in kw:
            kw["topic"] = kw.pop("stream")
        for kind in kinds:
            out[kind] = ingest_kafka(spec, kind, settings=settings, **kw)
    else:
        raise ValueError(f"unknown source {source!r} (expected 'landing', 'redis' or 'kafka')")
    out["message"] = "\n".join(out[k]["message"] for k in kinds)
    # Schema drift and stream gaps, for a person reading `rtml ingest --json` or the task log.
    out["alerts"] = [f"{k}: {a}" for k in kinds for a in out[k].get("alerts", [])]
    return out


def ingest_for_run(
    kind: str,
    interval_start: datetime | None,
    interval_end: datetime | None,
    run_id: str | None = None,
    manual: bool = False,
    settings: Settings | None = None,
) -> dict[str, Any]:
    """One ``rtml_ingest`` task: the batch of ``kind`` for a DAG run, summarised for its Asset event.

    A run without a usable interval takes the last complete one; a manual run sweeps what is new
    into a batch of its own, tagged with its run id (its interval may be committed already).
    Returns the Asset event's extra (counts, batch ids, manifests, alerts) plus ``message`` and
    ``reasons``; ``accepted`` 0 means no Asset update.
    """
    settings = settings or get_settings(refresh=True)
    if interval_start is None or interval_end is None or interval_start >= interval_end:
        interval_start = interval_end = None
    result = ingest_run([kind], interval_start, interval_end, settings=settings,
                        batch_tag=run_id if manual and run_id else None)
    summary = result[kind]
    return {
        "dataset": summary["dataset"],
        "kind": kind,
        "source": result["source"],
        "records_in": summary["records_in"],
        "accepted": summary["accepted"],
        "quarantined": summary["quarantined"],
        "watermark": summary.get("watermark"),
        "batch_ids": summary.get("batch_ids") or ([summary["batch_id"]] if summary.get("batch_id") else []),
        "manifests": summary.get("manifests") or ([summary["manifest"]] if summary.get("manifest") else []),
        "interval": result.get("interval"),
        "unknown_fields": summary.get("unknown_fields", {}),
        "missing_fields": summary.get("missing_fields", {}),
        "alerts": summary.get("alerts", []),
        "dead_letters": summary.get("dead_letters", 0),
        "reasons": summary.get("reasons", {}),
        "message": summary["message"],
    }


# --- Kafka -------------------------------------------------------------------------------------
def ingest_kafka(
    spec: Any,
    kind: str,
    settings: Settings | None = None,
    lake: Any = None,
    topic: str | None = None,
    group: str | None = None,
    max_records: int = 100_000,
    max_batches: int = 1,
    max_wait: float = 10.0,
    instance_id: str | None = None,
    **_ignored: Any,
) -> dict[str, Any]:
    """Up to ``max_batches`` batches from the Kafka topic of ``kind``; returns the totals
    (the same shape as :func:`rtml.ingest.batches.ingest_stream`)."""
    from rtml.ingest.contract import Contract
    from rtml.ingest.kafka import _TOPIC_CHARS, DEFAULT_GROUP, KafkaSource, state_key, topic_name
    from rtml.lake import Lake

    settings = settings or get_settings()
    lake = lake or Lake(settings)
    ds = spec.dataset.name
    topic = topic or topic_name(ds, kind)
    # One group per topic (as a Redis group belongs to one stream): static members of other
    # topics in the same group would hold up every rebalance until their session expires.
    group = group or f"{DEFAULT_GROUP}.{topic}"
    gaps = _GapLog(lake, lambda g: f"{ds}/_gaps/{kind}/kafka_{_TOPIC_CHARS.sub('_', topic)}/"
                                   f"p{g['partition']}-{g['after_offset']}-{g['before_offset']}.json")
    source = KafkaSource(
        topic,
        store=lake.store,
        state=state_key(ds, kind, group, topic),
        group=group,
        settings=settings,
        max_records=max_records,
        max_wait=max_wait,
        kind=kind,
        max_deliveries=spec.ingestion.max_deliveries,
        on_gap=gaps.record,
        is_committed=lambda bid: lake.store.exists(lake.manifest_key(ds, kind, bid)),
        instance_id=instance_id,
    )
    contract = Contract(spec, kind)

    def describe(g: dict[str, Any]) -> str:
        return (f"kafka gap in {topic}[{g['partition']}]: {g['lost_unread']} unread and {g['lost_pending']} read but "
                f"uncommitted records were deleted before being committed (offsets {g['after_offset'] + 1}.."
                f"{g['before_offset'] - 1}); see {g['record']}")

    out = _drain(spec, kind, source, lake, settings, max_batches, gaps, describe,
                 read=lambda: source.read(contract), close=source.close)
    out["topic"] = topic
    return out
