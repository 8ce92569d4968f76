"""A REAL fairness-mitigated version served by a real ``rtml serve`` process (real MLflow, real S3 lake).

Toy data with a planted bias (as in test_mitigation_mlflow.py): the plain version is trained and
registered by ``rtml.train.train``, its mitigated variant by ``rtml.evaluate.mitigation.register_mitigated``
(an MLflow pyfunc deciding with one threshold per sensitive group). Both get passing gate tags.
The endpoint first serves the plain champion with the mitigated version as challenger (shadow),
then the mitigated version as champion; its answers, the prediction log and the shadow log must
carry the labels of ``mlflow.pyfunc.load_model(...).predict(df)["label"]``, not the global threshold.
"""

from __future__ import annotations

import os
import uuid

import numpy as np
import pytest
import yaml
from _serving import ServeProcess, set_gates

pytestmark = [
    pytest.mark.integration,
    # mlflow's hints while the variant is logged (type hints on predict, integer input columns): not ours to act on
    pytest.mark.filterwarnings("ignore:.*Add type hints to the `predict` method"),
    pytest.mark.filterwarnings("ignore:Hint. Inferred schema contains integer column"),
]

BIAS = {"region_group": {"south": 1.5}}


@pytest.fixture(scope="module")
def env(mlflow_settings, tmp_path_factory):
    import mlflow
    from support.synthetic import TOY_SPEC, synthetic_frame, toy_spec, write_to_lake

    from rtml.evaluate.mitigation import register_mitigated
    from rtml.features import sensitive_frame, to_frame
    from rtml.lake import Lake
    from rtml.registry.client import mlflow_client
    from rtml.registry.promotion import approve
    from rtml.serve.source import frame_to_records
    from rtml.train import train

    os.environ.setdefault("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "true")
    tag = uuid.uuid4().hex[:8]
    name = f"toy_serve_mitigated_{tag}"
    spec = toy_spec(model={**TOY_SPEC["model"], "registered_name": name}, dataset={"name": f"toy_serve_{tag}"})
    settings = mlflow_settings
    lake = Lake(settings)
    write_to_lake(lake, spec, synthetic_frame(spec, 3000, seed=1, bias=BIAS), batches=3)
    plain = train(spec, settings, lake=lake)["version"]
    mitigated = register_mitigated(spec, plain, settings)["version"]
    set_gates(settings, name, plain, "passed")
    approve(name, plain, by="test")  # only the current challenger is promoted
    set_gates(settings, name, mitigated, "passed")
    mlflow_client(settings).set_registered_model_alias(name, "challenger", mitigated)

    # New traffic (other seed) and the registered model's own answers on it, loaded as a user would.
    traffic = synthetic_frame(spec, 240, seed=11, bias=BIAS, id_offset=100_000)
    records = frame_to_records(traffic[[spec.event_id, *spec.feature_names]])
    X = to_frame(traffic, spec)
    offline = mlflow.pyfunc.load_model(f"models:/{name}/{mitigated}").predict(X)
    thr = spec.gates.quality.decision_threshold
    by_threshold = (offline["score"].to_numpy() >= thr).astype("int64")
    groups = sensitive_frame(X, spec)

    spec_path = tmp_path_factory.mktemp("spec") / "toy.yaml"
    spec_path.write_text(yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False))
    server = ServeProcess(settings, name, tmp_path_factory.mktemp("serve"), spec_path=spec_path).start()
    try:
        server.wait_version(plain)
        yield {
            "settings": settings, "spec": spec, "name": name, "plain": plain, "mitigated": mitigated,
            "server": server, "records": records, "offline": offline, "by_threshold": by_threshold,
            "groups": groups, "ids": traffic[spec.event_id].astype(str).tolist(),
        }
    finally:
        server.stop()


def names(labels) -> list[str]:
    return ["yes" if int(x) == 1 else "no" for x in labels]


def test_the_sample_covers_groups_where_the_rules_disagree(env):
    offline, thr_labels, groups = env["offline"], env["by_threshold"], env["groups"]
    assert list(offline.columns) == ["score", "label"]
    assert set(np.unique(offline["label"])) == {0, 1}
    assert groups["region_group"].nunique() == 3 and groups["age_group"].nunique() == 2
    differ = offline["label"].to_numpy() != thr_labels
    # the group thresholds decide differently from the global one on some rows, in several groups
    assert differ.sum() >= 10, differ.sum()
    assert groups.loc[differ, "region_group"].nunique() >= 2, groups[differ].value_counts()


