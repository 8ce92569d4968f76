"""Hostile requests against a REAL ``rtml serve`` process (real MLflow server, real S3 lake).

A table of more than 40 bad requests (lone surrogates in keys and values, 400-digit numbers,
NaN/Infinity at any depth, deep nesting, huge and chunked bodies, wrong content types, non-object
JSON, duplicate keys, BOM, invalid UTF-8, wrong types, out-of-range values, unknown fields, bad
MLflow scoring payloads) gets only 4xx answers naming the problem; afterwards the endpoint still
answers and its prediction log still lands in the lake. ``POST /invocations`` answers exactly what
``mlflow.pyfunc.load_model(...).predict`` gives, in MLflow's scoring-server JSON.
"""

from __future__ import annotations

import io
import json
import time
import uuid

import pytest
from _serving import ServeProcess, credit_rows, register, spec_for, train, unique_name

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def env(mlflow_settings, tmp_path_factory):
    from rtml.registry.promotion import approve

    name = unique_name("hostile")
    spec = spec_for(name)
    pipe = train(spec, seed=3, max_iter=15)
    version = register(mlflow_settings, spec, pipe)
    approve(name, version, by="test")
    server = ServeProcess(mlflow_settings, name, tmp_path_factory.mktemp("serve")).start()
    try:
        server.wait_version(version)
        yield {"settings": mlflow_settings, "spec": spec, "name": name, "version": version, "server": server}
    finally:
        server.stop()


def good_rows(n: int = 5) -> list[dict]:
    from rtml.serve.source import frame_to_records
    from rtml.spec import load_spec

    raw, _ = credit_rows()
    rows = frame_to_records(raw[load_spec().feature_names].iloc[:40])
    return [r for r in rows if all(r[c] is not None for c in ("Age", "Seniority", "Time"))][:n]


def dumps(obj) -> bytes:
    return json.dumps(obj).encode()


def with_raw(rec: dict, key: str, raw: str) -> bytes:
    """The record's JSON with ``"key": <raw JSON text>`` (what json.dumps cannot write: NaN, lone surrogates)."""
    body = dumps({**rec, key: "__RAW__"})
    return body.replace(b'"__RAW__"', raw.encode())


def nested(depth: int, leaf: str = "1") -> str:
    return "[" * depth + leaf + "]" * depth


