"""A fresh database on the local PostgreSQL server (``scripts/services`` starts it), dropped afterwards."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

PG = os.environ.get("RTML_TEST_POSTGRES", "postgresql://root@127.0.0.1:5432")


@contextmanager
def temporary_database(prefix: str) -> Iterator[str]:
    """Yields the new database's ``postgresql://`` URI; fails (does not skip) when no server answers:
    the integration tests run against the real PostgreSQL that ``scripts/services`` provides."""
    import psycopg2

    try:
        admin = psycopg2.connect(f"{PG}/postgres", connect_timeout=3)
    except psycopg2.OperationalError as err:
        pytest.fail(f"no PostgreSQL at {PG} (scripts/services starts it): {err}")
    admin.autocommit = True
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with admin.cursor() as cur:
        cur.execute(f"CREATE DATABASE {name}")
    try:
        yield f"{PG}/{name}"
    finally:
        with admin.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.close()
