"""The ``rtml_train`` DAG in the real local Airflow: on data whose plain model fails only the fairness
gate, the run registers the mitigated variant, which passes, gets ``challenger``, and is the version
``publish_challenger`` publishes in the ``rtml_challenger`` Asset."""

from __future__ import annotations

import uuid

import pytest
import yaml
from mlflow import MlflowClient
from support.synthetic import TOY_SPEC, synthetic_frame, toy_spec, write_to_lake

from rtml.lake import Lake
from rtml.storage import open_store

pytestmark = pytest.mark.integration


def test_train_dag_publishes_the_mitigated_challenger(airflow_settings, airflow_api, tmp_path):
    s = airflow_settings
    tag = uuid.uuid4().hex[:8]
    name = f"toy_dag_it_{tag}"
    spec = toy_spec(
        model={**TOY_SPEC["model"], "registered_name": name},
        dataset={"name": f"toy_dag_{tag}"},
    )
    path = tmp_path / "toy.yaml"
    path.write_text(yaml.safe_dump(spec.model_dump(mode="json")))
    # the lake the Airflow tasks read (the session's default one), a dataset of this test only
    lake = Lake(s, open_store(s.lake_uri, s))
    write_to_lake(
        lake, spec, synthetic_frame(spec, 3000, seed=1, bias={"region_group": {"south": 1.5}}), batches=3
    )

    run_id = airflow_api.trigger("rtml_train", {"spec": str(path), "force": True})
    state = airflow_api.wait("rtml_train", run_id, timeout=600)
    assert state == "success", airflow_api.explain("rtml_train", run_id)
    states = {ti["task_id"]: ti["state"] for ti in airflow_api.task_instances("rtml_train", run_id)}
    # The gates run in one task (the version's inputs loaded once), then the mitigated variant's own.
    assert states == {t: "success" for t in ("resolve_spec", "check_new_data", "train", "evaluate", "mitigate", "publish_challenger")}

    client = MlflowClient(s.mlflow_tracking_uri)
    versions = {mv.version: mv for mv in client.search_model_versions(f"name='{name}'")}
    assert set(versions) == {"1", "2"}
    assert versions["1"].tags["gate.fairness"] == "failed" and "rtml.variant" not in versions["1"].tags
    assert (
        versions["2"].tags["rtml.variant"] == "mitigated" and versions["2"].tags["rtml.base_version"] == "1"
    )
    assert client.get_model_version_by_alias(name, "challenger").version == "2"
    r = airflow_api.get(
        f"/api/v2/dags/rtml_train/dagRuns/{run_id}/taskInstances/publish_challenger/xcomEntries/return_value"
    )
    assert r.status_code == 200, r.text
    assert r.json()["value"] in ({"name": name, "version": "2"}, str({"name": name, "version": "2"}))
