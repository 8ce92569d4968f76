"""Settings: defaults that work locally, RTML_* overrides, derived URLs, child-process environment."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from rtml.settings import EXAMPLE_SPEC, Settings, get_settings


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No RTML_*/AWS_* variable from the session or the developer's shell."""
    import os

    for name in list(os.environ):
        if name.startswith(("RTML_", "AWS_")):
            monkeypatch.delenv(name)
    return monkeypatch


def test_defaults_work_locally(clean_env, tmp_path):
    clean_env.setenv("RTML_HOME", str(tmp_path))
    s = Settings()
    assert s.home == tmp_path.resolve()
    assert s.storage == "s3"
    assert s.lake_uri == "s3://rtml-lake"
    assert s.s3_endpoint_url == "http://127.0.0.1:8333"
    assert s.mlflow_tracking_uri == "http://127.0.0.1:5000"
    assert s.mlflow_backend_store_uri == f"sqlite:///{tmp_path.resolve() / 'mlflow' / 'mlflow.db'}"
    assert s.airflow_url == "http://127.0.0.1:8080"
    assert s.airflow_db_uri == f"sqlite:///{tmp_path.resolve() / 'airflow' / 'airflow.db'}"
    assert s.mlflow_artifacts_uri == "s3://rtml-mlflow/artifacts"
    assert s.spec == EXAMPLE_SPEC and EXAMPLE_SPEC.is_file()


def test_env_overrides_and_derived_urls(clean_env, tmp_path):
    clean_env.setenv("RTML_HOME", str(tmp_path))
    clean_env.setenv("RTML_MLFLOW_PORT", "5123")
    clean_env.setenv("RTML_AIRFLOW_PORT", "8123")
    clean_env.setenv("RTML_S3_PORT", "9123")
    clean_env.setenv("RTML_HOST", "127.0.0.2")
    s = Settings()
    assert s.mlflow_tracking_uri == "http://127.0.0.2:5123"
    assert s.airflow_url == "http://127.0.0.2:8123"
    assert s.s3_endpoint_url == "http://127.0.0.2:9123"


def test_explicit_uris_win_over_derived(clean_env, tmp_path):
    clean_env.setenv("RTML_HOME", str(tmp_path))
    clean_env.setenv("RTML_MLFLOW_TRACKING_URI", "http://mlflow:5000")
    clean_env.setenv("RTML_MLFLOW_BACKEND_STORE_URI", "postgresql://u@db/mlflow")
    clean_env.setenv("RTML_AIRFLOW_DB_URI", "postgresql://u@db/airflow")
    s = Settings()
    assert s.mlflow_tracking_uri == "http://mlflow:5000"
    assert s.mlflow_backend_store_uri == "postgresql://u@db/mlflow"
    assert s.airflow_db_uri == "postgresql://u@db/airflow"


def test_local_storage_uses_folders(clean_env, tmp_path):
    clean_env.setenv("RTML_HOME", str(tmp_path))
    clean_env.setenv("RTML_STORAGE", "local")
    s = Settings()
    assert s.lake_uri == str(tmp_path.resolve() / "lake")
    assert s.mlflow_artifacts_uri == str(tmp_path.resolve() / "mlflow" / "artifacts")


@pytest.mark.parametrize(
    ("name", "value"),
    [("RTML_STORAGE", "ftp"), ("RTML_MLFLOW_PORT", "not-a-port"), ("RTML_INGEST_INTERVAL_MINUTES", "0")],
)
def test_bad_values_name_the_field(clean_env, tmp_path, name, value):
    clean_env.setenv("RTML_HOME", str(tmp_path))
    clean_env.setenv(name, value)
    with pytest.raises(ValidationError) as err:
        Settings()
    assert name.removeprefix("RTML_").lower() in str(err.value)


