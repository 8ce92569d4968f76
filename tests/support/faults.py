"""Injected faults against the real services, and the conservation check after each.

Shared by ``tests/integration/test_faults.py`` (asserts each fault) and ``benchmarks/faults.py``
(runs them all, prints one line per fault and a total). Each ``fault_*`` function produces a known
set of records, injects its fault into a run of ingestion (or training), lets the system recover
the way it would in production (the next run, the DAG task's retry, an operator marking a dead run
failed) and returns a :class:`FaultResult` with the census of the lake.

The census is what a *reader* of the lake sees: the event ids of the accepted rows of every
committed batch, and of every quarantined item of those batches (:func:`census`). Conservation
means each produced record is there exactly once: an id produced k times (the producer's own
duplicates) is seen k times among accepted rows + quarantine, never fewer (lost) or more
(duplicated). Nothing here looks at how a batch is committed (manifest files today), except
:func:`_committed`, the one place to change when the lake moves to a table format.

Faults are injected at fixed points, never at a time: a crashing subprocess
(``RTML_TEST_CRASH_AFTER_WRITE``), or a wrapper around the lake's store that calls the fault after
its n-th write (:class:`TriggerStore`), the outage itself being real (a stopped SeaweedFS, a killed
Redis, a stopped MLflow, a killed Airflow scheduler).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from rtml.ingest import produce as prod
from rtml.ingest.sources import landing_key, landing_store
from rtml.lake import Lake
from rtml.settings import Settings, temporary_env
from rtml.spec import ProjectSpec, load_spec

SPEC = load_spec()
DS = SPEC.dataset.name
EID = SPEC.event_id
GROUP = "rtml-faults"
T0 = datetime(2026, 2, 2, 8, 0, tzinfo=UTC)  # landing keys in the past: any later batch sweeps them
_ID_IN_RAW = re.compile(r'"event_id"\s*:\s*"([^"\\]+)"')


# --- producing known records -----------------------------------------------------------------------
def known_events(rows: int, seed: int, start: datetime = T0, bad_fraction: float = 0.05):
    """``rows`` events (with the producer's share of bad ones: out of range, unknown category,
    duplicate ids) plus 3 malformed JSON lines that still name their id; returns
    ``(events, labels, malformed_lines, expected)`` with ``expected`` = Counter of produced ids."""
    events, labels = prod.build(SPEC, rows=rows, start=start, seed=seed, bad_fraction=bad_fraction, label_delay=60.0)
    bad = [f'{{"event_id": "ev-bad-{seed}-{k}", "Age": '.encode() for k in range(3)]  # truncated JSON
    expected = Counter(events[EID].tolist()) + Counter(f"ev-bad-{seed}-{k}" for k in range(3))
    return events, labels, bad, expected


def produce_landing(settings: Settings, rows: int, seed: int, start: datetime = T0, labels: bool = False) -> Counter:
    """Known events (and optionally their labels) as landing files of the settings' lake."""
    events, lab, bad, expected = known_events(rows, seed, start)
    prod.write_landing(SPEC, "events", events, SPEC.event_time, seed=seed, settings=settings)
    key = landing_key(DS, "events", start + timedelta(seconds=1), f"s{seed}-malformed", "jsonl")
    landing_store(settings).put(key, b"\n".join(bad) + b"\n")
    if labels:
        prod.write_landing(SPEC, "labels", lab, "label_time", seed=seed, settings=settings)
    return expected


def produce_redis(client, stream: str, rows: int, seed: int, start: datetime = T0) -> Counter:
    """Known events as entries of ``stream`` (one record per entry, malformed ones included)."""
    events, _, bad, expected = known_events(rows, seed, start)
    prod.write_redis(events, stream, SPEC.event_time, client=client)
    for line in bad:
        client.xadd(stream, {"data": line})
    return expected


