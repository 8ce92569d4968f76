"""The prediction log: answered predictions (and the challenger's shadow scores) buffered off the
request path and written to the lake in small batches; bounded; a row that cannot be written goes
to a dead letter, never back into the buffer.

A flushed batch is one commit to the table ``<dataset>.<kind>``
(partitioned by day of ``time``), its manifest written beside it as for the other kinds. A flush whose
store failed is retried under the *same* batch id (with whatever was buffered meanwhile), so a commit
that landed before the failure is replaced, never doubled."""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from rtml.serve.validation import DEFAULT_MAX_LOG_ROWS, safe_text

if TYPE_CHECKING:
    import pandas as pd

    from rtml.spec import ProjectSpec

log = logging.getLogger("rtml.serve.predlog")


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
        # One flush at a time: the shutdown's last flush must wait for a periodic one still writing
        # the rows it took (cancelling the loop that awaits it does not stop its thread).
        self._flush_lock = threading.Lock()
        self._items: list[dict[str, Any]] = []
        self._rows = 0
        self._seq = 0
        self._retry_id: str | None = None  # the batch id of a failed flush: the next one reuses it
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
            row: dict[str, Any] = {}
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
            if self.lake is None:
                raise RuntimeError("no lake configured")
            key = self.lake.quarantine_key(self.spec.dataset.name, self.kind, batch_id)
            try:  # a retried batch id may have dead-lettered rows already: keep them
                earlier = self.lake.store.get(key)
            except KeyError:
                earlier = b""
            self.lake.store.put(key, earlier + body)
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
        with self._flush_lock:
            return self._flush()

    def _flush(self) -> dict[str, Any] | None:
        items, rows = self.take()
        if not rows or self.lake is None:
            return None
        self._seq += 1
        now = datetime.now(UTC)
        batch_id = self._retry_id or f"{now:%Y%m%dT%H%M%S%f}-{os.getpid()}-{self._seq:05d}-{uuid.uuid4().hex[:6]}"
        self._retry_id = None
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
            counts = {"records_in": int(len(df)) + len(bad), "accepted": int(len(df)), "quarantined": len(bad)}
            snapshot = self._write(ds, batch_id, df, counts)
            manifest = {
                "batch_id": batch_id,
                "kind": self.kind,
                **snapshot,  # the table and the snapshot that committed the batch
                **counts,
                "time_column": "time",
                "min_time": df["time"].min().isoformat(),  # with the watermark: the batch's days (day index)
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
            self._retry_id = batch_id
            raise
        self.written_rows += len(df)
        self.written_batches += 1
        return manifest

    def _write(self, ds: str, batch_id: str, df: pd.DataFrame, counts: dict[str, int]) -> dict[str, Any]:
        """The batch's rows into the lake: one commit to the table; returns its ``table``/``snapshot_id``."""
        import pyarrow as pa

        assert self.lake is not None
        table = pa.Table.from_pandas(df, preserve_index=False)
        # Iceberg stores microseconds (the endpoint's clock has no finer resolution).
        at = table.schema.get_field_index("time")
        table = table.set_column(at, "time", table.column("time").cast(pa.timestamp("us", tz="UTC")))
        return self.lake.tables.commit_batch(ds, self.kind, batch_id, table, summary=counts, time_column="time")

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
