"""rtml.serve.client: talking to a running endpoint (an httpx MockTransport stands in for it): reload,
waiting for a version, the live smoke check comparing live answers with offline predictions, and
the holdout rows it uses."""

from __future__ import annotations

import functools
import json

import httpx
import pytest
from support.serving import good_record

from rtml.serve import client as sc
from rtml.serve.model import LoadedModel, SmokeCheckError, scorer_for_estimator
from rtml.serve.validation import RecordValidator

TOKEN = "client-test-token"


@pytest.fixture
def endpoint(monkeypatch):
    """``endpoint(handler)``: every httpx.Client the module makes talks to ``handler``; returns the requests seen."""
    seen: list[httpx.Request] = []

    def install(handler):
        def record(request: httpx.Request) -> httpx.Response:
            seen.append(request)
            return handler(request)

        monkeypatch.setattr(httpx, "Client", functools.partial(httpx.Client, transport=httpx.MockTransport(record)))
        return seen

    return install


def test_request_reload_posts_with_the_token(endpoint):
    seen = endpoint(lambda r: httpx.Response(200, json={"version": "4", "swapped": True}))
    assert sc.request_reload("http://serve.test", TOKEN) == {"version": "4", "swapped": True}
    (req,) = seen
    assert (req.method, str(req.url)) == ("POST", "http://serve.test/admin/reload")
    assert req.headers["authorization"] == f"Bearer {TOKEN}"


def test_request_reload_raises_on_an_error_status(endpoint):
    endpoint(lambda r: httpx.Response(401, json={"error": "missing or wrong bearer token"}))
    with pytest.raises(httpx.HTTPStatusError, match="401"):
        sc.request_reload("http://serve.test", "wrong")


def test_wait_for_version_returns_once_served(endpoint, monkeypatch):
    monkeypatch.setattr(sc.time, "sleep", lambda s: None)
    answers = iter([{"version": "3"}, {"version": "3", "last_error": {"version": "2", "error": "old"}},
                    {"version": "4", "aliases": ["champion"]}])
    seen = endpoint(lambda r: httpx.Response(200, json=next(answers)))
    assert sc.wait_for_version("4", "http://serve.test", TOKEN)["aliases"] == ["champion"]
    assert [r.url.path for r in seen] == ["/v1/model"] * 3


def test_wait_for_version_stops_when_the_endpoint_refused_it(endpoint, monkeypatch):
    monkeypatch.setattr(sc.time, "sleep", lambda s: None)
    endpoint(lambda r: httpx.Response(200, json={"version": "3", "last_error": {"version": "4", "error": "corrupt"}}))
    with pytest.raises(RuntimeError, match="refused version 4: corrupt"):
        sc.wait_for_version(4, "http://serve.test", TOKEN)


def test_wait_for_version_times_out_naming_what_is_served(endpoint, monkeypatch):
    clock = iter(range(0, 1000, 10))
    monkeypatch.setattr(sc.time, "monotonic", lambda: next(clock))  # 10 s per poll, no real waiting
    monkeypatch.setattr(sc.time, "sleep", lambda s: None)
    endpoint(lambda r: httpx.Response(200, json={"version": "3"}))
    with pytest.raises(TimeoutError, match="still serves version 3 after 30s, not 4"):
        sc.wait_for_version("4", "http://serve.test", TOKEN, timeout=30)


# --- the live smoke check ------------------------------------------------------------------------
class FakeRegistrySource:
    """Stands in for RegistrySource: ``load`` gives the model under test."""

    model: LoadedModel

    def __init__(self, name, spec, settings) -> None:
        pass

    def load(self, version):
        return self.model


@pytest.fixture
def offline(monkeypatch, spec, fitted):
    """Patch the registry and mlflow: live_smoke_check loads ``model`` (a plain sklearn version 5)."""
    import mlflow

    model = LoadedModel(name="credit_risk", version="5", score=scorer_for_estimator(fitted, spec.target.positive),
                        validator=RecordValidator(spec))
    FakeRegistrySource.model = model
    monkeypatch.setattr(sc, "RegistrySource", FakeRegistrySource)
    monkeypatch.setattr(mlflow, "set_tracking_uri", lambda uri: None)
    return model


def _rows(spec, data, n=6):
    from rtml.serve.source import frame_to_records

    raw, _ = data
    return frame_to_records(raw[spec.feature_names].head(n))


def _answer(version, scores, labels=None):
    preds = [{"score": float(s), "label": lab} for s, lab in zip(scores, labels or ["good"] * len(scores), strict=True)]
    return lambda r: httpx.Response(200, json={"version": version, "predictions": preds})


