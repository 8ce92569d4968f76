"""The distributed profile, for real: ``DistributedStack`` (what ``rtml stack up --profile distributed``
runs) on free ports, each property it promises checked against the running services."""

from __future__ import annotations

import contextlib
import json
import os
import stat
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import psutil
import pytest
import redis
from support.loop import assert_gated_and_champion, assert_served_logged_and_monitored
from support.stack import distributed_stack

from rtml.platform.distributed import (
    MLFLOW_ADMIN,
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
    # Kafka is the stream, as on a production cluster; the broker is up before the triggerer runs
    # rtml_ingest's watcher on it.
    stack = distributed_stack(tmp_path_factory.mktemp("rtml-dist"), source="kafka")
    try:
        stack.up(["kafka"], timeout=300)
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


@contextlib.contextmanager
def _as_client_of(stack: DistributedStack, user: str = MLFLOW_ADMIN) -> Iterator[None]:
    """This process talks to ``stack`` like a client of it does (its RTML_* settings, the Airflow S3
    identity, the MLflow login of ``user``; default: the admin's, as a promotion task would need at
    most); the environment and the cached settings are restored after."""
    import mlflow.tracking._model_registry.utils as registry_uri
    import mlflow.tracking._tracking_service.utils as tracking_uri

    from rtml.settings import get_settings

    saved = dict(os.environ)
    # set_tracking_uri/set_registry_uri (register() calls them) are process-wide: the tests after
    # this one must not keep talking to this stack once it is down.
    saved_uris = tracking_uri._tracking_uri, registry_uri._registry_uri
    os.environ.update({**stack.settings.env(), **stack.settings.s3_env(),
                       "MLFLOW_TRACKING_URI": stack.settings.mlflow_tracking_uri,
                       "MLFLOW_REGISTRY_URI": stack.settings.mlflow_tracking_uri})
    # An earlier test's set_tracking_uri/set_registry_uri would win over the environment: clear them.
    tracking_uri._tracking_uri = registry_uri._registry_uri = None
    os.environ.update(stack.access_env("airflow"))
    os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"] = user, stack.mlflow_password(user)
    get_settings(refresh=True)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)
        tracking_uri._tracking_uri, registry_uri._registry_uri = saved_uris
        get_settings(refresh=True)


