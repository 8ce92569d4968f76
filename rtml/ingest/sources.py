"""Where records come from: one small interface, a landing zone and Redis Streams behind it.

A :class:`Source` hands out one batch at a time and is told when that batch is durable:

* ``read(contract) -> SourceBatch | None``: what is new for this batch, parsed into a
  :class:`~rtml.ingest.contract.RawBatch`, with a ``batch_id`` that depends only on *what* was read (so a
  retry of the same batch writes the same lake keys) and a ``position`` for the manifest;
* ``commit(batch)``: called after the batch manifest is written; the source may then forget it.

**Landing zone** (:class:`LandingSource`): producers drop files under
``landing/<dataset>/<kind>/date=YYYY-MM-DD/<YYYYMMDDTHHMMSS.ffffff>Z-<tag>.<jsonl|csv|parquet>[.gz]``
in the lake's object store; the timestamp in the key is the file's *arrival time*. Files are
immutable and never moved. No file is ever skipped, whatever happened to the schedule:

* **The ledger.** Every landing batch manifest lists the files it consumed; the set of ingested
  files is the union of those lists over the *committed* manifests of the kind. Because the manifest
  is the commit point, the ledger can never disagree with the lake: a batch that crashed before its
  manifest consumed nothing. ``<dataset>/_ledger/<kind>/landing.json`` is only a cache of that union
  (the manifests already read), rebuilt from the manifests when missing or unreadable.
* **A batch sweeps.** The batch of the data interval ``[start, end)`` is every landing file whose key
  time is *before* ``end`` and that is not in the ledger: the files of its own interval, plus any
  file an earlier interval missed (the scheduler was down, the DAG paused, a run failed for good,
  an upload finished after its interval was ingested). So ``catchup=False`` loses nothing: the next
  run takes it all, exactly once.
* **Idempotent retries.** A batch whose manifest exists is re-run on exactly the files its manifest
  lists (same keys, same bytes); its file list never changes after the first commit, so a later
  file goes to the next batch, never to two. A backfill of an interval never ingested takes only
  the files before its end that nothing consumed yet (often none: later runs swept them).
* Ingest one kind at a time (the DAG runs one run at a time): two concurrent sweeps could both take
  a new file. An interval that has not closed yet is refused (:class:`IntervalNotClosed`).

Costs: each batch lists the landing prefix and the manifest names of its kind, and reads the
manifests that are not in the cache yet (usually one). Keys without a leading timestamp are not
part of any batch (they are reported in ``position["unkeyed"]``).

**Redis Streams** (:class:`RedisStreamSource`): one stream per dataset and kind
(``rtml:<dataset>:<kind>``), one entry per record (field ``data`` = the JSON record; entries without
it are read as flat string fields), one consumer group. A batch is the entries still pending in the
group (re-claimed with XAUTOCLAIM: a crashed attempt's batch comes back whole) or else the next
``max_records`` new entries (XREADGROUP ``>``). Its id is derived from the first and last stream ids.
``commit`` XACKs the entries, only ever after the manifest is durable.

Nothing wedges the stream and nothing disappears unseen:

* **Dead letters.** A pending entry that was already delivered ``max_deliveries`` times (the spec's
  ``ingestion.max_deliveries``, default 3) without being committed is not parsed again: it is
  quarantined with the reason ``dead letter`` (its raw payload kept) in the next batch, then
  acknowledged with it. The first retry takes a failed batch whole (same batch id, same bytes);
  from the second failure on, retries take ever smaller batches (half the size per failure), so a
  poison entry takes few neighbours with it.
* **Gaps.** Trimming (``XADD MAXLEN``/``XTRIM``) can delete entries the group never read, or that
  it read but had not committed. Before reading new entries the source compares the group's
  last-delivered id with the stream's first entry; when the stream was trimmed past it, the count
  lost is ``entries-added - entries-read - length`` (``XINFO STREAM``/``XINFO GROUPS``). Those
  counts, and the pending entries found deleted, are reported as a *gap* (``SourceBatch.info``,
  the summary's alerts, and a record under ``<dataset>/_gaps/<kind>/`` in the lake). The producer
  (:func:`rtml.ingest.produce.write_redis`) never trims entries a group has not acknowledged.

**Kafka** fits the same shape: :class:`rtml.ingest.kafka.KafkaSource` (its own module, since it also runs
the broker of the local stack).
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import math
import os
import re
import socket
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from rtml.ingest.contract import BigNumber, Contract, Positions, RawBatch, printable, refused
from rtml.settings import Settings, get_settings
from rtml.storage import ObjectStore, open_store

if TYPE_CHECKING:
    import pandas as pd

LANDING_PREFIX = "landing"
FORMATS = {".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".parquet": "parquet"}
KEY_TIME_RE = re.compile(r"^(\d{8}T\d{6})(?:\.(\d{1,6}))?Z")
DEFAULT_GROUP = "rtml-ingest"
MAX_GUNZIP_BYTES = 1 << 30  # a gzip landing file may not decompress to more than this
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
_SURROGATE = re.compile("[\ud800-\udfff]")


# --- parsing one file / payload -------------------------------------------------------------------
def _line_spans(data: bytes) -> tuple[np.ndarray, np.ndarray]:
    """Start offsets and lengths of the lines of ``data`` (without the newline)."""
    if not data:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    nl = np.flatnonzero(np.frombuffer(data, dtype=np.uint8) == 10)
    ends = nl if data.endswith(b"\n") else np.append(nl, len(data))
    starts = np.concatenate(([0], nl + 1))[: len(ends)]
    return starts, ends - starts


def _nan_to_marker(table) -> pd.DataFrame:
    """Arrow table -> pandas, keeping float NaN distinguishable from null (as the string 'NaN').
    Strings stay Arrow-backed, so the contract checks them with Arrow kernels, not Python loops."""
    import pandas as pd
    import pyarrow as pa
    import pyarrow.compute as pc

    def mapper(t):
        return pd.ArrowDtype(t) if pa.types.is_string(t) else None

    frame = table.to_pandas(types_mapper=mapper)
    for name in table.column_names:
        col = table.column(name)
        if pa.types.is_floating(col.type) and pc.any(pc.is_nan(col)).as_py():
            mask = pc.fill_null(pc.is_nan(col), False).to_numpy(zero_copy_only=False)
            s = frame[name].astype(object)
            s[mask] = "NaN"
            frame[name] = s
    return frame


class NaNMarker(str):
    """A JSON ``NaN`` literal (the contract's NaN marker, see :mod:`rtml.ingest.contract`), told apart from
    the string ``"NaN"`` where that matters (ids)."""

    def __repr__(self) -> str:
        return "NaN"


NAN = NaNMarker("NaN")


def _json_value(v: Any) -> Any:
    if isinstance(v, float) and v != v:
        return NAN
    return v


class _Refuse(ValueError):
    """A line that parses but cannot be a record; the message is the quarantine reason."""


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    d = dict(pairs)
    if len(d) != len(pairs):
        seen: set[str] = set()
        dup = ""
        for k, _ in pairs:
            if k in seen:
                dup = k
                break
            seen.add(k)
        raise _Refuse(f"malformed JSON: duplicate key {printable(dup)!r}")
    return d


def _parse_int(text: str) -> Any:
    # Ints beyond int64 overflow pandas (and 4300+ digits overflow int()): keep them as text.
    return int(text) if len(text) < 19 else (BigNumber(text) if len(text) > 300 else _bounded_int(text))


def _bounded_int(text: str) -> Any:
    v = int(text)
    return v if -(2**63) <= v < 2**63 else BigNumber(text)


def _parse_float(text: str) -> Any:
    v = float(text)
    return BigNumber(text) if math.isinf(v) else v


def _lone_surrogate(rec: Any) -> str | None:
    """The path of the first string (key or value) holding a lone UTF-16 surrogate, if any."""
    stack: list[tuple[Any, str]] = [(rec, "")]
    while stack:
        v, path = stack.pop()
        if isinstance(v, str):
            if _SURROGATE.search(v):
                return path or "(value)"
        elif isinstance(v, dict):
            for k, x in v.items():
                name = f"{path}.{k}" if path else k
                if _SURROGATE.search(k):
                    return f"key {name!r}"
                stack.append((x, name))
        elif isinstance(v, list):
            stack.extend((x, f"{path}[{j}]") for j, x in enumerate(v))
    return None


def _load_record(raw: bytes) -> dict[str, Any]:
    """One JSON line -> a flat record, or :class:`_Refuse` with the quarantine reason."""
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise _Refuse(f"malformed JSON: invalid UTF-8 at byte {err.start}") from None
    try:
        rec = json.loads(text, object_pairs_hook=_pairs, parse_int=_parse_int, parse_float=_parse_float)
    except _Refuse:
        raise
    except RecursionError:
        raise _Refuse("malformed JSON: nested too deeply") from None
    except ValueError as err:
        raise _Refuse(f"malformed JSON: {printable(str(err))}") from None
    if not isinstance(rec, dict):
        raise _Refuse(f"not a JSON object: got {type(rec).__name__}")
    if _SURROGATE_ESCAPE.search(raw):
        where = _lone_surrogate(rec)
        if where is not None:
            raise _Refuse(f"invalid text: lone UTF-16 surrogate in {where} (not encodable as UTF-8)")
    return {k: _json_value(v) for k, v in rec.items()}


def parse_jsonl(data: bytes, label: str, contract: Contract, names: list[str] | None = None) -> RawBatch:
    """JSON lines -> RawBatch. Fast path: one pyarrow read with the contract's schema; any line
    that does not fit (bad JSON, wrong types, oversized, blank) sends the payload the slow way,
    where each line is parsed on its own and a bad one is refused alone."""
    import pandas as pd

    starts, lengths = _line_spans(data)
    limit = contract.max_record_bytes
    n = len(lengths)
    if n and lengths.min() > 0 and lengths.max() <= limit and _is_utf8(data):
        try:
            import pyarrow.json as pj

            table = pj.read_json(
                io.BytesIO(data),
                read_options=pj.ReadOptions(block_size=max(1 << 20, min(len(data) + 1, 1 << 26))),
                # Unknown fields are inferred (not dropped), so that schema drift is counted.
                parse_options=pj.ParseOptions(explicit_schema=contract.arrow_schema(), unexpected_field_behavior="infer"),
            )
            if table.num_rows == n and not _has_inf(table) and not _null_lines(table, data, starts, lengths):
                pos = Positions().add_names(names) if names else Positions().add_lines(label, np.arange(1, n + 1))
                return RawBatch(_nan_to_marker(table), pos, lengths.astype(np.int64))
        except Exception:  # noqa: BLE001 - anything odd: take the careful path below
            pass
    records: list[dict[str, Any]] = []
    lines: list[int] = []
    kept_names: list[str] = []
    sizes: list[int] = []
    rejects: list[dict[str, Any]] = []
    for k in range(n):
        s, ln = int(starts[k]), int(lengths[k])
        where = names[k] if names else f"{label}:{k + 1}"
        raw = data[s : s + ln]
        if not raw.strip():
            if names:  # an empty stream entry is a record; an empty line in a file is not
                rejects.append(refused(where, "malformed JSON: empty record", raw))
            continue
        if ln > limit:
            rejects.append(refused(where, f"oversized record: {ln} bytes > limit {limit}", raw))
            continue
        try:
            rec = _load_record(raw)
        except _Refuse as err:
            rejects.append(refused(where, str(err), raw))
            continue
        except Exception as err:  # noqa: BLE001 - whatever else a line does, it is refused alone
            rejects.append(refused(where, f"malformed JSON: {type(err).__name__}: {printable(str(err))[:200]}", raw))
            continue
        records.append(rec)
        sizes.append(ln)
        if names:
            kept_names.append(where)
        else:
            lines.append(k + 1)
    frame = pd.DataFrame.from_records(records) if records else pd.DataFrame()
    # Keep raw values as objects: pandas would otherwise merge NaN markers / bools into numbers.
    frame = frame.astype(object) if len(frame.columns) else frame
    pos = Positions().add_names(kept_names) if names else Positions().add_lines(label, np.asarray(lines))
    return RawBatch(frame, pos, np.asarray(sizes, dtype=np.int64), rejects)


def _is_utf8(data: bytes) -> bool:
    # Arrow's JSON reader does not check the UTF-8 of string values: the careful path does, per line.
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _null_lines(table, data: bytes, starts: np.ndarray, lengths: np.ndarray) -> bool:
    """Arrow reads a ``null`` line as a row of nulls: is there one (the careful path refuses it)?"""
    import pyarrow.compute as pc

    empty = None
    for col in table.columns:
        nul = pc.is_null(col)
        empty = nul if empty is None else pc.and_(empty, nul)
    if empty is None or not pc.any(empty).as_py():
        return False
    rows = np.flatnonzero(empty.to_numpy(zero_copy_only=False))
    return any(data[starts[i] : starts[i] + lengths[i]].strip() != b"{}" for i in rows)


def _has_inf(table) -> bool:
    """Infinity in a float column of a JSON read: JSON has no such value, so a literal overflowed
    float64; the careful path tells it apart (out of range) from real infinities."""
    import pyarrow as pa
    import pyarrow.compute as pc

    for col in table.columns:
        if pa.types.is_floating(col.type) and pc.any(pc.is_inf(col)).as_py():
            return True
    return False


def parse_csv(data: bytes, label: str, contract: Contract) -> RawBatch:
    """CSV with a header row; every value read as text and typed by the contract."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.csv as pcsv

    # Lines that are not UTF-8 are refused one by one; the rest of the file goes on.
    old_line: np.ndarray | None = None  # physical line number (1-based) of each line of ``data``
    bad_text: list[tuple[int, bytes]] = []
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        lines_ = data.split(b"\n")
        keep = []
        for k, ln in enumerate(lines_):
            try:
                ln.decode("utf-8")
                keep.append(k)
            except UnicodeDecodeError:
                bad_text.append((k + 1, ln))
        if bad_text and bad_text[0][0] == 1:
            return RawBatch.concat([_refuse_file(label, "the CSV header row is not UTF-8 text", data)])
        data = b"\n".join(lines_[k] for k in keep)
        old_line = np.asarray(keep, dtype=np.int64) + 1
    header_line = data.split(b"\n", 1)[0].decode("utf-8").rstrip("\r")
    header = next(csv.reader([header_line]), [])
    if not header or any(not h for h in header):
        return RawBatch.concat([_refuse_file(label, "the CSV header row is missing or has empty names", data)])
    if len(set(header)) != len(header):
        return RawBatch.concat([_refuse_file(label, f"the CSV header has duplicate names: {header}", data)])
    bad_rows: list[tuple[int, str]] = []

    def on_invalid(row) -> str:
        bad_rows.append((row.number, row.text))
        return "skip"

    table = pcsv.read_csv(
        io.BytesIO(data),
        read_options=pcsv.ReadOptions(use_threads=False),
        parse_options=pcsv.ParseOptions(invalid_row_handler=on_invalid),
        convert_options=pcsv.ConvertOptions(
            column_types={h: pa.string() for h in header}, strings_can_be_null=True, null_values=[""]
        ),
    )
    n = table.num_rows
    size = np.full(n, len(header), dtype=np.int64)  # separators + newline
    for name in table.column_names:
        size += pc.fill_null(pc.binary_length(table.column(name)), 0).to_numpy(zero_copy_only=False)
    # Physical line numbers of the good rows: data lines start at 2, minus the skipped ones.
    skipped = {num for num, _ in bad_rows if num is not None}
    lines: list[int] = []
    line = 2
    while len(lines) < n:
        if line not in skipped:
            lines.append(line)
        line += 1

    def physical(num: int | None) -> int | None:
        return num if old_line is None or num is None or num > len(old_line) else int(old_line[num - 1])

    rejects = [
        refused(f"{label}:{physical(num)}", f"malformed CSV row: expected {len(header)} fields", text)
        for num, text in bad_rows
    ]
    rejects += [refused(f"{label}:{num}", "malformed CSV row: not UTF-8 text", text) for num, text in bad_text]
    if old_line is not None:
        lines = [physical(x) or x for x in lines]  # a line number in, a line number out
    frame = table.to_pandas()
    return RawBatch(frame, Positions().add_lines(label, np.asarray(lines)), size, rejects)


def parse_parquet(data: bytes, label: str, contract: Contract) -> RawBatch:
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    table = pq.read_table(io.BytesIO(data))
    n = table.num_rows
    size = np.zeros(n, dtype=np.int64)
    for col in table.columns:
        if pa.types.is_string(col.type) or pa.types.is_large_string(col.type) or pa.types.is_binary(col.type):
            size += pc.fill_null(pc.binary_length(col), 0).to_numpy(zero_copy_only=False)
        else:
            size += 8
    return RawBatch(_nan_to_marker(table), Positions().add_lines(label + "#row", np.arange(1, n + 1)), size)


def _refuse_file(key: str, reason: str, data: bytes | None = None) -> RawBatch:
    import pandas as pd

    preview = data[:200] if data else None
    return RawBatch(pd.DataFrame(), Positions(), np.zeros(0, dtype=np.int64), [refused(key, f"file refused: {reason}", preview)])


def _sniff(data: bytes) -> str | None:
    head = data[:512].lstrip()
    if data[:4] == b"PAR1":
        return "parquet"
    if data[:2] == b"\x1f\x8b":
        return "gzip"
    if data[:4] == b"PK\x03\x04":
        return "zip"
    if head.startswith(b"{"):
        return "jsonl"
    return None


def _gunzip(key: str, data: bytes) -> tuple[bytes | None, RawBatch | None]:
    """The content of a ``.gz`` file, and what to refuse of it (a truncated or corrupt tail)."""
    d = zlib.decompressobj(wbits=31)
    try:
        out = d.decompress(data, MAX_GUNZIP_BYTES)
    except zlib.error as err:
        return None, _refuse_file(key, f"corrupt gzip file: {err}", data)
    if d.unconsumed_tail:
        return None, _refuse_file(key, f"gzip file decompresses to more than {MAX_GUNZIP_BYTES} bytes")
    if d.eof:
        return out, None
    # Truncated: keep the complete lines, refuse the unfinished last one (and say so).
    cut = out.rfind(b"\n") + 1
    tail = out[cut:]
    return out[:cut], _refuse_file(
        key, f"truncated gzip file: {len(data)} bytes give {len(out)} bytes before the end; the unfinished "
        f"last line ({len(tail)} bytes) is refused", tail or None)


def parse_file(key: str, data: bytes, contract: Contract) -> RawBatch:
    """One landing file -> RawBatch, refusing what cannot be read (a whole file, a line, a row)
    with a reason; never raises because of the content."""
    try:
        return _parse_file(key, data, contract)
    except Exception as err:  # noqa: BLE001 - a parser bug must not fail the batch: refuse the file
        return _refuse_file(key, f"unreadable file: {type(err).__name__}: {printable(str(err))[:200]}")


def _parse_file(key: str, data: bytes, contract: Contract) -> RawBatch:
    name = key.lower()
    gz = name.endswith(".gz")
    ext = os.path.splitext(name[:-3] if gz else name)[1]
    fmt = FORMATS.get(ext)
    if fmt is None:
        return _refuse_file(
            key, f"unsupported file type {ext or '(none)'!r}; expected .jsonl, .csv or .parquet (optionally .gz)"
        )
    if not data:
        return RawBatch.concat([])
    if not gz:
        return _parse_content(key, ext, fmt, data, contract)
    content, tail = _gunzip(key, data)
    if content is None:
        assert tail is not None  # _gunzip gives the content, or the refusal of the whole file
        return tail
    if tail is not None and fmt == "parquet":
        return tail
    body = _parse_content(key, ext, fmt, content, contract) if content else RawBatch.concat([])
    return RawBatch.concat([body, tail]) if tail is not None else body


def _parse_content(key: str, ext: str, fmt: str, data: bytes, contract: Contract) -> RawBatch:
    if fmt != "parquet" and data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8) :]  # a byte order mark is not part of the first record
        if not data:
            return RawBatch.concat([])
    sniffed = _sniff(data)
    if fmt == "parquet":
        if not (data[:4] == b"PAR1" and data[-4:] == b"PAR1"):
            what = "text" if _is_text(data) else "binary data"
            return _refuse_file(key, f"named {ext} but is not a Parquet file (it looks like {what})", data)
        try:
            return parse_parquet(data, key, contract)
        except Exception as err:  # noqa: BLE001 - a corrupt file is refused, the batch goes on
            return _refuse_file(key, f"unreadable Parquet file: {printable(str(err))[:300]}")
    if sniffed in ("parquet", "gzip", "zip"):
        return _refuse_file(key, f"named {ext} but is a {sniffed} file", data)
    if not _is_text(data, strict=False):
        return _refuse_file(key, f"named {ext} but is not text (it holds NUL bytes)", data)
    if fmt == "csv":
        if sniffed == "jsonl":
            return _refuse_file(key, f"named {ext} but looks like JSON lines, not CSV", data)
        try:
            return parse_csv(data, key, contract)
        except Exception as err:  # noqa: BLE001
            return _refuse_file(key, f"unreadable CSV file: {printable(str(err))[:300]}", data)
    return parse_jsonl(data, key, contract)


