"""The data contract: every incoming record is checked against the project spec.

A source hands over a :class:`RawBatch`: the parsed records as a DataFrame of *raw* values (typed
columns when the reader could type them, ``object`` columns otherwise), one source position per row
(``file:line`` or a stream id), the record sizes, and the items that could not even be parsed
(malformed JSON, oversized lines, a file that is not what its name says). :class:`Contract` then
checks all rows column by column with vectorised pandas/numpy operations and only loops over the
rows that fail, so a clean million-row batch costs a few array passes while every rejected record
still gets its own list of reasons.

Reasons are strings ``"<category>: <detail>"``; manifests count them by category. Categories:
``malformed JSON``, ``not a JSON object``, ``malformed CSV row``, ``oversized record``,
``file refused``, ``missing field``, ``wrong type``, ``NaN``, ``infinite``, ``out of range``,
``unknown category``, ``invalid timestamp``, ``invalid text``, ``unknown field``, ``duplicate event_id``,
``unprocessable record``.

Hostile input is handled where it is cheap: the parsers turn what pandas cannot hold into markers
(a number beyond float64 becomes a :class:`BigNumber`, see :mod:`rtml.ingest.sources`) and refuse what
cannot become a row (invalid UTF-8, lone UTF-16 surrogates, duplicate keys, nesting deeper than
:data:`MAX_DEPTH`); timestamps outside years 1..9999 are invalid. As a last resort,
:meth:`Contract.validate` isolates any row that still makes validation raise (by bisection, so a
clean batch pays nothing) and quarantines it as ``unprocessable record``: a batch never crashes
because of what is in it.

Schema drift: fields that are not in the contract (``unknown_fields``) and contract fields without a
value (``missing_fields``) are counted per batch; ``ingestion.unknown_fields`` says whether a record
carrying an unknown field is accepted and reported (``record``, the default), quarantined
(``quarantine``) or accepted silently (``ignore``: still counted, no alert). An unknown field that
appears exactly where a contract field is missing is reported as a probable rename.

Conventions a reader must follow: a value that is the string ``"NaN"`` (any case) in an ``object``
column stands for an IEEE NaN in the input (JSON ``NaN`` literals, Parquet NaN, CSV ``nan``), so
that NaN (rejected) stays distinguishable from null (missing, allowed for nullable features).
"""

from __future__ import annotations

import bisect
import json
import math
import warnings
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

    from rtml.spec import ProjectSpec

LABEL_TIME = "label_time"
RAW_PREVIEW = 2048  # characters of a refused raw item kept in quarantine
MAX_DEPTH = 64  # JSON nesting deeper than this is refused at parse time (records are flat)
# Timestamps a reader can turn into Python datetimes (years 1..9999), in microseconds since the epoch.
TS_MIN_US = -62135596800 * 1_000_000
TS_MAX_US = 253402300799 * 1_000_000 + 999_999


class BigNumber(str):
    """A JSON/CSV number that float64 cannot hold (e.g. an integer of 400 digits), kept as its text.

    pandas overflows on such ints, so the parser hands this marker over instead; the contract
    reports it as ``out of range``."""

    def __repr__(self) -> str:
        text = str(self)
        return text if len(text) <= 24 else f"{text[:12]}...({len(text)} digits)"