def test_plain_champion_answers_by_threshold_and_shadow_logs_group_labels(env):
    server = env["server"]
    info = server.info()
    assert info["variant"] == "plain" and info["decisions"] == "global threshold"
    _wait_shadow(server, env["mitigated"])  # loaded by the poller right after the champion
    with server.client() as c:
        r = server.predict(c, {"records": env["records"][:120]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["version"] == env["plain"]
    np.testing.assert_allclose(
        [p["score"] for p in body["predictions"]], env["offline"]["score"][:120], rtol=0, atol=1e-12
    )
    assert [p["label"] for p in body["predictions"]] == names(env["by_threshold"][:120])


def _wait_shadow(server: ServeProcess, version: str, timeout: float = 30) -> bool:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (server.info().get("shadow") or {}).get("version") == version:
            return True
        time.sleep(0.2)
    raise AssertionError(f"no shadow version {version}: {server.info()}\n{server.log_tail()}")


def test_mitigated_champion_answers_with_its_group_decisions(env):
    from rtml.registry.promotion import approve
    from rtml.serve.client import live_smoke_check

    server, records, offline = env["server"], env["records"], env["offline"]
    approve(env["name"], env["mitigated"], by="test")
    with server.client() as c:
        assert c.post("/admin/reload").json()["version"] == env["mitigated"]
        info = c.get("/v1/model").json()
        assert info["variant"] == "mitigated" and info["decisions"] == "model labels" and info["flavor"] == "pyfunc"
        # the deployed variant is served by the compiled fast path (checked identical to the pyfunc on load)
        assert info["fast_path"] is True, server.log_tail()
        got_scores, got_labels = [], []
        for start in range(0, len(records), 60):  # several batches ...
            r = server.predict(c, {"records": records[start : start + 60]})
            assert r.status_code == 200, r.text
            assert r.json()["version"] == env["mitigated"]
            got_scores += [p["score"] for p in r.json()["predictions"]]
            got_labels += [p["label"] for p in r.json()["predictions"]]
        differ = np.flatnonzero(offline["label"].to_numpy() != env["by_threshold"])
        for i in differ[:6]:  # ... and single records where the group rule overrides the threshold
            one = server.predict(c, records[i])
            assert one.status_code == 200 and one.json()["label"] == names([offline["label"].iloc[i]])[0]
        # MLflow clients: POST /invocations answers what the pyfunc's predict gives (score and label records)
        inv = c.post("/invocations", json={"dataframe_records": records[:20]})
        assert inv.status_code == 200, inv.text
        assert inv.json() == {"predictions": offline.iloc[:20].to_dict(orient="records")}
        server.answered_rows += 20
    np.testing.assert_allclose(got_scores, offline["score"], rtol=0, atol=1e-12)
    assert got_labels == names(offline["label"])
    assert got_labels != names(env["by_threshold"])
    # the promotion DAG's live check compares the labels too
    checked = live_smoke_check(env["name"], env["mitigated"], records[:50], url=server.url, token=server.token,
                               spec=env["spec"])
    assert checked["labels_checked"] == 50
    server.answered_rows += 50


def test_prediction_and_shadow_logs_carry_the_group_labels(env):
    from rtml.lake import Lake

    server, spec = env["server"], env["spec"]
    assert server.stop() in (0, -15), server.log_tail()
    lake = Lake(env["settings"])
    want = dict(zip(env["ids"], names(env["offline"]["label"]), strict=True))
    want_thr = dict(zip(env["ids"], names(env["by_threshold"]), strict=True))
    preds = lake.read_batches(spec.dataset.name, "predictions")
    preds = preds[preds["model"] == env["name"]]
    assert len(preds) == server.answered_rows
    mit = preds[preds["version"] == env["mitigated"]]
    plain = preds[preds["version"] == env["plain"]]
    keyed = mit[mit[spec.event_id].notna()]
    unkeyed = mit[mit[spec.event_id].isna()]  # the live smoke check sends features only
    assert len(keyed) == len(env["records"]) + 6 + 20 and len(unkeyed) == 50 and len(plain) == 120
    assert list(keyed["label"]) == [want[e] for e in keyed[spec.event_id]]
    assert list(unkeyed.sort_values("row")["label"]) == names(env["offline"]["label"][:50])
    assert list(plain["label"]) == [want_thr[e] for e in plain[spec.event_id]]
    # the mitigated challenger's shadow decisions on the plain champion's traffic
    shadow = lake.read_batches(spec.dataset.name, "shadow")
    shadow = shadow[(shadow["model"] == env["name"]) & (shadow["version"] == env["mitigated"])]
    assert len(shadow) == 120
    assert list(shadow["label"]) == [want[e] for e in shadow[spec.event_id]]
    assert list(shadow["champion_label"]) == [want_thr[e] for e in shadow[spec.event_id]]
