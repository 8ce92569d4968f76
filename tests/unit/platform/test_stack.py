"""The local stack's configuration, without starting anything: ports, environments, secrets, plugin page."""

from __future__ import annotations

import importlib.util
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from rtml.platform import supervisor
from rtml.platform.stack import (
    REPO_ROOT,
    SQLITE_BUSY_TIMEOUT_S,
    Stack,
    StackError,
    airflow_ports,
    all_ports,
    free_port_block,
    port_open,
    seaweed_ports,
    sqlalchemy_uri,
)
from rtml.settings import Settings


@pytest.fixture
def settings(tmp_path) -> Settings:
    return Settings(home=tmp_path, s3_port=30000, mlflow_port=30010, airflow_port=30011, serve_port=30014, kafka_port=30015)


def test_every_port_derives_from_settings_and_none_is_a_default(settings):
    ports = all_ports(settings)
    assert len(ports) == len(set(ports)), "two services would share a port"
    assert set(seaweed_ports(settings).values()) == set(range(30000, 30010))
    assert airflow_ports(settings) == {"api": 30011, "worker_log_server": 30012, "trigger_log_server": 30013}
    # The ports weed mini and Airflow open by default would clash between two stacks.
    assert settings.serve_port in ports
    assert not {9333, 19333, 8888, 18888, 9340, 23646, 7333, 8080, 8793, 8794, 8000} & set(ports)
    other = Settings(home=settings.home, s3_port=31000, mlflow_port=31010, airflow_port=31011, serve_port=31014, kafka_port=31015)
    assert not set(all_ports(other)) & set(ports)


def test_services_pull_in_what_they_need(settings, tmp_path):
    stack = Stack(settings)
    assert stack.services(["s3"]) == ["s3"]
    assert stack.services(["mlflow"]) == ["s3", "mlflow"]
    assert stack.services(["airflow"]) == ["s3", "mlflow", "airflow"]
    assert stack.services(["serve"]) == ["s3", "mlflow", "serve"]
    assert stack.services(None) == ["s3", "mlflow", "airflow", "serve"]
    local = Stack(Settings(home=tmp_path, storage="local"))
    assert local.services(["airflow"]) == ["mlflow", "airflow"]
    # Kafka starts when asked for, or by default when it is the configured source; it needs nothing.
    assert stack.services(["kafka"]) == ["kafka"]
    assert Stack(Settings(home=tmp_path, source="kafka")).services(None)[-1] == "kafka"
    with pytest.raises(StackError, match="unknown service"):
        stack.services(["zookeeper"])


def test_children_use_this_stacks_registry_not_an_inherited_one(settings, monkeypatch):
    """mlflow.set_registry_uri() in the calling process exports MLFLOW_REGISTRY_URI; a stack's
    children (serving replicas load ``models:/`` through it) must not inherit another server's."""
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", "http://127.0.0.1:1/another-stack")
    env = Stack(settings).base_env()
    assert env["MLFLOW_REGISTRY_URI"] == env["MLFLOW_TRACKING_URI"] == settings.mlflow_tracking_uri