def printable(text: str) -> str:
    """``text`` with lone surrogates as ``\\udXXX`` escapes (safe to print, log and encode)."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


class Positions:
    """Row -> ``"<file>:<line>"`` or a stream id, stored as segments and formatted on demand."""

    def __init__(self) -> None:
        self._offsets: list[int] = []
        self._segments: list[tuple[str, np.ndarray | None, list[str] | None]] = []
        self._n = 0

    def add_lines(self, label: str, lines: np.ndarray) -> Positions:
        self._offsets.append(self._n)
        self._segments.append((label, np.asarray(lines), None))
        self._n += len(lines)
        return self

    def add_names(self, names: list[str]) -> Positions:
        self._offsets.append(self._n)
        self._segments.append(("", None, list(names)))
        self._n += len(names)
        return self

    def extend(self, other: Positions) -> Positions:
        for off, seg in zip(other._offsets, other._segments, strict=True):
            self._offsets.append(self._n + off)
            self._segments.append(seg)
        self._n += len(other)
        return self

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, i: int) -> str:
        if i < 0 or i >= self._n:
            raise IndexError(i)
        k = bisect.bisect_right(self._offsets, i) - 1
        label, lines, names = self._segments[k]
        j = i - self._offsets[k]
        if names is not None:
            return names[j]
        assert lines is not None  # a segment holds line numbers or names
        return f"{label}:{int(lines[j])}"

    def __iter__(self):
        return (self[i] for i in range(self._n))



@dataclass
class RawBatch:
    """What a source read for one batch, before validation."""

    frame: pd.DataFrame
    source: Positions
    size: np.ndarray | None = None
    rejects: list[dict[str, Any]] = field(default_factory=list)

    @property
    def records_in(self) -> int:
        return len(self.frame) + len(self.rejects)

    @staticmethod
    def concat(parts: list[RawBatch]) -> RawBatch:
        import pandas as pd

        frames = [p.frame for p in parts if len(p.frame)]
        # Columns typed in one part and object in another become object, which the contract handles.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # all-null columns: object is what we want
            frame = pd.concat(frames, ignore_index=True, sort=False) if frames else pd.DataFrame()
        pos = Positions()
        sizes = []
        for p in parts:
            if len(p.frame):
                pos.extend(p.source)
                sizes.append(p.size if p.size is not None else np.zeros(len(p.frame), dtype=np.int64))
        size = np.concatenate(sizes) if sizes else np.zeros(0, dtype=np.int64)
        return RawBatch(frame, pos, size, [r for p in parts for r in p.rejects])


def refused(source: str, reason: str, raw: Any = None) -> dict[str, Any]:
    """A quarantine item for something that could not become a row (bad line, bad file)."""
    item: dict[str, Any] = {"source": source, "reasons": [reason]}
    if raw is not None:
        if isinstance(raw, bytes):
            raw = raw.decode("utf-8", errors="replace")
        text = str(raw)
        item["raw"] = text[:RAW_PREVIEW]
        if len(text) > RAW_PREVIEW:
            item["raw_truncated"] = True
    return item


@dataclass(frozen=True)
class Column:
    name: str
    type: str  # id | timestamp | numeric | integer | categorical | boolean | label
    required: bool = True
    min: float | None = None
    max: float | None = None
    values: tuple[Any, ...] | None = None


class Validated:
    """The outcome of one validation: accepted rows (as Arrow, written as is), rejects with reasons."""

    def __init__(
        self,
        columns: dict[str, pd.Series],
        schema,
        rejects: list[dict[str, Any]],
        records_in: int,
        drift: dict[str, Any] | None = None,
    ) -> None:
        self.columns = columns
        self.schema = schema
        self.rejects = rejects
        self.records_in = records_in
        # {"unknown_fields": {name: records}, "missing_fields": {name: records}, "renamed": {...},
        #  "alerts": [...]}: see the module docstring.
        self.drift = drift or {"unknown_fields": {}, "missing_fields": {}, "renamed": {}, "alerts": []}
        self._table = None
        self._frame = None

    def __len__(self) -> int:
        return len(next(iter(self.columns.values()))) if self.columns else 0

    @property
    def table(self):
        """The accepted rows as an Arrow table with the contract's schema (same every batch)."""
        import pyarrow as pa

        if self._table is None:
            arrays = [pa.Array.from_pandas(self.columns[f.name], type=f.type) for f in self.schema]
            self._table = pa.Table.from_arrays(arrays, schema=self.schema)
        return self._table

    @property
    def accepted(self) -> pd.DataFrame:
        if self._frame is None:
            self._frame = self.table.to_pandas()
        return self._frame

    @property
    def reason_counts(self) -> dict[str, int]:
        """Reason occurrences by category (a record may have several reasons)."""
        c: Counter[str] = Counter()
        for r in self.rejects:
            for reason in r["reasons"]:
                c[reason.split(":", 1)[0]] += 1
        return dict(sorted(c.items()))


