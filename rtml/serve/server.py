"""The model server: the bounded request queue, adaptive micro-batching into one model call, model
timeouts, hot swap of the champion (poller and reload), shadow scoring, metrics."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from rtml.names import CHAMPION, LIVE_FAIRNESS_TAG
from rtml.serve.model import MITIGATED, LoadedModel, SmokeCheckError, _now_iso, decide, decision_labels
from rtml.serve.predlog import PredictionLog
from rtml.serve.source import ModelSource, smoke_check
from rtml.serve.validation import (
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_LOG_ROWS,
    DEFAULT_MAX_QUEUE_ROWS,
    DEFAULT_MAX_RECORDS,
    DEFAULT_MODEL_TIMEOUT_SECONDS,
    RequestError,
)

if TYPE_CHECKING:
    import numpy as np

    from rtml.settings import Settings
    from rtml.spec import ProjectSpec

log = logging.getLogger("rtml.serve.server")


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
        self.live_fairness = Gauge(
            "rtml_live_fairness", "The champion's fairness on labelled live traffic (rtml monitor), by check",
            ["version", "attribute", "metric"], registry=r,
        )
        self.live_fairness_passed = Gauge(
            "rtml_live_fairness_passed", "1 if that live fairness check met the spec's limit, 0 if not",
            ["version", "attribute", "metric"], registry=r,
        )
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
            def pending(p: PredictionLog = plog) -> float:
                return p.pending_rows

            self.metrics.log_pending.labels(plog.kind).set_function(pending)
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
        self._live_fairness_seen: tuple[str, str] | None = None
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
                target = await loop.run_in_executor(self._io_pool, self.source.resolve, CHAMPION)
            except Exception as err:  # noqa: BLE001 - registry down: keep serving what we have
                result["error"] = f"cannot read the champion alias: {err}"
                return self._status(result)
            if target is None:
                result["error"] = f"model {self.name!r} has no 'champion' alias"
                return self._status(result)
            version, aliases = target
            self._live_fairness(version, (getattr(self.source, "tags", None) or {}).get(CHAMPION) or {})
            cur = self.current
            if cur is not None and cur.version == version:
                cur.aliases = aliases
                self._clear_refusal(CHAMPION)
            elif force or self._may_retry(version):
                model = await self._load_checked(version, CHAMPION)
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

    def _live_fairness(self, version: str, tags: dict[str, str]) -> None:
        """The champion's ``live_fairness`` tag (written by monitoring) as gauges; set again only
        when the tag changed, and cleared when the champion has none (a new version)."""
        text = tags.get(LIVE_FAIRNESS_TAG, "")
        if (version, text) == self._live_fairness_seen:
            return
        self._live_fairness_seen = (version, text)
        m = self.metrics
        m.live_fairness.clear()
        m.live_fairness_passed.clear()
        try:
            checks = json.loads(text).get("checks", {}) if text else {}
            for attribute, metrics in checks.items():
                for metric, (value, passed) in metrics.items():
                    m.live_fairness.labels(version, attribute, metric).set(float(value))
                    m.live_fairness_passed.labels(version, attribute, metric).set(1 if passed else 0)
        except (ValueError, TypeError, AttributeError, RecursionError):  # a hand-edited tag: show nothing rather than fail the poll
            log.warning("version %s: unreadable %s tag", version, LIVE_FAIRNESS_TAG)
            m.live_fairness.clear()
            m.live_fairness_passed.clear()

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
            if vet is not None:  # gates, signature, approval (rtml.registry.signing): before every swap
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
            from rtml.registry.signing import NotServable

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
        wake, full = self._wake, self._full
        assert wake is not None and full is not None, "the server was not started"
        if len(self._pending) == 1 or self._pending_rows >= self._target:
            wake.set()
            if self._pending_rows >= self._target:
                full.set()
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
        wake, full = self._wake, self._full
        assert wake is not None and full is not None, "the server was not started"
        while True:
            await wake.wait()
            wake.clear()
            if not self._pending:
                continue
            if self._pending_rows < self._target and max_wait > 0:
                # Adaptive: wait briefly for about as many rows as the last batch had.
                full.clear()
                try:
                    await asyncio.wait_for(full.wait(), max_wait)
                except TimeoutError:
                    pass
            jobs, rows = self._take()
            self._target = max(1, min(rows, self.config.max_batch))
            if self._pending:
                wake.set()
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
        if len(self._recent) < (self._recent.maxlen or 0):
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
            out, own_arr = shadow.predict_columns(cols)
            scores = [float(x) for x in out]
            own = None if own_arr is None else [int(x) for x in own_arr]
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
