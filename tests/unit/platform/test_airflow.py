"""The Airflow REST client (rtml.platform.airflow) against a stub HTTP server on loopback: login and
its errors, the retry on a locked SQLite database, waiting for a DAG and a run (on a fake clock),
triggering, and reading task logs."""

from __future__ import annotations

import json

import httpx
import pytest

from rtml.platform import airflow
from rtml.platform.airflow import AirflowClient
from rtml.platform.stack import Stack, StackError
from rtml.settings import Settings


class Clock:
    """Stands in for the module's ``time``: ``sleep`` advances ``monotonic`` instead of waiting."""

    def __init__(self) -> None:
        self.now, self.sleeps = 0.0, []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


@pytest.fixture
def clock(monkeypatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(airflow, "time", c)
    return c


@pytest.fixture
def settings(http_stub, tmp_path) -> Settings:
    return Settings(home=tmp_path, airflow_url=http_stub.url + "/", airflow_username="admin")


@pytest.fixture
def api(http_stub, settings, clock):
    http_stub.route("POST", "/auth/token", (201, {"access_token": "tok-123"}))
    with AirflowClient(settings, password="pw") as client:
        yield client


# --- login ------------------------------------------------------------------------------------------------
def test_login_sends_the_credentials_and_every_call_carries_the_token(api, http_stub):
    login = http_stub.requests[0]
    assert (login.method, login.path, login.json()) == ("POST", "/auth/token", {"username": "admin", "password": "pw"})
    http_stub.route("GET", "/api/v2/version", (200, {"version": "3.3.0"}))
    assert api.get("/api/v2/version").json() == {"version": "3.3.0"}
    assert http_stub.requests[-1].headers["authorization"] == "Bearer tok-123"
    assert api.headers["Authorization"] == "Bearer tok-123"  # attributes pass through to the httpx client


def test_the_password_comes_from_the_stacks_generated_file(http_stub, settings):
    stack = Stack(settings)
    stack.airflow_password_file.parent.mkdir(parents=True)
    stack.airflow_password_file.write_text(json.dumps({"admin": "generated-pw", "other": "x"}))
    http_stub.route("POST", "/auth/token", (201, {"access_token": "t"}))
    with AirflowClient(settings):
        pass
    assert http_stub.requests[0].json() == {"username": "admin", "password": "generated-pw"}


def test_no_password_yet_names_the_user(settings):
    with pytest.raises(StackError, match=r"no Airflow password for 'admin' yet \(start the stack first\)"):
        AirflowClient(settings)
    with pytest.raises(StackError, match="'someone'"):
        AirflowClient(settings, username="someone")


def test_a_refused_login_quotes_status_and_answer(http_stub, settings):
    http_stub.route("POST", "/auth/token", (401, "invalid credentials " + "y" * 400))
    with pytest.raises(StackError, match=r"Airflow login as 'admin' failed: 401 invalid credentials y+$") as err:
        AirflowClient(settings, password="wrong")
    assert str(err.value).endswith(": 401 invalid credentials " + "y" * 180)  # the answer cut at 200 characters


# --- retries ----------------------------------------------------------------------------------------------
def _failing_then(n: int, status: int, text: str, final=(200, {"ok": True})):
    calls = []

    def answer(req):
        calls.append(req)
        return (status, text) if len(calls) <= n else final

    return answer, calls


def test_a_locked_database_is_retried_with_growing_pauses(api, http_stub, clock):
    answer, calls = _failing_then(2, 500, "sqlite3.OperationalError: database is locked")
    http_stub.route("PATCH", "/api/v2/dags/d", answer)
    r = api.patch("/api/v2/dags/d", json={"is_paused": False})
    assert r.status_code == 200 and len(calls) == 3
    assert clock.sleeps == [0.5, 1.0]
    assert all(c.json() == {"is_paused": False} for c in calls)


def test_a_backfill_refused_on_a_locked_database_is_retried(api, http_stub, clock):
    # Airflow 3's backfill API: 503 with a capitalised message, the partial backfill cleaned up.
    answer, calls = _failing_then(1, 503, '{"detail":"Database is locked. Backfill creation is not supported on '
                                          'SQLite under concurrent access. Please use PostgreSQL or MySQL."}')
    http_stub.route("POST", "/api/v2/backfills", answer)
    r = api.post("/api/v2/backfills", json={"dag_id": "d"})
    assert r.status_code == 200 and len(calls) == 2 and clock.sleeps == [0.5]


def test_a_database_that_stays_locked_gives_up_after_five_tries(api, http_stub, clock):
    answer, calls = _failing_then(99, 503, "database is locked")
    http_stub.route("DELETE", "/api/v2/dags/d", answer)
    r = api.delete("/api/v2/dags/d")
    assert r.status_code == 503 and len(calls) == 5 and len(clock.sleeps) == 4


@pytest.mark.parametrize(("status", "text"), [(500, "some other error"), (409, "database is locked")])
def test_other_errors_are_not_retried(api, http_stub, clock, status, text):
    answer, calls = _failing_then(99, status, text)
    http_stub.route("POST", "/api/v2/x", answer)
    assert api.post("/api/v2/x").status_code == status
    assert len(calls) == 1 and clock.sleeps == []


def _timing_out(api, monkeypatch, n: int) -> list[str]:
    """The api-server answers only after ``n`` requests timed out; returns the methods tried."""
    tried: list[str] = []
    real = api.http.request

    def request(method, url, **kw):
        tried.append(method)
        if len(tried) <= n:
            raise httpx.ReadTimeout("timed out")
        return real(method, url, **kw)

    monkeypatch.setattr(api.http, "request", request)
    return tried


def test_a_read_that_times_out_is_retried(api, http_stub, clock, monkeypatch):
    http_stub.route("GET", "/api/v2/dags/d/dagRuns", (200, {"total_entries": 0}))
    tried = _timing_out(api, monkeypatch, 2)
    assert api.get("/api/v2/dags/d/dagRuns").json() == {"total_entries": 0}
    assert tried == ["GET"] * 3 and clock.sleeps == [1.0, 2.0]


def test_a_write_that_times_out_is_not_repeated(api, http_stub, clock, monkeypatch):
    # It may have been applied: a second trigger would start a second run.
    http_stub.route("POST", "/api/v2/dags/d/dagRuns", (200, {"dag_run_id": "r"}))
    tried = _timing_out(api, monkeypatch, 1)
    with pytest.raises(httpx.ReadTimeout):
        api.post("/api/v2/dags/d/dagRuns", json={})
    assert tried == ["POST"] and clock.sleeps == []


def test_a_read_that_keeps_timing_out_gives_up_after_five_tries(api, http_stub, clock, monkeypatch):
    tried = _timing_out(api, monkeypatch, 99)
    with pytest.raises(httpx.ReadTimeout):
        api.get("/api/v2/dags/d")
    assert len(tried) == 5 and len(clock.sleeps) == 4


# --- DAGs and runs -------------------------------------------------------------------------------------------
def test_wait_dag_returns_the_dag_once_parsed(api, http_stub, clock):
    answer, calls = _failing_then(2, 404, "not found", final=(200, {"dag_id": "rtml_train", "is_paused": True}))
    http_stub.route("GET", "/api/v2/dags/rtml_train", answer)
    http_stub.route("GET", "/api/v2/importErrors", (200, {"import_errors": [{"filename": "/dags/other.py"}]}))
    assert api.wait_dag("rtml_train")["dag_id"] == "rtml_train"
    assert len(calls) == 3 and clock.sleeps == [1, 1]


def test_wait_dag_fails_early_on_its_files_import_error(api, http_stub, clock):
    http_stub.route("GET", "/api/v2/importErrors", (200, {"import_errors": [
        {"filename": "/dags/other.py", "stack_trace": "not mine"},
        {"filename": "/dags/rtml_train.py", "stack_trace": "SyntaxError: invalid syntax (line 3)"}]}))
    with pytest.raises(StackError, match=r"DAG rtml_train has an import error: SyntaxError: invalid syntax \(line 3\)"):
        api.wait_dag("rtml_train")
    assert clock.sleeps == []


def test_wait_dag_times_out_naming_the_dag_and_the_last_status(api, http_stub, clock):
    http_stub.route("GET", "/api/v2/importErrors", (200, {"import_errors": []}))
    with pytest.raises(StackError, match=r"DAG ghost not found in Airflow after 5s \(last: 404\)"):
        api.wait_dag("ghost", timeout=5)
    assert clock.now > 5


def test_import_errors_raise_on_an_error_answer(api, http_stub):
    http_stub.route("GET", "/api/v2/importErrors", (403, {"detail": "forbidden"}))
    with pytest.raises(httpx.HTTPStatusError):
        api.import_errors()


def test_pause_and_unpause(api, http_stub):
    http_stub.route("PATCH", "/api/v2/dags/d", (200, {}))
    api.pause("d")
    api.unpause("d")
    assert [r.json() for r in http_stub.requests if r.method == "PATCH"] == [{"is_paused": True}, {"is_paused": False}]
    http_stub.route("PATCH", "/api/v2/dags/d", (404, {}))
    with pytest.raises(httpx.HTTPStatusError):
        api.pause("d")


def test_trigger_waits_unpauses_and_posts_the_conf(api, http_stub):
    http_stub.route("GET", "/api/v2/dags/d", (200, {"dag_id": "d"}))
    http_stub.route("PATCH", "/api/v2/dags/d", (200, {}))
    http_stub.route("POST", "/api/v2/dags/d/dagRuns", (200, {"dag_run_id": "manual__1"}))
    assert api.trigger("d", {"version": "3"}) == "manual__1"
    assert [(r.method, r.path) for r in http_stub.requests[1:]] == [
        ("GET", "/api/v2/dags/d"), ("PATCH", "/api/v2/dags/d"), ("POST", "/api/v2/dags/d/dagRuns")]
    assert http_stub.requests[-1].json() == {"logical_date": None, "conf": {"version": "3"}}
    api.trigger("d", unpause=False)
    assert http_stub.requests[-1].json() == {"logical_date": None, "conf": {}}
    assert http_stub.paths("PATCH") == ["/api/v2/dags/d"]  # not unpaused the second time


def test_a_refused_trigger_quotes_the_answer(api, http_stub):
    http_stub.route("GET", "/api/v2/dags/d", (200, {"dag_id": "d"}))
    http_stub.route("PATCH", "/api/v2/dags/d", (200, {}))
    http_stub.route("POST", "/api/v2/dags/d/dagRuns", (409, "run already exists"))
    with pytest.raises(StackError, match="trigger d failed: 409 run already exists"):
        api.trigger("d")


def test_wait_polls_until_the_run_finishes(api, http_stub, clock):
    states = iter(["queued", "running", "running", "failed", "success"])
    http_stub.route("GET", "/api/v2/dags/d/dagRuns/r1", lambda req: (200, {"state": next(states)}))
    assert api.wait("d", "r1") == "failed"
    assert clock.sleeps == [1, 1, 1]


def test_wait_gives_up_with_the_last_state(api, http_stub, clock):
    http_stub.route("GET", "/api/v2/dags/d/dagRuns/r1", (200, {"state": "running"}))
    assert api.wait("d", "r1", timeout=3) == "running"
    assert 3 < clock.now <= 5


def test_run_state_of_an_unknown_run_raises(api, http_stub):
    with pytest.raises(httpx.HTTPStatusError):
        api.run_state("d", "nope")


# --- task logs ----------------------------------------------------------------------------------------------
def test_task_log_reads_ndjson_events_and_keeps_other_lines(api, http_stub):
    lines = [
        json.dumps({"timestamp": "2026-01-01T00:00:00Z", "level": "info", "event": "starting"}),
        "plain text line",
        json.dumps({"event": "no time or level"}),
        json.dumps(["not", "an", "event"]),  # JSON but not an event: dropped
        json.dumps({"timestamp": None, "level": "error", "event": "boom"}),
    ]
    http_stub.route("GET", "/api/v2/dags/d/dagRuns/r/taskInstances/t/logs/2", (200, "\n".join(lines)))
    text = api.task_log("d", "r", "t", 2)
    assert text.splitlines() == ["2026-01-01T00:00:00Z info starting", "plain text line", "no time or level",
                                 "error boom"]
    assert http_stub.requests[-1].headers["accept"] == "application/x-ndjson"


def test_explain_lists_states_and_the_logs_of_failed_tasks(api, http_stub):
    http_stub.route("GET", "/api/v2/dags/d/dagRuns/r/taskInstances", (200, {"task_instances": [
        {"task_id": "extract", "state": "success", "try_number": 1},
        {"task_id": "train", "state": "failed", "try_number": 2},
        {"task_id": "publish", "state": "upstream_failed", "try_number": 0},  # never ran: no log to read
    ]}))
    long_log = "x" * 5000 + "THE END"
    http_stub.route("GET", "/api/v2/dags/d/dagRuns/r/taskInstances/train/logs/2", (200, long_log))
    report = api.explain("d", "r").splitlines()
    assert report[0] == "extract: success" and report[1] == "train: failed" and report[3] == "publish: upstream_failed"
    assert report[2].endswith("THE END") and len(report[2]) == 3000  # the tail of the log
    assert http_stub.paths().count("/api/v2/dags/d/dagRuns/r/taskInstances/train/logs/2") == 1


def test_leaving_the_with_block_closes_the_http_client(http_stub, settings, clock):
    http_stub.route("POST", "/auth/token", (201, {"access_token": "t"}))
    with AirflowClient(settings, password="pw") as api:
        pass
    assert api.http.is_closed