# --- what a reader of the lake sees ----------------------------------------------------------------------
def _committed(lake: Lake, kind: str) -> Iterator[tuple[dict[str, Any], list[str], list[dict[str, Any]]]]:
    """Each committed batch: (its summary, the ids of its accepted rows, its quarantined items)."""
    import pyarrow.parquet as pq

    in_table: dict[str, list[str]] | None = None
    for m in lake.manifests(DS, kind):
        ids: list[str] = []
        if m.get("table"):  # a table batch: its rows, read once for every batch
            if in_table is None:
                in_table = _table_ids(lake, kind)
            ids += in_table.get(m["batch_id"], [])
        for key in m.get("files", []):
            ids += pq.read_table(io.BytesIO(lake.store.get(key)), columns=[EID]).column(EID).to_pylist()
        items = []
        if m.get("quarantine"):
            items = [json.loads(x) for x in lake.store.get(m["quarantine"]).decode().splitlines() if x.strip()]
        yield m, ids, items


def _table_ids(lake: Lake, kind: str) -> dict[str, list[str]]:
    """The ids of the table's current rows, by the batch they came in."""
    from rtml.tables import BATCH_COLUMN

    if not lake.tables.exists(DS, kind):
        return {}
    rows = lake.tables.read(DS, kind, columns=(EID,))  # with the batch column
    out: dict[str, list[str]] = {}
    for eid, batch in zip(rows.column(EID).to_pylist(), rows.column(BATCH_COLUMN).to_pylist(), strict=True):
        out.setdefault(batch, []).append(eid)
    return out


def quarantined_id(item: dict[str, Any]) -> str | None:
    """The event id of a quarantined item: from its parsed record, else from its raw text."""
    rec = item.get("record")
    if isinstance(rec, dict) and isinstance(rec.get(EID), str):
        return rec[EID]
    m = _ID_IN_RAW.search(str(item.get("raw", "")))
    return m.group(1) if m else None


@dataclass
class Census:
    """Produced records against what the lake's committed batches hold, by event id."""

    produced: int
    accepted: int
    quarantined: int
    lost: int
    duplicated: int
    batches: int
    # Batches whose own counts do not add up (records_in != accepted + quarantined, or a row count
    # different from the batch's accepted count): must be empty.
    inconsistent: list[str] = field(default_factory=list)
    lost_ids: list[str] = field(default_factory=list)
    duplicated_ids: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return (
            self.lost == 0
            and self.duplicated == 0
            and not self.inconsistent
            and self.produced == self.accepted + self.quarantined
        )


def census(lake: Lake, expected: Counter, kind: str = "events") -> Census:
    """Count each expected id among the accepted rows and quarantined items of committed batches."""
    acc: Counter = Counter()
    quar: Counter = Counter()
    bad: list[str] = []
    batches = 0
    for m, ids, items in _committed(lake, kind):
        if m["records_in"] != m["accepted"] + m["quarantined"] or len(ids) != m["accepted"] or len(items) != m[
            "quarantined"
        ]:
            bad.append(m["batch_id"])
        mine = [i for i in ids if i in expected] + [q for q in map(quarantined_id, items) if q in expected]
        batches += bool(mine)
        acc.update(i for i in ids if i in expected)
        quar.update(q for q in map(quarantined_id, items) if q in expected)
    seen = acc + quar
    lost = {i: n - seen[i] for i, n in expected.items() if seen[i] < n}
    dup = {i: seen[i] - n for i, n in expected.items() if seen[i] > n}
    return Census(
        produced=sum(expected.values()),
        accepted=sum(acc.values()),
        quarantined=sum(quar.values()),
        lost=sum(lost.values()),
        duplicated=sum(dup.values()),
        batches=batches,
        inconsistent=bad,
        lost_ids=sorted(lost)[:10],
        duplicated_ids=sorted(dup)[:10],
    )


