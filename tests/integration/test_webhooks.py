"""MLflow registry webhooks against the real stack: MLflow delivers, the Airflow plugin acts.

``rtml stack up`` (the session's ``stack.ensure("airflow")``) registers rtml's webhook. A ``champion``
alias set by hand (``client.set_registered_model_alias``, as in the MLflow UI) on a version whose gates
failed, or whose gate result is unsigned, is moved back to the champion rtml promoted within seconds,
with the refusal in the decision log; an ``approval`` tag set by hand is in the log as soon as it is set.
Each test prints the measured latency (event -> fixed).
"""

from __future__ import annotations

import time

import pytest
from _serving import register, spec_for, unique_name

pytestmark = pytest.mark.integration

DEADLINE = 30.0  # seconds; what is measured is printed (a few seconds expected)


@pytest.fixture(scope="module")
def env(airflow_settings, stack):
    from rtml.registry.client import mlflow_client
    from rtml.registry.promotion import approve

    hook = stack.stack.webhook_status()
    assert hook and hook["ok"], f"stack up did not register the webhook: {hook}"
    name = unique_name("hook")
    spec = spec_for(name)
    v1 = register(airflow_settings, spec, seed=1)
    approve(name, v1, by="first-approver")
    return {"settings": airflow_settings, "name": name, "spec": spec, "v1": v1,
            "client": mlflow_client(airflow_settings)}


def _refusals(name: str, version: str) -> list[dict]:
    from rtml.registry.audit import entries

    return [e for e in entries() if e["model"] == name and e["version"] == version and e["action"] == "refusal"]


def _wait(check, what: str) -> float:
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > DEADLINE:
            raise AssertionError(f"not within {DEADLINE:.0f} s: {what}")
        time.sleep(0.1)
    return time.monotonic() - start


def _hand_set_champion_is_undone(env, version: str, why: str) -> None:
    from rtml.registry.client import alias_version

    client, name, v1 = env["client"], env["name"], env["v1"]
    assert alias_version(client, name, "champion") == v1
    client.set_registered_model_alias(name, "champion", version)  # what the MLflow UI does
    start = time.monotonic()
    latency = _wait(lambda: alias_version(client, name, "champion") == v1, f"champion back on {v1}")
    logged = _wait(lambda: bool(_refusals(name, version)), "the refusal in the decision log")
    print(f"\nwebhook: champion set by hand on {name} v{version} ({why}) reverted to v{v1} in {latency:.2f} s; "
          f"refusal readable in the log after {time.monotonic() - start:.2f} s")
    (refusal,) = _refusals(name, version)
    assert refusal["reason"].startswith(f"champion set outside rtml on version {version}: ")
    assert refusal["reason"].endswith(f"reverted to version {v1}") and why in refusal["reason"]
    assert refusal["details"]["via"] == "mlflow webhook"
    assert logged >= 0
    # It stays there: the revert's own event is a no-op (no loop, no second refusal).
    time.sleep(4)
    assert alias_version(client, name, "champion") == v1 and len(_refusals(name, version)) == 1


def test_a_champion_set_by_hand_on_a_failed_version_is_moved_back(env):
    v2 = register(env["settings"], env["spec"], gates="failed", seed=2)
    _hand_set_champion_is_undone(env, v2, "not every gate passed")


def test_a_champion_set_by_hand_on_an_unsigned_version_is_moved_back(env):
    from rtml.registry.signing import SIGNATURE_TAG

    v3 = register(env["settings"], env["spec"], seed=3)
    env["client"].delete_model_version_tag(env["name"], v3, SIGNATURE_TAG)
    env["client"].set_model_version_tag(env["name"], v3, "approval", "approved")
    _hand_set_champion_is_undone(env, v3, "not signed")


def test_an_approval_tag_set_by_hand_is_in_the_log_at_once(env):
    from rtml.registry.audit import entries

    name, client = env["name"], env["client"]
    v4 = register(env["settings"], env["spec"], seed=4)
    client.set_model_version_tag(name, v4, "approval.by", "dana")
    client.set_model_version_tag(name, v4, "approval", "approved")  # what a person does in the MLflow UI

    def approvals() -> list[dict]:
        return [e for e in entries() if e["model"] == name and e["version"] == v4 and e["action"] == "approval"]

    latency = _wait(lambda: bool(approvals()), "the approval in the decision log")
    print(f"\nwebhook: approval tag on {name} v{v4} in the decision log after {latency:.2f} s "
          "(no wait: `rtml approve` and the receiver share the model's lease)")
    (entry,) = approvals()
    assert entry["on_behalf_of"] == "dana" and entry["details"]["via"] == "MLflow tag (webhook)"
    # The same tag again (or MLflow's retry): still one entry.
    client.set_model_version_tag(name, v4, "approval", "approved")
    time.sleep(6)
    assert len(approvals()) == 1


def test_a_decision_on_the_challenger_wakes_a_listening_wait_at_once(env):
    """The round trip rtml_promote's deferred wait relies on: MLflow -> webhook -> receiver -> Redis."""
    import asyncio

    from rtml.registry.client import alias_version
    from rtml.registry.signals import Listener, signal_url

    name, client = env["name"], env["client"]
    v5 = register(env["settings"], env["spec"], seed=5)
    assert alias_version(client, name, "challenger") == v5

    async def wait_for_signal() -> float:
        async with Listener(signal_url(), name, v5) as signal:
            assert signal.subscribed, "no Redis for the approval signal"
            start = time.monotonic()
            await asyncio.to_thread(client.set_model_version_tag, name, v5, "approval", "approved")
            assert await signal.wait(DEADLINE), f"no signal within {DEADLINE:.0f} s"
            return time.monotonic() - start

    latency = asyncio.run(wait_for_signal())
    print(f"\nwebhook: approval tag on {name} v{v5} (challenger) -> signal to the waiting run in {latency:.2f} s")