@pytest.mark.e2e
def test_the_whole_loop_on_the_distributed_profile(dist):
    """The embedded e2e loop (tests/e2e/test_loop.py), on the production topology: the demo replays
    into Kafka, rtml_ingest reads the topics, training gates the candidate, the ``approver`` MLflow
    user (a person, who may tag but not train) approves, rtml_promote promotes and both replicas
    serve the version, the prediction log reaches the lake and rtml_monitor reads it, and every task
    went through the Celery broker to a worker.

    Runs first in this module: later tests register versions of the same model by hand, and the
    loop's DAGs are paused again after it so they do not act on those."""
    import psycopg2

    from rtml.cli.demo import LOOP_DAGS, run_demo
    from rtml.ingest.kafka import group_lag, topic_name
    from rtml.lake import Lake
    from rtml.platform.airflow import AirflowClient
    from rtml.spec import load_spec

    settings = dist.settings
    spec = load_spec(settings.spec)
    name = spec.model.registered_name
    token = settings.resolved_serve_token()
    headers = {"Authorization": f"Bearer {token}"}
    # The endpoint as `rtml stack up` runs it: no champion yet, so alive but not ready.
    assert httpx.get(f"{settings.serve_url}/ready").status_code == 503
    with AirflowClient(settings) as api, _as_client_of(dist, MLFLOW_APPROVER):
        try:
            result = run_demo(settings, spec, approve=True, start_stack=False)

            # Ingestion from Kafka: both topics read to their end, every batch conserved its records.
            for kind in ("events", "labels"):
                assert group_lag(topic_name(spec.dataset.name, kind), settings=settings) == 0, kind
            lake = Lake(settings)
            manifests = lake.manifests(spec.dataset.name, "events")
            assert manifests, "no events batch was committed"
            for m in manifests:
                assert m["records_in"] == m["accepted"] + m["quarantined"], m["batch_id"]
                assert m["source"]["type"] == "kafka", m["batch_id"]
            assert sum(m["accepted"] for m in manifests) >= 4000

            # Training and gates; the approver's tag made the version champion.
            version = assert_gated_and_champion(settings, name, result)

            # Serving: whichever replica a new connection lands on answers with the approved version.
            replicas = {dist.running_pid(n) for n in dist.replica_names()}
            assert str(result["served"]["version"]) == str(version)
            seen: dict[int, str] = {}
            for _ in range(200):
                with httpx.Client(base_url=settings.serve_url, timeout=10, headers=headers) as c:
                    pid = c.get("/health").json()["pid"]
                    seen[pid] = str(c.get("/v1/model").json()["version"])
                if set(seen) == replicas:
                    break
            assert seen == dict.fromkeys(replicas, str(version))
            # The prediction log reaches the lake, and monitoring reads it through Airflow.
            assert_served_logged_and_monitored(settings, spec, lake, api, version)
        finally:
            for dag_id in LOOP_DAGS:
                api.pause(dag_id)
    # Every task of the loop went through the password-protected broker to a Celery worker: each
    # task instance that ran carries the id of a Celery task the result backend recorded.
    conn = psycopg2.connect(dist.config.database_url("airflow"))
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT ti.dag_id, ti.task_id, ti.run_id, ct.status FROM task_instance ti "
                        "LEFT JOIN celery_taskmeta ct ON ct.task_id = ti.external_executor_id "
                        "WHERE ti.dag_id = ANY(%s) AND ti.state = 'success'", (list(LOOP_DAGS),))
            done = cur.fetchall()
    finally:
        conn.close()
    assert {d for d, *_ in done} == set(LOOP_DAGS)
    assert [row for row in done if row[3] not in ("STARTED", "SUCCESS")] == []


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
        if path.suffix != ".pub":  # the gate signature's public key (written by training) is public
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


def test_a_promotion_waits_until_every_replica_serves_the_new_version(dist):
    """A reload sent to the shared address reaches one replica; ``reload_and_wait`` must not return
    before the other serves the version too (rtml.serve.replicas), or the smoke check after it could
    meet the old version and roll a good one back."""
    from _serving import register

    from rtml.registry.promotion import approve
    from rtml.serve.deploy import reload_and_wait
    from rtml.serve.replicas import live_replicas, replica_dir
    from rtml.spec import load_spec

    replicas = {dist.running_pid(n) for n in dist.replica_names()}
    # Each replica registered its own private address for the shared port.
    assert {r.pid for r in live_replicas(replica_dir(dist.home), dist.settings.serve_port)} == replicas
    with _as_client_of(dist):
        spec = load_spec(dist.settings.spec)
        name = spec.model.registered_name
        for seed in (1, 2):  # the first champion, then a new one replacing it on both replicas
            version = register(dist.settings, spec, seed=seed)
            approve(name, version, by="test_stack_distributed")
            out = reload_and_wait(version, timeout=120)
            assert set(out["replicas"]) == replicas
            # Right after: whichever replica a new connection lands on answers with the new version
            # (one connection per pair of requests, so /health's pid and the version are one replica's).
            seen: dict[int, str] = {}
            token = dist.settings.resolved_serve_token()
            for _ in range(200):
                with httpx.Client(base_url=dist.settings.serve_url, timeout=10,
                                  headers={"Authorization": f"Bearer {token}"}) as c:
                    pid = c.get("/health").json()["pid"]
                    seen[pid] = str(c.get("/v1/model").json()["version"])
                if set(seen) == replicas:
                    break
            assert seen == dict.fromkeys(replicas, version)
        # Each replica appends its reload to the decision log holding only the serving S3 key (the
        # entry is written off the request path, so it may land a moment after the reload).
        from rtml.registry.audit import entries

        def reloads() -> list[dict]:
            return [e for e in entries() if e["action"] == "reload" and e["model"] == name and e["version"] == version]

        deadline = time.monotonic() + 60
        while len(reloads()) < len(replicas) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert len(reloads()) == len(replicas)
        assert {e["actor"] for e in reloads()} == {"rtml-serve"}  # MLflow-authenticated identity


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


