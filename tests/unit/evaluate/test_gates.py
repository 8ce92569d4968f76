"""rtml.evaluate.gates on frames (no MLflow): fairness equals fairlearn, planted bias/drift are caught,
a worse candidate fails against the champion, the reports are written. (Training: test_train.py.)"""

from __future__ import annotations

import json

import pandas as pd
import pytest
from fairlearn.metrics import (
    MetricFrame,
    count,
    demographic_parity_difference,
    demographic_parity_ratio,
    equal_opportunity_difference,
    equal_opportunity_ratio,
    equalized_odds_difference,
    false_positive_rate,
    selection_rate,
    true_positive_rate,
)
from sklearn.metrics import precision_score
from support.synthetic import synthetic_frame, toy_spec

from rtml.evaluate.gates import evaluate_frames, quality_gate, run_drift, run_fairness, run_quality
from rtml.features import sensitive_groups, target_vector, to_frame
from rtml.spec import QualityGate
from rtml.train import fit_pipeline, oof_scores, split_holdout

BIAS = {"region_group": {"south": 1.5}}  # the outcome depends on the region


@pytest.fixture(scope="module")
def spec():
    return toy_spec()


def _trained(spec, n, seed, bias=None):
    df = synthetic_frame(spec, n, seed=seed, bias=bias)
    train, hold = split_holdout(df, spec)
    model = fit_pipeline(spec, train)
    scores = model.predict_proba(to_frame(hold, spec))[:, 1]
    return {
        "model": model,
        "train": train,
        "hold": hold,
        "scores": scores,
        "oof": oof_scores(spec, train, spec.model.random_state),
    }


@pytest.fixture(scope="module")
def fair(spec):
    return _trained(spec, 6000, seed=1)


@pytest.fixture(scope="module")
def biased(spec):
    return _trained(spec, 6000, seed=1, bias=BIAS)


# --- fairness ----------------------------------------------------------------------------------------------
def test_fairness_numbers_equal_fairlearn(spec, biased):
    res = run_fairness(spec, biased["hold"], biased["scores"], biased["train"], biased["oof"])
    y = target_vector(biased["hold"][spec.target.name], spec)
    y_pred = (biased["scores"] >= spec.gates.quality.decision_threshold).astype(int)
    for attr in spec.sensitive:
        groups = sensitive_groups(biased["hold"], attr)
        got = res["attributes"][attr.name]
        assert got["small_groups"] == []  # every group is large here, so fairlearn sees the same rows
        mf = MetricFrame(
            metrics={
                "selection_rate": selection_rate,
                "tpr": true_positive_rate,
                "fpr": false_positive_rate,
                "precision": lambda a, b: precision_score(a, b, zero_division=0),
                "count": count,
            },
            y_true=y,
            y_pred=y_pred,
            sensitive_features=groups,
        )
        assert {r["group"] for r in got["groups"]} == set(mf.by_group.index)
        for row in got["groups"]:
            for m in ("selection_rate", "tpr", "fpr", "precision", "count"):
                assert row[m] == pytest.approx(mf.by_group.loc[row["group"], m], abs=1e-12), (attr.name, m)
        kw = {"sensitive_features": groups}
        assert got["demographic_parity_ratio"] == pytest.approx(demographic_parity_ratio(y, y_pred, **kw))
        assert got["demographic_parity_difference"] == pytest.approx(
            demographic_parity_difference(y, y_pred, **kw)
        )
        assert got["equal_opportunity_difference"] == pytest.approx(
            equal_opportunity_difference(y, y_pred, **kw)
        )
        assert got["equal_opportunity_ratio"] == pytest.approx(equal_opportunity_ratio(y, y_pred, **kw))
        assert got["equalized_odds_difference"] == pytest.approx(equalized_odds_difference(y, y_pred, **kw))


def test_planted_bias_fails_the_fairness_gate_naming_metric_and_group(spec, biased):
    res = run_fairness(spec, biased["hold"], biased["scores"], biased["train"], biased["oof"])
    assert res["passed"] is False
    region = res["attributes"]["region_group"]
    assert region["passed"] is False
    failed = {c["metric"]: c for c in region["checks"] if not c["passed"]}
    assert "demographic_parity_ratio" in failed
    assert "south" in failed["demographic_parity_ratio"]["groups"]
    assert any("region_group" in r and "disparate impact" in r and "'south'" in r for r in res["reasons"])
    # the unbiased attribute is not blamed
    assert res["attributes"]["age_group"]["passed"] is True
    assert not any("age_group" in r for r in res["reasons"])