def _preview(v: Any) -> str:
    try:
        if hasattr(v, "asm8"):  # a pandas Timestamp, maybe of a year Python cannot print
            v = str(v.asm8) + ("Z" if getattr(v, "tzinfo", None) is not None else "")
        text = printable(repr(v.item() if isinstance(v, np.generic) else v))
    except Exception:  # noqa: BLE001 - a preview must never fail a batch
        text = f"<{type(v).__name__}>"
    return text if len(text) <= 60 else text[:57] + "..."


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(float(x))


class CommittedLookup(Protocol):
    """The committed ids, asked about one batch's ids: ``among(ids)`` maps those of ``ids`` already
    committed as a ``committed`` dict would (:class:`rtml.ingest.batches.IdsLookup`)."""

    def among(self, ids: Any) -> dict[str, Any]: ...


class Contract:
    """The rules for one lake kind (``events`` or ``labels``) of a project spec."""

    def __init__(self, spec: ProjectSpec, kind: str = "events", max_record_bytes: int | None = None) -> None:
        if kind not in ("events", "labels"):
            raise ValueError(f"no contract for kind {kind!r} (expected 'events' or 'labels')")
        self.spec = spec
        self.kind = kind
        self.event_id = spec.event_id
        self.max_record_bytes = max_record_bytes or spec.ingestion.max_record_bytes
        self.unknown_fields = spec.ingestion.unknown_fields
        cols: list[Column] = [Column(spec.event_id, "id")]
        if kind == "events":
            cols.append(Column(spec.entity_id, "id"))
            cols.append(Column(spec.event_time, "timestamp"))
            for f in spec.features:
                cols.append(
                    Column(
                        f.name,
                        f.type,
                        required=not f.nullable,
                        min=f.min,
                        max=f.max,
                        values=tuple(f.values) if f.values else None,
                    )
                )
            self.time_column = spec.event_time
        else:
            t = spec.target
            allowed = (t.positive,) if t.negative is None else (t.positive, t.negative)
            cols.append(Column(t.name, "label", values=allowed))
            # When the outcome became known; optional, used as the labels' watermark.
            cols.append(Column(LABEL_TIME, "timestamp", required=False))
            self.time_column = LABEL_TIME
        self.columns = cols

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]

    def arrow_schema(self):
        """The schema a fast reader may impose (anything that does not fit goes the slow way)."""
        import pyarrow as pa

        types = {
            "id": pa.string(),
            "timestamp": pa.timestamp("us", tz="UTC"),
            "numeric": pa.float64(),
            "integer": pa.float64(),
            "categorical": pa.string(),
            "boolean": pa.bool_(),
        }
        fields = []
        for c in self.columns:
            if c.type == "label":
                pos = self.spec.target.positive
                typ = pa.string() if isinstance(pos, str) else pa.bool_() if isinstance(pos, bool) else pa.int64()
            else:
                typ = types[c.type]
            fields.append(pa.field(c.name, typ))
        return pa.schema(fields)

    def output_schema(self):
        """The schema of accepted rows in the lake: fixed by the contract, whatever the input was."""
        return self.arrow_schema()

    # --- validation ---------------------------------------------------------------------------
    def validate(self, raw: RawBatch, committed: dict[str, Any] | CommittedLookup | None = None) -> Validated:
        """Check every row; ``committed`` maps event ids already in the lake to their batch id
        (for labels: to ``(batch_id, label)``, so that a *different* label is a correction), or is a
        :class:`CommittedLookup` asked about this batch's ids only.

        Never raises because of the data: a row that makes the checks (or the Arrow conversion of
        the accepted rows) fail is found by bisection and quarantined as ``unprocessable record``."""
        try:
            res = self._validate(raw, committed)
            res.table  # noqa: B018 - converting now, so that a bad value cannot fail the write later
            return res
        except Exception:  # noqa: BLE001 - isolate the rows, below
            pass
        n = len(raw.frame)
        errors: dict[int, str] = {}

        def fails(rows: list[int]) -> bool:
            try:
                self._validate(_subset(raw, rows), committed).table  # noqa: B018
                return False
            except Exception as err:  # noqa: BLE001
                if len(rows) == 1:
                    errors[rows[0]] = f"{type(err).__name__}: {printable(str(err))[:200]}"
                return True

        def culprits(rows: list[int]) -> list[int]:
            if not rows or not fails(rows):
                return []
            if len(rows) == 1:
                return rows
            mid = len(rows) // 2
            found = culprits(rows[:mid]) + culprits(rows[mid:])
            # Rows that fail only together: quarantine them all rather than guess.
            return found or rows

        bad = sorted(culprits(list(range(n))))
        bad_set = set(bad)
        res = self._validate(_subset(raw, [i for i in range(n) if i not in bad_set]), committed)
        res.table  # noqa: B018
        extra = []
        for i in bad:
            try:
                record = _records(raw.frame, [i])[0]
                json.dumps(record, default=str)
            except Exception:  # noqa: BLE001 - keep what can be kept
                record = {"repr": printable(repr(raw.frame.iloc[i].to_dict()))[:RAW_PREVIEW]}
            why = errors.get(i, "fails only together with its neighbours")
            extra.append({"source": raw.source[i], "reasons": [f"unprocessable record: {why}"], "record": record})
        return Validated(res.columns, res.schema, list(raw.rejects) + res.rejects + extra, raw.records_in, res.drift)

    def _validate(self, raw: RawBatch, committed: dict[str, Any] | CommittedLookup | None = None) -> Validated:
        frame = raw.frame
        n = len(frame)
        reasons: dict[int, list[str]] = {}

        def flag(mask: np.ndarray, message) -> None:
            for i in np.flatnonzero(mask):
                reasons.setdefault(int(i), []).append(message(int(i)))

        out: dict[str, Any] = {}
        if raw.size is not None and n:
            size = np.asarray(raw.size)
            limit = self.max_record_bytes
            flag(size > limit, lambda i: f"oversized record: {int(size[i])} bytes > limit {limit}")

        missing: dict[str, np.ndarray] = {}
        for col in self.columns:
            if col.name not in frame.columns:
                if n and col.required:
                    flag(np.ones(n, dtype=bool), lambda i, c=col.name: f"missing field: {c}")
                out[col.name] = self._null_column(col, n)
                missing[col.name] = np.ones(n, dtype=bool)
                continue
            out[col.name], missing[col.name] = self._check_column(col, frame[col.name], flag)
        drift = self._drift(frame, missing, flag)

        ids = out[self.event_id]
        ok = np.ones(n, dtype=bool)
        if reasons:
            ok[list(reasons)] = False
        if n:
            # Duplicates among otherwise valid rows: the first one wins, so a corrected resend of a
            # rejected record is still accepted.
            valid_ids = ids.where(ok) if not ok.all() else ids
            dup = _duplicated(valid_ids)
            if dup.any():
                # Where each duplicated id was first seen (only those rows are looked at).
                first: dict[Any, int] = {}
                again = set(ids[dup].tolist())
                for i in np.flatnonzero(ok & ~dup & _as_bool(ids.isin(again))):
                    first.setdefault(ids.iat[i], int(i))
                flag(
                    dup,
                    lambda i: f"duplicate event_id: {ids.iat[i]!r} also at {raw.source[first[ids.iat[i]]]}",
                )
                ok &= ~dup
            if committed is not None and not isinstance(committed, dict):
                committed = committed.among(ids[ok])  # only this batch's ids are looked up
            if committed:
                seen = _as_bool(ids.isin(list(committed))) & ok
                if self.kind == "labels" and seen.any():
                    target = out[self.spec.target.name]
                    # A different outcome for a labelled event is a correction, not a duplicate.
                    for r in np.flatnonzero(seen):
                        seen[r] = committed[ids.iat[r]][1] == target.iat[r]
                    where = {k: v[0] for k, v in committed.items()}
                else:
                    where = committed
                flag(seen, lambda i: f"duplicate event_id: {ids.iat[i]!r} already committed in batch {where[ids.iat[i]]}")
                ok &= ~seen

        keep = None if ok.all() else ok
        cols = {name: (ser if keep is None else ser[keep]) for name, ser in out.items()}

        rejects: list[dict[str, Any]] = []
        if reasons:
            bad = sorted(reasons)
            records = _records(frame, bad)
            for b, rec in zip(bad, records, strict=True):
                rejects.append({"source": raw.source[b], "reasons": reasons[b], "record": rec})
        # Items refused before parsing go first (they are file- or line-level), then rows in order.
        all_rejects = list(raw.rejects) + rejects
        return Validated(cols, self.output_schema(), all_rejects, raw.records_in, drift)

    def _drift(self, frame: pd.DataFrame, missing: dict[str, np.ndarray], flag) -> dict[str, Any]:
        """Unknown and missing fields of this batch, probable renames, and the alerts to show."""
        names = set(self.column_names)
        unknown: dict[str, int] = {}
        masks: dict[str, np.ndarray] = {}
        for c in frame.columns:
            if c in names:
                continue
            present = frame[c].notna().to_numpy(dtype=bool)
            if present.any():
                key = printable(str(c))
                unknown[key] = int(present.sum())
                masks[key] = present
        missing_counts = {k: int(v.sum()) for k, v in missing.items() if v.any()}
        renamed: dict[str, str] = {}
        for u, present in masks.items():
            # A contract field missing in every record that carries ``u``: probably ``u`` renamed.
            for c in self.column_names:
                m = missing.get(c)
                if m is not None and m.any() and not (present & ~m).any() and c not in renamed:
                    renamed[c] = u
                    break
        alerts: list[str] = []
        if self.unknown_fields != "ignore":
            for u, count in sorted(unknown.items()):
                was = [c for c, v in renamed.items() if v == u]
                hint = f" (probably {was[0]!r} renamed: {was[0]!r} is missing in those records)" if was else ""
                act = "quarantined" if self.unknown_fields == "quarantine" else "accepted, field dropped"
                alerts.append(f"schema drift: unknown field {u!r} in {count} record(s), {act}{hint}")
            if self.unknown_fields == "quarantine":
                for u, present in masks.items():
                    flag(present, lambda i, u=u: f"unknown field: {u}")
        return {
            "unknown_fields": dict(sorted(unknown.items())),
            "missing_fields": dict(sorted(missing_counts.items())),
            "renamed": dict(sorted(renamed.items())),
            "alerts": alerts,
        }

    @staticmethod
    def _null_column(c: Column, n: int) -> pd.Series:
        # Typed nulls, so a batch without an optional column has the same Parquet schema.
        import pandas as pd

        if c.type == "timestamp":
            return pd.Series(pd.NaT, index=range(n), dtype="datetime64[us, UTC]")
        if c.type in ("numeric", "integer"):
            return pd.Series(np.nan, index=range(n), dtype="float64")
        return pd.Series([None] * n, dtype=object)

    def _check_column(self, col: Column, s: pd.Series, flag) -> tuple[pd.Series, np.ndarray]:
        """The column in its lake type, and the mask of rows without a value (null or absent)."""
        import pandas as pd
        import pyarrow as pa

        name = col.name
        if not isinstance(s.index, pd.RangeIndex) or s.index.start != 0 or s.index.step != 1:
            s = s.reset_index(drop=True)
        # Typed readers hand over Arrow-backed strings: known to be strings, checked by Arrow kernels.
        arrow_str = isinstance(s.dtype, pd.ArrowDtype) and pa.types.is_string(s.dtype.pyarrow_dtype)
        if arrow_str and col.type not in ("id", "categorical", "label"):
            s, arrow_str = s.astype(object), False
        if isinstance(s.dtype, pd.StringDtype):
            s = s.astype(object)
        is_obj = s.dtype == object
        null = s.isna().to_numpy()
        if is_obj:
            # JSON/CSV/Parquet NaN arrives as the string "NaN" (see the module docstring).
            nan_marker = np.zeros(len(s), dtype=bool)
            candidates = np.flatnonzero(~null)
            if col.type in ("numeric", "integer") and len(candidates):
                strs = s.iloc[candidates]
                strs = strs[strs.map(lambda v: isinstance(v, str)).to_numpy()] if len(strs) else strs
                hit = strs.str.strip().str.lower().eq("nan")
                nan_marker[strs.index[hit.to_numpy()]] = True
        else:
            nan_marker = np.zeros(len(s), dtype=bool)

        if col.required:
            flag(null, lambda i: f"missing field: {name}")

        if col.type in ("numeric", "integer"):
            big = np.zeros(len(s), dtype=bool)
            if is_obj:
                types = s.map(type)
                bad_type = types.isin([bool, dict, list]).to_numpy()
                big = types.eq(BigNumber).to_numpy()
                num = pd.to_numeric(s.where(~bad_type & ~nan_marker & ~big), errors="coerce")
                bad_type |= (~null) & num.isna().to_numpy() & ~nan_marker & ~big
                for i in np.flatnonzero(bad_type):
                    # A numeric string beyond float64 (CSV "1e400", 400 digits) is out of range, not text.
                    v = s.iat[i]
                    if isinstance(v, str) and _overflows(v):
                        big[i], bad_type[i] = True, False
            elif s.dtype == bool:
                bad_type = np.ones(len(s), dtype=bool)
                num = pd.Series(np.nan, index=s.index)
            else:
                num = s.astype("float64")
                bad_type = np.zeros(len(s), dtype=bool)
            flag(bad_type, lambda i: f"wrong type: {name} expected {col.type}, got {_preview(s.iat[i])}")
            flag(nan_marker, lambda i: f"NaN: {name} is NaN")
            flag(big, lambda i: f"out of range: {name}={_preview(s.iat[i])} is beyond float64")
            values = num.to_numpy(dtype="float64", na_value=np.nan)
            with np.errstate(invalid="ignore"):
                inf = np.isinf(values)
                flag(inf, lambda i: f"infinite: {name}={values[i]}")
                finite = np.isfinite(values)
                if col.type == "integer":
                    frac = finite & (np.floor(values) != values)
                    flag(frac, lambda i: f"wrong type: {name} expected integer, got {values[i]!r}")
                lo = -math.inf if col.min is None else col.min
                hi = math.inf if col.max is None else col.max
                rng = finite & ((values < lo) | (values > hi))
            if rng.any():
                bounds = f"[{_fmt(lo) if col.min is not None else '-inf'}, {_fmt(hi) if col.max is not None else 'inf'}]"
                flag(rng, lambda i: f"out of range: {name}={_fmt(values[i])} not in {bounds}")
            return (pd.Series(np.where(finite, values, np.nan), dtype="float64")), null

        if col.type in ("categorical", "label"):
            allowed = list(col.values or ())
            if col.type == "label" and not all(isinstance(v, str) for v in allowed):
                # A non-string target (0/1, true/false): compare on the string form.
                keys = {str(v).lower(): v for v in allowed}
                low = s.map(lambda v: None if v is None or (isinstance(v, float) and v != v) else str(v).lower())
                known = low.isin(list(keys)).to_numpy()
                unknown = ~null & ~known
                flag(unknown, lambda i: f"unknown category: {name}={_preview(s.iat[i])} (allowed: {allowed})")
                return (low.map(keys).where(known, None).astype(object)), null
            known = s.isin(allowed)
            known = known.fillna(False).to_numpy(dtype=bool) if arrow_str else known.to_numpy()
            unknown = ~null & ~known
            if unknown.any():
                shown = ", ".join(map(str, allowed))
                flag(
                    unknown,
                    lambda i: (
                        f"unknown category: {name}={_preview(s.iat[i])} (allowed: {shown})"
                        if isinstance(s.iat[i], str)
                        else f"wrong type: {name} expected a string category, got {_preview(s.iat[i])}"
                    ),
                )
            if not unknown.any():
                return (s if arrow_str else s.astype(object)), null
            return (s.where(known, None) if arrow_str else s.where(known, None).astype(object)), null

        if col.type == "boolean":
            mapping = {True: True, False: False, "true": True, "false": False, "1": True, "0": False}
            mapped = s.map(lambda v: mapping.get(v.lower() if isinstance(v, str) else v) if v is not None else None)
            bad = ~null & mapped.isna().to_numpy()
            flag(bad, lambda i: f"wrong type: {name} expected boolean, got {_preview(s.iat[i])}")
            return (mapped.astype(object)), null

        if col.type == "id":
            if arrow_str:
                empty = s.eq("").fillna(False).to_numpy(dtype=bool)
                flag(empty, lambda i: f"missing field: {name} is empty")
                return (s.where(~empty, None) if empty.any() else s), null
            if is_obj:
                types = s.map(type)
                good = types.isin([str, int, np.int64]).to_numpy()
                bad = ~null & ~good
                flag(bad, lambda i: f"wrong type: {name} expected a string id, got {_preview(s.iat[i])}")
                text = s.where(good, None).map(lambda v: None if v is None else str(v))
            else:
                if s.dtype.kind in "iu":
                    text = s.astype(str).astype(object)
                else:
                    bad = ~null
                    flag(bad, lambda i: f"wrong type: {name} expected a string id, got {_preview(s.iat[i])}")
                    text = pd.Series([None] * len(s), dtype=object)
            empty = text.eq("").to_numpy()
            flag(empty, lambda i: f"missing field: {name} is empty")
            return (text.where(~empty, None).astype(object)), null

        if col.type == "timestamp":
            if s.dtype.kind == "M":
                ts = s if getattr(s.dtype, "tz", None) is not None else s.dt.tz_localize("UTC")
                ts = ts.dt.tz_convert("UTC")
            else:
                # Strings and datetimes (a typed part concatenated with an untyped one); a number is
                # not a time here (epoch units are ambiguous).
                strs = s.where(s.map(lambda v: isinstance(v, (str, datetime))), None) if is_obj else s
                try:
                    ts = pd.to_datetime(strs, utc=True, errors="coerce", format="ISO8601")
                except Exception:  # noqa: BLE001 - one odd value must not fail the column: one by one
                    ts = pd.to_datetime(strs.map(_one_time), utc=True)
            bad = ~null & ts.isna().to_numpy()
            flag(bad, lambda i: f"invalid timestamp: {name}={_preview(s.iat[i])} is not an ISO 8601 time")
            # Arrow and pandas hold years 0 and 10000+; Python datetimes (and readers) do not.
            ts = ts.astype("datetime64[us, UTC]")
            us = np.asarray(ts.array.asi8)
            far = ~ts.isna().to_numpy() & ((us < TS_MIN_US) | (us > TS_MAX_US))
            if far.any():
                flag(far, lambda i: f"invalid timestamp: {name}={_preview(s.iat[i])} is outside years 1..9999")
                ts = ts.where(~far, pd.NaT)
            return (ts.astype("datetime64[us, UTC]")), null

        raise ValueError(f"unknown column type {col.type!r} for {name!r}")


