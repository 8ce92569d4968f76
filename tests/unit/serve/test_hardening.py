"""The serving app in-process: hostile bytes, bounds, hung models, dead letters, /invocations, group fast path."""

from __future__ import annotations

import json
import threading
from typing import Any

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


# --- parsing -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        (b'{"Age": "\\ud800"}', 400, "Age"),
        (b'{"\\udc00x": 1}', 400, "\\udc00x"),
        (b'{"records": [{"a": 1}, {"event_id": "ok\\udbff"}]}', 400, "records[1].event_id"),
        (b'{"a": 1, "a": 2}', 400, "a"),
        (b'{"records": [{"a": 1}], "records": []}', 400, "records"),
        (b"\xef\xbb\xbf{}", 400, "body"),
        (b'{"a": "\xff"}', 400, "body"),
        (b'{"a": "\xed\xa0\x80"}', 400, "body"),  # a surrogate encoded as UTF-8 (CESU): invalid UTF-8
        ('{"a": "x"}'.encode("utf-16"), 400, "body"),
        (b"   ", 400, "body"),
        (b"[" * 3000 + b"]" * 3000, 400, "body"),
        (b'{"a": 1' + b"0" * 5000 + b"}", 400, "body"),  # over Python's integer digit limit
    ],
)
def test_load_json_refuses_hostile_bytes_naming_the_field(body, status, field):
    from rtml.serve.validation import RequestError, load_json

    with pytest.raises(RequestError) as err:
        load_json(body)
    assert err.value.status == status and err.value.field == field, err.value.message
    json.dumps(err.value.body()).encode("ascii")  # the answer itself is always encodable


def test_load_json_keeps_good_bodies_and_strings_that_look_like_keys():
    from rtml.serve.validation import load_json

    assert load_json(b'{"Home": "a\\":", "x": [1, {"y": "z:"}]}') == {"Home": 'a":', "x": [1, {"y": "z:"}]}
    assert load_json(b'{"a": NaN}')["a"] != load_json(b'{"a": NaN}')["a"]  # NaN reaches the validator


def test_validator_names_huge_numbers_and_long_ids(spec):
    from rtml.serve.validation import RecordValidator, RequestError

    v = RecordValidator(spec)
    rec = good_record(spec)
    for bad, field in (({**rec, "Assets": 10**400}, "Assets"), ({**rec, "Income": -(10**400)}, "Income"),
                       ({**rec, "event_id": "e" * 300}, "event_id"), ({**rec, "event_id": 2**70}, "event_id"),
                       ({**rec, "Home": "\ud800"}, "Home"), ({**rec, "event_id": "x\udfff"}, "event_id")):
        with pytest.raises(RequestError) as err:
            v.validate([bad], single=True)
        assert err.value.status == 422 and err.value.field == field, err.value.message
        json.dumps(err.value.body()).encode("ascii")


@pytest.mark.parametrize(
    ("ctype", "ok"),
    [(None, True), ("application/json", True), ("application/json; charset=UTF-8", True),
     ("text/csv", False), ("application/x-www-form-urlencoded", False), ("application/json; charset=latin-1", False),
     ("application/json; boundary=x", False)],
)
def test_content_types(ctype, ok):
    from rtml.serve.validation import RequestError, check_content_type

    if ok:
        check_content_type(ctype)
    else:
        with pytest.raises(RequestError) as err:
            check_content_type(ctype)
        assert err.value.status == 415


# --- the prediction log: dead letter, bound ------------------------------------------------------
def log_item(n: int, event_ids: list[Any], start: float = 100.0) -> dict[str, Any]:
    from datetime import datetime

    return {
        "request_id": [f"r{i}" for i in range(n)], "row": list(range(n)), "time": datetime(2026, 1, 1),
        "model": "m", "keys": {"event_id": event_ids}, "features": {"Age": [start + i for i in range(n)]},
        "version": ["1"] * n, "score": [0.5] * n, "label": ["good"] * n, "extra": ("version", "score", "label"),
    }


