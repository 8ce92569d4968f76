"""Approval -> served: how long after a person approves a challenger the endpoint answers with it.

    python benchmarks/approval.py [--rounds 3] [--keep]

Starts its own stack (SeaweedFS, MLflow, Airflow with its triggerer, the MLflow webhook to the rtml
plugin; a temporary RTML_HOME and free ports, like the test session; Redis on the settings'
``redis_url`` carries the approval signal) and ``rtml serve`` with its default alias poll. It
registers a first version and approves it (champion), then, per round and per path:

1. registers a new version (gates passed and signed: the challenger) and triggers ``rtml_promote``
   for it, with ``deploy_on_approval`` on (new: the approval wait promotes and reloads from the
   triggerer) or off (the previous path: the ``promote`` and ``reload`` tasks do it after the wait
   resumes);
2. waits until ``wait_for_approval`` is deferred, gives it a moment (a person takes minutes), sets
   ``approval.by`` and ``approval`` on the version as the MLflow UI does, and times until the
   endpoint's ``/v1/model`` answers with the new version (polled every 20 ms);
3. waits for the run to succeed (smoke check passed).

Prints each round and the median per path. The machine's load shows in both paths alike (they
alternate); the previous path's figure is mostly Airflow's task start-up.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "tests" / "integration"))

from support.stack import use_session_env  # noqa: E402


def _served(url: str, token: str) -> str | None:
    try:
        r = httpx.get(f"{url}/v1/model", headers={"Authorization": f"Bearer {token}"}, timeout=5)
        return str(r.json().get("version"))
    except (httpx.HTTPError, ValueError):
        return None


def _task_state(api, run_id: str, task_id: str) -> str | None:
    return next((ti["state"] for ti in api.task_instances("rtml_promote", run_id) if ti["task_id"] == task_id), None)


def _steps(api, run: str) -> str:
    """When each step of the deployment at the approval ended (its ``seconds``, from the wait's XCom)."""
    r = api.get(f"/api/v2/dags/rtml_promote/dagRuns/{run}/taskInstances/wait_for_approval/xcomEntries/return_value")
    value = r.json().get("value") if r.status_code == 200 else None
    seconds = (value.get("deployed") or {}).get("seconds") if isinstance(value, dict) else None
    return "  (" + ", ".join(f"{k} {v:.2f}" for k, v in seconds.items()) + ")" if seconds else ""


def one_round(api, settings, spec, url: str, token: str, at_approval: bool, seed: int) -> tuple[float, str]:
    from _serving import register

    from rtml.registry.client import mlflow_client

    name = spec.model.registered_name
    client = mlflow_client()
    before = _served(url, token)
    version = register(settings, spec, seed=seed)
    run = api.trigger("rtml_promote", {"name": name, "version": version, "deploy_on_approval": at_approval})
    deadline = time.monotonic() + 300
    while _task_state(api, run, "wait_for_approval") != "deferred":
        if time.monotonic() > deadline or api.run_state("rtml_promote", run) in ("success", "failed"):
            raise RuntimeError(f"the wait never deferred:\n{api.explain('rtml_promote', run)}")
        time.sleep(0.5)
    time.sleep(8)  # past the trigger's settle time (5 s); a person takes minutes anyway
    client.set_model_version_tag(name, version, "approval.by", "bench")
    client.set_model_version_tag(name, version, "approval", "approved")
    approved = time.monotonic()
    while _served(url, token) != version:
        if time.monotonic() - approved > 300:
            raise RuntimeError(f"still serving {_served(url, token)} (was {before}):\n{api.explain('rtml_promote', run)}")
        time.sleep(0.02)
    took = time.monotonic() - approved
    state = api.wait("rtml_promote", run, timeout=300)
    if state != "success":
        raise RuntimeError(f"rtml_promote ended {state}:\n{api.explain('rtml_promote', run)}")
    return took, _steps(api, run) if at_approval else ""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3, help="approvals per path")
    ap.add_argument("--keep", action="store_true", help="keep the temporary home (logs of every service)")
    args = ap.parse_args()

    from _serving import register, spec_for, unique_name
    from support.stack import TestStack

    from rtml.platform.airflow import AirflowClient
    from rtml.registry.promotion import approve
    from rtml.settings import get_settings

    home = Path(tempfile.mkdtemp(prefix="rtml-approval-"))
    use_session_env(home, "RTML_SERVE_TOKEN")  # the test session's environment: a temp home, free ports
    settings = get_settings(refresh=True)
    stack = TestStack(settings)
    serve: subprocess.Popen | None = None
    api = None
    results: dict[bool, list[float]] = {True: [], False: []}
    try:
        t = time.monotonic()
        stack.ensure("airflow", timeout=600)
        print(f"stack up in {time.monotonic() - t:.0f}s; home {home}", flush=True)
        api = AirflowClient(settings)
        name = unique_name("approval")
        spec = spec_for(name)
        approve(name, register(settings, spec, seed=1), by="bench")
        token = settings.resolved_serve_token()
        url = f"http://127.0.0.1:{settings.serve_port}"
        log = open(home / "serve.log", "wb")  # noqa: SIM115 - closed with the process
        # The endpoint as the stack runs it: the default alias poll (RTML_SERVE_POLL_SECONDS, 5 s).
        serve = subprocess.Popen([str(Path(sys.executable).parent / "rtml"), "serve", "--model", name],
                                 env={**os.environ, **settings.env()}, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while _served(url, token) in (None, "None"):
            if serve.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"rtml serve did not come up; see {home / 'serve.log'}")
            time.sleep(0.5)
        seed = 100
        for r in range(args.rounds):
            for at_approval in (True, False):
                seed += 1
                took, steps = one_round(api, settings, spec, url, token, at_approval, seed)
                results[at_approval].append(took)
                path = "deploy at the approval (triggerer)" if at_approval else "promote + reload tasks (previous)"
                print(f"round {r + 1}: {path:<36} approval -> served {took:6.2f} s{steps}", flush=True)
    finally:
        if serve is not None:
            serve.terminate()
            try:
                serve.wait(30)
            except subprocess.TimeoutExpired:
                serve.kill()
        if api is not None:
            api.close()
        left = stack.close()
        if left:
            print(f"processes left running: {left}", file=sys.stderr)
        if not args.keep:
            shutil.rmtree(home, ignore_errors=True)
    new, old = results[True], results[False]
    if new and old:
        print(f"approval -> served, median of {len(new)}: at the approval {statistics.median(new):.2f} s "
              f"(min {min(new):.2f}, max {max(new):.2f}); previous path {statistics.median(old):.2f} s "
              f"(min {min(old):.2f}, max {max(old):.2f}); {statistics.median(old) / statistics.median(new):.1f}x faster")
    return 0


if __name__ == "__main__":
    sys.exit(main())
