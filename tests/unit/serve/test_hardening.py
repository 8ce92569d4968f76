"""The serving app in-process: hostile bytes, bounds, hung models, dead letters, /invocations, group fast path."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from support.serving import AUTH, FakeSource, good_record, make_client, wait_until

pytestmark = [
    pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`"),
    pytest.mark.filterwarnings("ignore:.*Add type hints to the `predict` method"),  # mlflow, about the wrapper
]

JSON = {**AUTH, "content-type": "application/json"}


def local_lake(tmp_path):
    from rtml.lake import Lake
    from rtml.settings import Settings
    from rtml.storage import LocalStore

    return Lake(Settings(home=tmp_path, storage="local"), LocalStore(tmp_path / "lake"))


# --- bounds, hung models, one bad record ---------------------------------------------------------
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


def test_full_prediction_log_gives_503(tmp_path, spec, fitted):
    lake = local_lake(tmp_path)
    source = FakeSource(spec, {"1": fitted}, {"champion": "1"})
    server, client = make_client(spec, source, lake=lake, max_log_rows=4)
    rec = good_record(spec)
    with client:
        assert wait_until(lambda: server.ready)
        put = lake.store.put
        lake.store.put = lambda key, data: (_ for _ in ()).throw(OSError("store down"))
        assert client.post("/v1/predict", json={"records": [rec] * 4}, headers=AUTH).status_code == 200
        r = client.post("/v1/predict", json=rec, headers=AUTH)
        assert r.status_code == 503 and r.headers["retry-after"] and "prediction log" in r.json()["error"]
        text = client.get("/metrics").text
        assert metric(text, 'rtml_overload_rejections_total{reason="log_full"}') == 1
        assert metric(text, 'rtml_log_pending_rows{kind="predictions"}') == 4
        lake.store.put = put  # the store is back: the rows are written, requests are accepted again
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


# --- POST /invocations ---------------------------------------------------------------------------
def test_invocations_answers_like_mlflow_models_serve(spec, fitted, data):
    from rtml.serve.source import frame_to_records

    raw, X = data
    rows = frame_to_records(raw[spec.feature_names].head(7))
    proba = fitted.predict_proba(X.head(7)).tolist()  # what mlflow's pyfunc (predict_fn=predict_proba) returns
    cols = spec.feature_names
    bodies = [
        {"dataframe_records": rows},
        {"dataframe_split": {"columns": cols, "data": [[r[c] for c in cols] for r in rows]}},
        {"dataframe_split": {"index": list(range(7)), "columns": cols, "data": [[r[c] for c in cols] for r in rows]}},
        {"instances": rows},
        {"inputs": {c: [r[c] for r in rows] for c in cols}},
        {"dataframe_records": rows, "params": {}},
    ]
    source = FakeSource(spec, {"1": fitted}, {"champion": "1"})
    server, client = make_client(spec, source)
    with client:
        assert wait_until(lambda: server.ready)
        for body in bodies:
            r = client.post("/invocations", json=body, headers=AUTH)
            assert r.status_code == 200, (body.keys(), r.text)
            assert list(r.json()) == ["predictions"] and r.headers["x-model-version"] == "1"
            np.testing.assert_array_equal(np.array(r.json()["predictions"]), np.array(proba))
        bad = [
            ({}, None), ({"dataframe_records": rows, "instances": rows}, "instances"), ({"records": rows}, "records"),
            ([rows[0]], None), ({"dataframe_split": {"columns": cols, "data": [[1, 2]]}}, "dataframe_split.data[0]"),
            ({"dataframe_split": {"columns": [*cols, cols[0]], "data": []}}, "dataframe_split.columns"),
            ({"dataframe_records": [{**rows[0], "Age": "x"}]}, "dataframe_records[0].Age"),
            ({"dataframe_split": {"columns": cols, "data": [[r[c] for c in cols] for r in rows[:1]] * 2 + [
                [None] * len(cols)]}}, "dataframe_split.data[2].Seniority"),
            ({"instances": {"Age": [1, 2], "Home": [None]}}, "instances"),
            ({"dataframe_records": rows, "params": 3}, "params"),
        ]
        for body, field in bad:
            r = client.post("/invocations", json=body, headers=AUTH)
            assert r.status_code == 400, (body, r.text)
            assert r.json()["error_code"] == "BAD_REQUEST" and r.json()["message"]
            assert r.json().get("field") == field, r.json()
        assert client.post("/invocations", content=b"a,b\n1,2", headers={**AUTH, "content-type": "text/csv"}
                           ).status_code == 415
        assert client.post("/invocations", json={"dataframe_records": rows}).status_code == 401
        # what MLflow's scoring-server clients poll before they invoke
        assert client.get("/ping").status_code == 200 and client.get("/version").text.startswith("3.")


# --- the mitigated variant's fast path -----------------------------------------------------------
class FakePyfunc:
    """What mlflow.pyfunc.load_model gives for rtml.evaluate.mitigation's wrapper: predict + unwrap_python_model."""

    def __init__(self, inner) -> None:
        self.inner = inner

    def predict(self, df):
        return self.inner.predict(None, df)

    def unwrap_python_model(self):
        return self.inner