def _overflows(text: str) -> bool:
    """A finite numeric literal that float64 cannot hold."""
    t = text.strip().lower().lstrip("+-")
    if t in ("inf", "infinity", "nan") or not t:
        return False
    try:
        return math.isinf(float(t))
    except (ValueError, OverflowError):
        return False


def _one_time(v: Any) -> Any:
    import pandas as pd

    try:
        return pd.to_datetime(v, utc=True, format="ISO8601")
    except Exception:  # noqa: BLE001
        return pd.NaT


def _subset(raw: RawBatch, rows: list[int]) -> RawBatch:
    """The given rows of a batch (for isolating a row that makes validation fail)."""
    frame = raw.frame.iloc[rows].reset_index(drop=True)
    size = None if raw.size is None else np.asarray(raw.size)[rows]
    return RawBatch(frame, Positions().add_names([raw.source[i] for i in rows]), size)


def _as_bool(mask: pd.Series) -> np.ndarray:
    """A boolean Series (numpy- or Arrow-backed, maybe with nulls) as a plain numpy mask."""
    return mask.fillna(False).to_numpy(dtype=bool)


def _duplicated(ids: pd.Series) -> np.ndarray:
    """Later copies of a non-null id (the first copy is not a duplicate)."""
    import pandas as pd
    import pyarrow as pa
    import pyarrow.compute as pc

    if isinstance(ids.dtype, pd.ArrowDtype):
        arr = pa.array(ids.array)
        # The common case, all distinct, costs one hash pass.
        if pc.count_distinct(arr, mode="only_valid").as_py() == len(ids) - arr.null_count:
            return np.zeros(len(ids), dtype=bool)
        ids = ids.astype(object)
    return (ids.duplicated(keep="first") & ids.notna()).to_numpy()


