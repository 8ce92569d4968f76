"""The whole loop on the real local stack, driven as a user drives it.

SeaweedFS (S3) + an MLflow server + Airflow (api-server, scheduler, dag-processor, triggerer) +
a real ``rtml serve`` process, all on loopback: the demo dataset is replayed into the landing
zone, the ingestion DAG is backfilled through Airflow's REST API, the training DAG starts on the
Asset updates and gates the candidate, the promotion DAG waits for the approval tag a person sets
in the MLflow UI, promotes, reloads the endpoint and smoke-checks it; the endpoint then answers
with the approved version, its prediction log reaches the lake, and the monitoring DAG reads it.
"""

from __future__ import annotations

import json
import time

import httpx
import pytest

pytestmark = [pytest.mark.integration, pytest.mark.e2e]


def test_the_whole_loop(stack, airflow_settings, airflow_api):
    from mlflow import MlflowClient

    from rtml.cli.demo import run_demo
    from rtml.lake import Lake
    from rtml.spec import load_spec

    settings = airflow_settings
    spec = load_spec(settings.spec)
    name = spec.model.registered_name
    # The serving endpoint as `rtml stack up` runs it: no champion yet, so alive but not ready.
    stack.ensure("serve")
    assert httpx.get(f"{settings.serve_url}/ready").status_code == 503
    headers = {"Authorization": f"Bearer {settings.resolved_serve_token()}"}
    result = run_demo(settings, spec, approve=True, start_stack=False)

    # The demo leaves the whole loop live and says so.
    from rtml.cli.demo import LOOP_DAGS

    for dag_id in LOOP_DAGS:
        assert airflow_api.get(f"/api/v2/dags/{dag_id}").json()["is_paused"] is False, dag_id
    assert "From now on" in result["message"] and "rtml_monitor  hourly" in result["message"]

    # Ingestion: every batch conserved its records, and the lake holds the replay.
    lake = Lake(settings)
    manifests = lake.manifests(spec.dataset.name, "events")
    assert manifests, "no events batch was committed"
    for m in manifests:
        assert m["records_in"] == m["accepted"] + m["quarantined"], m["batch_id"]
    assert sum(m["accepted"] for m in manifests) >= 4000

    # Training and gates: a version passed every gate, a person approved it, it is champion.
    client = MlflowClient(tracking_uri=settings.mlflow_tracking_uri)
    version = result["version"]
    mv = client.get_model_version(name, version)
    assert result["gate_decision"] == "passed", result["gate_reasons"]
    for gate in ("gate.quality", "gate.fairness", "gate.drift", "gate.decision"):
        assert mv.tags[gate] == "passed", (gate, mv.tags.get("gate.reasons"))
    assert mv.tags.get("approval") == "approved"
    assert client.get_model_version_by_alias(name, "champion").version == version
    artifacts = {a.path for a in client.list_artifacts(mv.run_id, "evaluation")}
    assert any(p.endswith(".html") for p in artifacts), artifacts

    # Serving: the endpoint answers with the approved version.
    assert str(result["served"]["version"]) == str(version)
    record = {f.name: None for f in spec.features}
    record.update(Seniority=9, Home="rent", Time=60, Age=30, Marital="married", Records="no", Job="fixed",
                  Expenses=73, Income=129.0, Assets=0.0, Debt=0.0, Amount=800, Price=846)
    r = httpx.post(f"{settings.serve_url}/v1/predict", json=record, headers=headers, timeout=30)
    assert r.status_code == 200, r.text
    body = r.json()
    assert str(body.get("version") or body["predictions"][0]["version"]) == str(version)
    assert httpx.post(f"{settings.serve_url}/v1/predict", json=record).status_code == 401

    # The prediction log reaches the lake within seconds, and monitoring reads it through Airflow.
    deadline = time.monotonic() + 60
    while True:
        preds = lake.read_batches(spec.dataset.name, "predictions")
        if len(preds) or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert len(preds) >= 1 and str(version) in set(preds["version"].astype(str))
    run_id = airflow_api.trigger("rtml_monitor", {"window_hours": 2})
    state = airflow_api.wait("rtml_monitor", run_id, timeout=300)
    assert state == "success", airflow_api.explain("rtml_monitor", run_id)
    reports = [k for k in lake.store.list(f"{spec.dataset.name}/monitoring") if k.endswith("report.json")]
    assert reports
    report = json.loads(lake.store.get(sorted(reports)[-1]))
    assert report["predictions"] >= 1