# --- least privilege for storage and databases (rtml.platform.access) ---------------------------------
def _s3(stack: DistributedStack, identity: str) -> Any:
    from rtml.storage import s3_client

    return s3_client(stack.settings, auth=(identity, stack.s3_secret(identity)))


def _refused(call: Callable[[], Any]) -> str:
    """The error code S3 answered ``call`` with (the test fails if it was allowed)."""
    from botocore.exceptions import ClientError

    try:
        call()
    except ClientError as err:
        return str(err.response["Error"]["Code"])
    raise AssertionError("allowed, but must be refused")


def test_each_s3_identity_does_its_job_and_is_refused_the_rest(dist):
    from rtml.platform.access import S3_ADMIN, S3_AIRFLOW, S3_MLFLOW, S3_SERVE, spec_datasets
    from rtml.tables import table_prefix

    s, tag = dist.settings, uuid.uuid4().hex[:8]
    lake, models = s.lake_bucket, s.mlflow_bucket
    (ds,) = spec_datasets(s)
    admin, airflow, mlflow, serve = (_s3(dist, i) for i in (S3_ADMIN, S3_AIRFLOW, S3_MLFLOW, S3_SERVE))
    event = f"{ds}/events/date=2026-11-26/batch={tag}/part-00000.parquet"
    admin.put_object(Bucket=lake, Key=event, Body=b"event")
    artifact = f"artifacts/0/{tag}/artifacts/model/MLmodel"
    denied = "AccessDenied"

    # Airflow: the whole lake (read, write, list, delete), nothing of MLflow's bucket, no new buckets.
    key = f"{ds}/labels/date=2026-11-26/batch={tag}/part-00000.parquet"
    airflow.put_object(Bucket=lake, Key=key, Body=b"label")
    assert airflow.get_object(Bucket=lake, Key=event)["Body"].read() == b"event"
    assert {o["Key"] for o in airflow.list_objects_v2(Bucket=lake, Prefix=f"{ds}/")["Contents"]} >= {event, key}
    airflow.delete_object(Bucket=lake, Key=key)
    assert _refused(lambda: airflow.put_object(Bucket=models, Key=artifact, Body=b"x")) == denied
    assert _refused(lambda: airflow.list_objects_v2(Bucket=models, Prefix="artifacts/")) == denied
    assert _refused(lambda: airflow.create_bucket(Bucket=f"rtml-{tag}")) == denied

    # MLflow: its artifact prefix only.
    mlflow.put_object(Bucket=models, Key=artifact, Body=b"model")
    assert mlflow.get_object(Bucket=models, Key=artifact)["Body"].read() == b"model"
    assert mlflow.list_objects_v2(Bucket=models, Prefix=f"artifacts/0/{tag}/")["KeyCount"] == 1
    mlflow.delete_object(Bucket=models, Key=artifact)
    assert _refused(lambda: mlflow.put_object(Bucket=models, Key=f"elsewhere/{tag}", Body=b"x")) == denied
    assert _refused(lambda: mlflow.get_object(Bucket=lake, Key=event)) == denied
    assert _refused(lambda: mlflow.list_objects_v2(Bucket=lake, Prefix=f"{ds}/")) == denied

    # Serving: its prediction logs' keys; it can neither read, overwrite nor delete events, nor touch
    # MLflow's artifacts or another dataset's log.
    log = f"{table_prefix(ds, 'predictions')}data/time_day=2026-11-26/{tag}.parquet"
    serve.put_object(Bucket=lake, Key=log, Body=b"prediction")
    serve.put_object(Bucket=lake, Key=f"_index/{ds}/shadow/2026-11-26/{tag}.json", Body=b"{}")
    assert serve.list_objects_v2(Bucket=lake, Prefix=table_prefix(ds, "predictions"))["KeyCount"] >= 1
    # ... and its logs' Iceberg tables (data and metadata), not the events' table.
    table_file = f"{table_prefix(ds, 'shadow')}metadata/{tag}.json"
    serve.put_object(Bucket=lake, Key=table_file, Body=b"{}")
    assert serve.get_object(Bucket=lake, Key=table_file)["Body"].read() == b"{}"
    for call in (lambda: serve.put_object(Bucket=lake, Key=event, Body=b"forged"),
                 lambda: serve.delete_object(Bucket=lake, Key=event),
                 lambda: serve.get_object(Bucket=lake, Key=event),
                 lambda: serve.list_objects_v2(Bucket=lake, Prefix=f"{ds}/events/"),
                 lambda: serve.put_object(Bucket=lake, Key=f"{ds}/_manifests/events/{tag}.json", Body=b"{}"),
                 lambda: serve.put_object(Bucket=lake, Key=f"other_{tag}/predictions/x.parquet", Body=b"x"),
                 # the layout of the lakes before tables: nothing writes there any more
                 lambda: serve.put_object(Bucket=lake, Key=f"{ds}/predictions/date=2026-11-26/batch={tag}/x.parquet",
                                          Body=b"x"),
                 lambda: serve.put_object(Bucket=lake, Key=f"{table_prefix(ds, 'events')}metadata/{tag}.json",
                                          Body=b"{}"),
                 lambda: serve.put_object(Bucket=models, Key=artifact, Body=b"x"),
                 lambda: serve.get_object(Bucket=models, Key=artifact)):
        assert _refused(call) == denied
    deleted = serve.delete_objects(Bucket=lake, Delete={"Objects": [{"Key": event}, {"Key": log}]})
    assert [e["Key"] for e in deleted.get("Errors", [])] == [event]  # a batch delete is checked per key
    assert admin.get_object(Bucket=lake, Key=event)["Body"].read() == b"event"  # intact

    # A wrong secret, or a key the store does not know (the caller's default one), is refused.
    from rtml.storage import s3_client

    assert _refused(lambda: s3_client(s, auth=(S3_SERVE, "wrong")).list_objects_v2(
        Bucket=lake, Prefix=table_prefix(ds, "predictions"))) == "SignatureDoesNotMatch"
    assert _refused(lambda: s3_client(s, auth=("rtml-local", "rtml-local-secret")).list_buckets()) != ""
    admin.delete_objects(Bucket=lake, Delete={"Objects": [{"Key": event}, {"Key": table_file},
                                                          {"Key": f"_index/{ds}/shadow/2026-11-26/{tag}.json"}]})


