"""A small client for Airflow 3's REST API: log in, unpause, trigger, wait.

Used by ``rtml demo``, the promotion smoke checks and the integration tests; it talks to a real
api-server (``settings.airflow_url``) exactly as a user's script would.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx

from rtml.settings import Settings, get_settings

TERMINAL = {"success", "failed"}


def airflow_password(settings: Settings) -> str | None:
    """The simple auth manager's generated password for ``settings.airflow_username``."""
    import os

    if os.environ.get("RTML_AIRFLOW_PASSWORD"):
        return os.environ["RTML_AIRFLOW_PASSWORD"]
    path = Path(settings.home) / "airflow" / "simple_auth_manager_passwords.json.generated"
    if not path.exists():
        return None
    data = json.loads(path.read_text())
    return data.get(settings.airflow_username)


class AirflowClient:
    def __init__(
        self,
        settings: Settings | None = None,
        username: str | None = None,
        password: str | None = None,
        timeout: float = 30.0,
    ) -> None:
        self.settings = settings or get_settings()
        self.base = self.settings.airflow_url.rstrip("/")
        self.username = username or self.settings.airflow_username
        self.password = password if password is not None else airflow_password(self.settings)
        self.http = httpx.Client(base_url=self.base, timeout=timeout)
        self._token: str | None = None

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> AirflowClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _login(self) -> None:
        if self.password is None:
            raise RuntimeError(
                "no Airflow password: set RTML_AIRFLOW_PASSWORD or start the stack with `rtml stack up`"
            )
        r = self.http.post("/auth/token", json={"username": self.username, "password": self.password})
        r.raise_for_status()
        self._token = r.json()["access_token"]
        self.http.headers["Authorization"] = f"Bearer {self._token}"

    def request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        if self._token is None:
            self._login()
        r = self.http.request(method, path, **kw)
        if r.status_code == 401:  # token expired: log in again once
            self._login()
            r = self.http.request(method, path, **kw)
        return r

    def _json(self, method: str, path: str, **kw: Any) -> dict[str, Any]:
        r = self.request(method, path, **kw)
        if r.status_code >= 400:
            raise RuntimeError(f"Airflow {method} {path} -> {r.status_code}: {r.text[:500]}")
        return r.json()

    def version(self) -> dict[str, Any]:
        return self._json("GET", "/api/v2/version")

    def wait_for_dag(self, dag_id: str, timeout: float = 120.0) -> dict[str, Any]:
        """Wait until the dag-processor has parsed ``dag_id``; raise with its import error if any."""
        deadline = time.monotonic() + timeout
        while True:
            r = self.request("GET", f"/api/v2/dags/{dag_id}")
            if r.status_code == 200:
                return r.json()
            if time.monotonic() > deadline:
                errors = self._json("GET", "/api/v2/importErrors").get("import_errors", [])
                raise TimeoutError(f"DAG {dag_id} not loaded after {timeout:.0f}s; import errors: {errors}")
            time.sleep(1.0)

    def unpause(self, dag_id: str) -> None:
        self._json("PATCH", f"/api/v2/dags/{dag_id}", json={"is_paused": False})

    def trigger(self, dag_id: str, conf: dict[str, Any] | None = None, logical_date: str | None = None) -> str:
        body: dict[str, Any] = {"logical_date": logical_date, "conf": conf or {}}
        return self._json("POST", f"/api/v2/dags/{dag_id}/dagRuns", json=body)["dag_run_id"]

    def run(self, dag_id: str, run_id: str) -> dict[str, Any]:
        return self._json("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}")

    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        return self._json("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances")["task_instances"]

    def xcom(self, dag_id: str, run_id: str, task_id: str, key: str = "return_value") -> Any:
        path = f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/{key}"
        return self._json("GET", path).get("value")

    def wait(self, dag_id: str, run_id: str, timeout: float = 300.0, poll: float = 2.0) -> str:
        """Wait for a run to finish; returns its final state ('success' or 'failed')."""
        deadline = time.monotonic() + timeout
        while True:
            state = self.run(dag_id, run_id)["state"]
            if state in TERMINAL:
                return state
            if time.monotonic() > deadline:
                raise TimeoutError(f"{dag_id} run {run_id} still {state} after {timeout:.0f}s")
            time.sleep(poll)