def _jsonable(v: Any) -> Any:
    if v is None:
        return None
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None if v != v else ("Infinity" if v > 0 else "-Infinity")
    if hasattr(v, "isoformat"):
        try:
            return v.isoformat()
        except ValueError:  # NaT
            return None
    if isinstance(v, (str, int, float, bool, list, dict)):
        return v
    return str(v)


def _records(frame: pd.DataFrame, rows: list[int]) -> list[dict[str, Any]]:
    sub = frame.iloc[rows]
    out = []
    for rec in sub.to_dict("records"):
        out.append({str(k): _jsonable(v) for k, v in rec.items() if not _is_missing(v)})
    return out


def _is_missing(v: Any) -> bool:
    # Drop null cells (incl. fields absent from this record but present in others).
    if v is None:
        return True
    try:
        return bool(v != v) and not isinstance(v, str)
    except (TypeError, ValueError):
        return False


def quarantine_lines(rejects: list[dict[str, Any]]) -> bytes:
    """Rejected items as JSON lines with fixed key order (same input, same bytes)."""
    lines = [_dump(r) for r in rejects]
    # Lone surrogates (only possible inside JSON strings) become \\udXXX escapes: the line stays
    # valid JSON and reads back as the very same string.
    return ("\n".join(lines) + "\n").encode("utf-8", "backslashreplace") if lines else b""