def test_the_endpoint_writes_its_prediction_log_with_its_own_keys(dist, monkeypatch):
    """Beyond the grants: a real answered prediction reaches the lake as a committed batch (data,
    manifest, day index), written by a replica that holds only the serving identity."""
    from _serving import credit_rows

    from rtml.lake import Lake
    from rtml.serve.source import frame_to_records
    from rtml.spec import load_spec
    from rtml.storage import S3Store

    spec = load_spec(dist.settings.spec)
    replica_env = json.loads((dist.home / "supervisor" / "programs" / "rtml-serve-1.json").read_text())["env"]
    assert replica_env["AWS_ACCESS_KEY_ID"] == "rtml-serve"
    raw, _ = credit_rows(1)
    record = frame_to_records(raw[spec.feature_names])[0]
    admin = S3Store(dist.settings.lake_bucket, settings=dist.settings, client=_s3(dist, "rtml-admin"))
    # The tables' files are read with the environment's keys (as every rtml process does): the admin's.
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "rtml-admin")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", dist.s3_secret("rtml-admin"))
    lake = Lake(dist.settings, admin)
    before = {m["batch_id"] for m in lake.manifests(spec.dataset.name, "predictions")}
    token = dist.settings.resolved_serve_token()
    with httpx.Client(base_url=dist.settings.serve_url, headers={"Authorization": f"Bearer {token}"}, timeout=30) as c:
        r = c.post("/v1/predict", json=record)
        assert r.status_code == 200, r.text
        request_id = r.json()["request_id"]
    deadline = time.monotonic() + 60  # the log flushes every 2 s
    new: list[dict[str, Any]] = []
    while not new and time.monotonic() < deadline:
        new = [m for m in lake.manifests(spec.dataset.name, "predictions") if m["batch_id"] not in before]
        time.sleep(0.5)
    assert new, "no prediction-log batch reached the lake"
    frame = lake.read_batches(spec.dataset.name, "predictions", [m["batch_id"] for m in new])
    assert request_id in set(frame["request_id"])
    assert all(m["table"] == f"{spec.dataset.name}.predictions" for m in new)  # a table commit, by the replica
    assert admin.exists(f"_index/{spec.dataset.name}/predictions/_complete")


