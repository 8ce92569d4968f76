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


# --- several replicas behind one address (rtml.serve.replicas) -----------------------------------
@pytest.fixture
def two_replicas():
    """Two live processes registered as replicas of http://serve.test:8000 (private addresses
    http://r1.test and http://r2.test); yields (the processes, the registry folder)."""
    import subprocess
    import sys

    from rtml.serve.replicas import register, replica_dir
    from rtml.settings import get_settings

    d = replica_dir(get_settings().home)
    procs = [subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"]) for _ in range(2)]
    paths = [register(d, 8000, f"http://r{i}.test", pid=p.pid) for i, p in enumerate(procs, start=1)]
    yield procs, d
    for p, path in zip(procs, paths, strict=True):
        p.kill()
        p.wait(10)
        path.unlink(missing_ok=True)


def test_a_reload_goes_to_every_replica_not_to_the_shared_address(endpoint, two_replicas):
    procs, _ = two_replicas
    versions = {"r1.test": "4", "r2.test": "4", "serve.test": "4"}
    seen = endpoint(lambda r: httpx.Response(200, json={"version": versions[r.url.host]}))
    out = sc.request_reload("http://serve.test:8000", TOKEN)
    assert sorted((r.method, r.url.host, r.url.path) for r in seen) == [
        ("POST", "r1.test", "/admin/reload"), ("POST", "r2.test", "/admin/reload")]
    assert out["version"] == "4" and set(out["replicas"]) == {p.pid for p in procs}
    versions["r2.test"] = "3"  # replicas that disagree: no common version
    assert sc.request_reload("http://serve.test:8000", TOKEN)["version"] is None
    # another address's port: no replicas registered there, the address itself is asked
    seen.clear()
    sc.request_reload("http://serve.test:9000", TOKEN)
    assert [r.url.host for r in seen] == ["serve.test"]


def test_waiting_for_a_version_waits_for_the_slowest_replica(endpoint, two_replicas, monkeypatch):
    monkeypatch.setattr(sc.time, "sleep", lambda s: None)
    procs, _ = two_replicas
    r2 = iter(["3", "3", "4"])  # r2 catches up on its third poll
    seen = endpoint(lambda r: httpx.Response(200, json={"version": "4" if r.url.host == "r1.test" else next(r2)}))
    out = sc.wait_for_version("4", "http://serve.test:8000", TOKEN)
    assert out["replicas"] == sorted(p.pid for p in procs)
    assert [r.url.host for r in seen] == ["r1.test"] + ["r2.test"] * 3  # r2 was asked until it served 4


def test_a_replica_stuck_on_the_old_version_times_the_wait_out(endpoint, two_replicas, monkeypatch):
    clock = iter(range(0, 1000, 10))
    monkeypatch.setattr(sc.time, "monotonic", lambda: next(clock))
    monkeypatch.setattr(sc.time, "sleep", lambda s: None)
    endpoint(lambda r: httpx.Response(200, json={"version": "4" if r.url.host == "r1.test" else "3"}))
    with pytest.raises(TimeoutError, match="still serves version 3"):
        sc.wait_for_version("4", "http://serve.test:8000", TOKEN, timeout=30)


def test_a_replica_that_exited_is_not_waited_for_but_a_live_unreachable_one_is(endpoint, two_replicas, monkeypatch):
    monkeypatch.setattr(sc.time, "sleep", lambda s: None)
    procs, _ = two_replicas

    def handler(r):
        if r.url.host == "r2.test":
            raise httpx.ConnectError("refused", request=r)
        return httpx.Response(200, json={"version": "4"})

    endpoint(handler)
    clock = iter(range(0, 1000, 10))
    monkeypatch.setattr(sc.time, "monotonic", lambda: next(clock))
    with pytest.raises(TimeoutError):  # r2's process lives: it must serve 4 before the wait ends
        sc.wait_for_version("4", "http://serve.test:8000", TOKEN, timeout=30)
    procs[1].kill()
    procs[1].wait(10)
    assert sc.wait_for_version("4", "http://serve.test:8000", TOKEN)["replicas"] == [procs[0].pid]


def test_a_replica_refusing_the_version_fails_the_wait(endpoint, two_replicas, monkeypatch):
    monkeypatch.setattr(sc.time, "sleep", lambda s: None)
    endpoint(lambda r: httpx.Response(200, json={"version": "3", "last_error": {"version": "4", "error": "corrupt"}}
                                      if r.url.host == "r2.test" else {"version": "4"}))
    with pytest.raises(RuntimeError, match="refused version 4: corrupt"):
        sc.wait_for_version("4", "http://serve.test:8000", TOKEN)


def test_an_unreachable_single_endpoint_fails_the_wait_at_once(endpoint, monkeypatch):
    monkeypatch.setattr(sc.time, "sleep", lambda s: pytest.fail("a single endpoint that refuses is not retried"))

    def refuse(r):
        raise httpx.ConnectError("refused", request=r)

    endpoint(refuse)
    with pytest.raises(httpx.ConnectError):
        sc.wait_for_version("4", "http://serve.test", TOKEN)
