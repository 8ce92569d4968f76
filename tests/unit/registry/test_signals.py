"""The "look now" signal (rtml.registry.signals): naming, settings, and that an absent Redis costs
nothing but speed (the receiver goes on, the wait polls). The round trip through a real Redis and the
real webhook is in tests/integration/test_webhooks.py."""

from __future__ import annotations

import asyncio
import socket

import pytest

from rtml.registry import signals
from rtml.settings import Settings


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_each_model_version_has_its_own_channel():
    names = {signals.channel(n, v) for n, v in [("a:b", "1"), ("a", "b:1"), ("a", "1"), ("a", "11"), ("a1", "1")]}
    assert len(names) == 5 and all(c.startswith(signals.CHANNEL_PREFIX) for c in names)


@pytest.mark.parametrize(("signal", "redis", "want"), [
    ("", "redis://h:1/0", "redis://h:1/0"),
    ("redis://other:2/3", "redis://h:1/0", "redis://other:2/3"),
    ("off", "redis://h:1/0", None),
    ("OFF ", "redis://h:1/0", None),
])
def test_the_signal_url_defaults_to_the_redis_url_and_can_be_off(signal, redis, want):
    assert signals.signal_url(Settings(approval_signal_url=signal, redis_url=redis)) == want


def test_without_redis_publish_says_so_and_the_listener_only_sleeps():
    url = f"redis://127.0.0.1:{_closed_port()}/0"
    assert signals.publish("m", "1", Settings(approval_signal_url=url)) is None
    assert signals.publish("m", "1", Settings(approval_signal_url="off")) is None

    async def listen(u: str | None) -> tuple[bool, bool]:
        async with signals.Listener(u, "m", "1") as signal:
            return signal.subscribed, await signal.wait(0.01)

    assert asyncio.run(listen(url)) == (False, False)
    assert asyncio.run(listen(None)) == (False, False)
