"""The local stack of one test session (used by the ``stack`` fixture in ``tests/conftest.py``)."""

from __future__ import annotations

from rtml.platform.stack import Stack, StackError, process_family
from rtml.settings import Settings


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
