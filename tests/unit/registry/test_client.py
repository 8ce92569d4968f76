"""The MLflow client factory and alias lookup (rtml.registry.client), with a fake MlflowClient:
which URIs the client gets, what ``setup_mlflow`` points the fluent API at, and ``alias_version``."""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INTERNAL_ERROR, INVALID_PARAMETER_VALUE, RESOURCE_DOES_NOT_EXIST

from rtml.registry import client as rc
from rtml.settings import Settings


class FakeClient:
    """Records its URIs; answers ``get_model_version_by_alias`` from a dict of aliases, failing as the
    MLflow server does: an unknown model is RESOURCE_DOES_NOT_EXIST, an unknown alias INVALID_PARAMETER_VALUE."""

    def __init__(self, tracking_uri=None, registry_uri=None, aliases=None):
        self.tracking_uri, self.registry_uri = tracking_uri, registry_uri
        self.aliases = aliases or {}
        self.models = {m for m, _ in self.aliases}
        self.asked: list[tuple[str, str]] = []

    def get_model_version_by_alias(self, name, alias):
        self.asked.append((name, alias))
        if name not in self.models:
            raise MlflowException(f"Registered Model with name={name} not found", RESOURCE_DOES_NOT_EXIST)
        if (name, alias) not in self.aliases:
            raise MlflowException(f"Registered model alias {alias} not found.", INVALID_PARAMETER_VALUE)
        return SimpleNamespace(version=self.aliases[(name, alias)])


@pytest.fixture
def settings(tmp_path) -> Settings:
    return Settings(home=tmp_path, storage="local", mlflow_tracking_uri="http://127.0.0.1:5999",
                    mlflow_experiment="exp-under-test")


def test_client_points_tracking_and_registry_at_the_configured_server(settings, monkeypatch):
    monkeypatch.setattr("mlflow.MlflowClient", FakeClient)
    c = rc.mlflow_client(settings)
    assert isinstance(c, FakeClient)
    assert c.tracking_uri == c.registry_uri == "http://127.0.0.1:5999"


def test_client_without_settings_uses_the_current_ones(settings, monkeypatch):
    monkeypatch.setattr("mlflow.MlflowClient", FakeClient)
    monkeypatch.setattr(rc, "get_settings", lambda: settings)
    assert rc.mlflow_client().tracking_uri == "http://127.0.0.1:5999"


def test_setup_mlflow_points_the_fluent_api_and_the_experiment(settings, monkeypatch):
    import mlflow

    calls: list[tuple[str, str]] = []
    monkeypatch.setattr("mlflow.MlflowClient", FakeClient)
    for fn in ("set_tracking_uri", "set_registry_uri", "set_experiment"):
        monkeypatch.setattr(mlflow, fn, lambda value, _fn=fn: calls.append((_fn, value)))
    monkeypatch.delenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", raising=False)
    c = rc.setup_mlflow(settings)
    assert calls == [("set_tracking_uri", "http://127.0.0.1:5999"), ("set_registry_uri", "http://127.0.0.1:5999"),
                     ("set_experiment", "exp-under-test")]
    assert isinstance(c, FakeClient) and c.registry_uri == "http://127.0.0.1:5999"
    assert os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] == "false"


def test_setup_mlflow_keeps_a_progress_bar_setting_the_user_chose(settings, monkeypatch):
    import mlflow

    monkeypatch.setattr("mlflow.MlflowClient", FakeClient)
    for fn in ("set_tracking_uri", "set_registry_uri", "set_experiment"):
        monkeypatch.setattr(mlflow, fn, lambda value: None)
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "true")
    rc.setup_mlflow(settings)
    assert os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] == "true"


def test_alias_version_is_the_version_as_text():
    fake = FakeClient(aliases={("credit", "champion"): 3, ("credit", "challenger"): "4"})
    assert rc.alias_version(fake, "credit", "champion") == "3"
    assert rc.alias_version(fake, "credit", "challenger") == "4"
    assert fake.asked == [("credit", "champion"), ("credit", "challenger")]


def test_a_missing_alias_or_model_is_none():
    fake = FakeClient(aliases={("credit", "champion"): 3})
    assert rc.alias_version(fake, "credit", "previous_champion") is None
    assert rc.alias_version(fake, "no-such-model", "champion") is None


def test_a_not_found_over_rest_is_none_too():
    from mlflow.exceptions import RestException

    class Rest(FakeClient):
        def get_model_version_by_alias(self, name, alias):
            raise RestException({"error_code": "NOT_FOUND", "message": "no such alias"})

    assert rc.alias_version(Rest(), "credit", "champion") is None


@pytest.mark.parametrize("error", [
    MlflowException("API request to http://127.0.0.1:5999/api/2.0/mlflow/registered-models/alias failed with "
                    "exception HTTPConnectionPool: Max retries exceeded"),  # how MLflow reports a dead server
    MlflowException("Database is locked", INTERNAL_ERROR),  # a server-side failure
    ConnectionError("registry unreachable"),
])
def test_a_registry_that_fails_is_not_taken_for_a_missing_alias(error):
    class Down(FakeClient):
        def get_model_version_by_alias(self, name, alias):
            raise error

    # "No champion" would let a promotion drop previous_champion and a failed deploy skip its rollback.
    with pytest.raises(type(error)) as raised:
        rc.alias_version(Down(), "credit", "champion")
    assert raised.value is error
