"""MLflow registry webhooks (rtml.registry.webhooks) and their receiver in the Airflow plugin.

- ``verify_delivery``: MLflow's HMAC signature (good, wrong, missing, tampered), stale, future and
  replayed timestamps, and hostile bodies that are correctly signed (not JSON, deep nesting, lone
  surrogates, not UTF-8, too large, wrong shape).
- ``register``: one webhook of that name, created once, then updated.
- ``handle``: a champion set by hand on a version that is not servable goes back to the last
  champion rtml set (or is deleted) and the refusal is in the decision log; rtml's own promotions
  and its own revert are left alone; an ``approval`` tag is recorded once; other events are ignored.
  The registry is in memory (``support.registry.FakeRegistry``), the decision log a local lake, and
  gate results are really signed with a key generated in the test's home.
- ``Dispatcher``: background, in order, a repeated delivery id dropped, a failing event isolated.
- The receiver route ``POST /rtml/hooks/mlflow``: no Airflow login, 401 unless signed and fresh.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from support.registry import FakeRegistry, local_governance

from rtml.names import AUDIT_ANCHOR_TAG, CHALLENGER, CHAMPION
from rtml.registry import webhooks
from rtml.registry.webhooks import (
    SignatureError,
    StaleDelivery,
    WebhookError,
    handle,
    register,
    sign,
    verify_delivery,
)

SECRET = "s3cret-for-tests"
NOW = 1_760_000_000  # a fixed clock: no test depends on the wall clock
GATES = {"gate.quality": "passed", "gate.fairness": "passed", "gate.drift": "passed", "gate.decision": "passed",
         "gate.reasons": "all gates passed", "gate.evaluated_at": "2026-01-01T00:00:00+00:00"}


def delivery(payload: object, secret: str = SECRET, ts: int = NOW, delivery_id: str = "d-1") -> tuple[dict, bytes]:
    body = payload if isinstance(payload, str) else json.dumps(payload)
    headers = {"X-MLflow-Delivery-Id": delivery_id, "X-MLflow-Timestamp": str(ts),
               "X-MLflow-Signature": sign(secret, delivery_id, str(ts), body), "Content-Type": "application/json"}
    return headers, body.encode("utf-8", "surrogatepass")


def event(entity: str, action: str, **data: str) -> dict:
    return {"entity": entity, "action": action, "timestamp": "2026-01-01T00:00:00+00:00", "data": data}


def alias_event(version: str, alias: str = CHAMPION, name: str = "credit") -> dict:
    return event("model_version_alias", "created", name=name, alias=alias, version=version)


def tag_event(version: str, key: str, value: str, name: str = "credit") -> dict:
    return event("model_version_tag", "set", name=name, version=version, key=key, value=value)


# --- verify_delivery ------------------------------------------------------------------------------
def test_a_signed_fresh_delivery_gives_its_payload():
    payload = alias_event("3")
    headers, body = delivery(payload)
    assert verify_delivery(SECRET, headers, body, now=NOW + 5) == payload
    # Header names in any case (a plain dict), and a second signature beside the valid one.
    lower = {k.lower(): v for k, v in headers.items()}
    lower["x-mlflow-signature"] = "v1,AAAA " + headers["X-MLflow-Signature"]
    assert verify_delivery(SECRET, lower, body.decode(), now=NOW) == payload


@pytest.mark.parametrize("change", ["wrong secret", "tampered body", "other delivery id", "other timestamp",
                                    "not base64", "no v1 prefix"])
def test_a_bad_signature_is_refused_with_401(change):
    headers, body = delivery(alias_event("3"), secret="other-secret" if change == "wrong secret" else SECRET)
    if change == "tampered body":
        body = body.replace(b'"3"', b'"4"')
    elif change == "other delivery id":
        headers["X-MLflow-Delivery-Id"] = "d-2"
    elif change == "other timestamp":
        headers["X-MLflow-Timestamp"] = str(NOW - 1)
    elif change == "not base64":
        headers["X-MLflow-Signature"] = "v1,@@@not-base64@@@"
    elif change == "no v1 prefix":
        headers["X-MLflow-Signature"] = headers["X-MLflow-Signature"].removeprefix("v1,")
    with pytest.raises(SignatureError) as err:
        verify_delivery(SECRET, headers, body, now=NOW)
    assert err.value.status == 401 and "X-MLflow-Signature" in str(err.value)


@pytest.mark.parametrize("missing", ["X-MLflow-Signature", "X-MLflow-Timestamp", "X-MLflow-Delivery-Id"])
def test_a_missing_header_is_refused_with_401(missing):
    headers, body = delivery(alias_event("3"))
    del headers[missing]
    with pytest.raises(SignatureError, match=missing) as err:
        verify_delivery(SECRET, headers, body, now=NOW)
    assert err.value.status == 401


def test_no_secret_configured_refuses_everything():
    headers, body = delivery(alias_event("3"), secret="")
    with pytest.raises(SignatureError, match="no webhook secret"):
        verify_delivery("", headers, body, now=NOW)


@pytest.mark.parametrize("stamp", ["", "abc", "-5", "1.5", "1e9", "9" * 40, "١٢٣"])
def test_a_timestamp_that_is_not_unix_seconds_is_refused(stamp):
    headers, body = delivery(alias_event("3"))
    headers["X-MLflow-Timestamp"] = stamp
    with pytest.raises(SignatureError):
        verify_delivery(SECRET, headers, body, now=NOW)


def test_stale_and_future_timestamps_are_refused_even_when_signed():
    headers, body = delivery(alias_event("3"), ts=NOW - 301)
    with pytest.raises(StaleDelivery, match="old") as err:
        verify_delivery(SECRET, headers, body, now=NOW)
    assert err.value.status == 401
    headers, body = delivery(alias_event("3"), ts=NOW + 120)
    with pytest.raises(StaleDelivery, match="future"):
        verify_delivery(SECRET, headers, body, now=NOW)
    # Within the bounds: accepted.
    assert verify_delivery(SECRET, *delivery(alias_event("3"), ts=NOW - 299), now=NOW)
    assert verify_delivery(SECRET, *delivery(alias_event("3"), ts=NOW + 30), now=NOW)


def test_a_captured_delivery_replayed_later_is_refused():
    headers, body = delivery(alias_event("3"))
    assert verify_delivery(SECRET, headers, body, now=NOW + 10, max_age=60)
    with pytest.raises(StaleDelivery):
        verify_delivery(SECRET, headers, body, now=NOW + 61, max_age=60)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("not json at all", "not JSON"),
        ('{"entity": "model_version_alias", ', "not JSON"),
        ("[1, 2, 3]", "JSON object"),
        ('"a string"', "JSON object"),
        ("[" * 100_000 + "]" * 100_000, "nested"),
        ('{"entity": "a", "action": "b", "data": ' + '{"x": ' * 20 + "1" + "}" * 20 + "}", "nested deeper"),
        ('{"entity": "a", "action": "b", "data": {"name": "\\ud800"}}', "lone surrogate"),
        ('{"entity": 1, "action": "b", "data": {}}', "'entity'"),
        ('{"entity": "a", "action": "b", "data": []}', "'data'"),
        ('{"entity": "a", "action": "b"}', "'data'"),
        ("NaN", "JSON object"),
    ],
)
def test_hostile_bodies_signed_with_the_secret_get_a_clear_400(body, message):
    headers, raw = delivery(body)
    with pytest.raises(WebhookError, match=message) as err:
        verify_delivery(SECRET, headers, raw, now=NOW)
    assert err.value.status == 400


def test_bodies_that_cannot_be_what_mlflow_signed_are_refused():
    headers, _ = delivery("{}")
    with pytest.raises(SignatureError, match="UTF-8"):  # a raw lone surrogate / invalid bytes
        verify_delivery(SECRET, headers, b'{"a": "\xed\xa0\x80"}', now=NOW)
    big = json.dumps({**alias_event("3"), "pad": "x" * webhooks.MAX_BODY_BYTES})
    with pytest.raises(WebhookError, match="limit"):
        verify_delivery(SECRET, *delivery(big), now=NOW)


# --- register -------------------------------------------------------------------------------------
def test_register_creates_one_webhook_then_updates_it():
    reg = FakeRegistry({}, {})
    reg.create_webhook("someone-else", "http://elsewhere/hook", ["model_version.created"], secret="x")
    first = register(reg, "http://127.0.0.1:8080/rtml/hooks/mlflow", "one")
    assert first["action"] == "created"
    again = register(reg, "http://127.0.0.1:9090/rtml/hooks/mlflow", "two")
    assert again["action"] == "updated" and again["webhook_id"] == first["webhook_id"]
    mine = [w for w in reg.webhooks.values() if w.name == "rtml"]
    assert len(mine) == 1 and mine[0].url.startswith("http://127.0.0.1:9090") and mine[0].secret == "two"
    assert sorted(mine[0].events) == ["model_version_alias.created", "model_version_tag.set"]
    assert len(reg.webhooks) == 2  # the other webhook is left alone
    # Two of ours (two `stack up`s at once): one is kept.
    reg.create_webhook("rtml", "http://x/", ["model_version_tag.set"], secret="dup")
    assert register(reg, "http://127.0.0.1:9090/rtml/hooks/mlflow", "three")["action"] == "updated"
    assert [w.secret for w in reg.webhooks.values() if w.name == "rtml"] == ["three"]


# --- handle ---------------------------------------------------------------------------------------
@pytest.fixture()
def lake(tmp_path, monkeypatch):
    yield from local_governance(tmp_path, monkeypatch)


def signed(version: str, gates: dict[str, str] | None = None, approval: str | None = "approved") -> dict[str, str]:
    """Tags of a version as the evaluator leaves them (really signed), plus a person's approval."""
    from rtml.registry.signing import sign as sign_gates

    tags = dict(gates or GATES)
    tags.update(sign_gates("credit", version, f"run-{version}", "sha256:" + "0" * 64, tags))
    if approval:
        tags.update({"approval": approval, "approval.by": "alice"})
    return tags