def test_unbiased_data_passes_the_fairness_gate(spec, fair):
    res = run_fairness(spec, fair["hold"], fair["scores"], fair["train"], fair["oof"])
    assert res["passed"] is True, res["reasons"]
    assert res["attributes"]["region_group"]["demographic_parity_ratio"] >= 0.8


def test_mitigated_variant_shown_next_to_the_plain_model(spec, biased):
    res = run_fairness(spec, biased["hold"], biased["scores"], biased["train"], biased["oof"])
    region = res["attributes"]["region_group"]
    mit = region["mitigated"]
    assert "ThresholdOptimizer" in mit["method"]
    assert mit["demographic_parity_ratio"] > region["demographic_parity_ratio"] + 0.2
    assert set(mit["quality"]) == {"f1", "balanced_accuracy", "selection_rate"}
    no_mit = toy_spec(gates={"fairness": {"mitigate": False, "min_group_size": 50}})
    assert (
        "mitigated"
        not in run_fairness(no_mit, biased["hold"], biased["scores"], biased["train"], biased["oof"])[
            "attributes"
        ]["region_group"]
    )


# --- drift -------------------------------------------------------------------------------------------------
def test_planted_drift_is_detected_and_a_replay_is_not(spec, fair):
    model, train = fair["model"], fair["train"]
    X_train = to_frame(train, spec)
    replay = synthetic_frame(spec, 1500, seed=11)  # same distribution, new draws
    drifted = synthetic_frame(spec, 1500, seed=12, drift=0.25)
    currents = {}
    for name, df in (("replay", replay), ("drifted", drifted)):
        X = to_frame(df, spec)
        currents[name] = (X, model.predict_proba(X)[:, 1])
    res = run_drift(spec, X_train, fair["oof"], currents)
    assert res["checks"]["replay"]["passed"] is True, res["checks"]["replay"]["reasons"]
    assert res["checks"]["replay"]["drifted_features"] == []
    bad = res["checks"]["drifted"]
    assert bad["passed"] is False
    assert set(spec.numeric_features) <= set(bad["drifted_features"])
    assert bad["drifted_share"] > spec.gates.drift.max_drifted_share
    assert res["passed"] is False
    assert any(r.startswith("drift: drifted:") and "income" in r for r in res["reasons"])
    assert not any("replay" in r for r in res["reasons"])


# --- quality -----------------------------------------------------------------------------------------------
def test_worse_candidate_fails_the_quality_gate_against_the_champion(spec, fair):
    hold = fair["hold"]
    y = target_vector(hold[spec.target.name], spec)
    # a deliberately worse candidate: trained on shuffled labels
    shuffled = fair["train"].assign(
        **{spec.target.name: fair["train"][spec.target.name].sample(frac=1.0, random_state=0).to_numpy()}
    )
    worse = fit_pipeline(spec, shuffled).predict_proba(to_frame(hold, spec))[:, 1]
    res = run_quality(spec, y, worse, fair["scores"], "3")
    assert res["passed"] is False
    assert res["champion"]["version"] == "3"
    assert any("roc_auc" in r and "champion" in r for r in res["reasons"])
    # the champion against itself is within tolerance
    same = run_quality(spec, y, fair["scores"], fair["scores"], "3")
    assert same["passed"] is True and same["reasons"] == []
    # no champion: only the absolute floor applies
    assert run_quality(spec, y, fair["scores"])["passed"] is True
    assert len(res["reliability"]) == 10 and res["candidate"]["ece"] >= 0


def test_quality_gate_directions_and_floor():
    gate = QualityGate(metric="log_loss", tolerance=0.01, min_roc_auc=0.7)
    ok, reasons, _ = quality_gate(
        {"roc_auc": 0.8, "log_loss": 0.405}, {"roc_auc": 0.8, "log_loss": 0.40}, gate
    )
    assert ok and not reasons
    ok, reasons, _ = quality_gate(
        {"roc_auc": 0.8, "log_loss": 0.42}, {"roc_auc": 0.8, "log_loss": 0.40}, gate
    )
    assert not ok and "log_loss" in reasons[0]
    ok, reasons, _ = quality_gate({"roc_auc": 0.65, "log_loss": 0.3}, None, gate)
    assert not ok and "min_roc_auc" in reasons[0]


