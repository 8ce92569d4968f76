"""Shared fixtures: one real local stack per pytest session, on free ports, in a temporary home.

- ``stack`` (session): ``stack.settings`` is the session's ``Settings``; ``stack.ensure("s3")`` starts
  SeaweedFS and creates the buckets, ``ensure("mlflow")`` also an MLflow server (artifacts on S3),
  ``ensure("airflow")`` also Airflow (api-server, scheduler, dag-processor, triggerer) loading the
  repository's ``dags/`` and ``plugins/``. Each returns the Settings. Services start on first use only
  and are all stopped at the end of the session (a leftover process fails the session).
- ``s3_settings``, ``mlflow_settings``, ``airflow_settings``: ``stack.ensure(...)`` for one service.
- ``airflow_api``: an authenticated ``rtml.platform.airflow.AirflowClient`` (``.get/.post/...`` on /api/v2,
  ``trigger(dag_id, conf) -> run_id``, ``wait(dag_id, run_id, timeout) -> state``, ``explain(...)``).

For the whole session, ``RTML_HOME`` points at a temporary folder (no test touches ``~/.rtml``), the
``RTML_*`` ports at free ones, and ``AWS_*`` at the session's S3 server; the ``stack`` fixture also
sets ``MLFLOW_TRACKING_URI``. ``get_settings(refresh=True)`` in a test sees all of it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from rtml.settings import Settings, get_settings


@pytest.fixture(scope="session", autouse=True)
def rtml_session_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """Session-wide RTML_*/AWS_* environment: a temp home and free ports (no service is started)."""
    from support.stack import DERIVED, PORT_BLOCK, session_env

    from rtml.platform.stack import free_port_block

    home = tmp_path_factory.mktemp("rtml-home")
    mp = pytest.MonkeyPatch()
    for name in DERIVED:
        mp.delenv(name, raising=False)
    for key, value in session_env(home, free_port_block(PORT_BLOCK)).items():
        mp.setenv(key, value)
    settings = get_settings(refresh=True)
    mp.setenv("MLFLOW_S3_ENDPOINT_URL", settings.s3_endpoint_url)
    mp.setenv("AWS_ENDPOINT_URL_S3", settings.s3_endpoint_url)
    yield settings
    mp.undo()
    get_settings(refresh=True)


@pytest.fixture(scope="session")
def stack(rtml_session_env: Settings) -> Iterator[object]:
    """The session's local stack; services start on ``ensure``; everything is stopped at the end."""
    from support.stack import TestStack

    settings = get_settings(refresh=True)
    mp = pytest.MonkeyPatch()
    mp.setenv("MLFLOW_TRACKING_URI", settings.mlflow_tracking_uri)
    ts = TestStack(settings)
    try:
        yield ts
    finally:
        left = ts.close()
        mp.undo()
        assert not left, f"processes left running after the stack went down: {left}"


@pytest.fixture(scope="session")
def s3_settings(stack) -> Settings:
    return stack.ensure("s3")


@pytest.fixture(scope="session")
def mlflow_settings(stack) -> Settings:
    return stack.ensure("mlflow")


@pytest.fixture(scope="session")
def airflow_settings(stack) -> Settings:
    return stack.ensure("airflow")


@pytest.fixture(scope="session")
def airflow_api(airflow_settings: Settings) -> Iterator[object]:
    from rtml.platform.airflow import AirflowClient

    client = AirflowClient(airflow_settings)
    try:
        yield client
    finally:
        client.close()


def pytest_report_header(config: pytest.Config) -> str:
    return f"rtml: session stack state under a temp RTML_HOME (pid {os.getpid()})"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # The end-to-end loop on the session stack runs last: it promotes the demo model to champion and
    # starts the session's serving endpoint, which earlier tests do not expect. (The distributed
    # profile's loop stays in its module, on that module's own stack.)
    items.sort(key=lambda item: item.get_closest_marker("e2e") is not None
               and "stack" in getattr(item, "fixturenames", ()))
