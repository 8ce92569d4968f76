"""The whole loop on the real local stack, driven as a user drives it.

SeaweedFS (S3) + an MLflow server + Airflow (api-server, scheduler, dag-processor, triggerer) +
a real ``rtml serve`` process, all on loopback: the demo dataset is replayed into the landing
zone, the ingestion DAG is backfilled through Airflow's REST API, the training DAG starts on the
Asset updates and gates the candidate, the promotion DAG waits for the approval tag a person sets
in the MLflow UI, promotes, reloads the endpoint and smoke-checks it; the endpoint then answers
with the approved version, its prediction log reaches the lake, and the monitoring DAG reads it.
"""

from __future__ import annotations

import httpx
import pytest
from support.loop import assert_gated_and_champion, assert_served_logged_and_monitored

pytestmark = [pytest.mark.integration, pytest.mark.e2e]


def test_the_whole_loop(stack, airflow_settings, airflow_api):
    from rtml.cli.demo import run_demo
    from rtml.lake import Lake
    from rtml.spec import load_spec

    settings = airflow_settings
    spec = load_spec(settings.spec)
    name = spec.model.registered_name
    # The serving endpoint as `rtml stack up` runs it: no champion yet, so alive but not ready.
    stack.ensure("serve")
    assert httpx.get(f"{settings.serve_url}/ready").status_code == 503
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
    version = assert_gated_and_champion(settings, name, result)
    # ... trained on the replay as one events batch, whatever the scheduler ran before (so every
    # run of the demo ingests the same batches and makes the same decisions).
    from rtml.registry.client import mlflow_client

    client = mlflow_client(settings)
    base = client.get_model_version(name, version).tags.get("rtml.base_version") or version
    used = client.get_run(client.get_model_version(name, base).run_id).data.tags["rtml.events_batches"].split(",")
    by_id = {m["batch_id"]: m for m in manifests}
    assert len([b for b in used if by_id[b]["accepted"]]) == 1, used

    # Serving answers with the approved version; its prediction log reaches the lake within a minute,
    # and monitoring reads it through Airflow.
    assert str(result["served"]["version"]) == version
    assert_served_logged_and_monitored(settings, spec, lake, airflow_api, version)