def test_airflow_environment(settings):
    stack = Stack(settings)
    env = stack.airflow_env()
    assert env["AIRFLOW_HOME"] == str(settings.home / "airflow")
    assert env["AIRFLOW__CORE__DAGS_FOLDER"] == str(REPO_ROOT / "dags")
    assert env["AIRFLOW__CORE__PLUGINS_FOLDER"] == str(REPO_ROOT / "plugins")
    assert Path(env["AIRFLOW__CORE__DAGS_FOLDER"], "rtml_healthcheck.py").is_file()
    assert env["AIRFLOW__CORE__LOAD_EXAMPLES"] == "False"
    assert env["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor"
    assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://127.0.0.1:30011/execution/"
    assert (
        env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
        == f"sqlite:///{settings.home / 'airflow' / 'airflow.db'}?timeout={SQLITE_BUSY_TIMEOUT_S}"
    )
    assert env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS"] == "admin:admin"
    assert int(env["AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL"]) <= 30
    # Tasks see the same settings and stores as the CLI.
    assert env["RTML_HOME"] == str(settings.home)
    assert env["MLFLOW_TRACKING_URI"] == "http://127.0.0.1:30010"
    assert env["MLFLOW_S3_ENDPOINT_URL"] == "http://127.0.0.1:30000"
    # The shared JWT secret: generated once, kept private, identical for every component.
    secret_file = settings.home / "airflow" / "jwt_secret"
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    assert len(env["AIRFLOW__API_AUTH__JWT_SECRET"]) >= 32
    assert (
        Stack(settings).airflow_env()["AIRFLOW__API_AUTH__JWT_SECRET"] == env["AIRFLOW__API_AUTH__JWT_SECRET"]
    )


def test_folders_can_be_overridden(tmp_path):
    s = Settings(home=tmp_path, dags_folder=str(tmp_path / "d"), plugins_folder=str(tmp_path / "p"))
    env = Stack(s).airflow_env()
    assert env["AIRFLOW__CORE__DAGS_FOLDER"] == str(tmp_path / "d")
    assert env["AIRFLOW__CORE__PLUGINS_FOLDER"] == str(tmp_path / "p")


def test_commands_bind_loopback_and_keep_data_under_home(settings):
    stack = Stack(settings)
    (weed,) = stack.procs("s3")
    assert f"-dir={settings.home / 'seaweedfs'}" in weed.cmd
    assert "-ip.bind=127.0.0.1" in weed.cmd and "-s3.port=30000" in weed.cmd
    assert "-webdav=false" in weed.cmd and "-s3.port.iceberg=0" in weed.cmd
    (mlflow,) = stack.procs("mlflow")
    assert mlflow.cmd[mlflow.cmd.index("--host") + 1] == "127.0.0.1"
    assert mlflow.cmd[mlflow.cmd.index("--artifacts-destination") + 1] == "s3://rtml-mlflow/artifacts"
    names = [p.name for p in stack.procs("airflow")]
    assert names == ["airflow-api-server", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer"]
    for p in stack.procs("airflow")[1:]:
        if p.name in ("airflow-scheduler", "airflow-triggerer"):
            assert "--skip-serve-logs" in p.cmd  # their log servers would bind 0.0.0.0


def test_sqlalchemy_uri_picks_the_installed_driver():
    assert sqlalchemy_uri("postgresql://u:p@h:5432/db") == "postgresql+psycopg2://u:p@h:5432/db"
    assert sqlalchemy_uri("postgres://u@h/db") == "postgresql+psycopg2://u@h/db"
    assert sqlalchemy_uri("postgresql+psycopg2://u@h/db") == "postgresql+psycopg2://u@h/db"



def test_sqlite_uri_waits_for_a_busy_writer_longer_than_sqlite3s_default():
    """A trigger that waited 5 s for the lock got a 500 "Database error" (cause hidden) in CI."""
    from sqlalchemy.dialects.sqlite.aiosqlite import SQLiteDialect_aiosqlite
    from sqlalchemy.dialects.sqlite.pysqlite import SQLiteDialect_pysqlite
    from sqlalchemy.engine import make_url

    uri = sqlalchemy_uri("sqlite:////tmp/x.db")
    assert uri == f"sqlite:////tmp/x.db?timeout={SQLITE_BUSY_TIMEOUT_S}" and 5 < SQLITE_BUSY_TIMEOUT_S < 30
    # what SQLAlchemy hands sqlite3.connect, for Airflow's sync and async (derived URL) engines alike
    _, kw = SQLiteDialect_pysqlite().create_connect_args(make_url(uri))
    assert kw["timeout"] == SQLITE_BUSY_TIMEOUT_S
    _, kw = SQLiteDialect_aiosqlite().create_connect_args(make_url(uri.replace("sqlite:", "sqlite+aiosqlite:", 1)))
    assert kw["timeout"] == SQLITE_BUSY_TIMEOUT_S
    # a stated timeout is kept; other parameters too
    assert sqlalchemy_uri("sqlite:////tmp/x.db?timeout=60") == "sqlite:////tmp/x.db?timeout=60"
    assert sqlalchemy_uri("sqlite:////tmp/x.db?cached_statements=10") == (
        f"sqlite:////tmp/x.db?cached_statements=10&timeout={SQLITE_BUSY_TIMEOUT_S}")


def test_nothing_running_means_no_pids_and_nothing_to_stop(settings):
    stack = Stack(settings)
    assert stack.pids_started() == {}
    assert stack.down() == {"ok": True, "stopped": {}}
    assert stack.airflow_password() is None


def test_a_dead_supervisors_state_is_not_running(settings):
    stack = Stack(settings)
    state = supervisor.state_path(settings.home)
    state.parent.mkdir(parents=True)
    # The state file of a supervisor that is gone (a pid that no longer exists) names nothing running.
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    state.write_text(json.dumps({"pid": dead.pid, "programs": {"mlflow": {"pid": os.getpid(), "state": "running"}}}))
    assert stack.running_pid("mlflow") is None
    assert stack.pids_started() == {}
    assert stack.down() == {"ok": True, "stopped": {}}


def test_free_port_block_is_free():
    base = free_port_block(5)
    assert not any(port_open("127.0.0.1", p, timeout=0.2) for p in range(base, base + 5))


def test_free_port_block_avoids_the_ephemeral_range(monkeypatch):
    """Outgoing connections take ports from that range: a service could find its port taken."""
    from rtml.platform import stack as mod

    monkeypatch.setattr(mod, "_ephemeral_range", lambda: (32768, 60999))
    for _ in range(50):
        base = free_port_block(17)
        assert 20000 <= base and base + 17 <= 32768
    # When the whole range is ephemeral there is nothing better than the range asked for.
    monkeypatch.setattr(mod, "_ephemeral_range", lambda: (1024, 65535))
    assert 20000 <= free_port_block(3) < 60000


def _plugin():
    path = REPO_ROOT / "plugins" / "rtml_plugin.py"
    spec = importlib.util.spec_from_file_location("rtml_plugin_under_test", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_plugin_declares_links_and_app():
    plugin = _plugin()
    views = {v["name"]: v for v in plugin.RtmlPlugin.external_views}
    assert views["MLflow models"]["href"].endswith("/#/models")
    assert views["rtml models"]["href"] == "/rtml/" and views["rtml models"]["url_route"] == "rtml"
    (app,) = plugin.RtmlPlugin.fastapi_apps
    assert app["url_prefix"] == "/rtml"
    # Airflow refuses these prefixes for plugin apps.
    assert not app["url_prefix"].startswith(("/api/v2", "/ui", "/execution", "/auth", "/pluginsv2"))


def test_plugin_page_shows_gates_and_escapes_values():
    plugin = _plugin()
    row = {
        "name": "credit_risk",
        "version": "3",
        "aliases": ["challenger"],
        "status": "READY",
        "gates": {
            "gate.quality": "passed",
            "gate.fairness": "failed",
            "gate.drift": "passed",
            "gate.decision": "failed",
        },
        "reasons": "<script>alert(1)</script> disparate impact 0.7 < 0.8",
        "approval": "",
        "tags": {"report.url": "http://127.0.0.1:5000/get-artifact?x=1"},
        "run_id": "abc",
        "version_url": "http://127.0.0.1:5000/#/models/credit_risk/versions/3",
        "run_url": "http://127.0.0.1:5000/#/runs/abc",
    }
    page = plugin.render_page([row])
    assert "<script>alert(1)</script>" not in page and "&lt;script&gt;" in page
    assert "challenger" in page and "#/models/credit_risk/versions/3" in page and "#/runs/abc" in page
    assert page.count(">passed<") == 2 and page.count(">failed<") == 2
    assert 'href="http://127.0.0.1:5000/get-artifact?x=1"' in page
    assert "No registered model version yet" in plugin.render_page([])
    assert "MLflow did not answer" in plugin.render_page([], error="ConnectError")


def test_mlflow_gets_a_stable_webhook_key_and_may_post_to_the_local_plugin(settings, monkeypatch):
    from cryptography.fernet import Fernet

    for var in ("MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY", "MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS",
                "MLFLOW_WEBHOOK_ALLOWED_SCHEMES", "MLFLOW_WEBHOOK_CACHE_TTL"):
        monkeypatch.delenv(var, raising=False)
    (mlflow,) = Stack(settings).procs("mlflow")
    key = mlflow.env["MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY"]
    Fernet(key.encode())  # a valid key, else MLflow cannot store webhook secrets
    key_file = settings.home / "keys" / "mlflow_webhook.key"
    assert key_file.read_text() == key and key_file.stat().st_mode & 0o077 == 0
    assert Stack(settings).procs("mlflow")[0].env["MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY"] == key  # restarts agree
    assert mlflow.env["MLFLOW_WEBHOOK_CACHE_TTL"] == "2"
    assert mlflow.env["MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS"] == "true"  # the receiver is on loopback
    assert mlflow.env["MLFLOW_WEBHOOK_ALLOWED_SCHEMES"] == "http,https"
    # A public https receiver: MLflow's SSRF protection stays on; the user's own values are kept.
    public = Settings(home=settings.home, airflow_url="https://8.8.4.4")
    monkeypatch.setenv("MLFLOW_WEBHOOK_CACHE_TTL", "30")
    env = Stack(public).procs("mlflow")[0].env
    assert "MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS" not in env and "MLFLOW_WEBHOOK_ALLOWED_SCHEMES" not in env
    assert env["MLFLOW_WEBHOOK_CACHE_TTL"] == "30"


@pytest.mark.parametrize(("url", "private"), [
    ("http://127.0.0.1:8080/x", True), ("http://localhost:8080", True), ("http://10.1.2.3", True),
    ("http://[::1]:80", True), ("http://192.168.0.5", True), ("https://8.8.4.4", False),
    ("https://8.8.8.8/hook", False), ("not a url", False),
])
def test_is_private_url(url, private):
    from rtml.platform.stack import is_private_url

    assert is_private_url(url) is private


def test_a_failed_webhook_registration_is_reported_not_raised(settings, monkeypatch):
    from rtml.registry import webhooks

    def refuse(client, url, secret, name="rtml"):
        raise RuntimeError("MLflow said no")

    monkeypatch.setattr(webhooks, "register", refuse)
    stack = Stack(settings)
    out = stack.register_webhook()
    assert out["ok"] is False and "MLflow said no" in out["error"] and out["url"].endswith("/rtml/hooks/mlflow")
    assert stack.webhook_status()["error"] == out["error"]
    import rtml.platform.stack as stack_module

    monkeypatch.setattr(stack_module, "check_mlflow", lambda s: {"ok": True})  # MLflow up, the hook not
    assert "webhook NOT registered" in stack.status()["services"]["mlflow"]["detail"]
