"""The real local stack: SeaweedFS, MLflow and Airflow on loopback, driven through their own APIs."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import psutil
import pytest

from rtml.platform.stack import Stack, free_port_block, port_open, process_family, seaweed_ports
from rtml.settings import Settings
from rtml.storage import open_store

pytestmark = pytest.mark.integration

RTML = str(Path(sys.executable).parent / "rtml")


def _rtml(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([RTML, *args], capture_output=True, text=True, env=env, timeout=timeout)


# --- the session stack (all three services) -------------------------------------------------------
def test_status_reports_every_service_healthy(airflow_settings: Settings):
    result = _rtml("stack", "status", "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    status = json.loads(result.stdout)
    assert status["ok"] is True
    assert status["home"] == str(airflow_settings.home)
    services = status["services"]
    # Every service of the session stack answers; Kafka and the endpoint count once some test started them.
    started = {name for name, s in services.items() if s["pid"] and (not isinstance(s["pid"], dict) or all(s["pid"].values()))}
    assert {"s3", "mlflow", "airflow"} <= started
    assert {name for name, s in services.items() if s["healthy"]} == started | {"s3", "mlflow", "airflow"}
    assert services["mlflow"]["url"] == airflow_settings.mlflow_tracking_uri
    assert services["airflow"]["url"] == airflow_settings.airflow_url
    assert all(services["airflow"]["pid"].values())
    assert services["airflow"]["username"] == "admin" and services["airflow"]["password"]
    human = _rtml("stack", "status")
    assert "login: admin / " in human.stdout and airflow_settings.airflow_url in human.stdout


def test_every_port_is_on_loopback(airflow_settings: Settings):
    stack = Stack(airflow_settings)
    pids = _family(stack.pids_started().values())
    listening = [
        c for c in psutil.net_connections("inet") if c.status == psutil.CONN_LISTEN and c.pid in pids
    ]
    assert listening, "no listening socket found for the stack's processes"
    assert {c.laddr.ip for c in listening} == {airflow_settings.host}
    assert airflow_settings.s3_port in {c.laddr.port for c in listening}


def test_healthcheck_dag_succeeds_through_the_rest_api(airflow_api):
    run_id = airflow_api.trigger("rtml_healthcheck", conf={"requested_by": "test_stack"})
    state = airflow_api.wait("rtml_healthcheck", run_id, timeout=240)
    assert state == "success", airflow_api.explain("rtml_healthcheck", run_id)
    tis = {ti["task_id"]: ti["state"] for ti in airflow_api.task_instances("rtml_healthcheck", run_id)}
    assert tis == {"check_lake": "success", "check_mlflow": "success", "report": "success"}
    r = airflow_api.get(
        f"/api/v2/dags/rtml_healthcheck/dagRuns/{run_id}/taskInstances/report/xcomEntries/return_value"
    )
    assert r.status_code == 200, r.text
    assert "lake ok" in json.dumps(r.json()["value"])


def test_airflow_rejects_requests_without_a_token(airflow_settings: Settings):
    r = httpx.get(f"{airflow_settings.airflow_url}/api/v2/dags", timeout=10)
    assert r.status_code in (401, 403)


def test_plugin_links_and_page(airflow_api, mlflow_settings: Settings):
    plugins = {p["name"]: p for p in airflow_api.get("/api/v2/plugins").json()["plugins"]}
    assert "rtml" in plugins
    views = {v["name"]: v for v in plugins["rtml"]["external_views"]}
    assert views["MLflow models"]["href"] == f"{mlflow_settings.mlflow_tracking_uri}/#/models"
    assert views["rtml models"]["url_route"] == "rtml"
    page = airflow_api.get("/rtml/")
    assert page.status_code == 200 and "registered model versions" in page.text
    assert airflow_api.get("/rtml/api/models").json() == {"model_versions": []} or page.status_code == 200


def test_mlflow_rest_api(mlflow_settings: Settings):
    base = mlflow_settings.mlflow_tracking_uri
    name = f"stack-test-{uuid.uuid4().hex[:8]}"
    r = httpx.post(f"{base}/api/2.0/mlflow/experiments/create", json={"name": name}, timeout=30)
    assert r.status_code == 200, r.text
    exp_id = r.json()["experiment_id"]
    r = httpx.post(
        f"{base}/api/2.0/mlflow/experiments/search",
        json={"max_results": 100, "filter": f"name = '{name}'"},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    assert [e["experiment_id"] for e in r.json()["experiments"]] == [exp_id]
    # Artifacts are proxied by the server to the S3 store.
    assert r.json()["experiments"][0]["artifact_location"].startswith("mlflow-artifacts:")


def test_mlflow_artifacts_land_in_s3(mlflow_settings: Settings):
    import mlflow

    mlflow.set_tracking_uri(mlflow_settings.mlflow_tracking_uri)
    exp = mlflow.set_experiment(f"stack-artifacts-{uuid.uuid4().hex[:8]}")
    with mlflow.start_run(experiment_id=exp.experiment_id) as run:
        mlflow.log_text("hello from the stack test", "notes/hello.txt")
    store = open_store(f"s3://{mlflow_settings.mlflow_bucket}", settings=mlflow_settings)
    keys = [k for k in store.list("artifacts") if run.info.run_id in k]
    assert any(k.endswith("notes/hello.txt") for k in keys), keys


def test_s3_put_get_list(s3_settings: Settings):
    store = open_store(settings=s3_settings)
    assert store.uri == f"s3://{s3_settings.lake_bucket}"
    key = f"stack-test/{uuid.uuid4().hex}/blob.bin"
    payload = os.urandom(2048)
    store.put(key, payload)
    assert store.get(key) == payload
    assert store.exists(key)
    assert key in store.list(key.rsplit("/", 1)[0])
    store.delete(key)
    assert not store.exists(key)


def test_s3_refuses_wrong_credentials(s3_settings: Settings):
    import boto3
    from botocore.config import Config
    from botocore.exceptions import ClientError

    client = boto3.client(
        "s3",
        endpoint_url=s3_settings.s3_endpoint_url,
        aws_access_key_id="intruder",
        aws_secret_access_key="nope",
        region_name=s3_settings.s3_region,
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
    )
    with pytest.raises(ClientError):
        client.list_objects_v2(Bucket=s3_settings.lake_bucket)


# --- supervision: every component killed with SIGKILL comes back within 30 s ---------------------
def _heartbeat_after(settings: Settings, component: str, t: float) -> bool:
    """Airflow's own health endpoint reports a heartbeat of ``component`` newer than ``t``."""
    from datetime import datetime

    try:
        health = httpx.get(f"{settings.airflow_url}/api/v2/monitor/health", timeout=5).json()
    except (httpx.HTTPError, ValueError):
        return False
    part = health.get(component) or {}
    beat = part.get(f"latest_{component}_heartbeat")
    return part.get("status") == "healthy" and bool(beat) and datetime.fromisoformat(beat).timestamp() > t