def test_credentials_come_from_aws_variables(clean_env, tmp_path):
    clean_env.setenv("RTML_HOME", str(tmp_path))
    s = Settings()
    assert s.s3_access_key == "rtml-local"  # the embedded store's non-secret default
    clean_env.setenv("AWS_ACCESS_KEY_ID", "ak")
    clean_env.setenv("AWS_SECRET_ACCESS_KEY", "sk")
    env = Settings().s3_env()
    assert env["AWS_ACCESS_KEY_ID"] == "ak" and env["AWS_SECRET_ACCESS_KEY"] == "sk"
    assert env["MLFLOW_S3_ENDPOINT_URL"] == env["AWS_ENDPOINT_URL_S3"] == "http://127.0.0.1:8333"


def test_env_round_trips_to_a_child(clean_env, tmp_path):
    """What Airflow tasks receive (settings.env()) rebuilds the same settings."""
    clean_env.setenv("RTML_HOME", str(tmp_path))
    clean_env.setenv("RTML_MLFLOW_PORT", "5999")
    s = Settings()
    env = s.env()
    assert all(k.startswith("RTML_") for k in env)
    for key in list(__import__("os").environ):
        if key.startswith("RTML_"):
            clean_env.delenv(key)
    for key, value in env.items():
        clean_env.setenv(key, value)
    assert Settings().model_dump() == s.model_dump()


def test_get_settings_caches_until_refresh(clean_env, tmp_path):
    clean_env.setenv("RTML_HOME", str(tmp_path / "a"))
    first = get_settings(refresh=True)
    clean_env.setenv("RTML_HOME", str(tmp_path / "b"))
    assert get_settings() is first
    assert get_settings(refresh=True).home == (tmp_path / "b").resolve()
    clean_env.undo()
    get_settings(refresh=True)


def test_serve_token_generated_once_and_private(clean_env, tmp_path):
    clean_env.setenv("RTML_HOME", str(tmp_path))
    s = Settings()
    token = s.resolved_serve_token()
    assert len(token) >= 24
    assert Settings().resolved_serve_token() == token
    assert (Path(tmp_path) / "serve_token").stat().st_mode & 0o077 == 0


def test_serve_token_of_replicas_starting_at_once_is_the_one_in_the_file(clean_env, tmp_path, monkeypatch):
    """Two serving replicas start together: the second one, which saw no file yet, must take the
    token the first wrote, not write its own (it would answer every client with 401)."""
    clean_env.setenv("RTML_HOME", str(tmp_path))
    path = Path(tmp_path) / "serve_token"
    path.write_text("written-by-the-other-replica")
    monkeypatch.setattr(Path, "exists", lambda self: False)  # the file appeared after this check
    assert Settings().resolved_serve_token() == "written-by-the-other-replica"
    assert path.read_text() == "written-by-the-other-replica"


def test_webhook_secret_generated_once_private_and_overridable(clean_env, tmp_path):
    clean_env.setenv("RTML_HOME", str(tmp_path))
    secret = Settings().resolved_webhook_secret()
    path = Path(tmp_path) / "keys" / "webhook_secret"
    assert len(secret) >= 32 and path.read_text() == secret
    assert path.stat().st_mode & 0o077 == 0
    assert Settings().resolved_webhook_secret() == secret  # the stack and the Airflow plugin agree
    clean_env.setenv("RTML_WEBHOOK_SECRET", "from-the-environment")
    assert Settings().resolved_webhook_secret() == "from-the-environment"
    path.write_text("")
    clean_env.delenv("RTML_WEBHOOK_SECRET")
    with pytest.raises(RuntimeError, match="webhook_secret"):
        Settings().resolved_webhook_secret()


def test_temporary_env_sets_for_the_block_and_restores_set_and_unset_values(monkeypatch):
    import os

    from rtml.settings import temporary_env

    monkeypatch.setenv("RTML_T_SET", "before")
    monkeypatch.delenv("RTML_T_UNSET", raising=False)
    with pytest.raises(RuntimeError), temporary_env(RTML_T_SET="inside", RTML_T_UNSET="inside"):
        assert os.environ["RTML_T_SET"] == os.environ["RTML_T_UNSET"] == "inside"
        raise RuntimeError("the block failed")
    assert os.environ["RTML_T_SET"] == "before"
    assert "RTML_T_UNSET" not in os.environ
