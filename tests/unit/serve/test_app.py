"""The serving app in-process with in-memory models: bad payloads, auth, batching, hot swap, smoke check."""

from __future__ import annotations

import math
import threading
import time
from typing import Any

import numpy as np
import pytest
from support.serving import AUTH, FakeSource, good_record, make_client, wait_until

pytestmark = pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")


@pytest.fixture(scope="module")
def served(spec, fitted):
    source = FakeSource(spec, {"1": fitted}, {"champion": "1"})
    server, client = make_client(spec, source)
    with client:
        assert wait_until(lambda: server.ready)
        yield server, client


def _with(rec, **kw):
    out = dict(rec)
    for k, v in kw.items():
        if v is _DROP:
            out.pop(k)
        else:
            out[k] = v
    return out


_DROP = object()


def bad_payloads(spec):
    rec = good_record(spec)
    return [
        # (id, body bytes or json, expected status, field named in the answer)
        ("wrong type number", _with(rec, Age="thirty"), 422, "Age"),
        ("bool for number", _with(rec, Amount=True), 422, "Amount"),
        ("wrong type categorical", _with(rec, Home=3), 422, "Home"),
        ("unknown category", _with(rec, Home="castle"), 422, "Home"),
        ("missing field", _with(rec, Seniority=_DROP), 422, "Seniority"),
        ("unknown field", _with(rec, Colour="red"), 422, "Colour"),
        ("null not nullable", _with(rec, Age=None), 422, "Age"),
        ("non-integral integer", _with(rec, Time=12.5), 422, "Time"),
        ("below min", _with(rec, Age=3), 422, "Age"),
        ("above max", _with(rec, Time=10_000), 422, "Time"),
        ("NaN literal", b'{"Seniority": NaN' + _json(rec).split(b'"Seniority":9', 1)[1], 422, "Seniority"),
        ("Infinity literal", _json(rec).replace(b'"Price":846', b'"Price":Infinity'), 422, "Price"),
        ("batch: bad 2nd record", {"records": [rec, _with(rec, Income="x")]}, 422, "records[1].Income"),
        ("batch: not objects", {"records": [rec, 5]}, 422, "records[1]"),
        ("batch: records not a list", {"records": "all"}, 422, "records"),
        ("batch: empty", {"records": []}, 422, "records"),
        ("batch: too many records", {"records": [rec] * 1001}, 413, "records"),
        ("oversized payload", {"records": [_with(rec, Home="x" * 2_000_000)]}, 413, "body"),
        ("not JSON", b"{not json", 400, None),
        ("JSON scalar", b"42", 422, None),
        ("empty body", b"", 400, None),
    ]


def _json(obj) -> bytes:
    import orjson

    return orjson.dumps(obj)


def test_bad_payloads_are_4xx_naming_the_field(spec, served):
    _, client = served
    for name, body, status, field in bad_payloads(spec):
        content = body if isinstance(body, bytes) else _json(body)
        r = client.post("/v1/predict", content=content, headers={**AUTH, "content-type": "application/json"})
        assert r.status_code == status, (name, r.status_code, r.text[:300])
        assert 400 <= r.status_code < 500, name
        out = r.json()
        assert "error" in out and "request_id" in out, name
        if field is not None:
            assert out.get("field") == field, (name, out)
            assert field.split(".")[-1].split("[")[0] in out["error"], (name, out)


def test_auth_required_on_predict_model_and_admin(spec, served):
    _, client = served
    rec = good_record(spec)
    for method, path in (("post", "/v1/predict"), ("get", "/v1/model"), ("post", "/admin/reload")):
        r = getattr(client, method)(path, **({"json": rec} if method == "post" else {}))
        assert r.status_code == 401, path
        assert r.headers.get("www-authenticate") == "Bearer"
        r = getattr(client, method)(path, headers={"Authorization": "Bearer wrong"})
        assert r.status_code == 401, path
    for path in ("/health", "/ready", "/metrics"):
        assert client.get(path).status_code == 200, path


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


def test_shadow_scores_and_prediction_log(tmp_path, spec, fitted, data):
    from rtml.lake import Lake
    from rtml.settings import Settings
    from rtml.storage import LocalStore

    raw, X = data
    settings = Settings(home=tmp_path, storage="local")
    lake = Lake(settings, LocalStore(tmp_path / "lake"))
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
    assert all(m["schema_hash"] == spec.schema_hash() and m["files"] for m in manifests)
    shadow = lake.read_batches(spec.dataset.name, "shadow")
    assert len(shadow) == 7
    assert set(shadow["version"]) == {"2"} and set(shadow["champion_version"]) == {"1"}
    np.testing.assert_allclose(shadow["score"], shadow["champion_score"])  # same model, same rows


def test_not_ready_without_champion(spec, fitted):
    source = FakeSource(spec, {"1": fitted}, {})
    server, client = make_client(spec, source)
    with client:
        time.sleep(0.2)
        r = client.get("/ready")
        assert r.status_code == 503 and r.json()["ready"] is False
        assert client.get("/ping").status_code == 404  # as mlflow models serve without a model
        r = client.post("/v1/predict", json=good_record(spec), headers=AUTH)
        assert r.status_code == 503
        assert client.get("/health").status_code == 200


