"""The serving app in-process for unit tests: an in-memory registry, a test client, a record."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any

TOKEN = "unit-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def good_record(spec) -> dict[str, Any]:
    return {
        "Seniority": 9, "Home": "rent", "Time": 60, "Age": 30, "Marital": "married", "Records": "no",
        "Job": "freelance", "Expenses": 73, "Income": 129.0, "Assets": 0.0, "Debt": 0.0, "Amount": 800,
        "Price": 846,
    }


class FakeSource:
    """In-memory registry: alias -> version, version -> a model factory (or an exception)."""

    def __init__(self, spec, models: dict[str, Any], aliases: dict[str, str]) -> None:
        self.spec = spec
        self.models = models
        self.aliases = aliases
        self.loads: list[str] = []

    def resolve(self, alias: str):
        v = self.aliases.get(alias)
        return None if v is None else (v, [a for a, x in self.aliases.items() if x == v])

    def load(self, version: str):
        from rtml.serve.model import LoadedModel, scorer_for_estimator
        from rtml.serve.validation import RecordValidator

        self.loads.append(version)
        m = self.models[version]
        if isinstance(m, Exception):
            raise m
        if isinstance(m, LoadedModel):
            return m
        model = LoadedModel(
            name="credit_risk", version=version, score=scorer_for_estimator(m, self.spec.target.positive),
            validator=RecordValidator(self.spec), samples=[good_record(self.spec)],
        )
        model.enable_fast_path(m, self.spec.target.positive)
        return model


def make_client(spec, source, lake=None, **cfg):
    from starlette.testclient import TestClient

    from rtml.serve.app import create_app
    from rtml.serve.server import ModelServer, ServeConfig

    open_invocations = cfg.pop("open_invocations", False)
    config = ServeConfig(poll_seconds=cfg.pop("poll_seconds", 0.05), log_flush_seconds=0.2, **cfg)
    server = ModelServer(spec, source, config, lake=lake)
    return server, TestClient(create_app(server, TOKEN, open_invocations))


def wait_until(cond, timeout=10.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.02)
    return False


@contextlib.contextmanager
def refusing_puts(store, when: Callable[[str], bool] = lambda key: True, message: str = "store down") -> Iterator[None]:
    """The store refuses (``OSError(message)``) every put of a key ``when`` accepts, until the block ends."""
    put = store.put

    def refusing(key, data):
        if when(key):
            raise OSError(message)
        return put(key, data)

    store.put = refusing
    try:
        yield
    finally:
        store.put = put
