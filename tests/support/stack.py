"""The local stack of one test session (used by the ``stack`` fixture in ``tests/conftest.py``), and
the session's environment (a temporary home, free ports), which the benchmarks that start a stack use too."""

from __future__ import annotations

import os
from pathlib import Path

from rtml.platform.stack import Stack, StackError, process_family
from rtml.settings import Settings, get_settings

# Ports of one session, as offsets of a free block: S3 (+ the 9 SeaweedFS ports after it),
# MLflow, Airflow (+ its 2 log-server ports), serving, Kafka (+ its controller).
S3_PORT, MLFLOW_PORT, AIRFLOW_PORT, SERVE_PORT, KAFKA_PORT, PORT_BLOCK = 0, 10, 11, 14, 15, 17
# Derived URLs/URIs must follow the session's ports, not a value the developer's shell exported.
DERIVED = ("RTML_S3_ENDPOINT_URL", "RTML_MLFLOW_TRACKING_URI", "RTML_AIRFLOW_URL", "RTML_SERVE_URL",
           "RTML_KAFKA_BOOTSTRAP", "RTML_LAKE_URI", "RTML_MLFLOW_BACKEND_STORE_URI", "RTML_AIRFLOW_DB_URI",
           "RTML_DAGS_FOLDER", "RTML_PLUGINS_FOLDER")


def session_env(home: Path, base: int, access_key: str = "rtml-test",
                secret_key: str = "rtml-test-secret") -> dict[str, str]:
    """``RTML_*``/``AWS_*`` of a session in ``home`` on the free port block starting at ``base``."""
    return {
        "RTML_HOME": str(home),
        "RTML_STORAGE": "s3",
        "RTML_S3_PORT": str(base + S3_PORT),
        "RTML_MLFLOW_PORT": str(base + MLFLOW_PORT),
        "RTML_AIRFLOW_PORT": str(base + AIRFLOW_PORT),
        "RTML_SERVE_PORT": str(base + SERVE_PORT),
        "RTML_KAFKA_PORT": str(base + KAFKA_PORT),
        "RTML_MLFLOW_WORKERS": "1",  # two shared cores: one worker (it still serves requests concurrently)
        "AWS_ACCESS_KEY_ID": access_key,
        "AWS_SECRET_ACCESS_KEY": secret_key,
        "AWS_DEFAULT_REGION": "us-east-1",
    }


def use_session_env(home: Path, *unset: str) -> Settings:
    """For a script (a benchmark): this process's environment becomes a session's in ``home`` (also
    ``MLFLOW_TRACKING_URI``), with ``unset`` removed too; returns its settings."""
    from rtml.platform.stack import free_port_block

    for name in (*DERIVED, "MLFLOW_TRACKING_URI", *unset):
        os.environ.pop(name, None)
    os.environ.update(session_env(home, free_port_block(PORT_BLOCK), os.environ.get("AWS_ACCESS_KEY_ID", "rtml-bench"),
                                  os.environ.get("AWS_SECRET_ACCESS_KEY", "rtml-bench-secret")))
    s = get_settings(refresh=True)
    os.environ.update({"MLFLOW_S3_ENDPOINT_URL": s.s3_endpoint_url, "AWS_ENDPOINT_URL_S3": s.s3_endpoint_url,
                       "MLFLOW_TRACKING_URI": s.mlflow_tracking_uri})
    return s


class TestStack:
    """A stack for one test session: services start on first ``ensure`` and stop in ``close``."""

    __test__ = False  # not a pytest test class

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.stack = Stack(settings)
        self.started: set[str] = set()
        self.pids_seen: dict[str, int] = {}
        self.failed: dict[str, str] = {}

    def ensure(self, service: str, timeout: float = 300) -> Settings:
        """Start ``service`` ("s3", "mlflow", "airflow", "serve" or "kafka") and what it needs; return the settings."""
        needed = self.stack.services([service])
        if not set(needed) <= self.started:
            if service in self.failed:
                # Fail fast for every later test instead of waiting for the same timeout again.
                raise StackError(f"{service} failed to start earlier in this session: {self.failed[service]}")
            try:
                self.stack.up(needed, timeout=timeout)
            except Exception as err:
                self.failed[service] = str(err)
                raise
            finally:
                self.pids_seen.update(self.stack.pids_started())
            self.started |= set(needed)
        return self.settings

    def close(self) -> list[str]:
        """Stop everything; return the descriptions of processes still alive (should be none)."""
        import psutil

        # Children of the recorded processes too (uvicorn workers, task runners).
        family = process_family(self.pids_seen.values())
        self.stack.down()
        psutil.wait_procs(family, timeout=10)
        left = []
        for p in family:
            try:
                if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                    left.append(f"{p.pid} {' '.join(p.cmdline()[:3])}")
            except psutil.NoSuchProcess:
                pass
        return left


def distributed_stack(home, workers: int = 2, replicas: int = 2, source: str = "landing"):
    """A :class:`DistributedStack` in ``home`` on a free block of ports, its databases under a unique
    prefix on the test PostgreSQL server (``RTML_TEST_POSTGRES``), ingesting from ``source``;
    nothing is started."""
    import uuid

    from rtml.platform.distributed import DistributedConfig, DistributedStack
    from rtml.platform.stack import free_port_block
    from support.postgres import PG

    base = free_port_block(18)
    settings = Settings(
        home=home, storage="s3", s3_port=base, mlflow_port=base + 10, airflow_port=base + 11,
        serve_port=base + 14, kafka_port=base + 15, mlflow_workers=1, source=source,
    )
    config = DistributedConfig(
        postgres_url=PG, postgres_db_prefix=f"rtmlt_{uuid.uuid4().hex[:8]}", celery_redis_port=base + 17,
        celery_workers=workers, celery_concurrency=1, serve_replicas=replicas,
    )
    return DistributedStack(settings, config)