# --- all together ------------------------------------------------------------------------------------------
def test_evaluate_frames_writes_the_reports(spec, biased, tmp_path):
    out = tmp_path / "reports"
    champion = fit_pipeline(spec, biased["train"].head(600))
    summary = evaluate_frames(
        spec,
        biased["model"],
        biased["train"].assign(_oof_score=biased["oof"]),
        biased["hold"],
        champion=champion,
        champion_version="1",
        newest=synthetic_frame(spec, 500, seed=9, bias=BIAS),
        out_dir=out,
        meta={"model": "toy_risk", "version": "2"},
    )
    assert summary["passed"] is False
    assert summary["gates"]["fairness"]["passed"] is False
    assert set(summary["drift"]["checks"]) == {"holdout", "newest"}
    for name in (
        "model_card.html",
        "fairness.html",
        "drift_holdout.html",
        "drift_newest.html",
        "summary.json",
    ):
        assert (out / name).stat().st_size > 500, name
    card = (out / "model_card.html").read_text()
    assert "toy_risk version 2" in card and "failed" in card and "champion (v1)" in card
    assert "disparate impact" in card
    fair_html = (out / "fairness.html").read_text()
    assert fair_html.count("<svg") >= 4 and "mitigated" in fair_html and "south" in fair_html
    data = json.loads((out / "summary.json").read_text())
    assert data["passed"] is False and data["reasons"] == summary["reasons"]


def test_mitigation_skips_groups_it_cannot_estimate(spec, fair):
    # one training row in a group of its own (a single outcome): fairlearn would refuse it
    from rtml.evaluate.fairness import evaluate_fairness
    from rtml.features import sensitive_frame

    train = fair["train"].copy()
    train.loc[0, "region"] = "west"
    hold = fair["hold"].copy()
    hold.loc[hold.index[:3], "region"] = "west"  # and an unseen-in-training-size group in the holdout
    y_hold = target_vector(hold[spec.target.name], spec)
    res = evaluate_fairness(
        y_hold,
        fair["scores"],
        sensitive_frame(hold, spec)[["region_group"]],
        spec.gates.fairness,
        0.35,
        train=(fair["oof"], target_vector(train[spec.target.name], spec), sensitive_frame(train, spec)),
        random_state=0,
    )
    mit = res["attributes"]["region_group"]["mitigated"]
    assert "error" not in mit
    assert {r["group"] for r in mit["groups"]} == {"north", "south", "east", "west"}
    assert "west" in mit["small_groups"]


# --- intersections -------------------------------------------------------------------------------------
def _crossed_spec(**fairness):
    from support.synthetic import TOY_SPEC

    gate = {"min_group_size": 50, "intersections": [["region_group", "age_group"]], **fairness}
    return toy_spec(gates={**TOY_SPEC["gates"], "fairness": gate})