def test_each_service_has_its_own_database_role_and_cannot_reach_the_others(dist):
    import psycopg2

    from rtml.platform.access import PG_ROLES

    cfg = dist.config
    admin = psycopg2.connect(cfg.database_url("airflow"))
    try:
        with admin.cursor() as cur:
            cur.execute("SELECT rolname, rolsuper, rolcreatedb, rolcreaterole FROM pg_roles WHERE rolname = ANY(%s)",
                        ([cfg.role(r) for r in PG_ROLES],))
            assert sorted(cur.fetchall()) == sorted((cfg.role(r), False, False, False) for r in PG_ROLES)
            cur.execute("SELECT datname, pg_get_userbyid(datdba) FROM pg_database WHERE datname LIKE %s",
                        (cfg.postgres_db_prefix + "%",))
            owners = dict(cur.fetchall())
            # The services' tables belong to their roles: Airflow migrated and the workers wrote as it.
            cur.execute("SELECT DISTINCT tableowner FROM pg_tables WHERE schemaname = 'public'")
            assert {r for (r,) in cur.fetchall()} == {cfg.role("airflow")}
    finally:
        admin.close()
    assert owners == {f"{cfg.postgres_db_prefix}_{d}": cfg.role(r) for r, dbs in PG_ROLES.items() for d in dbs}
    # The running services connect as their roles, never as the server's admin.
    specs = {p.stem: json.loads(p.read_text()) for p in (dist.home / "supervisor" / "programs").glob("*.json")}
    assert f"//{cfg.role('airflow')}:" in specs["airflow-worker-1"]["env"]["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
    mlflow_cmd = specs["mlflow"]["cmd"]
    assert f"//{cfg.role('mlflow')}@" in mlflow_cmd[mlflow_cmd.index("--backend-store-uri") + 1]
    for role, own in PG_ROLES.items():
        password = dist.pg_password(role)
        for db in own:  # its own databases: connects and reads
            conn = psycopg2.connect(cfg.role_url(db, role, password), connect_timeout=5)
            with conn.cursor() as cur:
                cur.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")
                assert cur.fetchone()[0] > 0, db
            conn.close()
        # Another service's databases: not even a connection (CONNECT is revoked from PUBLIC).
        for other in {d for r, dbs in PG_ROLES.items() if r != role for d in dbs}:
            with pytest.raises(psycopg2.OperationalError, match="permission denied|not have CONNECT"):
                psycopg2.connect(cfg.role_url(other, role, password), connect_timeout=5).close()