def _is_text(data: bytes, strict: bool = True) -> bool:
    """Text (not binary data); ``strict``: valid UTF-8 throughout. Non-strict callers refuse the
    lines that are not UTF-8 one by one."""
    if strict:
        try:
            data.decode("utf-8")
        except UnicodeDecodeError:
            return False
    return b"\x00" not in data[:4096]


# --- the interface ----------------------------------------------------------------------------------
@dataclass
class SourceBatch:
    batch_id: str
    raw: RawBatch
    position: dict[str, Any]
    # Only for the summary (not the manifest: a retry must write the same manifest bytes).
    info: dict[str, Any] = field(default_factory=dict)
    ack_ids: list[str] = field(default_factory=list)


class Source(Protocol):
    kind: str

    def read(self, contract: Contract) -> SourceBatch | None: ...
    def commit(self, batch: SourceBatch) -> None: ...


def batch_id_for_interval(start: datetime, end: datetime) -> str:
    return f"{_as_utc(start):%Y%m%dT%H%M%S}-{_as_utc(end):%Y%m%dT%H%M%S}"


def _tag(text: str) -> str:
    """A run id as a key-safe batch id suffix (the same run id gives the same suffix)."""
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_")[:48]


def _as_utc(t: datetime) -> datetime:
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


# --- landing zone -------------------------------------------------------------------------------------
def landing_store(settings: Settings | None = None, uri: str | None = None) -> ObjectStore:
    """The object store holding the landing zone: by default the lake's store (prefix ``landing/``)."""
    s = settings or get_settings()
    return open_store(uri or s.lake_uri, s)


