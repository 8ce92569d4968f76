"""The fairness-mitigated variant against the REAL MLflow server (artifacts on the session's S3 store).

Scenario 1 (toy data with a planted bias): the plain version fails only the fairness gate, the
mitigated variant is registered as a new version (tagged, own reports, plain vs mitigated side by
side), passes every gate, gets ``challenger``, and loaded back by ``models:/NAME/VERSION`` with
``mlflow.pyfunc.load_model`` gives the training-time score and label.
Scenario 2 (the REAL demo data, modeldata credit_data through the replay producer, the shipped
``credit_risk.yaml``): the loop ends with a challenger.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from pathlib import Path

import mlflow
import numpy as np
import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from support.synthetic import TOY_SPEC, synthetic_frame, toy_spec, write_to_lake

from rtml.evaluate.gates import evaluate, load_context
from rtml.evaluate.mitigation import mitigate_version
from rtml.features import to_frame
from rtml.lake import Lake, from_parquet_bytes
from rtml.names import HOLDOUT_FILE, LABEL, SCORE
from rtml.settings import get_settings
from rtml.spec import load_spec
from rtml.storage import open_store
from rtml.train import new_data_status, train

pytestmark = pytest.mark.integration

BIAS = {"region_group": {"south": 1.5}}
SPEC_PATH = Path(__file__).resolve().parents[2] / "rtml" / "examples" / "credit_risk.yaml"


@pytest.fixture(scope="module")
def env(mlflow_settings):
    tag = uuid.uuid4().hex[:8]
    mp = pytest.MonkeyPatch()
    mp.setenv("RTML_LAKE_URI", f"s3://{mlflow_settings.lake_bucket}/mitigation-it-{tag}")
    mp.setenv("RTML_MLFLOW_EXPERIMENT", f"rtml-mitigation-it-{tag}")
    settings = get_settings(refresh=True)
    lake = Lake(settings, open_store(settings.lake_uri, settings))
    yield {
        "settings": settings,
        "lake": lake,
        "client": MlflowClient(settings.mlflow_tracking_uri),
        "tag": tag,
    }
    mp.undo()
    get_settings(refresh=True)


def _download(env, run_id: str, path: str) -> Path:
    return Path(
        mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path=path, tracking_uri=env["settings"].mlflow_tracking_uri
        )
    )


@pytest.fixture(scope="module")
def loop(env):
    """Train + gate the plain version on biased toy data, then the mitigated variant."""
    name = f"toy_bias_it_{env['tag']}"
    spec = toy_spec(model={**TOY_SPEC["model"], "registered_name": name})
    write_to_lake(env["lake"], spec, synthetic_frame(spec, 3000, seed=1, bias=BIAS), batches=3)
    plain = train(spec, env["settings"], lake=env["lake"])
    decision = evaluate(spec, plain["version"], env["settings"])
    mitigated = mitigate_version(spec, decision, env["settings"])
    return {"spec": spec, "name": name, "plain": plain, "decision": decision, "mitigated": mitigated}


def test_plain_version_fails_only_fairness_and_keeps_its_tags(env, loop):
    d, client, name = loop["decision"], env["client"], loop["name"]
    assert d["passed"] is False and d["gates"] == {"quality": True, "fairness": False, "drift": True}
    tags = client.get_model_version(name, loop["plain"]["version"]).tags
    assert tags["gate.fairness"] == "failed" and tags["gate.decision"] == "failed"
    assert "disparate impact" in tags["gate.reasons"] and "'south'" in tags["gate.reasons"]
    assert tags["rtml.mitigated_version"] == loop["mitigated"]["version"]
    assert "rtml.variant" not in tags


def test_mitigated_version_is_registered_tagged_and_gets_challenger(env, loop):
    m, client, name = loop["mitigated"], env["client"], loop["name"]
    assert m["ran"] is True and m["passed"] is True, m["reasons"]
    assert (
        int(m["version"]) == int(loop["plain"]["version"]) + 1
        and m["base_version"] == loop["plain"]["version"]
    )
    mv = client.get_model_version(name, m["version"])
    assert mv.tags["rtml.variant"] == "mitigated" and mv.tags["rtml.base_version"] == loop["plain"]["version"]
    for gate in ("gate.quality", "gate.fairness", "gate.drift", "gate.decision"):
        assert mv.tags[gate] == "passed"
    assert client.get_model_version_by_alias(name, "challenger").version == m["version"]
    assert "mitigated variant of version" in mv.description.lower()
    # its own run, reports and model card, plain vs mitigated side by side
    assert mv.run_id != loop["plain"]["run_id"]
    files = {Path(f.path).name for f in client.list_artifacts(mv.run_id, "evaluation")}
    assert {"model_card.html", "fairness.html", "drift_holdout.html", "summary.json"} <= files
    card = _download(env, mv.run_id, "evaluation/model_card.html").read_text()
    assert "Fairness-mitigated variant" in card and "plain DI" in card and "mitigated DI" in card
    summary = json.loads(_download(env, mv.run_id, "evaluation/summary.json").read_text())
    region = summary["fairness"]["attributes"]["region_group"]
    assert summary["variant"] == "mitigated" and summary["base_version"] == loop["plain"]["version"]
    assert region["demographic_parity_ratio"] >= 0.8 > region["plain"]["demographic_parity_ratio"]
    # same scores: the quality of the scores equals the plain version's on the same holdout
    plain_summary = json.loads(_download(env, loop["plain"]["run_id"], "evaluation/summary.json").read_text())
    assert summary["quality"]["candidate"]["roc_auc"] == plain_summary["quality"]["candidate"]["roc_auc"]
    # the plain version's report showed the very variant that was registered
    shown = plain_summary["fairness"]["attributes"]["region_group"]["mitigated"]
    assert shown["demographic_parity_ratio"] == pytest.approx(region["demographic_parity_ratio"])
    # a retried mitigate step re-evaluates the same variant instead of registering another one
    again = mitigate_version(loop["spec"], loop["decision"], env["settings"])
    assert again["version"] == m["version"] and again["passed"] is True
    assert len(client.search_model_versions(f"name='{name}'")) == 2
    # a later training run counts new labels from the same batch as the plain version
    assert new_data_status(loop["spec"], env["settings"], lake=env["lake"])["new_labelled_rows"] == 0


def test_mitigated_model_loads_back_with_training_time_score_and_label(env, loop):
    m, spec = loop["mitigated"], loop["spec"]
    hold = from_parquet_bytes(_download(env, m["run_id"], f"data/{HOLDOUT_FILE}").read_bytes())
    X = to_frame(hold, spec)
    model = mlflow.pyfunc.load_model(f"models:/{loop['name']}/{m['version']}")
    out = model.predict(X)
    assert list(out.columns) == ["score", "label"]
    np.testing.assert_allclose(out["score"].to_numpy(), hold[SCORE].to_numpy(), rtol=0, atol=1e-12)
    np.testing.assert_array_equal(out["label"].to_numpy(), hold[LABEL].to_numpy())
    # decisions differ from the plain threshold somewhere (the point of the variant)
    assert (out["label"].to_numpy() != (hold[SCORE].to_numpy() >= 0.35)).any()
    # one row at a time gives the same decision as in the batch
    for i in (0, 7, 42):
        one = model.predict(X.iloc[[i]])
        assert one["label"].iloc[0] == out["label"].iloc[i]
    # the same input signature as the plain model: a missing feature is refused
    assert model.metadata.get_input_schema().input_names() == spec.feature_names
    with pytest.raises(MlflowException, match="debt"):
        model.predict(X.drop(columns=["debt"]).head(3))
    # the serving loader takes it as a pyfunc: scores from its "score" column (its "label" column,
    # the group decision, is what serving answers: tests/integration/test_serving_mitigated.py)
    from rtml.serve.source import RegistrySource, smoke_check

    served = RegistrySource(loop["name"], spec, env["settings"]).load(m["version"])
    assert served.flavor == "pyfunc" and smoke_check(served) > 0
    np.testing.assert_allclose(served.score(X), hold[SCORE].to_numpy(), rtol=0, atol=1e-12)
    # the gates evaluated exactly these decisions
    ctx = load_context(spec, m["version"], env["settings"])
    np.testing.assert_array_equal(ctx.decisions("holdout"), hold[LABEL].to_numpy())


def test_real_credit_data_loop_produces_a_challenger(env):
    """The shipped spec on modeldata credit_data (replayed with a fixed seed as the producer does)."""
    import pandas as pd

    from rtml.ingest.produce import build

    shipped = load_spec(SPEC_PATH)
    data = shipped.model_dump(mode="json")
    data["model"]["registered_name"] = f"credit_risk_it_{env['tag']}"
    data["dataset"]["name"] = f"credit_it_{env['tag']}"
    from rtml.spec import parse_spec

    spec = parse_spec(data)
    assert spec.gates == shipped.gates  # the spec's own thresholds, not lowered
    events, labels = build(spec, seed=0, start=datetime(2026, 1, 1, tzinfo=UTC))
    frame = events.merge(labels[[spec.event_id, spec.target.name]], on=spec.event_id, how="inner")
    assert len(frame) == 4454
    write_to_lake(env["lake"], spec, frame.sort_values(spec.event_time).reset_index(drop=True), batches=4)
    plain = train(spec, env["settings"], lake=env["lake"])
    decision = evaluate(spec, plain["version"], env["settings"])
    mitigated = mitigate_version(spec, decision, env["settings"])
    numbers = {}
    for label, run_id in (("plain", plain["run_id"]), ("mitigated", mitigated.get("run_id"))):
        if run_id:
            s = json.loads(_download(env, run_id, "evaluation/summary.json").read_text())
            numbers[label] = {
                a: {
                    k: r.get(k)
                    for k in (
                        "demographic_parity_ratio",
                        "equal_opportunity_difference",
                        "equalized_odds_difference",
                    )
                }
                for a, r in s["fairness"]["attributes"].items()
            }
            numbers[label]["roc_auc"] = s["quality"]["candidate"]["roc_auc"]
            numbers[label]["f1"] = s["quality"]["candidate"]["f1"]
    print("credit_data plain vs mitigated:", json.dumps(numbers, indent=1))
    assert decision["gates"] == {"quality": True, "fairness": False, "drift": True}, decision["reasons"]
    assert mitigated["ran"] and mitigated["passed"] is True, mitigated["reasons"]
    client = env["client"]
    assert (
        client.get_model_version_by_alias(spec.model.registered_name, "challenger").version
        == mitigated["version"]
    )
    assert pd.notna(numbers["mitigated"]["age_group"]["demographic_parity_ratio"])
