"""Request validation: bodies parsed strictly (every string encodable, no duplicate keys, bounded
numbers and nesting), records checked against the model signature and the spec; MLflow's scoring
protocol (``/invocations``). Every refusal is a ``RequestError`` with a 4xx status naming the field."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

    from rtml.spec import ProjectSpec


DEFAULT_MAX_BODY_BYTES = 1_000_000
DEFAULT_MAX_RECORDS = 1000
DEFAULT_MAX_QUEUE_ROWS = 4096
DEFAULT_MAX_LOG_ROWS = 200_000
DEFAULT_MODEL_TIMEOUT_SECONDS = 10.0
MAX_KEY_CHARS = 256  # an event or entity id longer than this is refused (it is stored with every row)


# ------------------------------------------------------------------------------------------------
# Input validation: the spec and the model signature decide what a record may contain.
# ------------------------------------------------------------------------------------------------
class RequestError(Exception):
    """Bad input: answered with ``status`` and a message naming the field, never a 5xx."""

    def __init__(self, status: int, message: str, field: str | None = None, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.field = field
        self.retry_after = retry_after  # 503 only: the Retry-After header (seconds)

    def headers(self) -> dict[str, str] | None:
        return None if self.retry_after is None else {"Retry-After": str(max(1, math.ceil(self.retry_after)))}

    def body(self) -> dict[str, Any]:
        out: dict[str, Any] = {"error": self.message}
        if self.field is not None:
            out["field"] = self.field
        return out


@dataclass(frozen=True)
class ColumnRule:
    name: str
    kind: str  # "numeric" | "integer" | "categorical" | "boolean"
    nullable: bool = False
    min: float | None = None
    max: float | None = None
    values: frozenset[str] | None = None


_SIG_KIND = {
    "double": "numeric",
    "float": "numeric",
    "long": "numeric",
    "integer": "numeric",
    "string": "categorical",
    "boolean": "boolean",
}


class RecordValidator:
    """Checks JSON records against the model's input columns and the spec's rules for them.

    Accepted records become columns (lists) ready for one DataFrame per micro-batch: numeric
    features as float64 (None -> NaN), categoricals as objects (None for missing), the same
    contract the training pipeline was fitted on. The spec's key columns (event id, entity id) may
    be sent too: they are not model inputs, only written to the prediction log for label joins.
    """

    def __init__(self, spec: ProjectSpec, signature_columns: Sequence[tuple[str, str, bool]] | None = None) -> None:
        by_name = {f.name: f for f in spec.features}
        rules: list[ColumnRule] = []
        if signature_columns:
            for name, sig_type, required in signature_columns:
                f = by_name.get(name)
                if f is not None:
                    rules.append(self._rule_from_feature(f))
                else:  # a model input the spec does not describe: the signature's type only
                    rules.append(ColumnRule(name, _SIG_KIND.get(sig_type, "numeric"), nullable=not required))
        else:
            rules = [self._rule_from_feature(f) for f in spec.features]
        self.rules = rules
        self.columns = [r.name for r in rules]
        self.numeric = [r.name for r in rules if r.kind in ("numeric", "integer")]
        self.keys = [k for k in (spec.event_id, spec.entity_id) if k not in self.columns]
        self._allowed = set(self.columns) | set(self.keys)

    @staticmethod
    def _rule_from_feature(f: Any) -> ColumnRule:
        values = frozenset(f.values) if f.values else None
        return ColumnRule(f.name, f.type, f.nullable, f.min, f.max, values)

    def validate(
        self, records: list[Any], single: bool, prefix: str = "records"
    ) -> tuple[dict[str, list], dict[str, list]]:
        cols: dict[str, list] = {c: [] for c in self.columns}
        keys: dict[str, list] = {k: [] for k in self.keys}
        rules = self.rules
        allowed = self._allowed
        for i, rec in enumerate(records):
            where = "" if single else f"{prefix}[{i}]"
            if not isinstance(rec, dict):
                raise RequestError(422, f"{where or 'the body'} must be a JSON object of features", where or None)
            if len(rec) != len(self.columns) or not allowed.issuperset(rec):
                for k in rec:
                    if k not in allowed:
                        name = f"{where}.{safe_text(k)}" if where else safe_text(k)
                        raise RequestError(422, f"unknown field {name!r}", name)
            for r in rules:
                name = r.name
                try:
                    v = rec[name]
                except KeyError:
                    fname = f"{where}.{name}" if where else name
                    raise RequestError(422, f"missing field {fname!r}", fname) from None
                cols[name].append(self._check(r, v, where))
            for k in self.keys:
                v = rec.get(k)
                if v is not None:
                    fname = f"{where}.{k}" if where else k
                    if isinstance(v, bool) or not isinstance(v, (str, int)):
                        raise RequestError(422, f"field {fname!r} must be a string or an integer", fname)
                    if isinstance(v, int) and not -(2**63) <= v < 2**63:
                        raise RequestError(422, f"field {fname!r} is out of range for an id (64-bit integers)", fname)
                    v = str(v)
                    if len(v) > MAX_KEY_CHARS or not _encodable(v):
                        raise RequestError(
                            422, f"field {fname!r} must be valid text of at most {MAX_KEY_CHARS} characters", fname
                        )
                keys[k].append(v)
        return cols, keys

    @staticmethod
    def _check(r: ColumnRule, v: Any, where: str) -> Any:
        def fail(msg: str) -> RequestError:
            fname = f"{where}.{r.name}" if where else r.name
            return RequestError(422, f"field {fname!r} {msg}", fname)

        if v is None:
            if not r.nullable:
                raise fail("must not be null")
            return None
        kind = r.kind
        if kind == "numeric" or kind == "integer":
            t = type(v)
            if t is float:
                if v != v or v in (math.inf, -math.inf):
                    raise fail("must be a finite number (NaN and infinity are not allowed)")
                if kind == "integer" and not v.is_integer():
                    raise fail(f"must be an integer, got {v!r}")
            elif t is int:  # bool is a subclass of int but never a number here
                try:  # a 400-digit integer is valid JSON but no float64
                    float(v)
                except OverflowError:
                    raise fail(f"is out of range for a 64-bit float ({len(str(abs(v)))} digits)") from None
            else:
                raise fail(f"must be a number, got {type(v).__name__}")
            if r.min is not None and v < r.min:
                raise fail(f"must be at least {r.min:g}, got {_short(v)}")
            if r.max is not None and v > r.max:
                raise fail(f"must be at most {r.max:g}, got {_short(v)}")
            return float(v)
        if kind == "categorical":
            if type(v) is not str:
                raise fail(f"must be a string, got {type(v).__name__}")
            if r.values is not None and v not in r.values:
                raise fail(f"has value {_short(v)}, allowed: {sorted(r.values)}")
            if r.values is None and not _encodable(v):
                raise fail("must be valid text (it holds a lone UTF-16 surrogate)")
            return v
        # boolean: rtml.features encodes booleans as the strings "true"/"false"
        if type(v) is not bool:
            raise fail(f"must be true or false, got {type(v).__name__}")
        return "true" if v else "false"

    def frame(self, cols: dict[str, list]) -> pd.DataFrame:
        """One DataFrame for the whole micro-batch, with the training contract's dtypes."""
        import numpy as np
        import pandas as pd

        data = {}
        numeric = set(self.numeric)
        for c in self.columns:
            if c in numeric:
                data[c] = np.array([np.nan if x is None else x for x in cols[c]], dtype="float64")
            else:
                data[c] = np.array(cols[c], dtype=object)
        return pd.DataFrame(data, columns=self.columns, copy=False)