def bad_requests(rec: dict) -> list[tuple[str, str, bytes, dict, str | None]]:
    """(name, path, body, headers, field named in the answer or None)."""
    j = {"content-type": "application/json"}
    first, second = dict(rec), dict(rec)
    return [
        ("lone surrogate in event_id", "/v1/predict", with_raw(rec, "event_id", '"ev\\ud800"'), j, "event_id"),
        ("lone low surrogate in event_id", "/v1/predict", with_raw(rec, "event_id", '"\\udfff"'), j, "event_id"),
        ("lone surrogate in entity id", "/v1/predict", with_raw(rec, "application_id", '"a\\udbff"'), j,
         "application_id"),
        ("lone surrogate in a field name", "/v1/predict", dumps(rec)[:-1] + b', "x\\ud800": 1}', j, "x\\ud800"),
        ("lone surrogate in a categorical", "/v1/predict", with_raw(rec, "Home", '"rent\\ud800"'), j, "Home"),
        ("lone surrogate in records[1]", "/v1/predict",
         b'{"records": [' + dumps(first) + b"," + with_raw(second, "event_id", '"\\ud83d"') + b"]}", j,
         "records[1].event_id"),
        ("surrogate pair escapes only half", "/v1/predict", with_raw(rec, "event_id", '"\\ud83d\\u0041"'), j,
         "event_id"),
        ("400-digit integer", "/v1/predict", with_raw(rec, "Amount", "9" * 400), j, "Amount"),
        ("negative 400-digit integer", "/v1/predict", with_raw(rec, "Income", "-" + "9" * 400), j, "Income"),
        ("400-digit event id", "/v1/predict", with_raw(rec, "event_id", "1" * 400), j, "event_id"),
        ("5000-digit integer", "/v1/predict", with_raw(rec, "Amount", "9" * 5000), j, "body"),
        ("1e400", "/v1/predict", with_raw(rec, "Price", "1e400"), j, "Price"),
        ("NaN", "/v1/predict", with_raw(rec, "Age", "NaN"), j, "Age"),
        ("Infinity", "/v1/predict", with_raw(rec, "Price", "Infinity"), j, "Price"),
        ("-Infinity", "/v1/predict", with_raw(rec, "Debt", "-Infinity"), j, "Debt"),
        ("NaN in records[1]", "/v1/predict",
         b'{"records": [' + dumps(first) + b"," + with_raw(second, "Income", "NaN") + b"]}", j, "records[1].Income"),
        ("NaN nested deep", "/v1/predict", with_raw(rec, "Expenses", nested(50, "NaN")), j, "Expenses"),
        ("NaN as event id", "/v1/predict", with_raw(rec, "event_id", "NaN"), j, "event_id"),
        ("NaN in records list", "/v1/predict", b'{"records": [NaN]}', j, "records[0]"),
        ("5000 nested arrays", "/v1/predict", nested(5000).encode(), j, "body"),
        ("900 nested arrays in a value", "/v1/predict", with_raw(rec, "Age", nested(900)), j, "Age"),
        ("2000 nested objects", "/v1/predict", ('{"a":' * 2000 + "1" + "}" * 2000).encode(), j, "body"),
        ("huge body", "/v1/predict", with_raw(rec, "Home", '"' + "x" * 2_000_000 + '"'), j, "body"),
        ("text/plain", "/v1/predict", dumps(rec), {"content-type": "text/plain"}, "content-type"),
        ("form encoded", "/v1/predict", b"Age=30", {"content-type": "application/x-www-form-urlencoded"},
         "content-type"),
        ("latin-1 charset", "/v1/predict", dumps(rec), {"content-type": "application/json; charset=latin-1"},
         "content-type"),
        ("JSON number", "/v1/predict", b"42", j, None),
        ("JSON string", "/v1/predict", b'"hello"', j, None),
        ("JSON null", "/v1/predict", b"null", j, None),
        ("list of numbers", "/v1/predict", b"[1, 2, 3]", j, "records[0]"),
        ("records not a list", "/v1/predict", b'{"records": "all"}', j, "records"),
        ("records empty", "/v1/predict", b'{"records": []}', j, "records"),
        ("duplicate key", "/v1/predict", dumps(rec)[:-1] + b', "Age": 31}', j, "Age"),
        ("duplicate records key", "/v1/predict", b'{"records": [], "records": [' + dumps(rec) + b"]}", j, "records"),
        ("duplicate key in records[0]", "/v1/predict",
         b'{"records": [' + dumps(rec)[:-1] + b', "Home": "rent"}]}', j, "Home"),
        ("UTF-8 BOM", "/v1/predict", b"\xef\xbb\xbf" + dumps(rec), j, "body"),
        ("invalid UTF-8", "/v1/predict", dumps(rec)[:-1] + b', "event_id": "\xff\xfe"}', j, "body"),
        ("surrogate as UTF-8 bytes", "/v1/predict", dumps(rec)[:-1] + b', "event_id": "\xed\xa0\x80"}', j, "body"),
        ("UTF-16 body", "/v1/predict", json.dumps(rec).encode("utf-16"), j, "body"),
        ("empty body", "/v1/predict", b"", j, "body"),
        ("truncated JSON", "/v1/predict", dumps(rec)[:-5], j, "body"),
        ("wrong type number", "/v1/predict", dumps({**rec, "Age": "thirty"}), j, "Age"),
        ("bool as number", "/v1/predict", dumps({**rec, "Amount": True}), j, "Amount"),
        ("list as categorical", "/v1/predict", dumps({**rec, "Home": ["rent"]}), j, "Home"),
        ("unknown category", "/v1/predict", dumps({**rec, "Home": "castle"}), j, "Home"),
        ("below min", "/v1/predict", dumps({**rec, "Age": 3}), j, "Age"),
        ("above max", "/v1/predict", dumps({**rec, "Time": 10_000}), j, "Time"),
        ("non-integral integer", "/v1/predict", dumps({**rec, "Time": 12.5}), j, "Time"),
        ("missing field", "/v1/predict", dumps({k: v for k, v in rec.items() if k != "Records"}), j, "Records"),
        ("unknown field", "/v1/predict", dumps({**rec, "Shoe_size": 42}), j, "Shoe_size"),
        ("null not nullable", "/v1/predict", dumps({**rec, "Age": None}), j, "Age"),
        ("event id an object", "/v1/predict", dumps({**rec, "event_id": {"a": 1}}), j, "event_id"),
        ("event id of 300 chars", "/v1/predict", dumps({**rec, "event_id": "e" * 300}), j, "event_id"),
        ("too many records", "/v1/predict", dumps({"records": [rec] * 1001}), j, "records"),
        ("invocations: two formats", "/invocations", dumps({"dataframe_records": [rec], "instances": [rec]}), j,
         "instances"),
        ("invocations: no format", "/invocations", dumps({"data": [rec]}), j, "data"),
        ("invocations: a list", "/invocations", dumps([rec]), j, None),
        ("invocations: short split row", "/invocations",
         dumps({"dataframe_split": {"columns": list(rec), "data": [[1, 2]]}}), j, "dataframe_split.data[0]"),
        ("invocations: surrogate", "/invocations",
         b'{"dataframe_records": [' + with_raw(rec, "Job", '"\\ud800"') + b"]}", j, "dataframe_records[0].Job"),
        ("invocations: NaN", "/invocations", b'{"dataframe_records": [' + with_raw(rec, "Age", "NaN") + b"]}", j,
         "dataframe_records[0].Age"),
        ("invocations: csv", "/invocations", b"Age\n30\n", {"content-type": "text/csv"}, "content-type"),
    ]