def landing_prefix(dataset: str, kind: str) -> str:
    return f"{LANDING_PREFIX}/{dataset}/{kind}"


def landing_key(dataset: str, kind: str, arrival: datetime, tag: str, fmt: str) -> str:
    t = _as_utc(arrival)
    return f"{landing_prefix(dataset, kind)}/date={t:%Y-%m-%d}/{t:%Y%m%dT%H%M%S.%f}Z-{tag}.{fmt}"


def key_time(key: str) -> datetime | None:
    m = KEY_TIME_RE.match(key.rsplit("/", 1)[-1])
    if not m:
        return None
    base = datetime.strptime(m.group(1), "%Y%m%dT%H%M%S").replace(tzinfo=UTC)
    frac = m.group(2)
    return base + timedelta(microseconds=int(frac.ljust(6, "0"))) if frac else base


class IntervalNotClosed(ValueError):
    """An interval whose end is still in the future: its files may still arrive."""


class LandingSource:
    """The landing files of the batch of the data interval ``[start, end)``: see the module docstring."""

    def __init__(
        self,
        store: ObjectStore,
        dataset: str,
        kind: str,
        start: datetime,
        end: datetime,
        lake_store: ObjectStore | None = None,
        batch_tag: str | None = None,
    ) -> None:
        self.store, self.dataset, self.kind = store, dataset, kind
        self.start, self.end = _as_utc(start), _as_utc(end)
        if self.end <= self.start:
            raise ValueError(f"empty data interval: end {self.end.isoformat()} is not after start {self.start.isoformat()}")
        # Where the manifests (the ledger) are: the lake's store, by default the landing one.
        self.lake_store = lake_store or store
        # A run that is not the interval's own (a manual trigger) gets a batch of its own, so it
        # sweeps what is new even when the interval's batch was committed already.
        self.batch_id = batch_id_for_interval(self.start, self.end) + (f"-{_tag(batch_tag)}" if batch_tag else "")
        self.unkeyed: list[str] = []

    # --- the ledger -----------------------------------------------------------------------------
    def _manifest_key(self, batch_id: str) -> str:
        return f"{self.dataset}/_manifests/{self.kind}/{batch_id}.json"

    def _ledger_key(self) -> str:
        return f"{self.dataset}/_ledger/{self.kind}/landing.json"

    def _manifest_files(self, batch_id: str) -> list[str] | None:
        """The landing files a committed manifest lists (None: not a landing batch)."""
        try:
            m = json.loads(self.lake_store.get(self._manifest_key(batch_id)))
        except Exception:  # noqa: BLE001 - unreadable manifests are not part of the lake
            return None
        src = m.get("source") or {}
        if src.get("type") != "landing":
            return None
        return [f["key"] for f in src.get("files", [])]

    def ledger(self) -> dict[str, str]:
        """Every landing file consumed by a committed batch of this kind -> that batch's id."""
        prefix = f"{self.dataset}/_manifests/{self.kind}/"
        committed = sorted(k[len(prefix) : -len(".json")] for k in self.lake_store.list(prefix) if k.endswith(".json"))
        try:
            cache = json.loads(self.lake_store.get(self._ledger_key()))["batches"]
            assert isinstance(cache, dict)
        except Exception:  # noqa: BLE001 - missing or unreadable: rebuilt from the manifests
            cache = {}
        known = {b: cache[b] for b in committed if b in cache}
        new = [b for b in committed if b not in known]
        for b in new:
            known[b] = self._manifest_files(b) or []
        if new or len(known) != len(cache):
            body = json.dumps({"batches": known}, sort_keys=True, separators=(",", ":")).encode()
            self.lake_store.put(self._ledger_key(), body)
        return {key: b for b, keys in known.items() for key in keys}

    def keys(self) -> list[str]:
        """The files of this batch, oldest key time first."""
        own = self._manifest_files(self.batch_id) if self.lake_store.exists(self._manifest_key(self.batch_id)) else None
        if own is not None:
            return sorted(own, key=lambda k: (key_time(k) or self.end, k))  # a re-run: the same files
        consumed = self.ledger()
        out, self.unkeyed = [], []
        for key in self.store.list(landing_prefix(self.dataset, self.kind)):
            t = key_time(key)
            if t is None:
                self.unkeyed.append(key)
            elif t < self.end and key not in consumed:
                out.append(key)
        return sorted(out, key=lambda k: (key_time(k), k))

    def read(self, contract: Contract) -> SourceBatch:
        parts, files = [], []
        for key in self.keys():
            data = self.store.get(key)
            part = parse_file(key, data, contract)
            parts.append(part)
            files.append({"key": key, "bytes": len(data), "records": part.records_in})
        raw = RawBatch.concat(parts)
        position = {
            "type": "landing",
            "store": self.store.uri,
            "prefix": landing_prefix(self.dataset, self.kind),
            "interval": [self.start.isoformat(), self.end.isoformat()],
            "files": files,
        }
        late = [f["key"] for f in files if (key_time(str(f["key"])) or self.end) < self.start]
        info = {"files": len(files), "late_files": len(late), "unkeyed_files": len(self.unkeyed)}
        return SourceBatch(self.batch_id, raw, position, info)

    def commit(self, batch: SourceBatch) -> None:
        """Landing files are immutable and stay where they are; the manifest lists them (the ledger)."""