def _log() -> list[dict]:
    from rtml.registry.audit import entries

    return entries()


def promoted_registry() -> FakeRegistry:
    """Version 1 champion, 2 promoted by rtml (in the log), 3 failed a gate, 4 passed but unsigned."""
    from rtml.registry.promotion import promote

    failed = signed("3", {**GATES, "gate.fairness": "failed"}, approval=None)
    unsigned = {**GATES, "approval": "approved"}
    reg = FakeRegistry({"1": signed("1"), "2": signed("2"), "3": failed, "4": unsigned},
                       {CHAMPION: "1", CHALLENGER: "2"})
    promote("credit", "2", client=reg)
    return reg


def test_a_hand_set_champion_with_a_failed_gate_goes_back_and_the_refusal_is_logged(lake):
    from rtml.registry.audit import verify

    reg = promoted_registry()
    reg.aliases[CHAMPION] = "3"  # what client.set_registered_model_alias did in MLflow
    out = handle(alias_event("3"), reg)
    assert out["action"] == "reverted" and out["to"] == "2" and out["refused"] == "gates"
    assert reg.aliases[CHAMPION] == "2"
    refusal = _log()[-1]
    assert refusal["action"] == "refusal" and refusal["version"] == "3" and refusal["seq"] == out["audit_seq"]
    assert refusal["reason"].startswith("champion set outside rtml on version 3: ")
    assert "gate.fairness=failed" in refusal["reason"] and refusal["reason"].endswith("; reverted to version 2")
    assert refusal["details"]["via"] == "mlflow webhook" and refusal["details"]["reverted_to"] == "2"
    assert reg.tags["3"][AUDIT_ANCHOR_TAG].startswith(f"{refusal['seq']}:{refusal['hash']}@")
    assert "champion set outside rtml" in reg.descriptions["3"]
    assert verify()["ok"]