def assert_conserved(c: Census, what: str = "") -> None:
    assert c.ok, (
        f"{what}: {c.produced} produced, {c.accepted} accepted + {c.quarantined} quarantined; "
        f"lost {c.lost} {c.lost_ids}, duplicated {c.duplicated} {c.duplicated_ids}; inconsistent batches {c.inconsistent}"
    )


def snapshot(lake: Lake, prefix: str = DS) -> dict[str, bytes]:
    """Every object under ``prefix`` with its bytes (to show something left the lake untouched)."""
    return {k: lake.store.get(k) for k in lake.store.list(prefix)}


@dataclass
class FaultResult:
    name: str
    census: Census
    seconds: float
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.census.ok

    def line(self) -> str:
        c = self.census
        return (
            f"{self.name:<38} in {c.produced:>4} = {c.accepted:>4} accepted + {c.quarantined:>3} quarantined  "
            f"lost {c.lost}  duplicated {c.duplicated}  {'OK  ' if self.ok else 'FAIL'} {self.seconds:6.1f}s  {self.detail}"
        )


# --- fault machinery --------------------------------------------------------------------------------------
class TriggerStore:
    """The lake's real store, calling ``on_put(n, key)`` after its n-th successful ``put``
    (how a fault is placed at a fixed point of a batch: after the data, after the manifest)."""

    def __init__(self, store, on_put: Callable[[int, str], None]) -> None:
        self._store, self._on_put, self.puts = store, on_put, 0
        self.uri = store.uri

    def put(self, key: str, data: bytes) -> None:
        self._store.put(key, data)
        self.puts += 1
        self._on_put(self.puts, key)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


def fault_seed(name: str, base: int = 100, span: int = 10_000) -> int:
    """The data seed of one fault: fixed by its name, so a run's outcome never depends on the draw,
    and distinct per fault, so faults sharing a lake or stream never produce the same ids."""
    return base + zlib.crc32(name.encode()) % span


def fresh_lake(settings: Settings, name: str) -> Settings:
    """The settings with a lake prefix of its own (under the lake bucket on S3, or a subfolder)."""
    tag = f"faults-{name}-{uuid.uuid4().hex[:8]}"
    if settings.lake_uri.startswith("s3://"):
        uri = f"s3://{settings.lake_bucket}/{tag}"
    else:
        uri = str(Path(settings.lake_uri) / tag)
    return settings.model_copy(update={"lake_uri": uri})


def drop_lake(settings: Settings) -> None:
    store = Lake(settings).store
    for key in store.list(""):
        store.delete(key)


def child_env(settings: Settings, **extra: str) -> dict[str, str]:
    """Environment of an ``rtml`` subprocess using these settings (lake, Redis, S3 credentials)."""
    env = {**os.environ, **settings.env(), **settings.s3_env()}
    env.pop("RTML_TEST_CRASH_AFTER_WRITE", None)
    return {**env, **extra}


def _rtml(args: list[str], env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "rtml.cli", *args], env=env, capture_output=True, text=True, timeout=timeout
    )


