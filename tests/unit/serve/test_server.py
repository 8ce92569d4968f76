"""rtml.serve.server: answers equal offline predictions, concurrent requests are micro-batched, the
champion is hot-swapped (broken, failing and refused versions are not), the challenger is
shadow-scored, every answer is logged; bounds, hung model calls and one bad record in a batch.
The server runs in-process behind the app with an in-memory registry (support.serving)."""

from __future__ import annotations

import math
import threading
import time

import numpy as np
import pandas as pd
import pytest
from support.serving import AUTH, FakeSource, good_record, make_client, refusing_puts, wait_until

from rtml.serve.server import ServeConfig, jsonable_rows

pytestmark = [
    pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`"),
    pytest.mark.filterwarnings("ignore:.*Add type hints to the `predict` method"),
]


def test_single_and_batch_answers_match_offline_predictions(spec, served, fitted, data):
    from rtml.serve.source import frame_to_records

    raw, X = data
    _, client = served
    rows = frame_to_records(raw[spec.feature_names].head(30))
    # Rows with NaN in non-nullable features would be refused; the dataset's nulls are all in nullable ones.
    offline = fitted.predict_proba(X.head(30))[:, 1]
    r = client.post("/v1/predict", json={"records": rows}, headers=AUTH)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["version"] == "1" and body["request_id"]
    scores = np.array([p["score"] for p in body["predictions"]])
    np.testing.assert_array_equal(scores, offline)  # bit-for-bit: the fast path replays the pipeline
    thr = spec.gates.quality.decision_threshold
    assert [p["label"] for p in body["predictions"]] == ["bad" if s >= thr else "good" for s in offline]
    one = client.post("/v1/predict", json=rows[3], headers={**AUTH, "x-request-id": "abc"}).json()
    assert one["request_id"] == "abc" and one["version"] == "1"
    assert client.get("/v1/model", headers=AUTH).json()["fast_path"] is True
    assert math.isclose(one["score"], offline[3], abs_tol=1e-12)


def test_concurrent_single_requests_are_batched_and_exact(spec, fitted, data):
    """Threads posting at once: answers equal offline scores and at least one model call had >1 row."""
    from rtml.serve.source import frame_to_records

    raw, X = data
    rows = frame_to_records(raw[spec.feature_names].head(64))
    offline = fitted.predict_proba(X.head(64))[:, 1]
    source = FakeSource(spec, {"1": fitted}, {"champion": "1"})
    server, client = make_client(spec, source, max_wait_ms=50)
    results: dict[int, float] = {}
    with client:
        assert wait_until(lambda: server.ready)

        def worker(idx: list[int]):
            for i in idx:
                r = client.post("/v1/predict", json=rows[i], headers=AUTH)
                assert r.status_code == 200
                results[i] = r.json()["score"]

        threads = [threading.Thread(target=worker, args=(list(range(k, 64, 8)),)) for k in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        metrics = client.get("/metrics").text
    assert sorted(results) == list(range(64))
    np.testing.assert_allclose([results[i] for i in range(64)], offline, rtol=0, atol=1e-12)
    # The batch-size histogram: some model call scored more than one request's row.
    def value(prefix: str) -> float:
        return float(next(line.split()[-1] for line in metrics.splitlines() if line.startswith(prefix)))

    calls, single_row_calls = value("rtml_batch_rows_count"), value('rtml_batch_rows_bucket{le="1.0"}')
    assert single_row_calls < calls < 64
    assert 'rtml_predict_requests_total{status="200",version="1"}' in metrics


def test_hot_swap_skips_broken_and_failing_versions(spec, fitted):
    class NaNModel:
        classes_ = np.array([0, 1])

        def predict_proba(self, df):
            return np.full((len(df), 2), np.nan)

    source = FakeSource(
        spec,
        {"1": fitted, "2": RuntimeError("artifact is corrupt"), "3": NaNModel(), "4": fitted},
        {"champion": "1"},
    )
    server, client = make_client(spec, source)
    rec = good_record(spec)
    with client:
        assert client.get("/ready").status_code in (200, 503)
        assert wait_until(lambda: server.ready)
        assert client.post("/v1/predict", json=rec, headers=AUTH).json()["version"] == "1"
        # A version that cannot be loaded is not served; the failure is reported.
        source.aliases["champion"] = "2"
        out = client.post("/admin/reload", headers=AUTH).json()
        assert out["swapped"] is False and out["version"] == "1"
        info = client.get("/v1/model", headers=AUTH).json()
        assert info["version"] == "1" and info["last_error"]["version"] == "2"
        assert "corrupt" in info["last_error"]["error"]
        # A version that loads but gives NaN scores fails its smoke check: not served either.
        source.aliases["champion"] = "3"
        out = client.post("/admin/reload", headers=AUTH).json()
        assert out["version"] == "1" and out["last_error"]["version"] == "3"
        assert client.post("/v1/predict", json=rec, headers=AUTH).json()["version"] == "1"
        # A good version is swapped in by the poller alone (no reload call).
        source.aliases["champion"] = "4"
        assert wait_until(lambda: client.post("/v1/predict", json=rec, headers=AUTH).json()["version"] == "4")
        # The poller does not retry a failed version on every round.
        source.aliases["champion"] = "2"
        time.sleep(0.3)
        assert source.loads.count("2") == 1  # only the forced reload above tried it
        assert client.post("/v1/predict", json=rec, headers=AUTH).json()["version"] == "4"


def test_shadow_scores_and_prediction_log(local_lake, spec, fitted):
    lake = local_lake
    source = FakeSource(spec, {"1": fitted, "2": fitted}, {"champion": "1", "challenger": "2"})
    server, client = make_client(spec, source, lake=lake)
    rec = good_record(spec)
    with client:
        assert wait_until(lambda: server.ready and server.shadow is not None)
        ids = []
        for i in range(5):
            r = client.post("/v1/predict", json={**rec, "event_id": f"e{i}"}, headers=AUTH)
            assert r.status_code == 200
            ids.append(r.json()["request_id"])
        r = client.post("/v1/predict", json={"records": [rec, rec]}, headers=AUTH)
        ids.append(r.json()["request_id"])
        assert client.get("/v1/model", headers=AUTH).json()["shadow"]["version"] == "2"
    # After a clean shutdown every answered prediction is in the lake, one row each.
    preds = lake.read_batches(spec.dataset.name, "predictions")
    assert len(preds) == 7
    assert sorted(set(preds["request_id"])) == sorted(ids)
    assert set(preds["version"]) == {"1"}
    assert list(preds.loc[preds["event_id"].notna(), "event_id"]) == [f"e{i}" for i in range(5)]
    assert preds["Age"].dtype == "float64" and (preds["score"].between(0, 1)).all()
    manifests = lake.manifests(spec.dataset.name, "predictions")
    assert sum(m["records_in"] for m in manifests) == 7
    assert all(m["schema_hash"] == spec.schema_hash() and m["table"] == f"{spec.dataset.name}.predictions" for m in manifests)
    shadow = lake.read_batches(spec.dataset.name, "shadow")
    assert len(shadow) == 7
    assert set(shadow["version"]) == {"2"} and set(shadow["champion_version"]) == {"1"}
    np.testing.assert_allclose(shadow["score"], shadow["champion_score"])  # same model, same rows


def test_model_labels_replace_the_threshold_in_answers_logs_and_shadow(local_lake, spec, fitted, data, group_decider,
                                                                       deciding_model):
    from rtml.serve.source import frame_to_records

    raw, X = data
    rows = frame_to_records(raw[spec.feature_names].head(60))
    decider = group_decider(fitted)
    expected = group_decider(fitted).predict(X.head(60))
    thr = spec.gates.quality.decision_threshold
    by_threshold = expected["score"].to_numpy() >= thr
    assert (expected["label"].to_numpy() != by_threshold).any()  # the test can tell the two rules apart
    want = ["bad" if x == 1 else "good" for x in expected["label"]]

    lake = local_lake
    source = FakeSource(spec, {"m": deciding_model("m", decider), "p": fitted},
                        {"champion": "m", "challenger": "p"})
    server, client = make_client(spec, source, lake=lake)
    with client:
        assert wait_until(lambda: server.ready and server.shadow is not None)
        before = decider.calls
        r = client.post("/v1/predict", json={"records": rows}, headers=AUTH)
        assert r.status_code == 200, r.text
        assert decider.calls == before + 1  # scores AND labels from one model call
        body = r.json()
        np.testing.assert_allclose([p["score"] for p in body["predictions"]], expected["score"], rtol=0, atol=1e-12)
        assert [p["label"] for p in body["predictions"]] == want
        one = client.post("/v1/predict", json=rows[5], headers=AUTH).json()
        assert one["label"] == want[5]
        info = client.get("/v1/model", headers=AUTH).json()
        assert info["variant"] == "mitigated" and info["decisions"] == "model labels" and info["flavor"] == "pyfunc"
        assert info["shadow"]["variant"] == "plain" and info["shadow"]["decisions"] == "global threshold"
    preds = lake.read_batches(spec.dataset.name, "predictions")
    batch = preds[preds["request_id"] == body["request_id"]].sort_values("row")
    assert list(batch["label"]) == want
    shadow = lake.read_batches(spec.dataset.name, "shadow")
    sb = shadow[shadow["request_id"] == body["request_id"]].sort_values("row")
    assert list(sb["champion_label"]) == want
    assert list(sb["label"]) == ["bad" if b else "good" for b in by_threshold]  # the plain challenger


def test_mitigated_shadow_logs_its_own_labels(local_lake, spec, fitted, data, group_decider, deciding_model):
    from rtml.serve.source import frame_to_records

    raw, X = data
    rows = frame_to_records(raw[spec.feature_names].head(40))
    expected = group_decider(fitted).predict(X.head(40))
    lake = local_lake
    source = FakeSource(spec, {"p": fitted, "m": deciding_model("m", group_decider(fitted))},
                        {"champion": "p", "challenger": "m"})
    server, client = make_client(spec, source, lake=lake)
    with client:
        assert wait_until(lambda: server.ready and server.shadow is not None)
        rid = client.post("/v1/predict", json={"records": rows}, headers=AUTH).json()["request_id"]
    sb = lake.read_batches(spec.dataset.name, "shadow")
    sb = sb[sb["request_id"] == rid].sort_values("row")
    assert list(sb["label"]) == ["bad" if x == 1 else "good" for x in expected["label"]]
    thr = spec.gates.quality.decision_threshold
    assert list(sb["champion_label"]) == ["bad" if s >= thr else "good" for s in expected["score"]]


# --- bounds, hung models, one bad record ---
class Gate:
    """A model whose calls wait until released (a hung model) and that fails on Amount == 13."""

    def __init__(self, pipe) -> None:
        self.pipe = pipe
        self.classes_ = pipe.classes_
        self.release = threading.Event()
        self.release.set()
        self.calls = 0

    def predict_proba(self, df):
        self.calls += 1
        self.release.wait(30)
        if (df["Amount"] == 13).any():
            raise ValueError("this model cannot score Amount == 13")
        return self.pipe.predict_proba(df)


def metric(text: str, name: str) -> float:
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name))


def test_queue_bound_gives_503_with_retry_after(spec, fitted):
    model = Gate(fitted)
    source = FakeSource(spec, {"1": model}, {"champion": "1"})
    server, client = make_client(spec, source, max_queue_rows=3, model_timeout_seconds=20)
    rec = good_record(spec)
    with client:
        assert wait_until(lambda: server.ready)
        model.release.clear()
        before = model.calls  # the smoke check on load called it already
        results: list[int] = []
        threads = [threading.Thread(target=lambda: results.append(
            client.post("/v1/predict", json=rec, headers=AUTH).status_code)) for _ in range(2)]
        threads[0].start()
        assert wait_until(lambda: model.calls > before)  # one request in the model ...
        threads[1].start()
        assert wait_until(lambda: server._pending_rows == 1)  # ... and one waiting behind it
        r = client.post("/v1/predict", json={"records": [rec] * 3}, headers=AUTH)
        assert r.status_code == 503 and r.headers["retry-after"] == "1", r.text
        assert "waiting" in r.json()["error"]
        model.release.set()
        for t in threads:
            t.join(30)
        assert results == [200, 200]
        text = client.get("/metrics").text
    assert metric(text, 'rtml_overload_rejections_total{reason="queue_full"}') == 1


def test_full_prediction_log_gives_503(local_lake, spec, fitted):
    lake = local_lake
    source = FakeSource(spec, {"1": fitted}, {"champion": "1"})
    server, client = make_client(spec, source, lake=lake, max_log_rows=4)
    rec = good_record(spec)
    with client:
        assert wait_until(lambda: server.ready)
        with refusing_puts(lake.store):
            assert client.post("/v1/predict", json={"records": [rec] * 4}, headers=AUTH).status_code == 200
            r = client.post("/v1/predict", json=rec, headers=AUTH)
            assert r.status_code == 503 and r.headers["retry-after"] and "prediction log" in r.json()["error"]
            text = client.get("/metrics").text
            assert metric(text, 'rtml_overload_rejections_total{reason="log_full"}') == 1
            assert metric(text, 'rtml_log_pending_rows{kind="predictions"}') == 4
        # the store is back: the rows are written, requests are accepted again
        assert wait_until(lambda: server.predictions.pending_rows == 0)
        assert client.post("/v1/predict", json=rec, headers=AUTH).status_code == 200
    assert len(lake.read_batches(spec.dataset.name, "predictions")) == 5


def test_a_hung_model_call_fails_its_requests_and_ready_turns_503(spec, fitted):
    model = Gate(fitted)
    source = FakeSource(spec, {"1": model}, {"champion": "1"})
    server, client = make_client(spec, source, model_timeout_seconds=0.5)
    rec = good_record(spec)
    with client:
        assert wait_until(lambda: server.ready)
        model.release.clear()
        # answered while the call still hangs (released only below): the timeout, not the model, ended it
        r = client.post("/v1/predict", json=rec, headers=AUTH)
        assert r.status_code == 503 and r.headers["retry-after"] and "did not finish" in r.json()["error"]
        assert not model.release.is_set()
        ready = client.get("/ready")
        assert ready.status_code == 503 and ready.json()["hung"]["version"] == "1"
        r2 = client.post("/v1/predict", json=rec, headers=AUTH)  # answered at once, not queued behind it
        assert r2.status_code == 503 and r2.headers["retry-after"]
        text = client.get("/metrics").text
        assert metric(text, 'rtml_overload_rejections_total{reason="model_timeout"}') == 1
        assert metric(text, 'rtml_overload_rejections_total{reason="model_hung"}') == 1
        assert metric(text, "rtml_model_hung ") == 1
        model.release.set()  # the call returns: ready and answering again
        assert wait_until(lambda: client.get("/ready").status_code == 200)
        assert client.post("/v1/predict", json=rec, headers=AUTH).status_code == 200


def test_one_bad_record_in_a_micro_batch_fails_only_its_request(spec, fitted):
    model = Gate(fitted)
    source = FakeSource(spec, {"1": model}, {"champion": "1"})
    server, client = make_client(spec, source, max_wait_ms=300)
    rec = good_record(spec)
    with client:
        assert wait_until(lambda: server.ready)
        model.release.clear()
        # a first request holds the model; four more queue up and are scored as ONE micro-batch
        before = model.calls  # the smoke check on load called it already
        first = threading.Thread(target=lambda: client.post("/v1/predict", json=rec, headers=AUTH))
        first.start()
        assert wait_until(lambda: model.calls > before)
        out: dict[int, int] = {}

        def send(i: int) -> None:
            out[i] = client.post("/v1/predict", json={**rec, "Amount": 13 if i == 2 else 800 + i}, headers=AUTH
                                 ).status_code

        threads = [threading.Thread(target=send, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        assert wait_until(lambda: server._pending_rows == 4)
        calls = model.calls
        model.release.set()
        for t in [first, *threads]:
            t.join(30)
        text = client.get("/metrics").text
    assert out == {0: 200, 1: 200, 2: 500, 3: 200}
    assert model.calls == calls + 1 + 4  # the batch once, then each request alone
    assert metric(text, 'rtml_predict_requests_total{status="200"') == 4


# --- governance, helpers -------------------------------------------------------------------------
class VettingSource(FakeSource):
    """A registry whose governance check refuses the versions in ``refuse`` (reason -> message)."""

    def __init__(self, *a, refuse=None, **kw) -> None:
        super().__init__(*a, **kw)
        self.refuse = dict(refuse or {})
        self.records: list[tuple] = []

    def vet(self, version, alias):
        from rtml.registry.signing import NotServable

        if version in self.refuse:
            raise NotServable(version, self.refuse[version], f"version {version}: not approved")

    def record(self, action, version, **kw):
        self.records.append((action, version, kw))


def test_a_version_governance_refuses_is_not_served_and_ready_says_why(spec, fitted):
    source = VettingSource(spec, {"1": fitted, "2": fitted}, {"champion": "1"}, refuse={"2": "approval"})
    server, client = make_client(spec, source)
    rec = good_record(spec)
    with client:
        assert wait_until(lambda: server.ready)
        source.aliases["champion"] = "2"
        out = client.post("/admin/reload", headers=AUTH).json()
        assert out["swapped"] is False and out["version"] == "1"
        ready = client.get("/ready").json()
        assert ready["refused"]["champion"]["version"] == "2" and ready["refused"]["champion"]["reason"] == "approval"
        assert "2" not in source.loads  # refused before loading
        assert client.post("/v1/predict", json=rec, headers=AUTH).json()["version"] == "1"
        assert 'rtml_model_refused{alias="champion",reason="approval",version="2"} 1.0' in client.get("/metrics").text
        # approved now: the next reload swaps it in and the refusal is gone
        source.refuse.clear()
        out = client.post("/admin/reload", headers=AUTH).json()
        assert out["swapped"] is True and out["version"] == "2"
        assert "refused" not in client.get("/ready").json()
        assert wait_until(lambda: ("reload", "2", {"from_version": "1"}) in source.records)
    assert [r[:2] for r in source.records if r[0] == "refusal"] == [("refusal", "2")]  # logged once


def test_server_refuses_too_many_and_no_records(spec, served):
    server, client = served
    rec = good_record(spec)
    r = client.post("/v1/predict", json={"records": [rec] * (server.config.max_records + 1)}, headers=AUTH)
    assert r.status_code == 413 and r.json()["field"] == "records"
    assert client.post("/v1/predict", json=[], headers=AUTH).json()["field"] == "records"


def test_serve_config_takes_the_bounds_from_settings():
    from rtml.settings import Settings

    s = Settings(storage="local", serve_max_queue_rows=7, serve_max_log_rows=9, serve_model_timeout_seconds=1.5)
    cfg = ServeConfig.from_settings(s, max_batch=3)
    assert (cfg.max_queue_rows, cfg.max_log_rows, cfg.model_timeout_seconds, cfg.max_batch) == (7, 9, 1.5, 3)


def test_jsonable_rows_slices_each_output_shape():
    assert jsonable_rows(None, 0, 2) == []
    assert jsonable_rows({"score": np.array([0.1, 0.2, 0.3]), "label": np.array([0, 1, 1])}, 1, 3) == [
        {"score": 0.2, "label": 1}, {"score": 0.3, "label": 1}]
    df = pd.DataFrame({"score": np.array([0.5, 0.6]), "label": np.array([1, 0], dtype="int64")})
    rows = jsonable_rows(df, 1, 2)
    assert rows == [{"score": 0.6, "label": 0}] and type(rows[0]["label"]) is int
    assert jsonable_rows(pd.Series([1, 2, 3]), 0, 2) == [1, 2]
    assert jsonable_rows(np.array([[0.1, 0.9], [0.4, 0.6]]), 1, 2) == [[0.4, 0.6]]


def test_the_champions_live_fairness_tag_is_exposed_in_metrics(spec, fitted):
    """Monitoring's ``live_fairness`` tag on the champion becomes gauges at the next poll; a new
    champion without the tag clears them; an unreadable tag shows nothing and keeps serving."""
    import json

    class TaggedSource(FakeSource):
        def __init__(self, *a) -> None:
            super().__init__(*a)
            self.version_tags: dict[str, dict[str, str]] = {}
            self.tags: dict[str, dict[str, str]] = {}

        def resolve(self, alias: str):
            out = super().resolve(alias)
            self.tags[alias] = dict(self.version_tags.get(out[0], {})) if out else {}
            return out

    source = TaggedSource(spec, {"1": fitted, "2": fitted}, {"champion": "1"})
    server, client = make_client(spec, source)
    checks = {"sex": {"demographic_parity_ratio": [0.71, 0], "equal_opportunity_difference": [0.05, 1]}}
    with client:
        assert wait_until(lambda: server.ready)
        source.version_tags["1"] = {"live_fairness": json.dumps({"passed": False, "checks": checks})}
        name = 'rtml_live_fairness{attribute="sex",metric="demographic_parity_ratio",version="1"}'
        assert wait_until(lambda: name in client.get("/metrics").text)
        text = client.get("/metrics").text
        assert metric(text, name) == 0.71
        assert metric(text, name.replace("rtml_live_fairness{", "rtml_live_fairness_passed{")) == 0
        ok = 'rtml_live_fairness_passed{attribute="sex",metric="equal_opportunity_difference",version="1"}'
        assert metric(text, ok) == 1
        source.aliases["champion"] = "2"
        assert wait_until(lambda: "rtml_live_fairness{" not in client.get("/metrics").text)
        source.version_tags["2"] = {"live_fairness": "{not json"}
        client.post("/admin/reload", headers=AUTH)
        assert "rtml_live_fairness{" not in client.get("/metrics").text
        assert client.post("/v1/predict", json=good_record(spec), headers=AUTH).status_code == 200
        # Nested deeper than the parser's recursion limit (json.loads raises RecursionError).
        source.version_tags["2"] = {"live_fairness": "[" * 200_000 + "]" * 200_000}
        assert client.post("/admin/reload", headers=AUTH).status_code < 500
        assert "rtml_live_fairness{" not in client.get("/metrics").text
        assert client.post("/v1/predict", json=good_record(spec), headers=AUTH).status_code == 200
