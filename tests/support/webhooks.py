"""Pausing rtml's MLflow webhook (rtml.registry.webhooks) for tests of what happens without it."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

# rtml.platform.stack starts MLflow with MLFLOW_WEBHOOK_CACHE_TTL=2: each worker may deliver from a
# webhook list (with its status) up to that old. Waiting past it makes the change seen everywhere.
_CACHE_TTL_SECONDS = 2.0


@contextmanager
def webhook_paused(settings: Any) -> Iterator[None]:
    """The ``rtml`` webhook disabled for the block: a champion set by hand stays set, as when the
    webhook receiver is down, so the endpoint's own refusal is what a test sees."""
    from mlflow import MlflowClient

    from rtml.registry.webhooks import NAME

    client = MlflowClient(settings.mlflow_tracking_uri)
    hooks = [h for h in client.list_webhooks(max_results=100) if h.name == NAME]
    for h in hooks:
        client.update_webhook(h.webhook_id, status="DISABLED")
    time.sleep(_CACHE_TTL_SECONDS + 1.0)
    try:
        yield
    finally:
        for h in hooks:
            client.update_webhook(h.webhook_id, status="ACTIVE")
        time.sleep(_CACHE_TTL_SECONDS + 1.0)