def _encodable(text: str) -> bool:
    """False for text holding a lone UTF-16 surrogate: no UTF-8 writer (Parquet, JSON) can store it."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def safe_text(text: Any, limit: int = 120) -> str:
    """Any text made printable in an answer or a log: lone surrogates escaped, long text cut."""
    out = str(text).encode("utf-8", "backslashreplace").decode("utf-8")
    return out if len(out) <= limit else out[:limit] + f"... ({len(out)} chars)"


def _short(v: Any) -> str:
    return repr(safe_text(v) if isinstance(v, str) else v) if not isinstance(v, int) or v.bit_length() < 200 else (
        f"an integer of {len(str(abs(v)))} digits")


_KEY_END = re.compile(rb'"\s*:')  # every object key ends like this (a string value may too: then we recheck)


def _count_keys(data: Any) -> int:
    n, stack = 0, [data]
    while stack:
        x = stack.pop()
        if type(x) is dict:
            n += len(x)
            stack.extend(v for v in x.values() if type(v) in (dict, list))
        elif type(x) is list:
            stack.extend(v for v in x if type(v) in (dict, list))
    return n


def _pairs_without_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        for k, _ in pairs:
            if k in seen:
                raise RequestError(400, f"duplicate key {safe_text(k)!r} in a JSON object", safe_text(k))
            seen.add(k)
    for k in out:
        if not _encodable(k):
            raise RequestError(400, f"field name {safe_text(k)!r} holds a lone UTF-16 surrogate", safe_text(k))
    return out


def _check_strings(data: Any) -> None:
    """Every string value must be encodable; the error names where the bad one is."""
    stack: list[tuple[Any, str]] = [(data, "")]
    while stack:
        x, path = stack.pop()
        if type(x) is dict:
            stack.extend((v, f"{path}.{k}" if path else k) for k, v in x.items() if type(v) in (dict, list, str))
        elif type(x) is list:
            stack.extend((v, f"{path}[{i}]") for i, v in enumerate(x) if type(v) in (dict, list, str))
        elif type(x) is str and not _encodable(x):
            raise RequestError(400, f"field {path or 'the body'!r} holds a lone UTF-16 surrogate", path or "body")


def _load_json_strictly(body: bytes) -> Any:
    """The standard library's parser, for what orjson refused: names NaN fields, finds duplicates."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as err:
        raise RequestError(400, f"the body is not valid UTF-8 (byte {err.start}: {err.reason})", "body") from None
    try:
        data = json.loads(text, object_pairs_hook=_pairs_without_duplicates)
    except RequestError:
        raise
    except RecursionError:
        raise RequestError(400, "the body is not valid JSON: nested too deeply", "body") from None
    except ValueError as err:  # JSONDecodeError, and integers over Python's digit limit
        raise RequestError(400, f"the body is not valid JSON: {safe_text(err, 300)}", "body") from None
    _check_strings(data)
    return data


