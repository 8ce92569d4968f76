"""rtml.serve.app: the routes in-process (Starlette's test client, an in-memory registry): bad payloads
are 4xx naming the field, the bearer token guards predict, model and admin routes, readiness,
MLflow's /invocations protocol and /ping, request ids, body limits, JSON 404/405."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
from support.serving import AUTH, FakeSource, good_record, make_client, wait_until

pytestmark = [
    pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`"),
    pytest.mark.filterwarnings("ignore:.*Add type hints to the `predict` method"),  # mlflow, about the wrapper
]


_DROP = object()


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


def test_open_invocations_answer_without_the_token_and_nothing_else_does(spec, fitted, data):
    """``serve_open_invocations``: MLflow clients that send no header score as against ``mlflow models
    serve``; rtml's own predict, model info and admin routes still need the token."""
    from rtml.serve.source import frame_to_records

    rows = frame_to_records(data[0][spec.feature_names].head(3))
    server, client = make_client(spec, FakeSource(spec, {"1": fitted}, {"champion": "1"}), open_invocations=True)
    with client:
        assert wait_until(lambda: server.ready)
        r = client.post("/invocations", json={"dataframe_records": rows})
        assert r.status_code == 200 and len(r.json()["predictions"]) == 3
        assert client.post("/invocations", json={"dataframe_records": [{"Age": "x"}]}).status_code == 400
        assert client.post("/v1/predict", json=good_record(spec)).status_code == 401
        assert client.get("/v1/model").status_code == 401
        assert client.post("/admin/reload").status_code == 401


def test_mitigated_invocations_answer_score_and_label_records(spec, data, mitigated):
    from rtml.serve.source import frame_to_records

    raw, X = data
    model, inner = mitigated()
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


def test_request_ids_are_echoed_only_when_printable_and_short(spec, served):
    _, client = served
    rec = good_record(spec)
    r = client.post("/v1/predict", json=rec, headers={**AUTH, "x-request-id": "order-17"})
    assert r.json()["request_id"] == "order-17" and r.headers["x-request-id"] == "order-17"
    assert r.headers["x-model-version"] == "1"
    for bad in ("x" * 129, "tab\there"):
        r = client.post("/v1/predict", json=rec, headers={**AUTH, "x-request-id": bad})
        rid = r.json()["request_id"]
        assert rid != bad and len(rid) == 32 and int(rid, 16) >= 0  # one of ours (uuid4 hex)


def test_body_limits_are_checked_before_reading(spec, served):
    server, client = served
    limit = server.config.max_body_bytes
    r = client.post("/v1/predict", content=b"{}", headers={**AUTH, "content-length": str(limit + 1)})
    assert r.status_code == 413 and r.json()["field"] == "body"
    r = client.post("/v1/predict", content=b"{}", headers={**AUTH, "content-length": "lots"})
    assert r.status_code == 400 and r.json()["field"] == "content-length"
    r = client.post("/v1/predict", content=b"a,b", headers={**AUTH, "content-type": "text/csv"})
    assert r.status_code == 415 and r.json()["field"] == "content-type"


def test_unknown_routes_and_methods_answer_json(served):
    _, client = served
    r = client.get("/v2/nothing")
    assert r.status_code == 404 and "/v2/nothing" in r.json()["error"]
    r = client.get("/v1/predict", headers=AUTH)
    assert r.status_code == 405 and "GET" in r.json()["error"]
    assert client.get("/health").json() == {"status": "ok", "pid": os.getpid()}
    ready = client.get("/ready").json()
    assert ready["ready"] is True and ready["version"] == "1"


def test_a_model_failure_is_a_500_without_details(spec, fitted):
    class Broken:
        classes_ = np.array([0, 1])

        def __init__(self) -> None:
            self.fail = False

        def predict_proba(self, df):
            if self.fail:
                raise RuntimeError("secret path /srv/model.pkl")
            return fitted.predict_proba(df)

    model = Broken()
    server, client = make_client(spec, FakeSource(spec, {"1": model}, {"champion": "1"}))
    with client:
        assert wait_until(lambda: server.ready)
        model.fail = True
        r = client.post("/v1/predict", json=good_record(spec), headers=AUTH)
        assert r.status_code == 500 and r.json()["error"] == "internal error: RuntimeError"
        assert "secret" not in r.text and r.json()["request_id"]
        r = client.post("/invocations", json={"dataframe_records": [good_record(spec)]}, headers=AUTH)
        assert r.status_code == 500 and r.json()["error_code"] == "INTERNAL_ERROR" and "secret" not in r.text