# --- Redis Streams ------------------------------------------------------------------------------------
def stream_key(dataset: str, kind: str, prefix: str = "rtml") -> str:
    return f"{prefix}:{dataset}:{kind}"


def redis_client(settings: Settings | None = None, url: str | None = None):
    import redis

    s = settings or get_settings()
    return redis.Redis.from_url(url or s.redis_url)


def _id_ms(stream_id: str) -> int:
    return int(stream_id.split("-", 1)[0])


def _padded(stream_id: str) -> str:
    ms, seq = _key(stream_id)
    return f"{ms:013d}.{seq:06d}"


def batch_id_for_ids(first: str, last: str) -> str:
    """``<UTC time of first>-<first id>-<last id>``, ids zero-padded so batch ids sort like the stream."""
    t = datetime.fromtimestamp(_id_ms(first) / 1000, tz=UTC)
    return f"{t:%Y%m%dT%H%M%S}-{_padded(first)}-{_padded(last)}"


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


class RedisStreamSource:
    """A consumer-group reader of one stream; entries are XACKed only by :meth:`commit`."""

    def __init__(
        self,
        stream: str,
        group: str = DEFAULT_GROUP,
        consumer: str | None = None,
        client=None,
        settings: Settings | None = None,
        max_records: int = 100_000,
        claim_idle_ms: int = 0,
        block_ms: int | None = None,
        kind: str = "events",
        max_deliveries: int = 3,
        on_gap: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.stream, self.group, self.kind = stream, group, kind
        self.max_deliveries = max_deliveries
        # Called with a gap record before the entries after the gap are read (see the docstring).
        self.on_gap = on_gap
        self.consumer = consumer or f"{socket.gethostname()}-{os.getpid()}"
        self.client = client or redis_client(settings)
        self.max_records = max_records
        # Ingestion of one stream is serialised (the DAG runs one at a time), so a pending entry
        # belongs to a dead attempt and may be claimed at once; raise this when consumers overlap.
        self.claim_idle_ms = claim_idle_ms
        self.block_ms = block_ms

    def ensure_group(self) -> None:
        import redis

        try:
            self.client.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except redis.ResponseError as err:
            if "BUSYGROUP" not in str(err):
                raise

    def _claim_limit(self) -> int:
        """Fewer entries when the oldest pending one already failed: halve per failure, so that a
        poison entry ends up in a small batch (the dead letter then takes few neighbours with it)."""
        try:
            oldest = self.client.xpending_range(self.stream, self.group, min="-", max="+", count=1)
        except Exception:  # noqa: BLE001 - no group / no pending entries
            return self.max_records
        if not oldest:
            return self.max_records
        failures = int(oldest[0]["times_delivered"])  # each delivery not committed is one failure
        if failures <= 1 or failures >= self.max_deliveries:
            # The first retry takes the batch whole (same id, same bytes: the usual crash).
            return self.max_records
        return max(1, self.max_records >> min(failures - 1, 30))

    def _deliveries(self, ids: list[str]) -> dict[str, int]:
        out: dict[str, int] = {}
        if not ids:
            return out
        want = set(ids)
        for info in self.client.xpending_range(self.stream, self.group, min=ids[0], max=ids[-1], count=len(ids) + 1000):
            i = _s(info["message_id"])
            if i in want:
                out[i] = int(info["times_delivered"])
        return out

    def _gap(self, deleted_pending: list[str]) -> dict[str, Any] | None:
        """Entries lost to trimming: unread ones (stream trimmed past the group) and pending ones."""
        info = self.client.xinfo_stream(self.stream)
        group = next((g for g in self.client.xinfo_groups(self.stream) if _s(g["name"]) == self.group), None)
        if group is None:
            return None
        last = _s(group["last-delivered-id"])
        first = info.get("first-entry")
        first_id = _s(first[0]) if first else None
        lost_unread = 0
        if last != "0-0" or group.get("entries-read"):
            trimmed_past = first_id is None or _key(first_id) > _key(last)
            if trimmed_past:
                read = group.get("entries-read")
                if read is None:
                    lost_unread = -1  # lost, count unknown
                else:
                    lost_unread = max(0, int(info["entries-added"]) - int(read) - int(info["length"]))
        if not lost_unread and not deleted_pending:
            return None
        return {
            "stream": self.stream,
            "group": self.group,
            "after_id": last,
            "before_id": first_id,
            "lost_unread": lost_unread,
            "lost_pending": len(deleted_pending),
            "pending_ids": deleted_pending[:1000],
        }

    def _claim_pending(self) -> tuple[list[tuple[str, dict]], list[str]]:
        entries: list[tuple[str, dict]] = []
        deleted: list[str] = []
        start = "0-0"
        limit = self._claim_limit()
        while len(entries) < limit:
            res = self.client.xautoclaim(
                self.stream,
                self.group,
                self.consumer,
                min_idle_time=self.claim_idle_ms,
                start_id=start,
                count=min(10_000, limit - len(entries)),
            )
            nxt, msgs = _s(res[0]), res[1]
            entries.extend((_s(i), f) for i, f in msgs if f is not None)
            if len(res) > 2:
                deleted.extend(_s(i) for i in res[2])
            if nxt == "0-0":
                break
            start = nxt
        entries.sort(key=lambda e: tuple(int(x) for x in e[0].split("-")))
        return entries[:limit], deleted

    def pending_count(self) -> int:
        try:
            return int(self.client.xpending(self.stream, self.group)["pending"])
        except Exception:  # noqa: BLE001 - no group yet
            return 0

    def read(self, contract: Contract, committed: Callable[[], dict[str, tuple[str, str]]] | None = None) -> SourceBatch | None:
        """The next batch. ``committed`` returns the committed ``{batch_id: (first_id, last_id)}``
        of this stream; it is consulted only when pending entries come back: if they are exactly a
        committed batch, that batch is re-run (same keys, same bytes); entries inside any *other*
        committed range are only acknowledged (never written twice)."""
        self.ensure_group()
        entries, deleted = self._claim_pending()
        redelivered = bool(entries)
        gap = None
        if not entries or deleted:
            gap = self._gap(deleted)
            if gap is not None and self.on_gap is not None:
                self.on_gap(gap)  # recorded before the group moves past it
        if deleted:
            # Entries trimmed from the stream while pending cannot be read again: reported, dropped.
            self.client.xack(self.stream, self.group, *deleted)
        if not entries:
            res = self.client.xreadgroup(
                self.group, self.consumer, {self.stream: ">"}, count=self.max_records, block=self.block_ms
            )
            for _, msgs in res or []:
                entries.extend((_s(i), f) for i, f in msgs)
        if not entries:
            return None
        already: list[Any] = []
        if redelivered and committed is not None:
            ranges = committed()
            if batch_id_for_ids(entries[0][0], entries[-1][0]) not in ranges:
                spans = [(_key(a), _key(b)) for a, b in ranges.values()]
                keep: list[Any] = []
                for e in entries:
                    k = _key(e[0])
                    (already if any(a <= k <= b for a, b in spans) else keep).append(e)
                entries = keep
                if already:
                    self.client.xack(self.stream, self.group, *[i for i, _ in already])
                if not entries:
                    # Only entries of committed batches came back: acknowledged, now read on.
                    return self.read(contract, committed)
        ids = [i for i, _ in entries]
        dead: list[tuple[str, dict]] = []
        if redelivered:
            times = self._deliveries(ids)
            # The delivery that claimed them now is not a failure; the earlier ones were.
            dead = [e for e in entries if times.get(e[0], 1) - 1 >= self.max_deliveries]
        if dead:
            dead_ids = {i for i, _ in dead}
            live = [e for e in entries if e[0] not in dead_ids]
            parts = [self._parse(live, contract)] if live else []
            rejects = []
            for i, fields in dead:
                payload = fields.get(b"data", fields.get("data"))
                raw_text = payload if payload is not None else b" ".join(bytes(a) + b"=" + bytes(b) for a, b in fields.items())
                n = times.get(i, 1) - 1
                rejects.append(refused(i, f"dead letter: delivered {n} times without being committed "
                                          f"(ingestion.max_deliveries={self.max_deliveries})", raw_text))
            import pandas as pd

            parts.append(RawBatch(pd.DataFrame(), Positions(), np.zeros(0, dtype=np.int64), rejects))
            raw = RawBatch.concat(parts)
        else:
            raw = self._parse(entries, contract)
        position = {
            "type": "redis",
            "stream": self.stream,
            "group": self.group,
            "first_id": ids[0],
            "last_id": ids[-1],
            "count": len(ids),
        }
        info = {
            "redelivered": redelivered,
            "acked_already_committed": len(already),
            "dropped_trimmed": len(deleted),
            "dead_letters": len(dead),
            "gap": gap,
        }
        return SourceBatch(batch_id_for_ids(ids[0], ids[-1]), raw, position, info, ack_ids=ids)

    def _parse(self, entries: list[tuple[str, dict]], contract: Contract) -> RawBatch:
        import pandas as pd

        ids = [i for i, _ in entries]
        payloads = []
        flat: list[int] = []
        for k, (_, fields) in enumerate(entries):
            data = fields.get(b"data", fields.get("data"))
            if data is None:
                flat.append(k)
                payloads.append(b"")
            else:
                payloads.append(data if isinstance(data, bytes) else str(data).encode())
        if not flat and not any(b"\n" in p for p in payloads):
            return parse_jsonl(b"\n".join(payloads) + b"\n", self.stream, contract, names=ids)
        parts = []
        for k, (i, fields) in enumerate(entries):
            if k in flat:
                try:
                    rec = {_s(a): _s(b) for a, b in fields.items()}
                except UnicodeDecodeError as err:
                    raw = b" ".join(bytes(a) + b"=" + bytes(b) for a, b in fields.items())
                    parts.append(RawBatch(pd.DataFrame(), Positions(), np.zeros(0, dtype=np.int64),
                                          [refused(i, f"malformed record: invalid UTF-8 in a field ({err.reason})", raw)]))
                    continue
                size = sum(len(a) + len(b) for a, b in fields.items())
                parts.append(RawBatch(pd.DataFrame([rec]), Positions().add_names([i]), np.asarray([size])))
            else:
                compact = payloads[k].replace(b"\r", b"").replace(b"\n", b" ")
                parts.append(parse_jsonl(compact + b"\n", self.stream, contract, names=[i]))
        return RawBatch.concat(parts)

    def commit(self, batch: SourceBatch) -> None:
        ids = batch.ack_ids
        for k in range(0, len(ids), 10_000):
            self.client.xack(self.stream, self.group, *ids[k : k + 10_000])
        # Consumers are named per process: remove ours once it holds nothing, to keep XINFO tidy.
        try:
            for c in self.client.xinfo_consumers(self.stream, self.group):
                if _s(c["name"]) == self.consumer and int(c["pending"]) == 0:
                    self.client.xgroup_delconsumer(self.stream, self.group, self.consumer)
        except Exception:  # noqa: BLE001 - housekeeping only
            pass


def _key(stream_id: str) -> tuple[int, int]:
    ms, _, seq = stream_id.partition("-")
    return int(ms), int(seq or 0)