def test_a_hand_set_champion_with_unsigned_gates_goes_back(lake):
    reg = promoted_registry()
    reg.aliases[CHAMPION] = "4"
    out = handle(alias_event("4"), reg)
    assert (out["action"], out["to"], out["refused"]) == ("reverted", "2", "signature")
    assert reg.aliases[CHAMPION] == "2" and "not signed" in _log()[-1]["reason"]


def test_a_hand_set_champion_on_an_unapproved_version_goes_back(lake):
    reg = promoted_registry()
    reg.tags["5"], reg.descriptions["5"] = signed("5", approval=None), ""
    reg.aliases[CHAMPION] = "5"
    out = handle(alias_event("5"), reg)
    assert (out["action"], out["refused"], reg.aliases[CHAMPION]) == ("reverted", "approval", "2")


def test_the_revert_and_rtmls_own_promotion_are_left_alone(lake):
    """The alias rtml moves back (and every promotion) comes back as an event: it must be a no-op."""
    reg = promoted_registry()
    n = len(_log())
    assert handle(alias_event("2"), reg)["action"] == "none"  # promote("2") above
    reg.aliases[CHAMPION] = "3"
    handle(alias_event("3"), reg)
    assert handle(alias_event("2"), reg) == {"event": "model_version_alias.created", "model": "credit",
                                             "version": "2", "alias": CHAMPION, "action": "none",
                                             "reason": "servable"}
    assert len(_log()) == n + 1 and reg.aliases[CHAMPION] == "2"