def _xor_holdout(spec, rows_per_cell: int = 300, seed: int = 0):
    """Four cells (region north/south x age 25/50) whose selection depends on region XOR age: each
    attribute alone looks fair (both marginals 0.45), the crossed groups do not (0.3 vs 0.6); plus
    a tiny cell (east, 25) of 10 rows."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    parts = []
    for region, age, rate, n in (("north", 25, 0.3, rows_per_cell), ("north", 50, 0.6, rows_per_cell),
                                 ("south", 25, 0.6, rows_per_cell), ("south", 50, 0.3, rows_per_cell),
                                 ("east", 25, 0.0, 10)):
        chosen = np.zeros(n, dtype=bool)
        chosen[rng.permutation(n)[: round(rate * n)]] = True
        parts.append(pd.DataFrame({"region": region, "age": age, "chosen": chosen,
                                   spec.target.name: np.where(rng.random(n) < 0.5, "yes", "no")}))
    hold = pd.concat(parts, ignore_index=True)
    scores = np.where(hold["chosen"], 0.9, 0.1)
    return hold, scores


def test_intersections_are_judged_with_the_same_metrics_and_minimums():
    spec = _crossed_spec()
    hold, scores = _xor_holdout(spec)
    res = run_fairness(spec, hold, scores)
    crossed = res["attributes"]["region_group x age_group"]
    assert crossed["intersection"] == ["region_group", "age_group"]
    for single in ("region_group", "age_group"):  # each attribute alone passes ...
        assert res["attributes"][single]["passed"] is True
        assert "intersection" not in res["attributes"][single]
    # ... the crossed groups do not: disparate impact 0.3 / 0.6, the reason names both groups
    assert crossed["demographic_parity_ratio"] == pytest.approx(0.5)
    assert res["passed"] is False
    di = [r for r in res["reasons"] if r.startswith("fairness: region_group x age_group: disparate impact")]
    assert di and "'north & 18-39'" in di[0] and ("'north & 40+'" in di[0] or "'south & 18-39'" in di[0])
    # the same minimums: the 10-row cell is insufficient data and does not gate
    east = next(g for g in crossed["groups"] if g["group"] == "east & 18-39")
    assert east["count"] == 10 and east["gating"] is False and "fewer than 50 rows" in east["insufficient_data"]
    assert "east & 18-39" in crossed["small_groups"] and len(crossed["gating_groups"]) == 4
    assert crossed["intervals"]["demographic_parity_ratio"] is not None  # bootstrap, like any attribute
    # a higher min_group_size leaves the crossed attribute without 2 gating groups: not gated
    loose = run_fairness(_crossed_spec(min_group_size=400), hold, scores)["attributes"]["region_group x age_group"]
    assert loose["passed"] is True and "not gated" in loose["note"]


def test_intersections_get_the_mitigated_variant_too_and_show_in_the_card(biased, tmp_path):
    from rtml.reports import model_card_html

    spec = _crossed_spec()
    res = run_fairness(spec, biased["hold"], biased["scores"], biased["train"], biased["oof"])
    crossed = res["attributes"]["region_group x age_group"]
    mit = crossed["mitigated"]
    assert {g["group"] for g in mit["groups"]} == {g["group"] for g in crossed["groups"]}
    assert all(" & " in g["group"] for g in crossed["groups"])
    card = model_card_html({"model": "toy_risk", "version": "2", "fairness": res})
    assert "region_group x age_group (intersection)" in card and "north &amp; 18-39" in card


def test_newest_rows_of_the_holdout_reuse_its_scores(spec, biased):
    """The newest batches are usually the holdout's last rows: their scores are not computed twice,
    and the drift check sees the same frame and scores as when they are."""
    from rtml.evaluate.gates import _rows_of

    hold = biased["hold"].reset_index(drop=True)
    tail = hold.iloc[[5, 2, 9]]
    assert _rows_of(hold, tail, spec.event_id).tolist() == [5, 2, 9]
    assert _rows_of(hold, synthetic_frame(spec, 5, seed=9, id_offset=10**9), spec.event_id) is None
    assert _rows_of(pd.concat([hold, hold.head(1)]), tail, spec.event_id) is None  # repeated key
    assert _rows_of(hold, tail.drop(columns=[spec.event_id]), spec.event_id) is None

    class Counting:
        def __init__(self, model):
            self.model, self.rows = model, []

        def predict_proba(self, X):
            self.rows.append(len(X))
            return self.model.predict_proba(X)

    newest = hold.tail(50)
    counted = Counting(biased["model"])
    a = evaluate_frames(spec, counted, biased["train"].assign(_oof_score=biased["oof"]), hold, newest=newest)
    b = evaluate_frames(spec, biased["model"], biased["train"].assign(_oof_score=biased["oof"]), hold,
                        newest=newest.assign(**{spec.event_id: newest[spec.event_id].astype(str) + "-x"}))
    assert counted.rows == [len(hold)]  # the holdout once; the newest rows reused
    assert a["drift"]["checks"]["newest"] == b["drift"]["checks"]["newest"]


def test_newest_events_ignore_empty_batches_committed_after_training(spec, tmp_path):
    """The drift gate's newest data: events batches newer than the training window, else the newest
    one it used. An empty batch (an interval in which nothing arrived) committed after training does
    not count, so whether the clock passed an interval boundary before the gate ran changes nothing."""
    from types import SimpleNamespace

    from support.lake import commit_frame
    from support.synthetic import write_to_lake

    from rtml.evaluate.gates import newest_events
    from rtml.lake import Lake
    from rtml.settings import Settings

    settings = Settings(home=tmp_path / "home", storage="local", lake_uri=str(tmp_path / "lake"))
    lake = Lake(settings)
    refs = write_to_lake(lake, spec, synthetic_frame(spec, 90, seed=4), batches=3)
    used = sorted({r.batch_id for r in refs})
    ctx = SimpleNamespace(spec=spec, settings=settings,
                          lineage={"lake_uri": str(tmp_path / "lake"), "events_batches": used})
    frame, ids = newest_events(ctx)
    assert ids == [used[-1]] and len(frame) == 30  # nothing newer: the newest batch training used
    ds = spec.dataset.name
    lake.write_manifest(ds, "events", "29990101T000000-empty", {
        "batch_id": "29990101T000000-empty", "kind": "events", "files": [], "records_in": 0, "accepted": 0,
        "quarantined": 0, "schema_hash": spec.schema_hash()})
    assert newest_events(ctx)[1] == [used[-1]]  # the empty batch changes nothing
    newer = synthetic_frame(spec, 12, seed=5, id_offset=10**6)
    commit_frame(lake, ds, "events", "29990102T000000-new",
                 newer[[spec.entity_id, spec.event_id, spec.event_time, *spec.feature_names]],
                 time_column=spec.event_time, schema_hash=spec.schema_hash())
    frame, ids = newest_events(ctx)
    assert ids == ["29990102T000000-new"] and len(frame) == 12  # real newer data wins
    assert sorted(frame[spec.event_id]) == sorted(newer[spec.event_id])  # its rows, read from the table
