"""A "look now" signal from the webhook receiver to the approval wait of ``rtml_promote``.

The approval wait (``rtml.registry.triggers.ApprovalTrigger``) runs in Airflow's triggerer; the
webhook receiver (``rtml.registry.webhooks``) runs in the api-server, maybe on another host. When the
receiver sees a decision on the current challenger it publishes on a Redis channel named after the
model version; the waiting trigger is subscribed to it and reads the version from MLflow at once,
instead of at its next poll.

The signal carries no authority: it only says "read MLflow now", and the trigger acts on what MLflow
says. A forged or lost signal therefore changes nothing but timing, and polling MLflow stays as the
fallback (every ``fallback_interval`` while subscribed, every ``poll_interval`` when Redis cannot be
reached). The channel is the settings' ``approval_signal_url`` (empty: ``redis_url``; ``off``: none).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rtml.settings import Settings

log = logging.getLogger("rtml.registry.signals")

CHANNEL_PREFIX = "rtml:decision:"
CONNECT_TIMEOUT = 2.0  # seconds: an absent Redis must not hold up the receiver or the wait


def channel(name: str, version: str | int) -> str:
    """The channel of one model version (a waiting run listens to its own version only)."""
    return f"{CHANNEL_PREFIX}{len(name)}:{name}:{version}"  # the length keeps "a:b"+"1" apart from "a"+"b:1"


def signal_url(settings: Settings | None = None) -> str | None:
    if settings is None:
        from rtml.settings import get_settings

        settings = get_settings()
    url = (settings.approval_signal_url or settings.redis_url).strip()
    return None if url.lower() in ("", "off", "none") else url


def publish(name: str, version: str | int, settings: Settings | None = None) -> int | None:
    """Tell the waits on ``name`` ``version`` to look now: how many listened, None if it could not be sent.

    Never raises: a missing signal only means the wait finds the decision at its next poll.
    """
    url = signal_url(settings)
    if url is None:
        return None
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=CONNECT_TIMEOUT, socket_timeout=CONNECT_TIMEOUT)
    try:
        return int(client.publish(channel(name, version), "look"))
    except (redis.RedisError, OSError) as err:
        log.warning("approval signal for %s version %s not sent (the wait polls instead): %s", name, version, err)
        return None
    finally:
        client.close()


class Listener:
    """``async with Listener(url, name, version) as signal: await signal.wait(timeout)``.

    ``subscribed`` is False when Redis cannot be reached (or ``url`` is None): ``wait`` then only
    sleeps, and the caller polls at its short interval.
    """

    def __init__(self, url: str | None, name: str, version: str | int) -> None:
        self.url = url
        self.channel = channel(name, version)
        self.subscribed = False
        self._client: Any = None
        self._pubsub: Any = None

    async def __aenter__(self) -> Listener:
        if self.url is None:
            return self
        try:
            import redis.asyncio as aioredis

            self._client = aioredis.Redis.from_url(self.url, socket_connect_timeout=CONNECT_TIMEOUT)
            self._pubsub = self._client.pubsub(ignore_subscribe_messages=True)
            await asyncio.wait_for(self._pubsub.subscribe(self.channel), CONNECT_TIMEOUT * 2)
            self.subscribed = True
        except Exception as err:  # noqa: BLE001 - no Redis: poll instead
            log.warning("approval signal unavailable (%s); polling MLflow instead", err)
            await self._close()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._close()

    async def _close(self) -> None:
        self.subscribed = False
        for closing in (self._pubsub, self._client):
            if closing is not None:
                try:
                    await closing.aclose()
                except Exception:  # noqa: BLE001 - closing a broken connection
                    log.debug("closing the signal connection failed", exc_info=True)
        self._pubsub = self._client = None

    async def wait(self, timeout: float) -> bool:
        """True as soon as a signal arrives, False after ``timeout`` seconds without one."""
        timeout = max(0.0, timeout)
        if not self.subscribed:
            await asyncio.sleep(timeout)
            return False
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        try:
            while True:
                left = end - loop.time()
                if left <= 0:
                    return False
                message = await self._pubsub.get_message(ignore_subscribe_messages=True, timeout=left)
                if message is not None and message.get("type") == "message":
                    return True
        except Exception as err:  # noqa: BLE001 - Redis went away: fall back to polling
            log.warning("approval signal lost (%s); polling MLflow instead", err)
            await self._close()
            await asyncio.sleep(max(0.0, end - loop.time()))
            return False