def test_without_a_promotion_in_the_log_the_champion_alias_is_deleted(lake):
    reg = FakeRegistry({"1": signed("1", {**GATES, "gate.drift": "failed"})}, {CHAMPION: "1"})
    out = handle(alias_event("1"), reg)
    assert out["action"] == "deleted" and out["to"] is None and CHAMPION not in reg.aliases
    assert "no promotion or rollback" in _log()[-1]["reason"]


def test_a_last_champion_that_is_no_longer_servable_is_not_restored(lake):
    reg = promoted_registry()
    reg.tags["2"]["gate.quality"] = "failed"  # edited after signing
    reg.aliases[CHAMPION] = "3"
    out = handle(alias_event("3"), reg)
    assert out["action"] == "deleted" and CHAMPION not in reg.aliases
    assert "version 2" in out["reason"] and "not servable either" in out["reason"]


def test_an_event_whose_champion_has_moved_on_changes_nothing(lake):
    reg = promoted_registry()
    n = len(_log())
    out = handle(alias_event("3"), reg)  # champion is 2 by now (a late or replayed event)
    assert out["action"] == "ignored" and "no longer" in out["reason"]
    assert reg.aliases[CHAMPION] == "2" and len(_log()) == n


def test_the_revert_waits_for_a_promotion_in_progress(lake):
    """The promotion lease is held while the revert decides: it never runs half-way through a promote."""
    from rtml.registry import promotion

    reg = promoted_registry()
    reg.aliases[CHAMPION] = "3"
    held: list[str] = []
    real = promotion.promotion_guard

    def spy(name, what="promotion", **kw):
        held.append(what)
        return real(name, what, **kw)

    import unittest.mock

    with unittest.mock.patch.object(promotion, "promotion_guard", spy):
        handle(alias_event("3"), reg)
    assert held == ["champion revert"]


def test_an_approval_tag_is_recorded_once(lake):
    reg = FakeRegistry({"1": signed("1", approval=None)}, {})
    reg.tags["1"].update({"approval": "Approved", "approval.by": "carol", "approval.at": "2026-01-02T00:00:00Z"})
    out = handle(tag_event("1", "approval", "Approved"), reg)
    assert out["action"] == "recorded" and out["decision"] == "approved"
    (entry,) = _log()
    assert (entry["action"], entry["version"], entry["on_behalf_of"]) == ("approval", "1", "carol")
    assert entry["details"] == {"via": "MLflow tag (webhook)", "tag_at": "2026-01-02T00:00:00Z"}
    assert reg.tags["1"][AUDIT_ANCHOR_TAG].startswith(f"{entry['seq']}:")
    assert handle(tag_event("1", "approval", "approved"), reg)["action"] == "none"  # MLflow retried
    assert len(_log()) == 1
    # Then rejected: a new decision, recorded.
    reg.tags["1"]["approval"] = "rejected"
    assert handle(tag_event("1", "approval", "rejected"), reg)["decision"] == "rejected"
    assert [e["action"] for e in _log()] == ["approval", "rejection"]


