"""An authenticated client for Airflow's REST API (``/api/v2``) with trigger/wait helpers.

Used by the demo, the benchmarks and the tests to drive the DAGs as a user does from the UI.
"""

from __future__ import annotations

import json
import time
from typing import Any

from rtml.platform.stack import Stack, StackError
from rtml.settings import Settings, get_settings


class AirflowClient:
    """An authenticated client for Airflow's REST API (``/api/v2``) with trigger/wait helpers.

    It wraps an ``httpx.Client`` (``.http``); ``get/post/patch/delete`` are passed through.
    """

    FINISHED = ("success", "failed")

    def __init__(
        self, settings: Settings | None = None, username: str | None = None, password: str | None = None
    ) -> None:
        import httpx

        self.settings = settings or get_settings()
        username = username or self.settings.airflow_username
        password = password or Stack(self.settings).airflow_password()
        if not password:
            raise StackError(f"no Airflow password for {username!r} yet (start the stack first)")
        self.http = httpx.Client(base_url=self.settings.airflow_url.rstrip("/"), timeout=30)
        r = self.http.post("/auth/token", json={"username": username, "password": password})
        if r.status_code >= 300:
            raise StackError(f"Airflow login as {username!r} failed: {r.status_code} {r.text[:200]}")
        self.http.headers["Authorization"] = f"Bearer {r.json()['access_token']}"

    def __getattr__(self, name: str) -> Any:
        # headers/close/...: the underlying httpx client.
        return getattr(self.http, name)

    def request(self, method: str, url: str, **kw: Any) -> Any:
        """One REST call; retried a few times when Airflow's SQLite database is briefly locked
        (the write was rolled back, so a retry cannot apply it twice), and a read (GET) also when
        the api-server does not answer in time (a busy machine; a read applies nothing)."""
        import httpx

        for attempt in range(5):
            try:
                r = self.http.request(method, url, **kw)
            except httpx.TimeoutException:
                if method.upper() != "GET" or attempt == 4:
                    raise
                time.sleep(1.0 * (attempt + 1))
                continue
            # "database is locked" (a rolled-back write) or, from the backfill API, "Database is locked.
            # Backfill creation is not supported ..." (the partial backfill removed so that a retry may create it).
            if r.status_code < 500 or "database is locked" not in r.text.lower() or attempt == 4:
                return r
            time.sleep(0.5 * (attempt + 1))
        return r

    def get(self, url: str, **kw: Any) -> Any:
        return self.request("GET", url, **kw)

    def post(self, url: str, **kw: Any) -> Any:
        return self.request("POST", url, **kw)

    def patch(self, url: str, **kw: Any) -> Any:
        return self.request("PATCH", url, **kw)

    def delete(self, url: str, **kw: Any) -> Any:
        return self.request("DELETE", url, **kw)

    def __enter__(self) -> AirflowClient:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.http.close()

    def import_errors(self) -> list[dict[str, Any]]:
        r = self.get("/api/v2/importErrors")
        r.raise_for_status()
        return r.json().get("import_errors", [])

    def wait_dag(self, dag_id: str, timeout: float = 120) -> dict[str, Any]:
        """Wait until the dag-processor has parsed ``dag_id``; fail early on its file's import error."""
        deadline = time.monotonic() + timeout
        while True:
            r = self.get(f"/api/v2/dags/{dag_id}")
            if r.status_code == 200:
                return r.json()
            errors = [e for e in self.import_errors() if dag_id in e.get("filename", "")]
            if errors:
                raise StackError(f"DAG {dag_id} has an import error: {errors[0].get('stack_trace', errors)}")
            if time.monotonic() > deadline:
                raise StackError(
                    f"DAG {dag_id} not found in Airflow after {timeout:.0f}s (last: {r.status_code})"
                )
            time.sleep(1)

    def unpause(self, dag_id: str) -> None:
        r = self.patch(f"/api/v2/dags/{dag_id}", json={"is_paused": False})
        r.raise_for_status()

    def pause(self, dag_id: str) -> None:
        r = self.patch(f"/api/v2/dags/{dag_id}", json={"is_paused": True})
        r.raise_for_status()

    def trigger(self, dag_id: str, conf: dict[str, Any] | None = None, unpause: bool = True) -> str:
        """Trigger a run of ``dag_id`` (waiting for it to be parsed, unpausing it); return the run id."""
        self.wait_dag(dag_id)
        if unpause:
            self.unpause(dag_id)
        r = self.post(f"/api/v2/dags/{dag_id}/dagRuns", json={"logical_date": None, "conf": conf or {}})
        if r.status_code >= 300:
            raise StackError(f"trigger {dag_id} failed: {r.status_code} {r.text[:300]}")
        return r.json()["dag_run_id"]

    def run_state(self, dag_id: str, run_id: str) -> str:
        r = self.get(f"/api/v2/dags/{dag_id}/dagRuns/{run_id}")
        r.raise_for_status()
        return r.json()["state"]

    def wait(self, dag_id: str, run_id: str, timeout: float = 300) -> str:
        """Poll the run until it finishes (or ``timeout``); return its last state."""
        deadline = time.monotonic() + timeout
        while True:
            state = self.run_state(dag_id, run_id)
            if state in self.FINISHED or time.monotonic() > deadline:
                return state
            time.sleep(1)

    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        r = self.get(f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances")
        r.raise_for_status()
        return r.json()["task_instances"]

    def task_log(self, dag_id: str, run_id: str, task_id: str, try_number: int = 1) -> str:
        r = self.get(
            f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/logs/{try_number}",
            headers={"Accept": "application/x-ndjson"},
        )
        lines = []
        for line in r.text.splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                lines.append(line)
                continue
            if isinstance(event, dict):
                text = event.get("event", "")
                lines.append(f"{event.get('timestamp') or ''} {event.get('level') or ''} {text}".strip())
        return "\n".join(lines)

    def explain(self, dag_id: str, run_id: str) -> str:
        """A short report of the run's task states and the logs of failed tasks (for assertion messages)."""
        lines = []
        for ti in self.task_instances(dag_id, run_id):
            lines.append(f"{ti['task_id']}: {ti['state']}")
            if ti["state"] in ("failed", "upstream_failed", "up_for_retry") and ti.get("try_number"):
                lines.append(self.task_log(dag_id, run_id, ti["task_id"], ti["try_number"])[-3000:])
        return "\n".join(lines)