def load_json(body: bytes) -> Any:
    """JSON body -> Python, refusing invalid UTF-8, BOMs, lone surrogates and duplicate keys (400).

    orjson is fast and strict (no NaN, no surrogates, no BOM); what it refuses is parsed again
    by the standard library so that a NaN or a huge number reaches the validator, which names
    its field. Duplicate keys, which orjson keeps silently (the last one wins), are looked for
    only when the body has more ``"key":`` spots than the parsed objects have keys.
    """
    import orjson

    if not body.strip():
        raise RequestError(400, "the body is empty: send a JSON object", "body")
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return _load_json_strictly(body)
    if len(_KEY_END.findall(body)) > _count_keys(data):
        _load_json_strictly(body)  # raises on a duplicate key; else the body was fine
    return data


def check_content_type(value: str | None) -> None:
    """JSON in UTF-8 only (as ``mlflow models serve``); no header at all is taken as JSON."""
    if value is None or not value.strip():
        return
    mime, *params = (p.strip() for p in value.split(";"))
    if mime.lower() != "application/json":
        raise RequestError(415, f"content type {safe_text(mime)!r} is not supported: send application/json",
                           "content-type")
    for p in params:
        key, _, val = p.partition("=")
        if key.strip().lower() != "charset":
            raise RequestError(415, f"unknown content type parameter {safe_text(key)!r}", "content-type")
        if val.strip().strip('"').lower() not in ("utf-8", "utf8"):
            raise RequestError(415, f"charset {safe_text(val)!r} is not supported: send UTF-8", "content-type")


