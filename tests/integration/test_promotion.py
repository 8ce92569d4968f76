"""Approval, promotion, rejection and rollback against the real MLflow server and a real endpoint.

One ``rtml serve`` process for the module, on the session's serving port and token (what the
promotion DAG and the CLI use by default). Tests run in file order and share the registry state.
The endpoint runs with ``RTML_TEST_SKEW=1``: a ``SkewedModel`` version answers differently there
than offline (see ``_skewed.py``), which the live smoke check of ``rtml_promote`` must catch.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _serving import GATES, ServeProcess, credit_rows, register, set_gates, spec_for, unique_name

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def env(mlflow_settings, tmp_path_factory):
    from rtml.registry.promotion import approve

    name = unique_name("promo")
    spec = spec_for(name)
    v1 = register(mlflow_settings, spec, seed=1)
    approve(name, v1, by="first-approver")
    os.environ["RTML_TEST_SKEW"] = "1"  # only the endpoint process sees it
    try:
        server = ServeProcess(
            mlflow_settings, name, tmp_path_factory.mktemp("serve"),
            port=mlflow_settings.serve_port, token=mlflow_settings.resolved_serve_token(),
        ).start()
    finally:
        del os.environ["RTML_TEST_SKEW"]
    server.wait_version(v1)
    yield {"settings": mlflow_settings, "name": name, "spec": spec, "server": server, "v1": v1}
    server.stop()


def rtml(*args: str, user: str = "cli-user") -> subprocess.CompletedProcess:
    env = {**os.environ, "MLFLOW_TRACKING_USERNAME": user}
    # The installed entry point (``python -m rtml.cli`` would load rtml.cli twice: __main__ and rtml.cli).
    return subprocess.run([str(Path(sys.executable).parent / "rtml"), *args], capture_output=True, text=True, env=env,
                          timeout=180)


def one_record():
    from rtml.serve.source import frame_to_records
    from rtml.spec import load_spec

    raw, _ = credit_rows()
    return frame_to_records(raw[load_spec().feature_names].head(1))[0]


def served_version(server) -> str:
    with server.client() as c:
        r = server.predict(c, one_record())
        assert r.status_code == 200, r.text
        return r.json()["version"]


def decisions(name: str, version: str | None = None) -> list[dict]:
    from rtml.registry.audit import entries

    return [e for e in entries() if e["model"] == name and (version is None or e["version"] == version)]


def who(entry: dict) -> str:
    """The person a decision was made for (the acting identity when they are the same)."""
    return entry["on_behalf_of"] or entry["actor"]


def wait_refused(server, version: str, reason: str, timeout: float = 20) -> dict:
    deadline = time.monotonic() + timeout
    ready: dict = {}
    while time.monotonic() < deadline:
        with server.client() as c:
            ready = c.get("/ready").json()
        got = (ready.get("refused") or {}).get("champion") or {}
        if got.get("version") == version and got.get("reason") == reason:
            return ready
        time.sleep(0.3)
    raise AssertionError(f"version {version} not refused for {reason}: {ready}\n{server.log_tail()}")


def test_cli_refuses_a_version_without_passing_gates(env):
    from rtml.names import CHAMPION
    from rtml.registry.client import alias_version, mlflow_client
    from rtml.registry.promotion import PromotionError, promote

    name, settings = env["name"], env["settings"]
    v = register(settings, env["spec"], seed=5, gates="passed")
    set_gates(settings, name, v, {"gate.fairness": "failed"})
    client = mlflow_client()
    client.delete_model_version_tag(name, v, "gate.drift")  # a gate that never ran
    r = rtml("approve", name, v)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "cannot become champion" in r.stderr
    assert "gate.fairness=failed" in r.stderr and "gate.drift=missing" in r.stderr
    with pytest.raises(PromotionError, match="gate.fairness=failed"):
        promote(name, v, approver="someone")
    assert alias_version(client, name, CHAMPION) == env["v1"]
    assert "approval" not in (client.get_model_version(name, v).tags or {})
    assert served_version(env["server"]) == env["v1"]


def test_cli_approve_deploys_within_seconds_and_records_who(env):
    from rtml.names import CHAMPION
    from rtml.names import PREVIOUS_CHAMPION as PREVIOUS
    from rtml.registry.client import alias_version, mlflow_client
    from rtml.registry.promotion import audit_trail

    name, server = env["name"], env["server"]
    v2 = register(env["settings"], env["spec"], seed=2)
    env["v2"] = v2
    r = rtml("approve", name, v2, "--json", user="alice")
    assert r.returncode == 0, r.stderr
    # The CLI notified the endpoint: it already answers with the new version.
    assert served_version(server) == v2
    client = mlflow_client()
    assert alias_version(client, name, CHAMPION) == v2
    assert alias_version(client, name, PREVIOUS) == env["v1"]
    tags = client.get_model_version(name, v2).tags
    assert tags["approval"] == "approved" and tags["approval.by"] == "alice" and tags["approval.at"]
    assert tags["promoted.previous"] == env["v1"]
    trail = audit_trail(client, name, v2)
    assert any("approved by alice" in line for line in trail)
    assert any("promoted to champion" in line for line in trail)
    # The record: the decision log in the lake, with who (the configured identity) for whom.
    got = decisions(name, v2)
    assert [e["action"] for e in got][:3] == ["gate", "approval", "promotion"]
    promo = got[2]
    assert promo["from_version"] == env["v1"] and who(promo) == "alice" and promo["details"]["forced"] is False
    assert (promo["actor"], promo["actor_source"]) == ("alice", "mlflow-username")  # no MLflow auth here


def test_endpoint_refuses_a_champion_that_failed_forged_or_was_not_approved(env):
    """Setting the alias by hand (one click in the MLflow UI) deploys nothing the gates or a person did not pass."""
    from support.webhooks import webhook_paused

    name, server, v2, settings = env["name"], env["server"], env["v2"], env["settings"]
    # The endpoint's own defence: with the webhook down, nothing undoes the hand-set alias.
    with webhook_paused(settings):
        _hand_set_champions(env, name, server, v2, settings)


def _hand_set_champions(env, name, server, v2, settings) -> None:
    from rtml.names import CHAMPION
    from rtml.registry.client import mlflow_client

    client = mlflow_client()
    failed = {**{g: "passed" for g in GATES}, "gate.fairness": "failed", "gate.decision": "failed"}
    vf = register(settings, env["spec"], seed=21, gates=failed)
    client.set_model_version_tag(name, vf, "approval", "approved")
    client.set_registered_model_alias(name, CHAMPION, vf)
    ready = wait_refused(server, vf, "gates")
    assert ready["ready"] is True and ready["version"] == v2
    assert "gate.fairness=failed" in ready["refused"]["champion"]["error"]
    with server.client() as c:
        metrics = c.get("/metrics").text
    assert f'rtml_model_refused{{alias="champion",reason="gates",version="{vf}"}} 1.0' in metrics
    assert served_version(server) == v2
    # Editing the tags into a pass does not help: the evaluator's signature no longer matches.
    for g in ("gate.fairness", "gate.decision"):
        client.set_model_version_tag(name, vf, g, "passed")
    wait_refused(server, vf, "signature")
    assert served_version(server) == v2
    # A version that passed (signed) but nobody approved: refused, until a person approves it.
    vu = register(settings, env["spec"], seed=22)
    client.set_registered_model_alias(name, CHAMPION, vu)
    wait_refused(server, vu, "approval")
    assert served_version(server) == v2
    client.set_model_version_tag(name, vu, "approval", "approved")
    server.wait_version(vu, timeout=30)  # the poller follows without a reload push
    with server.client() as c:
        assert "refused" not in c.get("/ready").json()
        assert 'rtml_model_refused{alias="champion"' not in c.get("/metrics").text
    client.set_registered_model_alias(name, CHAMPION, v2)
    server.wait_version(v2, timeout=30)
    refusals = [e for e in decisions(name, vf) if e["action"] == "refusal"]
    assert {e["details"]["code"] for e in refusals} >= {"gates", "signature"}
    assert any(e["action"] == "reload" and e["from_version"] == v2 for e in decisions(name, vu))
    # Clean up what a person would: vu stays approved but is not the challenger any more.
    client.delete_registered_model_alias(name, "challenger")


def test_challenger_is_shadow_scored_then_rejected_and_never_served(env):
    from rtml.names import CHALLENGER
    from rtml.registry.client import alias_version, mlflow_client
    from rtml.registry.promotion import PromotionError, promote

    name, server, v2 = env["name"], env["server"], env["v2"]
    v3 = register(env["settings"], env["spec"], seed=3)
    client = mlflow_client()
    client.set_registered_model_alias(name, CHALLENGER, v3)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and (server.info().get("shadow") or {}).get("version") != v3:
        time.sleep(0.3)
    assert server.info()["shadow"]["version"] == v3
    r = rtml("reject", name, v3, "--reason", "worse on young applicants", user="bob")
    assert r.returncode == 0, r.stderr
    assert alias_version(client, name, CHALLENGER) is None
    for _ in range(4):  # a few poll rounds: never served
        time.sleep(1.0)
        assert served_version(server) == v2
    assert server.info()["shadow"] is None
    with pytest.raises(PromotionError, match="rejected by bob"):
        promote(name, v3)
    assert client.get_model_version(name, v3).tags["approval.reason"] == "worse on young applicants"
    rejection = [e for e in decisions(name, v3) if e["action"] == "rejection"]
    assert rejection and who(rejection[-1]) == "bob" and "young" in rejection[-1]["reason"]


def test_only_the_newer_challenger_is_promoted_unless_forced(env):
    from rtml.registry.promotion import (
        CHALLENGER,
        CHAMPION,
        PromotionError,
        alias_version,
        mlflow_client,
        promote,
    )

    name, settings, v2 = env["name"], env["settings"], env["v2"]
    client = mlflow_client()
    va = register(settings, env["spec"], seed=31)
    vb = register(settings, env["spec"], seed=32)  # the newer challenger
    assert alias_version(client, name, CHALLENGER) == vb
    # An older waiting version: refused, and nothing is recorded on it.
    r = rtml("approve", name, va)
    assert r.returncode == 2 and "not the current challenger" in r.stderr, r.stderr
    assert "approval" not in client.get_model_version(name, va).tags
    # A withdrawn approval is never written back.
    client.set_model_version_tag(name, vb, "approval", "approved")
    client.delete_model_version_tag(name, vb, "approval")
    with pytest.raises(PromotionError, match="not approved"):
        promote(name, vb, approver="someone")
    assert "approval" not in client.get_model_version(name, vb).tags
    assert alias_version(client, name, CHAMPION) == v2
    # A challenger older than the champion would roll production back.
    client.set_registered_model_alias(name, CHALLENGER, env["v1"])
    r = rtml("approve", name, env["v1"])
    assert r.returncode == 2 and "not newer than the champion" in r.stderr, r.stderr
    # --force needs a reason, and the forced promotion is recorded with it.
    r = rtml("approve", name, va, "--force")
    assert r.returncode == 2 and "--reason" in r.stderr
    r = rtml("approve", name, va, "--force", "--reason", "hotfix for incident 7", user="carol")
    assert r.returncode == 0, r.stderr
    assert alias_version(client, name, CHAMPION) == va
    assert client.get_model_version(name, va).tags["promoted.forced"] == "hotfix for incident 7"
    promo = [e for e in decisions(name, va) if e["action"] == "promotion"][-1]
    assert promo["details"]["forced"] is True and "hotfix for incident 7" in promo["reason"]
    assert promo["from_version"] == v2 and who(promo) == "carol"
    # Back to v2 (va's previous champion) for the next tests.
    r = rtml("rollback", name, "--reason", "incident over")
    assert r.returncode == 0, r.stderr
    assert alias_version(client, name, CHAMPION) == v2
    env["server"].wait_version(v2, timeout=30)
    client.delete_registered_model_alias(name, CHALLENGER)


def test_cli_rollback_restores_the_previous_version(env):
    from rtml.names import CHAMPION
    from rtml.names import PREVIOUS_CHAMPION as PREVIOUS
    from rtml.registry.client import alias_version, mlflow_client

    name, server = env["name"], env["server"]
    r = rtml("rollback", name, "--reason", "drill", user="carol")
    assert r.returncode == 0, r.stderr
    client = mlflow_client()
    assert alias_version(client, name, CHAMPION) == env["v1"]
    assert alias_version(client, name, PREVIOUS) is None  # v1 was the first champion
    assert served_version(server) == env["v1"]
    assert client.get_model_version(name, env["v2"]).tags["rolled_back.by"] == "carol"
    r = rtml("rollback", name)
    assert r.returncode == 2 and "nothing to roll back" in r.stderr
    # Put v2 back for the next tests (idempotent promote of the current champion changes nothing);
    # v2 is no longer the challenger: re-promoting it takes --force (recorded).
    from rtml.registry.promotion import PromotionError, promote

    assert promote(name, env["v1"])["changed"] is False
    with pytest.raises(PromotionError, match="not the current challenger"):
        promote(name, env["v2"], approver="alice")
    promote(name, env["v2"], approver="alice", force=True, reason="rollback drill over")
    server.wait_version(env["v2"], timeout=30)
    rb = [e for e in decisions(name, env["v1"]) if e["action"] == "rollback"][-1]
    assert rb["from_version"] == env["v2"] and rb["reason"] == "drill" and who(rb) == "carol"


def test_rollback_never_goes_to_a_rejected_version(env):
    from rtml.registry.promotion import (
        CHAMPION,
        PREVIOUS,
        PromotionError,
        alias_version,
        mlflow_client,
        reject,
        rollback,
    )

    name, v1, v2 = env["name"], env["v1"], env["v2"]
    client = mlflow_client()
    assert alias_version(client, name, CHAMPION) == v2 and alias_version(client, name, PREVIOUS) == v1
    reject(name, v1, by="dan", reason="found a leak in its features")
    with pytest.raises(PromotionError, match="rejected"):
        rollback(name, by="test")
    # Editing the tag back does not undo a rejection: the decision log has it.
    client.set_model_version_tag(name, v1, "approval", "approved")
    with pytest.raises(PromotionError, match="decision log"):
        rollback(name, by="test")
    assert alias_version(client, name, CHAMPION) == v2


def test_approval_trigger_fires_on_the_tag_and_times_out_cleanly(env):
    from rtml.registry.client import mlflow_client
    from rtml.registry.triggers import ApprovalTrigger

    name, settings = env["name"], env["settings"]
    v = register(settings, env["spec"], seed=4)
    client = mlflow_client()

    async def first_event(trigger):
        async for event in trigger.run():
            return event.payload

    async def approve_later():
        await asyncio.sleep(1.5)
        await asyncio.to_thread(client.set_model_version_tag, name, v, "approval.by", "dora")
        await asyncio.to_thread(client.set_model_version_tag, name, v, "approval", "Approved ")

    async def scenario():
        trig = ApprovalTrigger(name, v, settings.mlflow_tracking_uri, deadline=time.time() + 60, poll_interval=0.5)
        event, _ = await asyncio.gather(first_event(trig), approve_later())
        return event

    event = asyncio.run(scenario())
    assert event["status"] == "approved" and event["by"] == "dora" and event["version"] == v
    # Round trip through serialize(), as the triggerer does.
    cls_path, kwargs = ApprovalTrigger(name, v, settings.mlflow_tracking_uri, time.time() + 1).serialize()
    assert cls_path == "rtml.registry.triggers.ApprovalTrigger"
    v_pending = register(settings, env["spec"], seed=6)
    kwargs.update(version=v_pending, poll_interval=0.3)
    timed_out = asyncio.run(first_event(ApprovalTrigger(**kwargs)))
    assert timed_out["status"] == "timeout"
    missing = asyncio.run(first_event(ApprovalTrigger(name, "9999", settings.mlflow_tracking_uri, time.time() + 30, 0.5)))
    assert missing["status"] == "missing"
    from rtml.registry.promotion import approval_decision

    assert approval_decision(name, v) == "approved" and approval_decision(name, v_pending) is None


def test_promotion_dag_parses_with_the_expected_flow():
    from airflow.dag_processing.dagbag import DagBag

    from rtml.settings import get_settings

    bag = DagBag(str(get_settings().home.parent / "nonexistent"))  # no folder scan
    bag.process_file(os.path.join(os.path.dirname(__file__), "..", "..", "dags", "rtml_promote.py"))
    assert not bag.import_errors, bag.import_errors
    dag = bag.dags["rtml_promote"]
    ups = {t.task_id: sorted(t.upstream_task_ids) for t in dag.tasks}
    assert ups["wait_for_approval"] == ["target"]
    assert "wait_for_approval" in ups["promote"] and ups["reload"] == ["promote"]
    assert set(ups["rollback"]) >= {"reload", "smoke_check"}
    assert dag.get_task("rollback").trigger_rule == "one_failed"
    # A run waiting for a person must not hold up other challengers; promotion itself takes a lease.
    assert dag.max_active_runs > 1


def _task_state(airflow_api, run_id: str, task_id: str) -> str | None:
    for ti in airflow_api.task_instances("rtml_promote", run_id):
        if ti["task_id"] == task_id:
            return ti["state"]
    return None


def _wait_task(airflow_api, run_id: str, task_id: str, states: tuple[str, ...], timeout: float = 180) -> str:
    deadline = time.monotonic() + timeout
    state = None
    while time.monotonic() < deadline:
        state = _task_state(airflow_api, run_id, task_id)
        if state in states:
            return state
        if airflow_api.run_state("rtml_promote", run_id) in ("success", "failed"):
            break
        time.sleep(1)
    raise AssertionError(f"{task_id} is {state}, not {states}:\n{airflow_api.explain('rtml_promote', run_id)}")


def test_promotion_dag_deploys_on_approval_and_nothing_on_rejection(env, airflow_api):
    """The real DAG in Airflow: the wait is deferred (triggerer), approval in MLflow deploys, rejection does not."""
    from rtml.names import CHAMPION
    from rtml.registry.client import alias_version, mlflow_client

    name, server = env["name"], env["server"]
    client = mlflow_client()
    before = alias_version(client, name, CHAMPION)
    v_ok = register(env["settings"], env["spec"], seed=11)
    run_ok = airflow_api.trigger("rtml_promote", {"name": name, "version": v_ok})
    # The wait holds no worker slot: the task is deferred to the triggerer.
    _wait_task(airflow_api, run_ok, "wait_for_approval", ("deferred",))
    # A run waiting for a person holds up no other run: a second one (a version that does not
    # exist) ends on its own while the first still waits. (Already unpaused by the first trigger.)
    run_no = airflow_api.trigger("rtml_promote", {"name": name, "version": "0"}, unpause=False)
    assert airflow_api.wait("rtml_promote", run_no, timeout=300) == "failed"
    assert _task_state(airflow_api, run_ok, "wait_for_approval") == "deferred"
    assert served_version(server) == before
    # A person takes minutes; give the deferring workloads a moment to be reaped (see rtml.registry.triggers).
    time.sleep(5)
    # What a person does in the MLflow UI: tags on the model version.
    client.set_model_version_tag(name, v_ok, "approval.by", "frank")
    client.set_model_version_tag(name, v_ok, "approval", "approved")
    approved_at = time.monotonic()
    # Measured, not asserted (timing under load is no test): the webhook wakes the deferred wait.
    while served_version(server) != v_ok and time.monotonic() - approved_at < 300:
        if airflow_api.run_state("rtml_promote", run_ok) in ("success", "failed"):
            break
        time.sleep(0.05)
    print(f"\nrtml_promote: approval tag -> served by the endpoint in {time.monotonic() - approved_at:.2f} s")
    state = airflow_api.wait("rtml_promote", run_ok, timeout=300)
    assert state == "success", airflow_api.explain("rtml_promote", run_ok)
    assert served_version(server) == v_ok, server.info()
    # Deployed by the wait itself (in the triggerer): the promote and reload tasks only took it over,
    # with no second record and no second reload.
    for task_id, key in (("promote", "deployed_at_approval"), ("reload", "reloaded_at_approval")):
        r = airflow_api.get(f"/api/v2/dags/rtml_promote/dagRuns/{run_ok}/taskInstances/{task_id}/xcomEntries/return_value")
        assert r.status_code == 200 and key in str(r.json()["value"]), (task_id, r.text)
    actions = [e["action"] for e in decisions(name, v_ok)]
    assert actions.count("approval") == 1 and actions.count("promotion") == 1, actions
    assert alias_version(client, name, CHAMPION) == v_ok
    tags = client.get_model_version(name, v_ok).tags
    assert tags["promoted.by"] == "frank" and tags["promoted.previous"] == before
    assert [e["action"] for e in decisions(name, v_ok)][1:3] == ["approval", "promotion"]
    # A rejection in the MLflow UI: nothing deployed.
    v_no = register(env["settings"], env["spec"], seed=12)
    run_no = airflow_api.trigger("rtml_promote", {"name": name, "version": v_no}, unpause=False)
    _wait_task(airflow_api, run_no, "wait_for_approval", ("deferred",))
    time.sleep(5)
    client.set_model_version_tag(name, v_no, "approval.by", "erin")
    client.set_model_version_tag(name, v_no, "approval", "rejected")
    assert airflow_api.wait("rtml_promote", run_no, timeout=120) == "success", airflow_api.explain("rtml_promote", run_no)
    states = {ti["task_id"]: ti["state"] for ti in airflow_api.task_instances("rtml_promote", run_no)}
    assert states["wait_for_approval"] == "skipped" and states["promote"] == "skipped"
    assert states["rollback"] == "skipped"
    assert served_version(server) == v_ok and alias_version(client, name, CHAMPION) == v_ok


def test_challenger_asset_event_starts_the_promotion(env, airflow_api):
    """What the training DAG does: an rtml_challenger event with {"name", "version"} runs rtml_promote."""
    from rtml.names import CHAMPION
    from rtml.registry.client import alias_version, mlflow_client
    from rtml.spec import load_spec

    name, server = env["name"], env["server"]
    client = mlflow_client()
    v = register(env["settings"], env["spec"], seed=13)
    # Decided before the run starts: the wait returns at once, without deferring.
    client.set_model_version_tag(name, v, "approval.by", "gina")
    client.set_model_version_tag(name, v, "approval", "approved")
    uri = f"rtml://{load_spec().model.registered_name}/challenger"
    assets = airflow_api.get("/api/v2/assets", params={"uri_pattern": uri}).json()["assets"]
    asset_id = next(a["id"] for a in assets if a["uri"] == uri and a["name"] == "rtml_challenger")
    known = {r["dag_run_id"] for r in airflow_api.get("/api/v2/dags/rtml_promote/dagRuns").json()["dag_runs"]}
    r = airflow_api.post("/api/v2/assets/events", json={"asset_id": asset_id, "extra": {"name": name, "version": v}})
    assert r.status_code < 300, r.text
    deadline = time.monotonic() + 120
    run_id = None
    while time.monotonic() < deadline and run_id is None:
        runs = airflow_api.get("/api/v2/dags/rtml_promote/dagRuns").json()["dag_runs"]
        new = [x for x in runs if x["dag_run_id"] not in known and x["run_type"] == "asset_triggered"]
        run_id = new[0]["dag_run_id"] if new else None
        time.sleep(1)
    assert run_id, "no asset-triggered rtml_promote run"
    state = airflow_api.wait("rtml_promote", run_id, timeout=300)
    assert state == "success", airflow_api.explain("rtml_promote", run_id)
    assert alias_version(client, name, CHAMPION) == v
    assert served_version(server) == v
    assert client.get_model_version(name, v).tags["promoted.by"] == "gina"


def test_live_answers_that_differ_from_offline_roll_back_through_the_dag(env, airflow_api):
    """rtml_promote deploys an approved version whose live answers differ from its offline ones
    (the endpoint's process sees another world): the smoke check fails, rollback restores the
    previous champion, the run fails, and the record says why."""
    from _serving import train
    from _skewed import register_skewed

    from rtml.names import CHAMPION
    from rtml.registry.client import alias_version, mlflow_client

    name, server, settings = env["name"], env["server"], env["settings"]
    client = mlflow_client()
    before = alias_version(client, name, CHAMPION)
    _, X = credit_rows()
    vs = register_skewed(settings, env["spec"], train(env["spec"], seed=41), X)
    set_gates(settings, name, vs, "passed")  # signed by the evaluator's key; now the challenger
    client.set_model_version_tag(name, vs, "approval.by", "hana")
    client.set_model_version_tag(name, vs, "approval", "approved")
    run = airflow_api.trigger("rtml_promote", {"name": name, "version": vs}, unpause=False)
    assert airflow_api.wait("rtml_promote", run, timeout=300) == "failed"
    states = {ti["task_id"]: ti["state"] for ti in airflow_api.task_instances("rtml_promote", run)}
    assert states["promote"] == "success" and states["reload"] == "success", states
    assert states["smoke_check"] == "failed" and states["rollback"] == "failed", states
    assert alias_version(client, name, CHAMPION) == before
    server.wait_version(before, timeout=60)
    tags = client.get_model_version(name, vs).tags
    assert tags["rolled_back.by"] == "rtml_promote"
    assert "live scores differ from offline predictions" in tags["rolled_back.reason"]
    rb = [e for e in decisions(name, before) if e["action"] == "rollback"][-1]
    assert rb["from_version"] == vs and "live smoke check" in rb["reason"] and "differ" in rb["reason"]
    assert any(e["action"] == "promotion" for e in decisions(name, vs))


def test_decision_log_verifies_and_a_tampered_copy_does_not(env):
    import json
    import threading

    from rtml.registry import audit
    from rtml.storage import open_store

    r = rtml("audit", "verify", "--json")
    assert r.returncode == 0 and "chain intact" in r.stdout, (r.stdout, r.stderr)
    # The decisions of this session are anchored on their versions in the real registry.
    assert json.loads(r.stdout)["anchors"] > 0, r.stdout
    actions = {e["action"] for e in decisions(env["name"])}
    assert actions >= {"gate", "approval", "rejection", "promotion", "rollback", "reload", "refusal"}, actions
    # Concurrent writers on the S3 server: the conditional create gives each entry its own number.
    store = open_store(f"{env['settings'].lake_uri}/tamper-{env['name']}", env["settings"])
    threads = [threading.Thread(target=lambda k=k: [audit.record("reload", "m", str(i), store=store,
                                                                 details={"w": k}) for i in range(5)])
               for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert audit.verify(store)["ok"] and audit.verify(store)["entries"] == 20
    entry = json.loads(store.get(audit._key(7)))
    entry["actor"] = "mallory"
    store.put(audit._key(7), json.dumps(entry).encode())
    store.delete(audit._key(12))
    out = audit.verify(store)
    assert not out["ok"]
    assert "entry 7: edited (its hash does not match its content)" in out["problems"]
    assert "entry 12: missing (gap in the log)" in out["problems"]
