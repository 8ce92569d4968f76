"""The distributed profile, for real: ``DistributedStack`` (what ``rtml stack up --profile distributed``
runs) on free ports, each property it promises checked against the running services."""

from __future__ import annotations

import json
import stat
import uuid
from collections.abc import Iterator

import httpx
import psutil
import pytest
import redis
from support.stack import distributed_stack

from rtml.platform.distributed import (
    MLFLOW_AIRFLOW_USER,
    MLFLOW_APPROVER,
    MLFLOW_SERVE_USER,
    DistributedStack,
    celery_workers,
    drop_databases,
)
from rtml.platform.stack import process_family

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DistributedStack]:
    stack = distributed_stack(tmp_path_factory.mktemp("rtml-dist"))
    try:
        stack.up(["s3", "redis", "mlflow", "airflow", "serve"], timeout=420)
        yield stack
    finally:
        family = process_family(stack.pids_started().values())
        stack.down()
        psutil.wait_procs(family, timeout=10)
        left = [p.pid for p in family if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        drop_databases(stack.config)
        assert not left, f"processes left running after down: {left}"


def _mlflow(stack: DistributedStack, user: str | None) -> httpx.Client:
    auth = (user, stack.mlflow_password(user)) if user else None
    return httpx.Client(base_url=stack.settings.mlflow_tracking_uri, auth=auth, timeout=30)


def test_status_is_healthy_with_two_celery_workers(dist):
    status = dist.status()
    assert status["ok"], json.dumps(status["services"], default=str)[:2000]
    assert set(status["services"]) >= {"s3", "redis", "mlflow", "airflow", "serve"}
    # Each worker answers a Celery ping on the password-protected broker, under its own name.
    workers = celery_workers(dist.broker_url, timeout=5)
    assert [w.split("@")[0] for w in workers] == ["rtml-worker-1", "rtml-worker-2"]
    assert status["services"]["airflow"]["celery_workers"] == workers


def test_airflow_components_share_one_fernet_key_and_jwt_secret(dist):
    specs = {p.name: json.loads(p.read_text()) for p in (dist.home / "supervisor" / "programs").glob("airflow-*.json")}
    assert len(specs) == 6  # api-server, scheduler, dag-processor, triggerer, 2 workers
    for key in ("AIRFLOW__CORE__FERNET_KEY", "AIRFLOW__API_AUTH__JWT_SECRET", "AIRFLOW__CELERY__BROKER_URL"):
        values = {spec["env"][key] for spec in specs.values()}
        assert len(values) == 1 and values != {""}, key
    assert {s["env"]["AIRFLOW__CORE__EXECUTOR"] for s in specs.values()} == {"CeleryExecutor"}
    fernet = (dist.keys / "airflow_fernet_key").read_text().strip()
    assert next(iter(specs.values()))["env"]["AIRFLOW__CORE__FERNET_KEY"] == fernet
    for path in dist.keys.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


def test_redis_refuses_without_the_password(dist):
    port = dist.config.celery_redis_port
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(host=dist.settings.host, port=port, socket_timeout=5).ping()
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(host=dist.settings.host, port=port, password="wrong", socket_timeout=5).ping()
    assert redis.Redis.from_url(dist.broker_url, socket_timeout=5).ping()
    # Not the test Redis of the stream source: a server of the stack's own, persisting to its folder.
    assert port != 6379
    assert redis.Redis.from_url(dist.broker_url).config_get("appendonly") == {"appendonly": "yes"}


def test_mlflow_refuses_anonymous_and_each_user_gets_only_its_rights(dist):
    name = f"dist-{uuid.uuid4().hex[:8]}"
    with _mlflow(dist, None) as anon:
        assert anon.get("/api/2.0/mlflow/registered-models/search").status_code == 401
    with _mlflow(dist, MLFLOW_SERVE_USER) as c:
        c.auth = (MLFLOW_SERVE_USER, "not-the-password")
        assert c.get("/api/2.0/mlflow/registered-models/search").status_code == 401
    # Training (the Airflow workers' user) creates a run and registers a version.
    with _mlflow(dist, MLFLOW_AIRFLOW_USER) as train:
        r = train.post("/api/2.0/mlflow/experiments/create", json={"name": name})
        assert r.status_code == 200, r.text
        exp = r.json()["experiment_id"]
        r = train.post("/api/2.0/mlflow/runs/create", json={"experiment_id": exp})
        assert r.status_code == 200, r.text
        run_id = r.json()["run"]["info"]["run_id"]
        assert train.post("/api/2.0/mlflow/registered-models/create", json={"name": name}).status_code == 200
        version = {"name": name, "source": f"runs:/{run_id}/model", "run_id": run_id}
        r = train.post("/api/2.0/mlflow/model-versions/create", json=version)
        assert r.status_code == 200, r.text
    tag = {"name": name, "version": "1", "key": "approval", "value": "approved"}
    # Serving reads, and nothing else.
    with _mlflow(dist, MLFLOW_SERVE_USER) as serve:
        r = serve.get("/api/2.0/mlflow/model-versions/get", params={"name": name, "version": "1"})
        assert r.status_code == 200, r.text
        assert serve.post("/api/2.0/mlflow/model-versions/create", json=version).status_code == 403
        assert serve.post("/api/2.0/mlflow/model-versions/set-tag", json=tag).status_code == 403
        alias = {"name": name, "version": "1", "alias": "champion"}
        assert serve.post("/api/2.0/mlflow/registered-models/alias", json=alias).status_code == 403
        assert serve.post("/api/2.0/mlflow/runs/create", json={"experiment_id": exp}).status_code == 403
    # A person approves: the approver tags the version, but neither trains nor deletes.
    with _mlflow(dist, MLFLOW_APPROVER) as person:
        assert person.post("/api/2.0/mlflow/model-versions/set-tag", json=tag).status_code == 200
        assert person.post("/api/2.0/mlflow/runs/create", json={"experiment_id": exp}).status_code == 403
        assert person.delete("/api/2.0/mlflow/registered-models/delete", params={"name": name}).status_code == 403


def test_both_serving_replicas_answer_behind_one_address(dist):
    replicas = {dist.running_pid(n) for n in dist.replica_names()}
    assert len(replicas) == 2 and None not in replicas
    seen: set[int] = set()
    for _ in range(200):  # a new connection each time: the kernel picks a replica per connection
        with httpx.Client(timeout=5) as c:
            seen.add(c.get(f"{dist.settings.serve_url}/health").json()["pid"])
        if seen == replicas:
            break
    assert seen == replicas
    listening = {c.pid for c in psutil.net_connections("inet")
                 if c.status == psutil.CONN_LISTEN and c.laddr.port == dist.settings.serve_port}
    assert listening == replicas  # one port, bound by both


def test_a_dag_task_runs_through_celery(dist):
    import psycopg2

    from rtml.platform.airflow import AirflowClient

    with AirflowClient(dist.settings) as api:
        run_id = api.trigger("rtml_healthcheck", conf={"requested_by": "test_stack_distributed"})
        state = api.wait("rtml_healthcheck", run_id, timeout=300)
        assert state == "success", api.explain("rtml_healthcheck", run_id)
        tasks = api.task_instances("rtml_healthcheck", run_id)
    # The tasks went through the broker: a worker recorded each in the Celery result backend when it
    # took it (STARTED; SUCCESS is written after the run may already show success in Airflow).
    conn = psycopg2.connect(dist.config.database_url("airflow"))
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM celery_taskmeta WHERE status IN ('STARTED', 'SUCCESS')")
            (done,) = cur.fetchone()
    finally:
        conn.close()
    assert done >= len(tasks) == 3
