"""The distributed profile's configuration, without starting anything: services, processes, secrets,
environment per service, the profile a state folder is bound to."""

from __future__ import annotations

import stat

import pytest
from pydantic import ValidationError

from rtml.platform.distributed import (
    MLFLOW_AIRFLOW_USER,
    MLFLOW_SERVE_USER,
    DistributedConfig,
    DistributedStack,
    main,
    stack_for,
)
from rtml.platform.stack import Stack, StackError
from rtml.settings import Settings


@pytest.fixture
def stack(tmp_path) -> DistributedStack:
    settings = Settings(home=tmp_path, s3_port=30000, mlflow_port=30010, airflow_port=30011, serve_port=30014,
                        kafka_port=30015)
    config = DistributedConfig(postgres_url="postgresql://pg@db:5432/ignored", postgres_db_prefix="t1",
                               celery_redis_port=30017, celery_workers=2, serve_replicas=2)
    return DistributedStack(settings, config)


def test_services_add_redis_for_airflow(stack):
    assert stack.services(["airflow"]) == ["s3", "redis", "mlflow", "airflow"]
    assert stack.services(["serve"]) == ["s3", "mlflow", "serve"]
    assert stack.services(None) == ["s3", "redis", "mlflow", "airflow", "serve"]
    with pytest.raises(StackError, match="unknown service"):
        stack.services(["flower"])


def test_databases_are_named_by_the_prefix_on_the_configured_server(stack):
    assert stack.config.database_url("airflow") == "postgresql://pg@db:5432/t1_airflow"
    assert stack.config.databases == ["t1_airflow", "t1_mlflow", "t1_mlflow_auth"]
    with pytest.raises(ValidationError, match="postgres_db_prefix"):
        DistributedConfig(postgres_db_prefix='x"; DROP DATABASE y; --')


def test_processes_two_workers_two_replicas_on_one_port(stack):
    airflow = stack.procs("airflow")
    names = [p.name for p in airflow]
    assert names[-2:] == ["airflow-worker-1", "airflow-worker-2"] and len(names) == 6
    for i, worker in enumerate(airflow[-2:], start=1):
        assert worker.cmd[1:3] == ["celery", "worker"]
        assert worker.cmd[worker.cmd.index("--celery-hostname") + 1] == f"rtml-worker-{i}@%h"
    serve = stack.procs("serve")
    assert [p.name for p in serve] == ["rtml-serve-1", "rtml-serve-2"]
    assert {p.port for p in serve} == {30014}
    assert [p.shared_port for p in serve] == [False, True]  # the second may find the first on the port
    assert all(p.env["RTML_SERVE_REUSE_PORT"] == "True" for p in serve)
    mlflow = stack.procs("mlflow")[0]
    assert mlflow.cmd[-2:] == ["--app-name", "basic-auth"]
    # MLflow's own role; its password in the environment (PGPASSWORD), not on the command line.
    assert mlflow.cmd[mlflow.cmd.index("--backend-store-uri") + 1] == "postgresql+psycopg2://t1_mlflow@db:5432/t1_mlflow"
    assert mlflow.env["PGPASSWORD"] == (stack.keys / "pg_mlflow_password").read_text()
    assert "MLFLOW_TRACKING_PASSWORD" not in mlflow.env
    # status/down know the same names without generating anything.
    assert [p.name for p in stack._proc_names("airflow")] == names


def test_every_airflow_component_gets_the_same_secrets_and_each_service_its_own_user(stack):
    env = stack.airflow_env()
    assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    pg = (stack.keys / "pg_airflow_password").read_text()
    assert env["AIRFLOW__CELERY__RESULT_BACKEND"] == f"db+postgresql+psycopg2://t1_airflow:{pg}@db:5432/t1_airflow"
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] == f"postgresql+psycopg2://t1_airflow:{pg}@db:5432/t1_airflow"
    password = (stack.keys / "redis_password").read_text()
    assert env["AIRFLOW__CELERY__BROKER_URL"] == f"redis://:{password}@127.0.0.1:30017/0"
    assert {p.env["AIRFLOW__CORE__FERNET_KEY"] for p in stack.procs("airflow")} == {env["AIRFLOW__CORE__FERNET_KEY"]}
    assert env["MLFLOW_TRACKING_USERNAME"] == MLFLOW_AIRFLOW_USER
    serve = stack.procs("serve")[0].env
    assert serve["MLFLOW_TRACKING_USERNAME"] == MLFLOW_SERVE_USER
    assert serve["MLFLOW_TRACKING_PASSWORD"] != env["MLFLOW_TRACKING_PASSWORD"]
    # Generated once, owner-only, the same for a second stack object on the same folder.
    again = DistributedStack(stack.settings, stack.config).airflow_env()
    assert again["AIRFLOW__CORE__FERNET_KEY"] == env["AIRFLOW__CORE__FERNET_KEY"]
    for path in stack.keys.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    from cryptography.fernet import Fernet

    Fernet(env["AIRFLOW__CORE__FERNET_KEY"].encode())  # a valid key, or this raises


