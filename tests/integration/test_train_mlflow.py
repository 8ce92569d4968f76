"""Training and the gates against the REAL MLflow server (artifacts on the session's S3 store).

One module-wide scenario on a toy dataset written to the S3 lake: train version A (fair data), load
it back by ``models:/NAME/VERSION``, check lineage/signature, evaluate it (passes -> ``challenger``),
make it the champion, train a deliberately worse candidate B (fails quality, no alias).
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import yaml
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from support.synthetic import TOY_SPEC, synthetic_frame, toy_spec, write_to_lake

from rtml.cli import main as cli_main
from rtml.evaluate.gates import evaluate
from rtml.features import to_frame
from rtml.lake import Lake, from_parquet_bytes
from rtml.names import HOLDOUT_FILE, OOF_SCORE, SCORE
from rtml.settings import get_settings
from rtml.storage import open_store
from rtml.train import new_data_status, train

pytestmark = pytest.mark.integration

WORSE_MODEL = {"estimator": "random_forest", "params": {"n_estimators": 1, "max_depth": 1}, "random_state": 7}


@pytest.fixture(scope="module")
def env(mlflow_settings, tmp_path_factory):
    tag = uuid.uuid4().hex[:8]
    mp = pytest.MonkeyPatch()
    # a lake prefix and a registered model of this module only
    mp.setenv("RTML_LAKE_URI", f"s3://{mlflow_settings.lake_bucket}/train-it-{tag}")
    mp.setenv("RTML_MLFLOW_EXPERIMENT", f"rtml-train-it-{tag}")
    settings = get_settings(refresh=True)
    name = f"toy_risk_it_{tag}"
    spec = toy_spec(model={**TOY_SPEC["model"], "registered_name": name})
    spec_path = tmp_path_factory.mktemp("spec") / "toy.yaml"
    spec_path.write_text(yaml.safe_dump(spec.model_dump(mode="json")))
    lake = Lake(settings, open_store(settings.lake_uri, settings))
    write_to_lake(lake, spec, synthetic_frame(spec, 4000, seed=1), batches=4)
    client = MlflowClient(settings.mlflow_tracking_uri)
    state: dict = {}
    yield {
        "settings": settings,
        "spec": spec,
        "spec_path": spec_path,
        "lake": lake,
        "client": client,
        "name": name,
        "state": state,
    }
    mp.undo()
    get_settings(refresh=True)


@pytest.fixture(scope="module")
def trained(env):
    """Version A, trained through the CLI (``rtml train SPEC --json``)."""
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = cli_main(["train", str(env["spec_path"]), "--json"])
    assert code == 0, out.getvalue()
    return json.loads(out.getvalue())


def _holdout(env, run_id: str) -> pd.DataFrame:
    path = mlflow.artifacts.download_artifacts(
        run_id=run_id, artifact_path=f"data/{HOLDOUT_FILE}", tracking_uri=env["settings"].mlflow_tracking_uri
    )
    return from_parquet_bytes(Path(path).read_bytes())


def test_train_registers_a_version_with_lineage(env, trained):
    client, name = env["client"], env["name"]
    v = trained["version"]
    mv = client.get_model_version(name, v)
    assert mv.run_id == trained["run_id"]
    assert mv.tags["rtml.labels_last_batch"] and mv.tags["rtml.lineage"].endswith("lineage.json")
    run = client.get_run(trained["run_id"])
    assert run.data.params["random_state"] == "7" and run.data.params["estimator"] == "gradient_boosting"
    assert run.data.metrics["holdout_roc_auc"] == pytest.approx(trained["metrics"]["roc_auc"])
    assert run.data.tags["rtml.version"] and "rtml.git_sha" in run.data.tags
    # MLflow dataset lineage: the train and holdout rows, pointing at the lake
    inputs = {d.dataset.name: d for d in run.inputs.dataset_inputs}
    ds = spec_name = env["spec"].dataset.name
    assert {f"{ds}-train", f"{ds}-holdout"} <= set(inputs)
    assert json.loads(inputs[f"{spec_name}-train"].dataset.source)["uri"] == env["lake"].uri
    contexts = {
        d.dataset.name: {t.key: t.value for t in d.tags}["mlflow.data.context"] for d in inputs.values()
    }
    assert contexts[f"{ds}-train"] == "training" and contexts[f"{ds}-holdout"] == "holdout"
    # the lineage artifact names the exact lake batches and manifests
    path = mlflow.artifacts.download_artifacts(
        run_id=trained["run_id"],
        artifact_path="lineage.json",
        tracking_uri=env["settings"].mlflow_tracking_uri,
    )
    lineage = json.loads(Path(path).read_text())
    manifests = env["lake"].manifests(ds, "events")
    assert lineage["events_batches"] == [m["batch_id"] for m in manifests]
    assert all(env["lake"].store.exists(k) for k in lineage["manifests"])
    assert lineage["train_rows"] == 3000 and lineage["holdout_rows"] == 1000
    assert run.data.tags["rtml.events_batches"] == ",".join(lineage["events_batches"])


def test_loaded_model_predicts_as_in_training_and_signature_rejects_wrong_input(env, trained):
    hold = _holdout(env, trained["run_id"])
    X = to_frame(hold, env["spec"])
    model = mlflow.pyfunc.load_model(f"models:/{env['name']}/{trained['version']}")
    proba = np.asarray(model.predict(X))
    assert proba.shape == (len(X), 2)
    np.testing.assert_allclose(proba[:, 1], hold[SCORE].to_numpy(), rtol=0, atol=1e-12)
    sk = mlflow.sklearn.load_model(f"models:/{env['name']}/{trained['version']}")
    np.testing.assert_allclose(sk.predict_proba(X)[:, 1], hold[SCORE].to_numpy(), rtol=0, atol=1e-12)
    # the signature: a missing feature and a non-numeric value are refused by MLflow itself
    with pytest.raises(MlflowException, match="debt"):
        model.predict(X.drop(columns=["debt"]).head(3))
    with pytest.raises(MlflowException):
        model.predict(X.head(3).astype({"income": object}).assign(income="lots"))
    assert model.metadata.get_input_schema().input_names() == env["spec"].feature_names


def test_same_seed_same_window_same_metrics_on_the_server(env, trained):
    again = train(env["spec"], env["settings"], register=False, lake=env["lake"])
    assert again["metrics"] == trained["metrics"]
    assert again["window_start"] == trained["window_start"] and again["window_end"] == trained["window_end"]
    h1, h2 = _holdout(env, trained["run_id"]), _holdout(env, again["run_id"])
    pd.testing.assert_frame_equal(h1, h2)


def test_passing_version_becomes_challenger_with_reports(env, trained):
    client, name, v = env["client"], env["name"], trained["version"]
    res = evaluate(env["spec"], v, env["settings"])
    assert res["passed"] is True, res["reasons"]
    assert client.get_model_version_by_alias(name, "challenger").version == v
    tags = client.get_model_version(name, v).tags
    for gate in ("gate.quality", "gate.fairness", "gate.drift", "gate.decision"):
        assert tags[gate] == "passed"
    assert tags["gate.reasons"] == "all gates passed"
    assert tags["report.model_card"] == f"runs:/{trained['run_id']}/evaluation/model_card.html"
    files = {Path(f.path).name for f in client.list_artifacts(trained["run_id"], "evaluation")}
    assert {"model_card.html", "fairness.html", "drift_holdout.html", "summary.json"} <= files
    assert tags["report.url"].endswith(f"/runs/{trained['run_id']}/artifactPath/evaluation/model_card.html")
    # what the MLflow UI fetches to show the model card: served by the tracking server from S3
    import httpx

    page = httpx.get(
        f"{env['settings'].mlflow_tracking_uri}/get-artifact",
        params={"path": "evaluation/model_card.html", "run_uuid": trained["run_id"]},
        timeout=30,
    )
    assert page.status_code == 200 and f"{name} version {v}" in page.text and "passed" in page.text
    desc = client.get_model_version(name, v).description
    assert "PASSED" in desc and "model_card.html" in desc
    summary = json.loads(
        Path(
            mlflow.artifacts.download_artifacts(
                run_id=trained["run_id"],
                artifact_path="evaluation/summary.json",
                tracking_uri=env["settings"].mlflow_tracking_uri,
            )
        ).read_text()
    )
    assert summary["passed"] is True and summary["lineage"]["events_batches"]
    train_frame = from_parquet_bytes(
        Path(
            mlflow.artifacts.download_artifacts(
                run_id=trained["run_id"],
                artifact_path="data/train.parquet",
                tracking_uri=env["settings"].mlflow_tracking_uri,
            )
        ).read_bytes()
    )
    assert OOF_SCORE in train_frame.columns
    run = client.get_run(trained["run_id"])
    assert "eval_candidate_roc_auc" in run.data.metrics
    env["state"]["champion"] = v


def test_worse_candidate_fails_quality_against_the_champion(env, trained):
    from support.webhooks import webhook_paused

    client, name = env["client"], env["name"]
    champ = env["state"].get("champion") or trained["version"]
    # As a promotion would, without one (no approval): the webhook would undo it, so it is paused.
    with webhook_paused(env["settings"]):
        client.set_registered_model_alias(name, "champion", champ)
        worse_spec = toy_spec(model={**WORSE_MODEL, "registered_name": name})
        cand = train(worse_spec, env["settings"], lake=env["lake"])
        res = evaluate(worse_spec, cand["version"], env["settings"])
    assert res["passed"] is False and res["gates"]["quality"] is False
    assert any("roc_auc" in r and "champion" in r for r in res["reasons"])
    tags = client.get_model_version(name, cand["version"]).tags
    assert tags["gate.quality"] == "failed" and tags["gate.decision"] == "failed"
    assert "roc_auc" in tags["gate.reasons"]
    assert client.get_model_version_by_alias(name, "challenger").version != cand["version"]
    files = {Path(f.path).name for f in client.list_artifacts(cand["run_id"], "evaluation")}
    assert "model_card.html" in files  # a failed version keeps its reports


def test_new_data_status_counts_labels_since_the_last_version(env, trained):
    spec = env["spec"]
    status = new_data_status(spec, env["settings"], lake=env["lake"])
    assert status["new_labelled_rows"] == 0 and status["ready"] is False
    more = synthetic_frame(
        spec, 400, seed=2, id_offset=10_000, start=pd.Timestamp("2026-01-05").to_pydatetime()
    )
    write_to_lake(env["lake"], spec, more, batches=1)
    status = new_data_status(spec, env["settings"], lake=env["lake"], min_new_rows=300)
    assert status["new_labelled_rows"] == 400 and status["ready"] is True