def test_live_smoke_check_passes_when_answers_equal_offline(endpoint, offline, spec, fitted, data):
    rows = _rows(spec, data)
    want = fitted.predict_proba(offline.validator.frame(offline.validator.validate(rows, single=False)[0]))[:, 1]
    seen = endpoint(_answer("5", want))
    out = sc.live_smoke_check("credit_risk", "5", rows, "http://serve.test", TOKEN, spec=spec)
    assert out == {"rows": 6, "max_abs_diff": 0.0, "version": "5"}
    sent = json.loads(seen[0].content)["records"]
    assert len(sent) == 6 and set(sent[0]) == set(offline.validator.columns)


@pytest.mark.parametrize(
    ("version", "shift", "why"),
    [("4", 0.0, "answered with version 4, expected 5"), ("5", 1e-6, "differ from offline predictions by up to 1e-06")],
)
def test_live_smoke_check_fails_on_another_version_or_other_scores(endpoint, offline, spec, fitted, data,
                                                                   version, shift, why):
    rows = _rows(spec, data)
    want = fitted.predict_proba(offline.validator.frame(offline.validator.validate(rows, single=False)[0]))[:, 1]
    endpoint(_answer(version, want + shift))
    with pytest.raises(SmokeCheckError, match=why):
        sc.live_smoke_check("credit_risk", "5", rows, "http://serve.test", TOKEN, spec=spec)


def test_live_smoke_check_fails_on_an_error_answer(endpoint, offline, spec, data):
    endpoint(lambda r: httpx.Response(503, json={"error": "no model loaded yet"}))
    with pytest.raises(SmokeCheckError, match="answered 503"):
        sc.live_smoke_check("credit_risk", "5", _rows(spec, data), "http://serve.test", TOKEN, spec=spec)


def test_live_smoke_check_compares_the_labels_of_a_deciding_version(endpoint, monkeypatch, spec, fitted, data,
                                                                   deciding_model, group_decider):
    import mlflow

    model = deciding_model("5", group_decider(fitted))
    FakeRegistrySource.model = model
    monkeypatch.setattr(sc, "RegistrySource", FakeRegistrySource)
    monkeypatch.setattr(mlflow, "set_tracking_uri", lambda uri: None)
    rows = _rows(spec, data)
    scores, labels = model.outputs(model.validator.frame(model.validator.validate(rows, single=False)[0]))
    names = ["bad" if x == 1 else "good" for x in labels]
    endpoint(_answer("5", scores, names))
    out = sc.live_smoke_check("credit_risk", "5", rows, "http://serve.test", TOKEN, spec=spec)
    assert out["labels_checked"] == 6
    flipped = ["good" if n == "bad" else "bad" for n in names[:1]] + names[1:]
    endpoint(_answer("5", scores, flipped))
    with pytest.raises(SmokeCheckError, match="1 of 6 live labels differ"):
        sc.live_smoke_check("credit_risk", "5", rows, "http://serve.test", TOKEN, spec=spec)


def test_acceptable_rows_keep_what_the_endpoint_accepts(spec):
    good = good_record(spec)
    rows = [good, {**good, "Age": 7}, {**good, "Home": "castle"}, {**good, "Income": None}]
    assert sc._acceptable(spec, rows) == [good, {**good, "Income": None}]
    fallback = sc._acceptable(spec, [{**good, "Age": 7}])  # none fit: rows made from the spec
    assert len(fallback) == 5
    RecordValidator(spec).validate(fallback, single=False)


def test_holdout_rows_sample_recent_lake_events(monkeypatch, spec, data):
    import rtml.lake

    raw, _ = data
    events = raw[spec.feature_names].head(40).copy()
    events.loc[0, "Age"] = 7.0  # out of the spec's range: not sent to the endpoint
    calls = []

    class FakeLake:
        def manifests(self, ds, kind):
            calls.append((ds, kind))
            return [{"batch_id": "b1"}, {"batch_id": "b2"}]

        def read_batches(self, ds, kind, ids):
            assert ids == ["b1", "b2"]
            return events

    monkeypatch.setattr(rtml.lake, "Lake", FakeLake)
    a = sc.holdout_rows(spec, n=30, seed=3)
    assert a == sc.holdout_rows(spec, n=30, seed=3)  # seeded
    assert calls[0] == (spec.dataset.name, "events") and 0 < len(a) <= 30
    assert all(r["Age"] != 7.0 for r in a)
    RecordValidator(spec).validate(a, single=False)