def test_fast_path_is_exact_or_not_used(spec, fitted, data):
    """The numpy replay equals the pipeline bit for bit, missing values included; unknown shapes opt out."""
    from sklearn.linear_model import LogisticRegression

    from rtml.serve.fastpath import compile_fast_path
    from rtml.serve.source import frame_to_records
    from rtml.serve.validation import RecordValidator

    raw, X = data
    validator = RecordValidator(spec)
    rows = frame_to_records(raw[spec.feature_names].head(200))
    assert any(r["Income"] is None for r in rows) and any(r["Home"] is None for r in rows)
    cols, _ = validator.validate(rows, single=False)
    fast = compile_fast_path(fitted, validator.columns, validator.numeric, spec.target.positive)
    assert fast is not None
    np.testing.assert_array_equal(fast(cols), fitted.predict_proba(validator.frame(cols))[:, 1])
    np.testing.assert_array_equal(fast(cols), fitted.predict_proba(X.head(200))[:, 1])
    # Not a Pipeline(ColumnTransformer, classifier): no fast path.
    assert compile_fast_path(LogisticRegression(), validator.columns, validator.numeric, "bad") is None


class GroupDecider:
    """A pyfunc-like model deciding per group, as the fairness-mitigated variant does: ``predict``
    returns ``score`` (the plain pipeline's) and ``label`` (1 for every ``Home == "rent"`` row,
    else score >= 0.9), so its labels disagree with the global threshold on both sides."""

    def __init__(self, pipe, label=None) -> None:
        self.pipe = pipe
        self.calls = 0
        self.label = label  # override the label column (a broken model), or drop it with False

    def predict(self, df):
        import pandas as pd

        self.calls += 1
        scores = self.pipe.predict_proba(df)[:, 1]
        labels = np.where(df["Home"].to_numpy() == "rent", 1, (scores >= 0.9).astype("int64"))
        out = pd.DataFrame({"score": scores, "label": labels.astype("int64")})
        if self.label is False:
            return out[["score"]]
        if self.label is not None:
            out["label"] = self.label
        return out


def mitigated_model(spec, version: str, pyfunc) -> Any:
    from rtml.serve.model import LoadedModel, outputs_for_pyfunc, scores_of
    from rtml.serve.validation import RecordValidator

    outputs = outputs_for_pyfunc(pyfunc, spec.target.positive)
    return LoadedModel(
        name="credit_risk", version=version, score=scores_of(outputs), validator=RecordValidator(spec),
        samples=[good_record(spec)], flavor="pyfunc", outputs=outputs, variant="mitigated", own_labels=True,
    )


def test_model_labels_replace_the_threshold_in_answers_logs_and_shadow(tmp_path, spec, fitted, data):
    from rtml.lake import Lake
    from rtml.serve.source import frame_to_records
    from rtml.settings import Settings
    from rtml.storage import LocalStore

    raw, X = data
    rows = frame_to_records(raw[spec.feature_names].head(60))
    decider = GroupDecider(fitted)
    expected = GroupDecider(fitted).predict(X.head(60))
    thr = spec.gates.quality.decision_threshold
    by_threshold = expected["score"].to_numpy() >= thr
    assert (expected["label"].to_numpy() != by_threshold).any()  # the test can tell the two rules apart
    want = ["bad" if x == 1 else "good" for x in expected["label"]]

    lake = Lake(Settings(home=tmp_path, storage="local"), LocalStore(tmp_path / "lake"))
    source = FakeSource(spec, {"m": mitigated_model(spec, "m", decider), "p": fitted},
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


def test_mitigated_shadow_logs_its_own_labels(tmp_path, spec, fitted, data):
    from rtml.lake import Lake
    from rtml.serve.source import frame_to_records
    from rtml.settings import Settings
    from rtml.storage import LocalStore

    raw, X = data
    rows = frame_to_records(raw[spec.feature_names].head(40))
    expected = GroupDecider(fitted).predict(X.head(40))
    lake = Lake(Settings(home=tmp_path, storage="local"), LocalStore(tmp_path / "lake"))
    source = FakeSource(spec, {"p": fitted, "m": mitigated_model(spec, "m", GroupDecider(fitted))},
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


def test_smoke_check_refuses_a_deciding_model_without_good_labels(spec, fitted):
    from rtml.serve.model import SmokeCheckError
    from rtml.serve.source import smoke_check

    assert smoke_check(mitigated_model(spec, "ok", GroupDecider(fitted))) == 1
    for bad, why in ((False, "no 'label' column"), (2, "0/1"), (0.5, "0/1")):
        with pytest.raises(SmokeCheckError, match=why):
            smoke_check(mitigated_model(spec, "bad", GroupDecider(fitted, label=bad)))


def test_pyfunc_outputs_take_scores_and_labels_from_one_frame():
    import pandas as pd

    from rtml.serve.model import outputs_for_pyfunc

    class Fixed:
        def __init__(self, out):
            self.out = out

        def predict(self, df):
            return self.out

    scores, labels = outputs_for_pyfunc(Fixed(pd.DataFrame({"score": [0.2, 0.9], "label": [1, 0]})), "bad")(None)
    assert scores.tolist() == [0.2, 0.9] and labels.tolist() == [1, 0] and labels.dtype == np.int64
    # no score-like column: the last column that is not the label
    scores, labels = outputs_for_pyfunc(Fixed(pd.DataFrame({"p": [0.3], "label": [True]})), "bad")(None)
    assert scores.tolist() == [0.3] and labels.tolist() == [1]
    scores, labels = outputs_for_pyfunc(Fixed(np.array([[0.6, 0.4]])), "bad")(None)
    assert scores.tolist() == [0.4] and labels is None