def test_redis_config_requires_the_password_and_persists(stack):
    stack._write_redis_config()
    lines = stack.redis_config.read_text().splitlines()
    assert f"requirepass {(stack.keys / 'redis_password').read_text()}" in lines
    assert "appendonly yes" in lines and "port 30017" in lines and "bind 127.0.0.1" in lines
    assert stat.S_IMODE(stack.redis_config.stat().st_mode) == 0o600


def test_a_state_folder_keeps_its_profile(stack, tmp_path):
    stack._claim_profile()
    assert isinstance(stack_for(None, stack.settings), DistributedStack)
    with pytest.raises(StackError, match="--profile distributed"):
        Stack(stack.settings)._claim_profile()
    fresh = Settings(home=tmp_path / "fresh")
    assert type(stack_for(None, fresh)) is Stack
    with pytest.raises(StackError, match="unknown profile"):
        stack_for("cloud", fresh)


def test_mlflow_users_command_names_what_is_missing(monkeypatch, capsys):
    assert main(["mlflow-users"]) == 2
    for var in ("MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_AIRFLOW_PASSWORD", "MLFLOW_SERVE_PASSWORD",
                "MLFLOW_APPROVER_PASSWORD"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("MLFLOW_AUTH_ADMIN_PASSWORD", "x")
    assert main(["mlflow-users", "http://mlflow:5000"]) == 2
    assert "MLFLOW_SERVE_PASSWORD" in capsys.readouterr().err


def test_each_service_gets_its_own_s3_identity_and_the_store_knows_only_those(stack, monkeypatch):
    import json

    from rtml.platform.access import S3_ADMIN

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "callers-key")  # the caller's keys go to no process
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "callers-secret")
    monkeypatch.setenv("RTML_POSTGRES_URL", "postgresql://admin:admin-pw@db")  # nor the database admin's
    monkeypatch.setenv("PGPASSWORD", "admin-pw")
    keys = {}
    for proc in stack.procs("airflow") + stack.procs("mlflow") + stack.procs("serve"):
        keys.setdefault(proc.service, set()).add((proc.env["AWS_ACCESS_KEY_ID"], proc.env["AWS_SECRET_ACCESS_KEY"]))
    assert {s: {k for k, _ in v} for s, v in keys.items()} == {
        "airflow": {"rtml-airflow"}, "mlflow": {"rtml-mlflow"}, "serve": {"rtml-serve"}}
    assert len({secret for v in keys.values() for _, secret in v}) == 3
    for proc in stack.procs("airflow") + stack.procs("mlflow") + stack.procs("serve") + stack.procs("redis"):
        assert "admin-pw" not in json.dumps(proc.env), proc.name
    (weed,) = stack.procs("s3")
    assert "AWS_ACCESS_KEY_ID" not in weed.env and "AWS_SECRET_ACCESS_KEY" not in weed.env
    assert weed.cmd[-1] == f"-s3.config={stack.s3_config}"
    assert stack._s3_auth() == (S3_ADMIN, (stack.keys / f"s3_{S3_ADMIN}_secret_key").read_text())
    stack._write_s3_config()
    assert stat.S_IMODE(stack.s3_config.stat().st_mode) == 0o600
    doc = {i["name"]: i for i in json.loads(stack.s3_config.read_text())["identities"]}
    assert set(doc) == {S3_ADMIN, "rtml-airflow", "rtml-mlflow", "rtml-serve"}
    for name, ident in doc.items():
        assert ident["credentials"] == [{"accessKey": name, "secretKey": stack.s3_secret(name)}]
        assert ("Admin" in ident["actions"]) == (name == S3_ADMIN)
    # The endpoint writes only its logs under the spec's dataset.
    from rtml.spec import load_spec

    ds = load_spec(stack.settings.spec).dataset.name
    from rtml.tables import table_prefix

    assert f"Write:rtml-lake/{table_prefix(ds, 'predictions')}*" in doc["rtml-serve"]["actions"]
    assert f"Write:rtml-lake/{ds}/_manifests/predictions/*" in doc["rtml-serve"]["actions"]
    assert not [a for a in doc["rtml-serve"]["actions"] if "/events" in a or a.endswith(":rtml-lake")]


def test_an_unreadable_spec_is_named_before_the_store_starts(tmp_path):
    settings = Settings(home=tmp_path, spec=tmp_path / "missing.yaml")
    with pytest.raises(StackError, match="RTML_SPEC"):
        DistributedStack(settings, DistributedConfig())._write_s3_config()