def test_an_approval_tag_that_is_no_decision_or_superseded_is_ignored(lake):
    reg = FakeRegistry({"1": {"approval": "rejected"}}, {})
    assert handle(tag_event("1", "approval", "maybe"), reg)["action"] == "ignored"
    out = handle(tag_event("1", "approval", "approved"), reg)  # the tag says rejected by now
    assert out["action"] == "ignored" and "superseded" in out["reason"]
    assert _log() == []


@pytest.mark.parametrize("payload", [
    alias_event("1", alias=CHALLENGER),
    tag_event("1", "gate.quality", "passed"),
    event("model_version", "created", name="credit", version="1"),
    alias_event("1", name="example_model"),  # MLflow's "test webhook" delivery: no such model
    tag_event("9", "approval", "approved"),  # a version that does not exist
])
def test_other_events_are_ignored(lake, payload):
    reg = FakeRegistry({"1": signed("1", {**GATES, "gate.quality": "failed"})}, {CHAMPION: "1"})
    assert handle(payload, reg)["action"] == "ignored"
    assert reg.aliases == {CHAMPION: "1"} and _log() == []


@pytest.mark.parametrize("data", [{"name": "credit", "alias": CHAMPION},
                                  {"name": ["credit"], "alias": CHAMPION, "version": "1"},
                                  {"name": "credit", "alias": CHAMPION, "version": True},
                                  {"name": "x" * 1001, "alias": CHAMPION, "version": "1"}])
def test_a_champion_event_with_bad_fields_names_the_field(lake, data):
    reg = FakeRegistry({"1": signed("1")}, {CHAMPION: "1"})
    with pytest.raises(WebhookError, match="'(name|version)'"):
        handle({"entity": "model_version_alias", "action": "created", "data": data}, reg)


# --- Dispatcher -----------------------------------------------------------------------------------
def test_the_dispatcher_runs_events_in_order_once_per_delivery_and_survives_failures():
    seen: list[str] = []

    def work(payload):
        seen.append(payload["data"]["version"])
        if payload["data"]["version"] == "bad":
            raise RuntimeError("boom")
        return {"action": "none"}

    d = webhooks.Dispatcher(work)
    try:
        assert d.submit(alias_event("1"), "a") and d.submit(alias_event("bad"), "b")
        assert not d.submit(alias_event("1"), "a")  # MLflow's retry of delivery a
        assert d.submit(tag_event("2", "approval", "approved"), "c")
        assert d.join(10)
        assert seen == ["1", "bad", "2"]
        assert [r["action"] for r in d.results] == ["none", "error", "none"] and "boom" in d.results[1]["error"]
    finally:
        d.stop()


def test_the_dispatcher_forgets_old_delivery_ids_beyond_its_memory():
    d = webhooks.Dispatcher(lambda p: {"action": "none"}, remember=2)
    try:
        for i in ("a", "b", "c"):
            assert d.submit(alias_event("1"), i)
        assert not d.submit(alias_event("1"), "c") and d.submit(alias_event("1"), "a")
        assert d.join(10)
    finally:
        d.stop()