def test_a_row_the_log_cannot_write_goes_to_the_dead_letter_and_the_rest_is_written(tmp_path, spec):
    from rtml.serve.predlog import PredictionLog

    lake = local_lake(tmp_path)
    dead: list[int] = []
    plog = PredictionLog("predictions", spec, lake, on_dead=dead.append)
    plog.add(log_item(3, ["a", "b", "c"]), 3)
    plog.add(log_item(4, ["d", "bad\ud800", "f", "g"], 200.0), 4)  # bypassing the endpoint's checks
    plog.add(log_item(2, ["h", "i"], 300.0), 2)
    manifest = plog.flush()
    assert manifest["accepted"] == 8 and manifest["quarantined"] == 1 and plog.pending_rows == 0
    assert plog.dead_rows == 1 and dead == [1]
    rows = lake.read_batches(spec.dataset.name, "predictions")
    assert sorted(rows["event_id"]) == ["a", "b", "c", "d", "f", "g", "h", "i"]
    qkey = lake.quarantine_key(spec.dataset.name, "predictions", manifest["batch_id"])
    rejected = [json.loads(line) for line in lake.store.get(qkey).decode("ascii").splitlines()]
    assert len(rejected) == 1 and rejected[0]["event_id"] == "bad\ud800" and rejected[0]["Age"] == 201.0
    assert "surrogate" in rejected[0]["reason"]
    # ... and the log keeps writing afterwards
    plog.add(log_item(2, ["j", "k"]), 2)
    assert plog.flush()["accepted"] == 2


def test_micro_batches_of_versions_with_other_inputs_are_written_together(tmp_path, spec):
    from rtml.serve.predlog import PredictionLog

    lake = local_lake(tmp_path)
    plog = PredictionLog("predictions", spec, lake)
    other = log_item(2, ["b1", "b2"], 200.0)
    other["features"] = {"Age": [1.0, 2.0], "Income": [5.0, None]}  # a version with one more input
    plog.add(log_item(2, ["a1", "a2"]), 2)
    plog.add(other, 2)
    plog.add(log_item(1, ["c1"], 300.0), 1)
    manifest = plog.flush()
    assert manifest["accepted"] == 5 and manifest["quarantined"] == 0
    rows = lake.read_batches(spec.dataset.name, "predictions").set_index("event_id")
    assert rows.loc["b1", "Income"] == 5.0 and np.isnan(rows.loc["a1", "Income"]) and np.isnan(rows.loc["c1", "Income"])
    assert list(rows["Age"]) == [100.0, 101.0, 1.0, 2.0, 300.0]


def test_the_last_flush_waits_for_one_still_writing(tmp_path, spec):
    """At shutdown the periodic flush may still be writing the rows it took: the final flush
    waits for it, so the process never exits with those rows in flight."""
    from rtml.serve.predlog import PredictionLog

    lake = local_lake(tmp_path)
    put = lake.store.put
    writing, release = threading.Event(), threading.Event()

    def slow_put(key, data):
        if "_manifests" not in key:
            writing.set()
            release.wait(5)
        return put(key, data)

    lake.store.put = slow_put
    plog = PredictionLog("predictions", spec, lake)
    plog.add(log_item(3, ["a", "b", "c"]), 3)
    first = threading.Thread(target=plog.flush)
    first.start()
    assert writing.wait(5)
    plog.add(log_item(2, ["d", "e"]), 2)
    lake.store.put = put
    done: list[object] = []
    last = threading.Thread(target=lambda: done.append(plog.flush()))
    last.start()
    last.join(0.3)
    assert last.is_alive() and not done  # it waits while the first one writes
    release.set()
    first.join(5)
    last.join(5)
    rows = lake.read_batches(spec.dataset.name, "predictions")
    assert sorted(rows["event_id"]) == ["a", "b", "c", "d", "e"] and plog.pending_rows == 0


def test_a_failing_store_keeps_rows_and_the_bound_says_full(tmp_path, spec):
    from rtml.serve.predlog import PredictionLog

    lake = local_lake(tmp_path)
    put = lake.store.put
    lake.store.put = lambda key, data: (_ for _ in ()).throw(OSError("store down"))
    plog = PredictionLog("predictions", spec, lake, max_rows=5)
    plog.add(log_item(3, ["a", "b", "c"]), 3)
    with pytest.raises(OSError):
        plog.flush()
    assert plog.pending_rows == 3 and not plog.full and plog.dead_rows == 0
    plog.add(log_item(2, ["d", "e"]), 2)
    assert plog.full
    lake.store.put = put
    assert plog.flush()["accepted"] == 5 and plog.pending_rows == 0


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