@pytest.mark.parametrize(
    "name",
    [
        "seaweedfs",
        "mlflow",
        "rtml-serve",
        "airflow-api-server",
        "airflow-scheduler",
        "airflow-dag-processor",
        "airflow-triggerer",
    ],
)
def test_a_component_killed_with_sigkill_is_restarted_healthy(stack, airflow_settings: Settings, name: str):
    import time

    from rtml.platform.health import check_mlflow, check_s3, check_serve

    stack.ensure("serve")
    s = airflow_settings
    st = Stack(s)
    before = st.programs()[name]
    pid = before["pid"]
    family = _family([pid])
    killed_at = time.time()
    os.kill(pid, 9)

    healthy = {
        "seaweedfs": lambda: check_s3(s)["ok"],
        "mlflow": lambda: check_mlflow(s)["ok"],
        "rtml-serve": lambda: check_serve(s)["ok"],
        "airflow-api-server": lambda: httpx.get(f"{s.airflow_url}/api/v2/version", timeout=5).status_code == 200,
        "airflow-scheduler": lambda: _heartbeat_after(s, "scheduler", killed_at),
        "airflow-dag-processor": lambda: _heartbeat_after(s, "dag_processor", killed_at),
        "airflow-triggerer": lambda: _heartbeat_after(s, "triggerer", killed_at),
    }[name]
    deadline = time.monotonic() + 30
    while True:
        now = st.programs().get(name, {})
        try:
            ok = bool(now.get("pid")) and now["pid"] != pid and healthy()
        except httpx.HTTPError:
            ok = False
        if ok:
            break
        assert time.monotonic() < deadline, f"{name} not healthy again 30 s after SIGKILL: {now}"
        time.sleep(0.5)
    assert now["restarts"] == before["restarts"] + 1
    assert now["last_exit"]["reason"] == "killed by SIGKILL" and now["last_exit"]["pid"] == pid
    # The old process group went with its leader (MLflow's uvicorn workers, the scheduler's workers).
    psutil.wait_procs([psutil.Process(p) for p in family if psutil.pid_exists(p)], timeout=10)
    assert not [p for p in family if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]

    status = json.loads(_rtml("stack", "status", "--json").stdout)
    assert status["processes"][name]["restarts"] == now["restarts"]
    service = {"seaweedfs": "s3", "mlflow": "mlflow", "rtml-serve": "serve"}.get(name, "airflow")
    assert status["services"][service]["restarts"] >= 1
    assert "killed by SIGKILL" in status["services"][service]["last_exit"]
    assert "restarted" in _rtml("stack", "status").stdout


# --- a small stack of its own: idempotent up, persistence, down leaves nothing ----------------------
@pytest.fixture
def small_stack(tmp_path_factory: pytest.TempPathFactory, s3_settings: Settings):
    """s3 + mlflow in another home on other ports (the session stack keeps running beside it)."""
    home = tmp_path_factory.mktemp("small-stack")
    base = free_port_block(15)
    env = dict(os.environ)
    env.update(
        RTML_HOME=str(home),
        RTML_S3_PORT=str(base),
        RTML_MLFLOW_PORT=str(base + 10),
        RTML_AIRFLOW_PORT=str(base + 11),
        RTML_SERVE_PORT=str(base + 14),
    )
    settings = Settings(home=home, s3_port=base, mlflow_port=base + 10, airflow_port=base + 11, serve_port=base + 14)
    yield settings, env
    Stack(settings).down()  # in case the test failed half-way