# --- the receiver route -------------------------------------------------------------------------
def _plugin(monkeypatch, tmp_path):
    monkeypatch.setenv("RTML_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("RTML_WEBHOOK_SECRET", SECRET)
    from rtml.settings import get_settings

    get_settings(refresh=True)
    path = Path(__file__).resolve().parents[3] / "plugins" / "rtml_plugin.py"
    spec = importlib.util.spec_from_file_location("rtml_plugin_hooks_test", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _Recorder:
    def __init__(self):
        self.got: list[tuple[dict, str]] = []

    def submit(self, payload, delivery_id=""):
        self.got.append((payload, delivery_id))
        return True


def test_the_receiver_needs_a_signature_not_a_login(monkeypatch, tmp_path):
    import time

    from fastapi.testclient import TestClient

    plugin = _plugin(monkeypatch, tmp_path)
    rec = _Recorder()
    monkeypatch.setattr(plugin, "dispatcher", lambda: rec)
    client = TestClient(plugin.create_app())
    now = int(time.time())  # the route checks against the real clock
    headers, body = delivery(alias_event("3"), ts=now)
    r = client.post("/hooks/mlflow", content=body, headers=headers)
    assert r.status_code == 202, r.text
    assert rec.got == [(alias_event("3"), "d-1")]
    for bad in ({k: v for k, v in headers.items() if k != "X-MLflow-Signature"},
                {**headers, "X-MLflow-Signature": sign("wrong", "d-1", str(now), body.decode())}):
        r = client.post("/hooks/mlflow", content=body, headers=bad)
        assert r.status_code == 401 and "X-MLflow-Signature" in r.json()["detail"]
    r = client.post("/hooks/mlflow", content=body, headers=delivery(alias_event("3"), ts=now - 3600)[0])
    assert r.status_code == 401 and "old" in r.json()["detail"]
    r = client.post("/hooks/mlflow", content=b"nope", headers=delivery("nope", ts=now)[0])
    assert r.status_code == 400 and "not JSON" in r.json()["detail"]
    assert len(rec.got) == 1
    assert client.post("/hooks/mlflow", content=b"x" * (webhooks.MAX_BODY_BYTES + 1)).status_code == 413


def test_the_other_plugin_routes_still_require_the_login_and_the_hook_does_not(monkeypatch, tmp_path):
    plugin = _plugin(monkeypatch, tmp_path)
    app = plugin.create_app()
    guarded = {}
    for route in app.routes:
        if getattr(route, "path", "") in ("/", "/api/models", "/api/decisions", "/hooks/mlflow"):
            guarded[route.path] = any(d.call is plugin.require_login for d in route.dependant.dependencies)
    assert guarded == {"/": True, "/api/models": True, "/api/decisions": True, "/hooks/mlflow": False}


# --- the wake-up signal to a waiting rtml_promote -----------------------------------------------
@pytest.fixture()
def published(monkeypatch) -> list[tuple[str, str]]:
    from rtml.registry import signals

    sent: list[tuple[str, str]] = []
    monkeypatch.setattr(signals, "publish", lambda name, version, settings=None: sent.append((name, version)) or 1)
    return sent


def test_a_decision_on_the_challenger_wakes_its_waiting_promotion_before_it_is_logged(lake, published):
    from rtml.registry import promotion

    reg = FakeRegistry({"1": signed("1"), "2": signed("2", approval=None)}, {CHAMPION: "1", CHALLENGER: "2"})
    reg.tags["2"].update({"approval": "approved", "approval.by": "carol"})
    seen_at_log: list[list] = []
    real = promotion.record_observed_decision

    def spy(*a, **kw):
        seen_at_log.append(list(published))
        return real(*a, **kw)

    import unittest.mock

    with unittest.mock.patch.object(promotion, "record_observed_decision", spy):
        out = handle(tag_event("2", "approval", "approved"), reg)
    assert out["action"] == "recorded" and out["listeners"] == 1
    assert seen_at_log == [[("credit", "2")]]  # signalled first: the log may wait for the model's lease


def test_no_signal_for_a_version_that_is_not_the_challenger_or_not_decided(lake, published):
    reg = FakeRegistry({"1": signed("1"), "2": signed("2", approval=None)}, {CHAMPION: "1", CHALLENGER: "2"})
    assert handle(tag_event("1", "approval", "approved"), reg)["action"] == "recorded"  # the champion: no wait
    reg.tags["2"]["approval.by"] = "carol"
    out = handle(tag_event("2", "approval.by", "carol"), reg)  # a name, no decision yet
    assert out["action"] == "none" and published == []
    reg.tags["2"]["approval"] = "maybe"
    assert handle(tag_event("2", "approval", "maybe"), reg)["action"] == "ignored" and published == []


def test_the_name_set_after_the_decision_wakes_the_wait_again(lake, published):
    """`rtml_promote` reads the decision, finds no approval.by yet and waits once more for it."""
    reg = FakeRegistry({"1": signed("1"), "2": signed("2", approval=None)}, {CHAMPION: "1", CHALLENGER: "2"})
    reg.tags["2"]["approval"] = "approved"
    handle(tag_event("2", "approval", "approved"), reg)
    reg.tags["2"]["approval.by"] = "carol"
    out = handle(tag_event("2", "approval.by", "carol"), reg)
    assert out["action"] == "signalled" and published == [("credit", "2"), ("credit", "2")]
    assert [e["action"] for e in _log()] == ["approval"]