class RedisServer:
    """A redis-server of our own on a free port, persisting to an append-only file in ``folder``
    (``appendfsync always``: what it acknowledged survives a SIGKILL), so it can be restarted."""

    def __init__(self, folder: Path, port: int | None = None) -> None:
        from rtml.platform.stack import free_port_block

        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port_block(1)
        self.proc: subprocess.Popen | None = None
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 30) -> None:
        import redis

        cmd = ["redis-server", "--bind", "127.0.0.1", "--port", str(self.port), "--dir", str(self.folder),
               "--appendonly", "yes", "--appendfsync", "always", "--save", "", "--protected-mode", "no"]
        self.proc = subprocess.Popen(cmd, stdout=open(self.folder / "redis.log", "ab"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        client = redis.Redis.from_url(self.url)
        while True:
            try:
                if client.ping():
                    # Loaded from the append-only file (if any) before it answers PING.
                    return
            except redis.RedisError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server on port {self.port} did not start; see {self.folder / 'redis.log'}")
            time.sleep(0.1)

    def kill(self) -> None:
        """SIGKILL: a crash, no shutdown save (the append-only file has every acknowledged write)."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()

    def client(self):
        import redis

        return redis.Redis.from_url(self.url)


def _settings_with_redis(settings: Settings, redis_url: str) -> Settings:
    return settings.model_copy(update={"redis_url": redis_url})


# --- 1. the worker killed between data write and manifest / between manifest and ack ---------------------------
def fault_worker_killed(settings: Settings, source: str, stage: str, redis: RedisServer | None = None,
                        rows: int = 240) -> FaultResult:
    """``rtml ingest`` dies (os._exit, no cleanup) after writing the batch's data (``stage="data"``)
    or its manifest (``"manifest"``, before the Redis ack); the next run recovers."""
    t = time.monotonic()
    seed = fault_seed(f"kill-{source}-{stage}")
    s = fresh_lake(settings, f"kill-{source}-{stage}")
    lake = Lake(s)
    try:
        if source == "redis":
            assert redis is not None
            s = _settings_with_redis(s, redis.url)
            stream = f"rtml-faults:{uuid.uuid4().hex[:8]}:events"
            expected = produce_redis(redis.client(), stream, rows, seed)
            args = ["ingest", "--source", "redis", "--kind", "events", "--stream", stream, "--group", GROUP,
                    "--max-records", "100", "--max-batches", "10", "--json"]
        else:
            expected = produce_landing(s, rows, seed)
            args = ["ingest", "--source", "landing", "--kind", "events", "--start", (T0 - timedelta(hours=1)).isoformat(),
                    "--end", (T0 + timedelta(hours=1)).isoformat(), "--json"]
        crashed = _rtml(args, child_env(s, RTML_TEST_CRASH_AFTER_WRITE=stage))
        assert crashed.returncode == 75, f"the worker did not die at {stage}: {crashed.returncode} {crashed.stderr[-2000:]}"
        visible = len(lake.manifests(DS, "events"))
        # The next run (what the DAG's retry or next interval does).
        ok = _rtml(args, child_env(s))
        assert ok.returncode == 0, ok.stderr[-3000:]
        out = json.loads(ok.stdout)["events"]
        detail = f"{visible} batch visible after the crash; next run: {out['records_in']} in"
        if source == "redis":
            pending = int(redis.client().xpending(stream, GROUP)["pending"])
            assert pending == 0, f"{pending} entries still pending after the recovery run"
            detail += ", 0 pending"
        return FaultResult(f"worker killed after {stage} ({source})", census(lake, expected), time.monotonic() - t, detail)
    finally:
        drop_lake(s)


# --- 2. the object store unreachable mid-batch -------------------------------------------------------------------
def seaweed_pid(settings: Settings) -> int:
    from rtml.platform.stack import Stack

    pid = Stack(settings).running_pid("seaweedfs")
    assert pid, "SeaweedFS is not running under the stack's supervisor"
    return pid


@contextlib.contextmanager
def store_outage_after(settings: Settings, seconds: float) -> Iterator[Callable[[], None]]:
    """Yields ``begin()``: SIGSTOP the stack's SeaweedFS (its whole process group) and SIGCONT it
    ``seconds`` later. A stopped server still accepts TCP connections (the kernel does) but answers
    nothing: clients hang, as behind a dead network path. Always resumed on exit."""
    pid = seaweed_pid(settings)
    timer: list[threading.Timer] = []

    def resume() -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGCONT)

    def begin() -> None:
        if timer:
            return
        os.killpg(pid, signal.SIGSTOP)
        timer.append(threading.Timer(seconds, resume))
        timer[0].start()

    try:
        yield begin
    finally:
        for tm in timer:
            tm.cancel()
        resume()


def fault_store_outage(settings: Settings, seconds: float = 30.0, rows: int = 240) -> FaultResult:
    """SeaweedFS stops answering for ``seconds`` right after the batch's first data object is
    written (before its quarantine file and manifest). The batch must finish after the outage, or
    fail and be retried (the DAG task's retries) with nothing lost or duplicated."""
    from rtml.ingest.batches import ingest_interval

    t = time.monotonic()
    seed = fault_seed("s3-outage")
    s = fresh_lake(settings, "s3-outage")
    assert s.lake_uri.startswith("s3://"), "the object store outage needs the S3 store"
    try:
        expected = produce_landing(s, rows, seed)
        attempts, errors = 0, []
        with store_outage_after(s, seconds) as begin:
            real = Lake(s)
            lake = Lake(s, store=TriggerStore(real.store, lambda n, key: begin() if n == 1 else None))
            for _ in range(3):  # the first try and the ingest task's 2 retries
                attempts += 1
                try:
                    ingest_interval(SPEC, "events", T0 - timedelta(hours=1), T0 + timedelta(hours=1), settings=s, lake=lake)
                    break
                except Exception as err:  # noqa: BLE001 - a failed try is reported, the next one runs
                    errors.append(f"{type(err).__name__}: {err}"[:200])
        detail = f"{seconds:.0f}s outage after the first data write; {attempts} attempt(s)"
        if errors:
            detail += f" (failed: {errors[0]})"
        return FaultResult("object store unreachable mid-batch", census(Lake(s), expected), time.monotonic() - t, detail)
    finally:
        drop_lake(s)


# --- 3. Redis restarted mid-run ---------------------------------------------------------------------------------
def fault_redis_restart(settings: Settings, redis: RedisServer, rows: int = 300) -> FaultResult:
    """Redis is killed (SIGKILL) right after the second batch's manifest is written, before that
    batch is acknowledged, and started again; ingestion goes on (the run fails if it cannot reach
    Redis, and the DAG task's retry runs it again)."""
    from rtml.ingest.batches import ingest_stream

    t = time.monotonic()
    seed = fault_seed("redis-restart")
    s = _settings_with_redis(fresh_lake(settings, "redis-restart"), redis.url)
    stream = f"rtml-faults:{uuid.uuid4().hex[:8]}:events"
    try:
        expected = produce_redis(redis.client(), stream, rows, seed)
        entries = redis.client().xlen(stream)
        manifests = 0

        def on_put(n: int, key: str) -> None:
            nonlocal manifests
            if "/_manifests/" in key:
                manifests += 1
                if manifests == 2:
                    redis.kill()
                    redis.start()

        real = Lake(s)
        lake = Lake(s, store=TriggerStore(real.store, on_put))
        attempts, errors = 0, []
        for _ in range(3):  # the first try and the ingest task's 2 retries
            attempts += 1
            try:
                ingest_stream(SPEC, "events", settings=s, lake=lake, stream=stream, group=GROUP, max_records=100,
                              max_batches=10, client=redis.client())
                break
            except Exception as err:  # noqa: BLE001
                errors.append(f"{type(err).__name__}: {err}"[:200])
        client = redis.client()
        assert manifests >= 2, "the fault was never injected"
        assert client.xlen(stream) == entries, "the restart lost stream entries (append-only file)"
        pending = int(client.xpending(stream, GROUP)["pending"])
        assert pending == 0, f"{pending} entries still pending"
        detail = f"killed + restarted after the 2nd manifest; {attempts} attempt(s), 0 pending"
        if errors:
            detail += f" (failed: {errors[0]})"
        return FaultResult("Redis restarted mid-run", census(Lake(s), expected), time.monotonic() - t, detail)
    finally:
        with contextlib.suppress(Exception):
            redis.client().delete(stream)
        drop_lake(s)


# --- 4. MLflow down during training ------------------------------------------------------------------------------
def fault_mlflow_down(settings: Settings, rows: int = 600) -> FaultResult:
    """MLflow stops (the stack's supervisor stops it) after the training run was created and its
    metrics and data logged, just before the model is logged and registered. Training must fail
    (no model version appears), leave the lake untouched, and a retry once MLflow is back must
    register exactly one version, with its rtml tags."""
    from mlflow import MlflowClient

    import rtml.train as train_mod
    from rtml.ingest.batches import ingest_interval
    from rtml.platform.stack import Stack

    t = time.monotonic()
    seed = fault_seed("mlflow-down")
    tag = uuid.uuid4().hex[:8]
    s = fresh_lake(settings, "mlflow-down").model_copy(update={"mlflow_experiment": f"rtml-faults-{tag}"})
    spec: ProjectSpec = SPEC.model_copy(update={"model": SPEC.model.model_copy(update={"registered_name": f"faults_{tag}"})})
    name = spec.model.registered_name
    stack = Stack(settings)
    real_log_model = train_mod.log_model
    try:
        expected = produce_landing(s, rows, seed, labels=True)
        lake = Lake(s)
        for kind in ("events", "labels"):
            ingest_interval(spec, kind, T0 - timedelta(hours=1), T0 + timedelta(hours=2), settings=s, lake=lake)
        before = snapshot(lake)

        def down_then_log(*a: Any, **kw: Any) -> Any:
            stack.down(["mlflow"])
            return real_log_model(*a, **kw)

        train_mod.log_model = down_then_log
        failure = ""
        try:
            # Fail fast while it is down instead of MLflow's default 7 retries with backoff.
            with temporary_env(MLFLOW_HTTP_REQUEST_MAX_RETRIES="0", MLFLOW_HTTP_REQUEST_TIMEOUT="20"):
                train_mod.train(spec, s, lake=lake)
        except Exception as err:  # noqa: BLE001 - the expected outcome
            failure = f"{type(err).__name__}"
        finally:
            train_mod.log_model = real_log_model
            stack.up(["mlflow"], timeout=240)
        assert failure, "training succeeded with MLflow down"
        client = MlflowClient(s.mlflow_tracking_uri)
        versions = client.search_model_versions(f"name='{name}'")
        assert not versions, f"a model version was left by the failed training: {[v.version for v in versions]}"
        assert snapshot(lake) == before, "the failed training changed the lake"

        result = train_mod.train(spec, s, lake=lake)
        versions = client.search_model_versions(f"name='{name}'")
        assert [v.version for v in versions] == [result["version"]] == ["1"], [v.version for v in versions]
        assert versions[0].tags.get("rtml.labels_last_batch"), versions[0].tags
        assert snapshot(lake) == before, "training changed the lake"
        failed_runs = client.search_runs(
            [client.get_experiment_by_name(s.mlflow_experiment).experiment_id], "attributes.status != 'FINISHED'"
        )
        detail = (f"train failed ({failure}), 0 versions, lake unchanged; retry: exactly version 1; "
                  f"{len(failed_runs)} unfinished run(s) left")
        return FaultResult("MLflow down during training", census(lake, expected), time.monotonic() - t, detail)
    finally:
        train_mod.log_model = real_log_model
        with contextlib.suppress(Exception):
            MlflowClient(s.mlflow_tracking_uri).delete_registered_model(name)
        drop_lake(s)


# --- 5. the Airflow scheduler killed mid-run ---------------------------------------------------------------------
def fault_scheduler_killed(settings: Settings, api, rows: int = 240, timeout: float = 420) -> FaultResult:
    """SIGKILL the scheduler while an ``rtml_ingest`` run is running (its task processes die with
    it: the supervisor kills the process group). The supervisor restarts the scheduler. A task
    killed that way stays *running* in Airflow until ``task_instance_heartbeat_timeout`` (300 s by
    default); as an operator would, the dead run is marked failed once its processes are gone, and
    the next run sweeps every landing file no committed batch consumed (the landing ledger).
    Uses the stack's own lake (the DAG's); only this fault's ids are counted."""
    import psutil

    from rtml.cli.demo import wait_idle
    from rtml.platform.stack import Stack, process_family

    t = time.monotonic()
    seed = fault_seed("scheduler-killed", base=10_000, span=80_000)
    stack = Stack(settings)
    lake = Lake(settings)
    # Keys in the past, unique to this call: the run's sweep takes them.
    start = T0 - timedelta(days=1) + timedelta(minutes=seed % 600)
    expected = produce_landing(settings, rows, seed, start=start)
    api.wait_dag("rtml_ingest")
    wait_idle(api, "rtml_ingest", timeout=timeout)
    try:
        run_id = api.trigger("rtml_ingest")
        deadline = time.monotonic() + timeout
        states: dict[str, str] = {}
        while True:
            states = {ti["task_id"]: ti["state"] for ti in api.task_instances("rtml_ingest", run_id)}
            run_state = api.run_state("rtml_ingest", run_id)
            if states.get("ingest_events") == "running" or run_state in api.FINISHED:
                break
            assert time.monotonic() < deadline, f"rtml_ingest run {run_id} never started: {states}"
            time.sleep(0.3)
        before = stack.programs()["airflow-scheduler"]
        family = process_family([before["pid"]])
        os.kill(before["pid"], signal.SIGKILL)
        _, alive = psutil.wait_procs(family, timeout=60)
        assert not alive, f"processes of the killed scheduler still alive: {alive}"
        while True:  # the supervisor restarts it
            now = stack.programs().get("airflow-scheduler", {})
            if now.get("pid") and now["pid"] != before["pid"]:
                break
            assert time.monotonic() < deadline, "the supervisor did not restart the scheduler"
            time.sleep(0.3)
        first = api.run_state("rtml_ingest", run_id)
        if first not in api.FINISHED:
            # Its task processes are dead (checked above): nothing can still write for this run.
            r = api.patch(f"/api/v2/dags/rtml_ingest/dagRuns/{run_id}", json={"state": "failed"})
            r.raise_for_status()
            first = f"{first} -> marked failed"
        second = api.trigger("rtml_ingest")
        state = api.wait("rtml_ingest", second, timeout=timeout)
        assert state == "success", api.explain("rtml_ingest", second)
        detail = (f"killed with ingest_events {states.get('ingest_events')}; scheduler restarted "
                  f"(restarts {before['restarts']} -> {now['restarts']}); killed run {first}; next run {state}")
        return FaultResult("scheduler killed mid-run", census(lake, expected), time.monotonic() - t, detail)
    finally:
        api.pause("rtml_ingest")
        wait_idle(api, "rtml_ingest", timeout=timeout)


# --- all of them -------------------------------------------------------------------------------------------------
FAULTS = (
    "worker-after-data-landing",
    "worker-after-data-redis",
    "worker-after-manifest-landing",
    "worker-after-manifest-redis",
    "store-outage",
    "redis-restart",
    "mlflow-down",
    "scheduler-killed",
)


def run_fault(name: str, settings: Settings, redis: RedisServer, api=None, outage_seconds: float = 30.0) -> FaultResult:
    """Run one fault of :data:`FAULTS` by name."""
    if name.startswith("worker-after-"):
        stage, source = name.removeprefix("worker-after-").split("-")
        return fault_worker_killed(settings, source, stage, redis)
    if name == "store-outage":
        return fault_store_outage(settings, outage_seconds)
    if name == "redis-restart":
        return fault_redis_restart(settings, redis)
    if name == "mlflow-down":
        return fault_mlflow_down(settings)
    if name == "scheduler-killed":
        return fault_scheduler_killed(settings, api)
    raise ValueError(f"unknown fault {name!r}; choose from {', '.join(FAULTS)}")