def mitigated(spec, fitted, data, thresholds=None):
    from rtml.evaluate.grouprule import GroupRule
    from rtml.evaluate.mitigation import MitigatedModel
    from rtml.serve.model import LoadedModel, outputs_for_pyfunc, scores_of
    from rtml.serve.validation import RecordValidator

    keys = [f"marital_status={m} & age_group={a}" for m in ("married", "single") for a in ("18-29", "30-44", "45+")]
    rule = GroupRule(["marital_status", "age_group"],
                     thresholds or {**{k: 0.2 + 0.1 * i for i, k in enumerate(keys)}, "__other__": 0.35}, "__other__")
    inner = MitigatedModel(spec.model_dump(mode="json"), rule.to_dict())
    inner._setup(fitted)
    outputs = outputs_for_pyfunc(FakePyfunc(inner), spec.target.positive)
    raw, X = data
    from rtml.serve.source import frame_to_records

    samples = frame_to_records(raw[spec.feature_names].head(20))
    model = LoadedModel(name="credit_risk", version="m", score=scores_of(outputs), validator=RecordValidator(spec),
                        samples=samples, flavor="pyfunc", outputs=outputs, variant="mitigated", own_labels=True)
    return model, inner


def test_group_fast_path_equals_the_pyfunc(spec, fitted, data):
    from rtml.serve.fastpath import group_edge_rows
    from rtml.serve.source import frame_to_records

    raw, X = data
    model, inner = mitigated(spec, fitted, data)
    assert model.enable_group_fast_path() is True
    rows = frame_to_records(raw[spec.feature_names].head(300)) + group_edge_rows(spec, [good_record(spec)])
    ok = []
    for r in rows:
        try:
            model.validator.validate([r], single=True)
            ok.append(r)
        except Exception:  # noqa: BLE001, S112 - rows the endpoint would refuse
            continue
    cols, _ = model.validator.validate(ok, single=False)
    want = inner.predict(None, model.validator.frame(cols))
    scores, labels, native = model.run(cols, native=True)
    np.testing.assert_array_equal(scores, want["score"].to_numpy())
    np.testing.assert_array_equal(labels, want["label"].to_numpy())
    assert len(set(labels.tolist())) == 2 and len(ok) > 300
    assert native["label"] is labels
    assert model.info()["fast_path"] is True


def test_group_fast_path_is_not_used_when_it_would_differ(spec, fitted, data, monkeypatch):
    import rtml.serve.model as serve  # where LoadedModel looks it up

    model, _ = mitigated(spec, fitted, data)
    real = serve.compile_group_thresholds

    def off_by_one_group(rule, mspec, columns):
        fn = real(rule, mspec, columns)
        return lambda cols: fn(cols) + 0.05  # a replay that decides differently
    monkeypatch.setattr(serve, "compile_group_thresholds", off_by_one_group)
    assert model.enable_group_fast_path() is False
    assert model.fast_outputs is None and model.info()["fast_path"] is False


def test_mitigated_invocations_answer_score_and_label_records(spec, fitted, data):
    from rtml.serve.source import frame_to_records

    raw, X = data
    model, inner = mitigated(spec, fitted, data)
    rows = frame_to_records(raw[spec.feature_names].head(9))
    want = inner.predict(None, X.head(9))
    source = FakeSource(spec, {"m": model}, {"champion": "m"})
    server, client = make_client(spec, source)
    with client:
        assert wait_until(lambda: server.ready)
        assert client.get("/v1/model", headers=AUTH).json()["fast_path"] is True  # enabled on load
        r = client.post("/invocations", json={"dataframe_records": rows}, headers=AUTH)
    assert r.status_code == 200, r.text
    assert r.json()["predictions"] == want.to_dict(orient="records")
