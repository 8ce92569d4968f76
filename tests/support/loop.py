"""Checks the end-to-end loop tests share (the embedded stack, tests/e2e/test_loop.py, and the distributed
profile, tests/integration/test_stack_distributed.py): what a user sees after the demo's loop ran."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx


def assert_gated_and_champion(settings, name: str, result: dict[str, Any]) -> str:
    """The demo's version passed every gate, carries a person's approval, is champion, and has its HTML
    reports; returns the version."""
    from rtml.registry.client import mlflow_client

    # Its registry explicitly: the process-wide registry URI may name another test's server.
    client = mlflow_client(settings)
    version = result["version"]
    mv = client.get_model_version(name, version)
    assert result["gate_decision"] == "passed", result["gate_reasons"]
    for gate in ("gate.quality", "gate.fairness", "gate.drift", "gate.decision"):
        assert mv.tags[gate] == "passed", (gate, mv.tags.get("gate.reasons"))
    assert mv.tags.get("approval") == "approved"
    assert client.get_model_version_by_alias(name, "champion").version == version
    artifacts = {a.path for a in client.list_artifacts(mv.run_id, "evaluation")}
    assert any(p.endswith(".html") for p in artifacts), artifacts
    return str(version)


def assert_served_logged_and_monitored(settings, spec, lake, api, version: str) -> None:
    """The endpoint answers a record with ``version`` (and refuses it without the token), the prediction
    log reaches the lake within a minute, and ``rtml_monitor``, run through Airflow, reads it."""
    headers = {"Authorization": f"Bearer {settings.resolved_serve_token()}"}
    record: dict[str, Any] = {f.name: None for f in spec.features}
    record.update(Seniority=9, Home="rent", Time=60, Age=30, Marital="married", Records="no", Job="fixed",
                  Expenses=73, Income=129.0, Assets=0.0, Debt=0.0, Amount=800, Price=846)
    r = httpx.post(f"{settings.serve_url}/v1/predict", json=record, headers=headers, timeout=30)
    assert r.status_code == 200, r.text
    body = r.json()
    assert str(body.get("version") or body["predictions"][0]["version"]) == str(version)
    assert httpx.post(f"{settings.serve_url}/v1/predict", json=record).status_code == 401

    deadline = time.monotonic() + 60
    while True:
        preds = lake.read_batches(spec.dataset.name, "predictions")
        if len(preds) or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert len(preds) >= 1 and str(version) in set(preds["version"].astype(str))
    run_id = api.trigger("rtml_monitor", {"window_hours": 2})
    state = api.wait("rtml_monitor", run_id, timeout=300)
    assert state == "success", api.explain("rtml_monitor", run_id)
    reports = [k for k in lake.store.list(f"{spec.dataset.name}/monitoring") if k.endswith("report.json")]
    assert reports
    report = json.loads(lake.store.get(sorted(reports)[-1]))
    assert report["predictions"] >= 1
