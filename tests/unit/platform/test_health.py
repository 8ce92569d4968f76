"""Health checks (rtml.platform.health) against a stub HTTP server on loopback and fake S3/Kafka
clients: what counts as healthy, and that every failure answers ``ok: False`` with an error saying why."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from rtml.platform import health
from rtml.settings import Settings


@pytest.fixture
def settings(tmp_path) -> Settings:
    return Settings(home=tmp_path, storage="local", kafka_bootstrap="broker-a:9092,broker-b:9092")


# --- S3 / lake --------------------------------------------------------------------------------------------
def test_local_lake_is_ok_when_it_is_a_folder_or_not_made_yet(tmp_path):
    lake = tmp_path / "lake"
    s = Settings(home=tmp_path, storage="local", lake_uri=str(lake))
    assert health.check_s3(s) == {"ok": True, "storage": "local", "lake_uri": str(lake)}
    lake.mkdir()
    assert health.check_s3(s)["ok"]


def test_local_lake_that_is_a_file_is_not_ok(tmp_path):
    lake = tmp_path / "lake"
    lake.write_text("not a folder")
    assert health.check_s3(Settings(home=tmp_path, storage="local", lake_uri=str(lake)))["ok"] is False


class FakeS3:
    def __init__(self, buckets=None, error=None):
        self.buckets, self.error = buckets or [], error

    def list_buckets(self):
        if self.error:
            raise self.error
        return {"Buckets": [{"Name": b} for b in self.buckets]}


def _s3(monkeypatch, tmp_path, fake) -> tuple[Settings, dict]:
    seen = {}

    def client(service, **kw):
        seen.update(kw, service=service)
        return fake

    monkeypatch.setattr("boto3.client", client)
    s = Settings(home=tmp_path, storage="s3", s3_port=30000, lake_bucket="lake-b", mlflow_bucket="mlflow-b")
    return s, seen


def test_s3_ok_when_both_buckets_exist_and_the_client_is_pointed_at_the_endpoint(monkeypatch, tmp_path):
    s, seen = _s3(monkeypatch, tmp_path, FakeS3(["mlflow-b", "lake-b", "other"]))
    out = health.check_s3(s)
    assert out == {"ok": True, "endpoint": "http://127.0.0.1:30000", "buckets": ["lake-b", "mlflow-b", "other"]}
    assert seen["service"] == "s3" and seen["endpoint_url"] == "http://127.0.0.1:30000"
    assert seen["config"].retries["max_attempts"] == 1  # a health check answers fast, it does not retry


def test_s3_names_the_missing_buckets(monkeypatch, tmp_path):
    s, _ = _s3(monkeypatch, tmp_path, FakeS3(["lake-b"]))
    out = health.check_s3(s)
    assert out["ok"] is False and out["error"] == "missing bucket(s): mlflow-b"
    out = health.check_s3(s, buckets=["lake-b", "x", "y"])
    assert out["error"] == "missing bucket(s): x, y"
    assert health.check_s3(s, buckets=[])["ok"] is True


def test_s3_counts_a_bucket_these_keys_may_not_touch_and_uses_the_given_keys(monkeypatch, tmp_path):
    from botocore.exceptions import ClientError

    class Scoped(FakeS3):  # a least-privilege identity: lists only its buckets
        def head_bucket(self, Bucket):
            code = "403" if Bucket == "mlflow-b" else "404"
            raise ClientError({"Error": {"Code": code, "Message": ""}}, "HeadBucket")

    s, seen = _s3(monkeypatch, tmp_path, Scoped(["lake-b"]))
    assert health.check_s3(s, auth=("rtml-airflow", "pw"))["ok"] is True
    assert (seen["aws_access_key_id"], seen["aws_secret_access_key"]) == ("rtml-airflow", "pw")
    assert health.check_s3(s, buckets=["lake-b", "gone"])["error"] == "missing bucket(s): gone"


def test_s3_that_fails_says_why(monkeypatch, tmp_path):
    s, _ = _s3(monkeypatch, tmp_path, FakeS3(error=PermissionError("InvalidAccessKeyId")))
    out = health.check_s3(s)
    assert out == {"ok": False, "endpoint": "http://127.0.0.1:30000", "error": "PermissionError: InvalidAccessKeyId"}


# --- MLflow ---------------------------------------------------------------------------------------------
def test_mlflow_ok_after_health_and_a_registry_search(http_stub, tmp_path):
    http_stub.route("GET", "/health", (200, "OK"))
    http_stub.route("GET", "/api/2.0/mlflow/registered-models/search", (200, {"registered_models": []}))
    s = Settings(home=tmp_path, mlflow_tracking_uri=http_stub.url + "/")
    assert health.check_mlflow(s) == {"ok": True, "url": http_stub.url}
    assert http_stub.paths() == ["/health", "/api/2.0/mlflow/registered-models/search"]
    assert http_stub.requests[1].query == "max_results=1"


def test_mlflow_unhealthy_is_reported_without_the_registry_call(http_stub, tmp_path):
    http_stub.route("GET", "/health", (503, "starting"))
    out = health.check_mlflow(Settings(home=tmp_path, mlflow_tracking_uri=http_stub.url))
    assert out == {"ok": False, "url": http_stub.url, "error": "/health answered 503"}
    assert http_stub.paths() == ["/health"]


def test_mlflow_registry_failure_quotes_the_answer(http_stub, tmp_path):
    http_stub.route("GET", "/health", (200, "OK"))
    http_stub.route("GET", "/api/2.0/mlflow/registered-models/search", (500, "x" * 500))
    out = health.check_mlflow(Settings(home=tmp_path, mlflow_tracking_uri=http_stub.url))
    assert out["ok"] is False
    assert out["error"] == "registry search answered 500: " + "x" * 200  # cut to 200 characters


def test_mlflow_unreachable(refused_url, tmp_path):
    out = health.check_mlflow(Settings(home=tmp_path, mlflow_tracking_uri=refused_url))
    assert out["ok"] is False and out["url"] == refused_url and out["error"].startswith("ConnectError")


# --- serving endpoint -----------------------------------------------------------------------------------
@pytest.mark.parametrize(("health_status", "ready_status", "ok", "ready", "detail"), [
    (200, 200, True, True, "model loaded"),
    (200, 503, True, False, "no champion loaded yet (approve a version)"),
    (500, 503, False, False, "no champion loaded yet (approve a version)"),
])
def test_serve_liveness_and_readiness(http_stub, tmp_path, health_status, ready_status, ok, ready, detail):
    http_stub.route("GET", "/health", (health_status, {}))
    http_stub.route("GET", "/ready", (ready_status, {}))
    out = health.check_serve(Settings(home=tmp_path, serve_url=http_stub.url))
    assert out == {"ok": ok, "ready": ready, "detail": detail}


def test_serve_unreachable(refused_url, tmp_path):
    out = health.check_serve(Settings(home=tmp_path, serve_url=refused_url))
    assert out["ok"] is False and out["error"].startswith("ConnectError")


# --- Kafka ----------------------------------------------------------------------------------------------
def _admin(monkeypatch, metadata=None, error=None):
    import confluent_kafka.admin

    made = []

    class Admin:
        def __init__(self, conf):
            made.append(conf)

        def list_topics(self, timeout):
            made.append(timeout)
            if error:
                raise error
            return metadata

    monkeypatch.setattr(confluent_kafka.admin, "AdminClient", Admin)
    return made


def test_kafka_counts_brokers_and_user_topics(monkeypatch, settings):
    md = SimpleNamespace(brokers={1: object()}, topics={"events": 1, "labels": 1, "__consumer_offsets": 1})
    made = _admin(monkeypatch, md)
    out = health.check_kafka(settings, timeout=1.5)
    assert out == {"ok": True, "bootstrap": "broker-a:9092,broker-b:9092", "brokers": 1, "topics": 2}
    assert made == [{"bootstrap.servers": "broker-a:9092,broker-b:9092"}, 1.5]


def test_kafka_without_a_broker_is_not_ok(monkeypatch, settings):
    _admin(monkeypatch, SimpleNamespace(brokers={}, topics={}))
    assert health.check_kafka(settings)["ok"] is False


def test_kafka_that_fails_says_why(monkeypatch, settings):
    _admin(monkeypatch, error=RuntimeError("KafkaError{code=_TRANSPORT}"))
    out = health.check_kafka(settings)
    assert out == {"ok": False, "bootstrap": "broker-a:9092,broker-b:9092", "error": "RuntimeError: KafkaError{code=_TRANSPORT}"}


# --- Airflow --------------------------------------------------------------------------------------------
def test_airflow_healthy_when_every_component_is(http_stub, tmp_path):
    parts = {"metadatabase": {"status": "healthy"}, "scheduler": {"status": "healthy", "latest_scheduler_heartbeat": "t"},
             "triggerer": {"status": "healthy"}, "dag_processor": {"status": "healthy"}}
    http_stub.route("GET", "/api/v2/monitor/health", (200, parts))
    out = health.airflow_health(Settings(home=tmp_path, airflow_url=http_stub.url + "/"))
    assert out["ok"] is True and out["url"] == http_stub.url
    assert out["components"] == {k: "healthy" for k in parts}


def test_airflow_one_unhealthy_or_silent_component_is_not_ok(http_stub, tmp_path):
    http_stub.route("GET", "/api/v2/monitor/health", (200, {
        "metadatabase": {"status": "healthy"}, "scheduler": {"status": "unhealthy"}, "triggerer": None,
        "dag_processor": {}, "version": "3.3.0"}))
    out = health.airflow_health(Settings(home=tmp_path, airflow_url=http_stub.url))
    assert out["ok"] is False
    # A component Airflow reports without a status counts as not healthy; non-dict entries are not components.
    assert out["components"] == {"metadatabase": "healthy", "scheduler": "unhealthy", "dag_processor": None}


@pytest.mark.parametrize(("answer", "error"), [((500, "boom"), "HTTPStatusError"), ((200, "<html>"), "JSONDecodeError")])
def test_airflow_error_answers(http_stub, tmp_path, answer, error):
    http_stub.route("GET", "/api/v2/monitor/health", answer)
    out = health.airflow_health(Settings(home=tmp_path, airflow_url=http_stub.url))
    assert out["ok"] is False and out["error"].startswith(error)


def test_airflow_unreachable(refused_url, tmp_path):
    out = health.airflow_health(Settings(home=tmp_path, airflow_url=refused_url))
    assert out["ok"] is False and out["error"].startswith("ConnectError")
