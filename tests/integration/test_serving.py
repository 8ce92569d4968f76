"""A real ``rtml serve`` process over HTTP against the real MLflow server and S3 lake.

One serving process for the module (loading from the registry takes a moment); the tests run in
file order and share it: answers equal offline scores, bad payloads never 5xx, no token -> 401,
a hot swap under load loses no request, a broken version is never served, rollback restores the
previous version, and after SIGTERM the prediction log holds one row per answered prediction.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from _serving import (
    ServeProcess,
    credit_rows,
    offline_scores,
    register,
    register_broken,
    spec_for,
    train,
    unique_name,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def env(mlflow_settings, tmp_path_factory):
    from rtml.registry.promotion import approve

    name = unique_name("serving")
    spec = spec_for(name)
    pipe1 = train(spec, seed=1, max_iter=15)
    v1 = register(mlflow_settings, spec, pipe1)
    approve(name, v1, by="test")
    server = ServeProcess(mlflow_settings, name, tmp_path_factory.mktemp("serve")).start()
    server.wait_version(v1)
    state = {"settings": mlflow_settings, "name": name, "spec": spec, "server": server, "pipes": {v1: pipe1},
             "v1": v1}
    yield state
    server.stop()


def rows(n: int = 20, start: int = 0):
    from rtml.serve.source import frame_to_records
    from rtml.spec import load_spec

    raw, _ = credit_rows()
    return frame_to_records(raw[load_spec().feature_names].iloc[start : start + n])


def test_answers_match_offline_predictions(env):
    server, spec = env["server"], env["spec"]
    sample = rows(25)
    offline = offline_scores(env["pipes"][env["v1"]], sample, spec)
    with server.client() as c:
        assert c.get("/ready").status_code == 200
        batch = server.predict(c, {"records": sample})
        assert batch.status_code == 200, batch.text
        body = batch.json()
        assert body["version"] == env["v1"] and body["request_id"]
        np.testing.assert_allclose([p["score"] for p in body["predictions"]], offline, rtol=0, atol=1e-12)
        thr = spec.gates.quality.decision_threshold
        assert [p["label"] for p in body["predictions"]] == ["bad" if s >= thr else "good" for s in offline]
        one = server.predict(c, sample[0])
        assert one.status_code == 200 and abs(one.json()["score"] - offline[0]) < 1e-12
        info = c.get("/v1/model").json()
    assert info["name"] == env["name"] and info["version"] == env["v1"]
    assert "champion" in info["aliases"] and info["loaded_at"]


def test_bad_payloads_never_5xx_and_token_required(env):
    server = env["server"]
    good = rows(1)[0]
    bad = [
        ({**good, "Age": "old"}, "Age"),
        ({k: v for k, v in good.items() if k != "Income"}, "Income"),
        ({**good, "Shoe_size": 42}, "Shoe_size"),
        ({**good, "Home": ["rent"]}, "Home"),
        ({**good, "Records": None}, "Records"),
        ({"records": [good, {**good, "Amount": -5}]}, "records[1].Amount"),
        ({"records": [good] * 5000}, None),
        ("not an object", None),
        ([1, 2, 3], "records[0]"),
    ]
    with server.client() as c:
        for payload, field in bad:
            r = c.post("/v1/predict", json=payload)
            assert 400 <= r.status_code < 500, (payload if len(str(payload)) < 300 else field, r.status_code, r.text)
            if field:
                assert r.json()["field"] == field
        for raw in (b'{"Age": NaN}', b"\xff\xfe", b"{" * 10, b'{"records": ' + b"[" * 5000 + b"]" * 5000 + b"}"):
            r = c.post("/v1/predict", content=raw, headers={"content-type": "application/json"})
            assert 400 <= r.status_code < 500, (raw[:40], r.status_code, r.text[:200])
        huge = b'{"Home": "' + b"x" * 2_000_000 + b'"}'
        assert c.post("/v1/predict", content=huge).status_code == 413
    with server.client(token=None) as anon:
        assert anon.post("/v1/predict", json=good).status_code == 401
        assert anon.post("/admin/reload").status_code == 401
        assert anon.get("/v1/model").status_code == 401
        assert anon.get("/health").status_code == 200
        assert anon.get("/ready").status_code == 200
        metrics = anon.get("/metrics")
    assert metrics.status_code == 200
    assert 'rtml_predict_requests_total{status="401"' in metrics.text
    assert "rtml_predict_latency_seconds_bucket" in metrics.text
    with server.client(token="wrong") as c:
        assert c.post("/v1/predict", json=good).status_code == 401


def test_hot_swap_under_load_loses_no_request(env):
    """Approve a new version while 4 clients send requests nonstop: every request answered, no 5xx."""
    from rtml.registry.promotion import approve

    server, spec, name = env["server"], env["spec"], env["name"]
    pipe2 = train(spec, seed=2, max_iter=30)
    v2 = register(env["settings"], spec, pipe2)
    env["pipes"][v2], env["v2"] = pipe2, v2
    sample = rows(40)
    stop = threading.Event()
    results: list[tuple[int, str | None]] = []
    lock = threading.Lock()

    def client_loop(k: int) -> None:
        with server.client() as c:
            i = k
            while not stop.is_set():
                r = server.predict(c, sample[i % len(sample)])
                with lock:
                    results.append((r.status_code, r.json().get("version") if r.status_code == 200 else r.text))
                i += 4

    threads = [threading.Thread(target=client_loop, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    try:
        time.sleep(1.0)
        approve(name, v2, by="test")
        with server.client() as c:
            assert c.post("/admin/reload").json()["version"] == v2
        time.sleep(1.0)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    failed = [r for r in results if r[0] != 200]
    assert not failed, failed[:5]
    versions = [v for _, v in results]
    assert env["v1"] in versions and v2 in versions
    # Once the new version answered, the old one never answers again.
    assert env["v1"] not in versions[versions.index(v2) + 5 :]
    with server.client() as c:
        body = server.predict(c, {"records": sample}).json()
    assert body["version"] == v2
    np.testing.assert_allclose(
        [p["score"] for p in body["predictions"]], offline_scores(pipe2, sample, spec), rtol=0, atol=1e-12
    )


def test_broken_version_is_never_served_and_rollback_restores(env):
    from rtml.names import PREVIOUS_CHAMPION as PREVIOUS
    from rtml.registry.client import alias_version, mlflow_client
    from rtml.registry.promotion import approve, rollback

    server, spec, name = env["server"], env["spec"], env["name"]
    v2 = env["v2"]
    v3 = register_broken(env["settings"], spec)
    approve(name, v3, by="test")  # its gates "passed" (signed): the registry cannot tell it is broken
    with server.client() as c:
        out = c.post("/admin/reload").json()
        assert out["version"] == v2 and out["swapped"] is False
        assert out["last_error"]["version"] == v3
        for _ in range(3):  # and the poller does not swap it in either
            time.sleep(1.0)
            assert server.predict(c, rows(1)[0]).json()["version"] == v2
    info = server.info()
    assert info["version"] == v2 and info["last_error"]["version"] == v3
    # Roll back the broken champion: champion -> v2 (what is served anyway), previous -> v1.
    back = rollback(name, by="test", reason="broken artifact")
    assert back["version"] == v2 and back["rolled_back"] == v3
    assert alias_version(mlflow_client(), name, PREVIOUS) == env["v1"]
    # Roll back once more: the endpoint follows the alias to v1 by itself (poller) and answers with it.
    rollback(name, by="test")
    server.wait_version(env["v1"], timeout=30)
    with server.client() as c:
        assert server.predict(c, rows(1)[0]).json()["version"] == env["v1"]


def test_prediction_log_has_one_row_per_answer_after_sigterm(env):
    from rtml.lake import Lake

    server, spec = env["server"], env["spec"]
    with server.client() as c:
        for i in range(7):
            assert server.predict(c, {**rows(1, i)[0], "event_id": f"ev-{i}"}).status_code == 200
    # uvicorn re-raises the SIGTERM it handled after its graceful shutdown: -15 is a clean exit too.
    assert server.stop() in (0, -15), server.log_tail()
    assert "stopped; prediction log:" in server.log_tail(), server.log_tail()
    assert "(0 pending)" in server.log_tail()
    lake = Lake(env["settings"])
    preds = lake.read_batches(spec.dataset.name, "predictions")
    mine = preds[preds["model"] == env["name"]]
    assert len(mine) == server.answered_rows
    assert mine["request_id"].notna().all() and mine["score"].between(0, 1).all()
    assert set(mine["version"]) == {env["v1"], env["v2"]}
    assert [f"ev-{i}" for i in range(7)] == list(mine.loc[mine["event_id"].notna(), "event_id"])[-7:]
    manifests = [m for m in lake.manifests(spec.dataset.name, "predictions") if m.get("source") == "rtml serve"]
    assert sum(m["records_in"] for m in manifests) >= len(mine)