def _family(pids) -> set[int]:
    return {p.pid for p in process_family(pids)}


def _processes_using(home: Path) -> list[str]:
    found = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if str(home) in cmd:
            found.append(f"{p.info['pid']} {cmd[:120]}")
    return found


def test_up_twice_no_twins_then_down_leaves_nothing(small_stack):
    settings, env = small_stack
    first = _rtml("stack", "up", "--only", "mlflow,serve", "--json", env=env)
    assert first.returncode == 0, first.stdout + first.stderr
    first = json.loads(first.stdout)
    assert first["actions"] == {"seaweedfs": "started", "mlflow": "started", "rtml-serve": "started"}
    pids = {
        "seaweedfs": first["services"]["s3"]["pid"],
        "mlflow": first["services"]["mlflow"]["pid"],
        "rtml-serve": first["services"]["serve"]["pid"],
    }
    assert all(pids.values())
    family = _family(pids.values())

    # The processes outlived the CLI that started them; a second `up` finds them and starts nothing.
    second = _rtml("stack", "up", "--only", "mlflow,serve", "--json", env=env)
    assert second.returncode == 0, second.stdout + second.stderr
    second = json.loads(second.stdout)
    assert second["actions"] == {"seaweedfs": "running", "mlflow": "running", "rtml-serve": "running"}
    assert {
        "seaweedfs": second["services"]["s3"]["pid"],
        "mlflow": second["services"]["mlflow"]["pid"],
        "rtml-serve": second["services"]["serve"]["pid"],
    } == pids
    weeds = [
        p
        for p in psutil.process_iter(["name", "cmdline"])
        if p.info["name"] == "weed" and f"-dir={settings.home / 'seaweedfs'}" in (p.info["cmdline"] or [])
    ]
    assert len(weeds) == 1

    # Data is kept on disk across a restart of the store.
    store = open_store(settings=settings)
    store.put("persist/me.txt", b"still here")

    down = _rtml("stack", "down", "--json", env=env)
    assert down.returncode == 0, down.stdout + down.stderr
    assert json.loads(down.stdout)["stopped"] == {"rtml-serve": "stopped", "mlflow": "stopped", "seaweedfs": "stopped"}
    psutil.wait_procs([psutil.Process(p) for p in family if psutil.pid_exists(p)], timeout=10)
    assert not [
        p for p in family if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE
    ]
    assert not _processes_using(settings.home)
    assert not any(
        port_open(settings.host, p)
        for p in [*seaweed_ports(settings).values(), settings.mlflow_port, settings.serve_port]
    )
    assert not (settings.home / "supervisor" / "state.json").exists()
    assert not list((settings.home / "supervisor" / "programs").glob("*.json"))

    again = _rtml("stack", "up", "--only", "s3", "--json", env=env)
    assert again.returncode == 0, again.stdout + again.stderr
    assert open_store(settings=settings).get("persist/me.txt") == b"still here"
    assert _rtml("stack", "down", env=env).returncode == 0
    assert not _processes_using(settings.home)


def test_up_refuses_a_port_held_by_someone_else_and_down_spares_it(small_stack):
    settings, env = small_stack
    with socket.socket() as foreign:
        foreign.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        foreign.bind((settings.host, settings.s3_port))
        foreign.listen()
        result = _rtml("stack", "up", "--only", "s3", "--json", env=env)
        assert result.returncode == 1
        assert "taken by a process this stack did not start" in json.loads(result.stdout)["error"]
        assert _rtml("stack", "down", env=env).returncode == 0
        assert port_open(settings.host, settings.s3_port)  # our listener is untouched
    assert not _processes_using(settings.home)


# --- PostgreSQL as the metadata store --------------------------------------------------------------
@pytest.fixture
def pg_database():
    from support.postgres import temporary_database

    with temporary_database("rtml_stack_test") as uri:
        yield uri


def test_mlflow_on_postgresql(tmp_path_factory, pg_database: str):
    """A plain postgresql:// URL works as MLflow's backend store (registry included)."""
    import psycopg2

    home = tmp_path_factory.mktemp("pg-stack")
    base = free_port_block(15)
    settings = Settings(
        home=home,
        s3_port=base,
        mlflow_port=base + 10,
        airflow_port=base + 11,
        mlflow_backend_store_uri=pg_database,
    )
    stack = Stack(settings)
    try:
        stack.up(["mlflow"], timeout=240)
        base_url = settings.mlflow_tracking_uri
        r = httpx.post(
            f"{base_url}/api/2.0/mlflow/registered-models/create", json={"name": "pg_model"}, timeout=30
        )
        assert r.status_code == 200, r.text
    finally:
        stack.down()
    with psycopg2.connect(pg_database) as conn, conn.cursor() as cur:
        cur.execute("SELECT name FROM registered_models")
        assert cur.fetchall() == [("pg_model",)]
    assert not _processes_using(home)