def test_bad_requests_get_4xx_and_the_endpoint_keeps_logging(env):
    from rtml.lake import Lake

    server, spec = env["server"], env["spec"]
    rec = good_rows(1)[0]
    table = bad_requests(rec)
    assert len(table) >= 40
    answers = []
    with server.client() as c:
        for name, path, body, headers, field in table:
            r = c.post(path, content=body, headers=headers)
            answers.append((name, r.status_code, r.text[:200]))
            assert 400 <= r.status_code < 500, (name, r.status_code, r.text[:300])
            out = r.json()
            assert out.get("error") or out.get("message"), (name, out)
            if field is not None:
                assert out.get("field") == field, (name, out)
        # a body over the limit without Content-Length (chunked): refused while it streams
        chunked = c.post("/v1/predict", content=iter([b'{"Home": "', b"x" * 1_500_000, b'"}']),
                         headers={"content-type": "application/json"})
        assert chunked.status_code == 413, chunked.text
        metrics = c.get("/metrics").text
        assert c.get("/ready").status_code == 200
    assert 'status="500"' not in metrics, [line for line in metrics.splitlines() if "500" in line]
    # ... and it keeps answering and logging: these rows land in the lake while it runs
    tag = uuid.uuid4().hex[:8]
    ids = [f"after-{tag}-{i}" for i in range(6)]
    with server.client() as c:
        for i, row in enumerate(good_rows(6)):
            r = server.predict(c, {**row, "event_id": ids[i]})
            assert r.status_code == 200, r.text
    lake = Lake(env["settings"])
    deadline = time.monotonic() + 30
    logged: list[str] = []
    while time.monotonic() < deadline:
        preds = lake.read_batches(spec.dataset.name, "predictions")
        logged = sorted(set(preds["event_id"].dropna()) & set(ids)) if len(preds) else []
        if len(logged) == len(ids):
            break
        time.sleep(0.5)
    assert logged == sorted(ids), (logged, server.log_tail())
    assert server.info()["prediction_log"]["pending_rows"] < 100
    log_text = server.log_tail(2000)
    for crash in ("predict failed", "invocations failed", "Exception in ASGI application", "could not be written"):
        assert crash not in log_text, server.log_tail(60)


def test_invocations_answer_like_mlflow_models_serve(env):
    import mlflow
    from mlflow.pyfunc.scoring_server import predictions_to_json

    from rtml.features import to_frame

    server = env["server"]
    rows = good_rows(5)
    mlflow.set_tracking_uri(env["settings"].mlflow_tracking_uri)
    model = mlflow.pyfunc.load_model(f"models:/{env['name']}/{env['version']}")
    buf = io.StringIO()
    # the scoring server casts the JSON to the signature's types (ints to double) before predict
    predictions_to_json(model.predict(to_frame(rows, env["spec"])), buf)
    want = json.loads(buf.getvalue())
    cols = list(rows[0])
    with server.client() as c:
        for body in ({"dataframe_records": rows},
                     {"dataframe_split": {"columns": cols, "data": [[r[k] for k in cols] for r in rows]}},
                     {"instances": rows}):
            r = c.post("/invocations", json=body)
            assert r.status_code == 200, r.text
            assert r.json() == want
            assert r.headers["x-model-version"] == env["version"]
        server.answered_rows += 15
