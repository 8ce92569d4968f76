"""The gates on frames (no MLflow): fairness equals fairlearn, planted bias/drift are caught, a worse
candidate fails against the champion, training is reproducible, the reports are written."""

from __future__ import annotations

import json

import numpy as np
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
from support.synthetic import synthetic_frame, toy_spec, write_to_lake

from rtml.evaluate.fairness import attribute_fairness
from rtml.evaluate.gates import evaluate_frames, quality_gate, run_drift, run_fairness, run_quality
from rtml.evaluate.quality import quality_metrics
from rtml.features import sensitive_groups, target_vector, to_frame
from rtml.lake import Lake
from rtml.spec import FairnessGate, QualityGate
from rtml.storage import LocalStore
from rtml.train import fit_pipeline, load_window, oof_scores, split_holdout

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


def test_small_groups_are_reported_but_do_not_gate():
    rng = np.random.default_rng(0)
    n = 600
    groups = pd.Series(np.where(np.arange(n) < 10, "tiny", np.where(np.arange(n) % 2, "a", "b")))
    y = rng.integers(0, 2, n)
    y_pred = y.copy()
    y_pred[:10] = 1  # the tiny group is always selected: wildly different, but only 10 rows
    res = attribute_fairness("g", y, y_pred, groups, FairnessGate(min_group_size=30))
    tiny = next(r for r in res["groups"] if r["group"] == "tiny")
    assert tiny["gating"] is False and tiny["count"] == 10 and tiny["selection_rate"] == 1.0
    assert res["small_groups"] == ["tiny"] and sorted(res["gating_groups"]) == ["a", "b"]
    mask = groups != "tiny"
    assert res["demographic_parity_ratio"] == pytest.approx(
        demographic_parity_ratio(y[mask], y_pred[mask], sensitive_features=groups[mask])
    )
    assert res["passed"] is True


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


# --- training reproducibility ------------------------------------------------------------------------------
def test_same_seed_same_window_same_metrics(spec, tmp_path):
    lake = Lake(store=LocalStore(tmp_path / "lake"))
    write_to_lake(lake, spec, synthetic_frame(spec, 1200, seed=4), batches=4)

    def run(seed):
        df, lineage = load_window(spec, lake, window_days=30)
        train, hold = split_holdout(df, spec)
        model = fit_pipeline(spec, train, seed)
        s = model.predict_proba(to_frame(hold, spec))[:, 1]
        return quality_metrics(target_vector(hold[spec.target.name], spec), s, 0.35), lineage, hold

    m1, lin1, hold1 = run(7)
    m2, lin2, hold2 = run(7)
    assert m1 == m2
    pd.testing.assert_frame_equal(hold1, hold2)
    assert lin1["events_batches"] == lin2["events_batches"] and len(lin1["events_batches"]) == 4
    assert len(lin1["manifests"]) == 8 and all(k.endswith(".json") for k in lin1["manifests"])
    # out of time: every holdout row is newer than every training row
    df, _ = load_window(spec, lake)
    train, hold = split_holdout(df, spec)
    assert train[spec.event_time].max() <= hold[spec.event_time].min()
    assert len(hold) == int(np.ceil(len(df) * spec.training.holdout_fraction))


def test_window_slides_with_end(spec, tmp_path):
    lake = Lake(store=LocalStore(tmp_path / "lake"))
    # 1200 events one hour apart = 50 days
    write_to_lake(lake, spec, synthetic_frame(spec, 1200, seed=4, step_seconds=3600), batches=5)
    df, lin = load_window(spec, lake, window_days=10)
    ts = df[spec.event_time]
    assert (ts.max() - ts.min()) <= pd.Timedelta(days=10) and len(df) == 240
    assert len(lin["events_batches"]) == 1  # only the newest batch holds the last 10 days
    early, _ = load_window(spec, lake, end="2026-01-11T00:00:00Z", window_days=10)
    assert len(early) == 240 and early[spec.event_time].max() < pd.Timestamp("2026-01-11", tz="UTC")


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


def test_too_little_data_is_a_clean_not_enough_data(spec, tmp_path):
    from rtml.train import NotEnoughData

    lake = Lake(store=LocalStore(tmp_path / "lake"))
    with pytest.raises(NotEnoughData):
        load_window(spec, lake)
    write_to_lake(lake, spec, synthetic_frame(spec, 50, seed=4), batches=1)
    df, _ = load_window(spec, lake)
    assert len(df) == 50
    from rtml.train import train

    with pytest.raises(NotEnoughData, match="training.min_rows"):  # refused before MLflow is contacted
        train(spec, lake=lake)
