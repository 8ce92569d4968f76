"""Faults injected against the REAL services of the session (SeaweedFS, a Redis of our own, MLflow,
Airflow): after each, every produced record is in the lake exactly once, accepted or quarantined.

The scenarios live in ``tests/support/faults.py`` (``benchmarks/faults.py`` runs the same ones);
this module asserts their outcome. The object-store outage lasts ``RTML_FAULT_OUTAGE_SECONDS``
(default 5 here; the benchmark uses 30).
"""

from __future__ import annotations

import os

import pytest
from support.faults import (
    RedisServer,
    assert_conserved,
    fault_mlflow_down,
    fault_redis_restart,
    fault_scheduler_killed,
    fault_store_outage,
    fault_worker_killed,
)

pytestmark = pytest.mark.integration

OUTAGE_SECONDS = float(os.environ.get("RTML_FAULT_OUTAGE_SECONDS", "5"))


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    """A redis-server of this module (the shared one on 6379 is never restarted)."""
    server = RedisServer(tmp_path_factory.mktemp("redis-faults"))
    server.start()
    yield server
    server.stop()


@pytest.mark.parametrize("source", ["landing", "redis"])
@pytest.mark.parametrize("stage", ["data", "manifest"])
def test_worker_killed_between_write_manifest_and_ack(s3_settings, redis_server, source, stage):
    result = fault_worker_killed(s3_settings, source, stage, redis_server)
    print(result.line())
    assert_conserved(result.census, result.name)
    assert result.census.quarantined > 0 and result.census.accepted > 0  # both paths exercised


def test_object_store_unreachable_mid_batch(s3_settings):
    result = fault_store_outage(s3_settings, seconds=OUTAGE_SECONDS)
    print(result.line())
    assert_conserved(result.census, result.name)


def test_redis_restarted_mid_run(s3_settings, redis_server):
    result = fault_redis_restart(s3_settings, redis_server)
    print(result.line())
    assert_conserved(result.census, result.name)


def test_mlflow_down_during_training(mlflow_settings):
    # Asserts inside: no version from the failed run, the lake untouched, exactly one version after.
    result = fault_mlflow_down(mlflow_settings)
    print(result.line())
    assert_conserved(result.census, result.name)


def test_scheduler_killed_mid_run(airflow_settings, airflow_api):
    result = fault_scheduler_killed(airflow_settings, airflow_api)
    print(result.line())
    assert_conserved(result.census, result.name)
