"""The one way to an MLflow client: tracking and registry URIs from the settings.

``mlflow_client`` for registry reads and writes; ``setup_mlflow`` also points the ``mlflow``
module (fluent API: runs, artifacts) at the server and the settings' experiment.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from rtml.settings import Settings, get_settings

if TYPE_CHECKING:
    from mlflow import MlflowClient


def mlflow_client(settings: Settings | None = None) -> MlflowClient:
    from mlflow import MlflowClient

    s = settings or get_settings()
    return MlflowClient(tracking_uri=s.mlflow_tracking_uri, registry_uri=s.mlflow_tracking_uri)


def setup_mlflow(settings: Settings | None = None) -> MlflowClient:
    """Point the mlflow client at the configured server and experiment; returns an MlflowClient."""
    import mlflow

    s = settings or get_settings()
    # Task logs in Airflow are files: progress bars only add noise there.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    mlflow.set_tracking_uri(s.mlflow_tracking_uri)
    mlflow.set_registry_uri(s.mlflow_tracking_uri)
    mlflow.set_experiment(s.mlflow_experiment)
    return mlflow_client(s)


def alias_version(client: MlflowClient, name: str, alias: str) -> str | None:
    """The version an alias points to, or None when the alias (or the model) does not exist."""
    from mlflow.exceptions import MlflowException

    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException as err:
        # Only "not found" means no alias. MLflow also raises MlflowException for an unreachable
        # server or a 5xx; taken as "no champion", a promotion lost its previous_champion and a
        # failed deploy was not rolled back. (The same codes as rtml.serve.source.resolve.)
        if err.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            return None
        raise