def quarantine_table(kind: str, batch_id: str, rejects: list[dict[str, Any]], time_column: str | None) -> pa.Table:
    """Rejected items as rows of the table ``<dataset>.quarantine``: the kind and batch they came in,
    their reasons, the item as its quarantine line (the same JSON) and the record's own time when it
    has a readable one (the table's day partition; else null)."""
    import pyarrow as pa

    items = [quarantine_lines([r]).decode("utf-8").rstrip("\n") for r in rejects]
    return pa.table({
        "kind": pa.array([kind] * len(rejects), pa.string()),
        "batch": pa.array([batch_id] * len(rejects), pa.string()),
        "reasons": pa.array([[str(x) for x in r.get("reasons") or []] for r in rejects], pa.list_(pa.string())),
        "item": pa.array(items, pa.string()),
        "time": pa.array([_record_time(r, time_column) for r in rejects], pa.timestamp("us", tz="UTC")),
    })


def _record_time(item: dict[str, Any], time_column: str | None) -> datetime | None:
    rec = item.get("record")
    value = rec.get(time_column) if time_column and isinstance(rec, dict) else None
    if not isinstance(value, str) or len(value) > 64:
        return None
    try:
        t = datetime.fromisoformat(value.replace("Z", "+00:00"))
        return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)
    except (ValueError, OverflowError):  # not a time, or one no UTC day holds
        return None


def _dump(item: dict[str, Any]) -> str:
    try:
        return json.dumps(item, sort_keys=True, ensure_ascii=False, default=str, allow_nan=False)
    except (ValueError, TypeError, RecursionError):
        return json.dumps(_safe(item), sort_keys=True, ensure_ascii=False, default=str, allow_nan=False)


def _safe(v: Any, depth: int = 0) -> Any:
    """A JSON-compliant copy: non-finite floats as strings, nesting cut at MAX_DEPTH."""
    if isinstance(v, float) and not math.isfinite(v):
        return "NaN" if v != v else ("Infinity" if v > 0 else "-Infinity")
    if isinstance(v, (dict, list, tuple)) and depth >= MAX_DEPTH:
        return printable(repr(v))[:RAW_PREVIEW]
    if isinstance(v, dict):
        return {str(k): _safe(x, depth + 1) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_safe(x, depth + 1) for x in v]
    return v