def parse_body(body: bytes) -> tuple[list[Any], bool]:
    """JSON body -> (records, single). Accepts one record, ``{"records": [...]}`` or a list."""
    data = load_json(body)
    if isinstance(data, list):
        return data, False
    if isinstance(data, dict):
        recs = data.get("records")
        if isinstance(recs, list) and len(data) == 1:
            return recs, False
        if "records" in data and len(data) == 1:
            raise RequestError(422, "'records' must be a list of feature objects", "records")
        return [data], True
    raise RequestError(422, "the body must be a JSON object (one record) or {'records': [...]}")


INVOCATION_FORMATS = ("dataframe_split", "dataframe_records", "instances", "inputs")


def parse_invocation(data: Any) -> tuple[list[Any], str]:
    """MLflow's scoring protocol -> (records, the input field's name), like ``mlflow models serve``.

    Exactly one of ``dataframe_split`` (``columns`` + ``data`` [+ ``index``]), ``dataframe_records``
    (a list of objects), ``instances`` or ``inputs`` (a list of objects, or an object of equally
    long columns); ``params`` may come beside it (the models take none: it is ignored, as MLflow does).
    """
    if not isinstance(data, dict):
        raise RequestError(400, f"the body must be a JSON object with exactly one of {list(INVOCATION_FORMATS)}")
    for k in data:
        if k not in INVOCATION_FORMATS and k != "params":
            raise RequestError(400, f"unknown field {safe_text(k)!r}; expected one of {list(INVOCATION_FORMATS)}",
                               safe_text(k))
    given = [k for k in INVOCATION_FORMATS if k in data]
    if len(given) != 1:
        raise RequestError(400, f"send exactly one of {list(INVOCATION_FORMATS)}, got {given}",
                           given[1] if len(given) > 1 else None)
    if data.get("params") is not None and not isinstance(data["params"], dict):
        raise RequestError(400, "'params' must be an object", "params")
    fmt = given[0]
    value = data[fmt]
    if fmt == "dataframe_split":
        if not isinstance(value, dict):
            raise RequestError(400, "'dataframe_split' must be an object with 'columns' and 'data'", fmt)
        for k in value:
            if k not in ("columns", "data", "index"):
                raise RequestError(400, f"unknown field {fmt}.{safe_text(k)}", f"{fmt}.{safe_text(k)}")
        columns, rows = value.get("columns"), value.get("data")
        if not isinstance(columns, list) or not all(isinstance(c, str) for c in columns):
            raise RequestError(400, "'dataframe_split.columns' must be a list of column names", f"{fmt}.columns")
        if len(set(columns)) != len(columns):
            raise RequestError(400, "'dataframe_split.columns' names a column twice", f"{fmt}.columns")
        if not isinstance(rows, list):
            raise RequestError(400, "'dataframe_split.data' must be a list of rows", f"{fmt}.data")
        index = value.get("index")
        if index is not None and (not isinstance(index, list) or len(index) != len(rows)):
            raise RequestError(400, "'dataframe_split.index' must be a list as long as 'data'", f"{fmt}.index")
        records = []
        for i, row in enumerate(rows):
            if not isinstance(row, list) or len(row) != len(columns):
                raise RequestError(400, f"row {i} of 'dataframe_split.data' must be a list of {len(columns)} values",
                                   f"{fmt}.data[{i}]")
            records.append(dict(zip(columns, row, strict=True)))
        return records, f"{fmt}.data"
    if fmt == "dataframe_records":
        if not isinstance(value, list):
            raise RequestError(400, "'dataframe_records' must be a list of objects", fmt)
        return value, fmt
    # instances / inputs: a list of records, or one object of equally long columns
    if isinstance(value, list):
        return value, fmt
    if isinstance(value, dict):
        lengths = {len(v) if isinstance(v, list) else -1 for v in value.values()}
        if -1 in lengths or len(lengths) > 1:
            raise RequestError(400, f"'{fmt}' as an object must map each column to a list, all of one length", fmt)
        n = lengths.pop() if lengths else 0
        return [{k: v[i] for k, v in value.items()} for i in range(n)], fmt
    raise RequestError(400, f"'{fmt}' must be a list of objects or an object of columns", fmt)
