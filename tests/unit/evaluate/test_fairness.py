"""rtml.evaluate.fairness, sound fairness statistics (no MLflow): seeded bootstrap intervals, small and
insufficient-data groups, the gate reading the estimate or an interval bound, "not mitigated" when no
candidate fits the quality budget, and the credit demo's mitigated variant over the 8 replay seeds
(produce -> out-of-time split -> train + out-of-fold scores -> plain gate -> mitigation search -> the
variant's gate, with the shipped spec's thresholds). The search itself: test_fairsearch.py."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fairlearn.metrics import (
    MetricFrame,
    demographic_parity_ratio,
    equal_opportunity_difference,
    false_positive_rate,
)
from support.fairness import train_and_judge
from support.synthetic import synthetic_frame, toy_spec

from rtml.evaluate.fairness import attribute_fairness, evaluate_fairness
from rtml.evaluate.grouprule import GroupRule
from rtml.features import sensitive_frame, target_vector, to_frame
from rtml.ingest.produce import build
from rtml.reports import model_card_html
from rtml.spec import FairnessGate, load_spec
from rtml.train import fit_pipeline, oof_scores, split_holdout

CREDIT_SPEC = Path(__file__).resolve().parents[3] / "rtml" / "examples" / "credit_risk.yaml"
SEEDS = range(8)


def _noisy(seed: int = 0, n: int = 2000):
    rng = np.random.default_rng(seed)
    groups = pd.Series(rng.choice(["a", "b", "c"], n, p=[0.45, 0.45, 0.1]))
    y = rng.integers(0, 2, n)
    y_pred = np.where(rng.random(n) < 0.7, y, 1 - y)
    return y, y_pred, groups


def test_intervals_are_seeded_and_bracket_the_estimate():
    y, p, g = _noisy()
    gate = FairnessGate(bootstrap=300)
    a = attribute_fairness("g", y, p, g, gate, random_state=3)
    b = attribute_fairness("g", y, p, g, gate, random_state=3)
    c = attribute_fairness("g", y, p, g, gate, random_state=4)
    assert a == b  # the same rows and seed: the same intervals
    assert a["intervals"] != c["intervals"]
    for row in a["groups"]:
        for m in ("selection_rate", "tpr", "fpr"):
            lo, hi = row[f"{m}_ci"]
            assert lo <= row[m] <= hi and hi - lo > 0
    # the small group's interval is wider than a large one's (a quarter of the rows)
    width = {r["group"]: r["tpr_ci"][1] - r["tpr_ci"][0] for r in a["groups"]}
    assert width["c"] > 1.5 * width["a"]
    for m in ("demographic_parity_ratio", "equal_opportunity_difference", "equalized_odds_difference"):
        lo, hi = a["intervals"][m]
        assert lo <= hi and lo - 0.05 <= a[m] <= hi + 0.05


def test_few_positives_are_insufficient_for_tpr_but_not_for_selection_rate():
    rng = np.random.default_rng(1)
    n = 900
    groups = pd.Series(np.where(np.arange(n) < 300, "rare", np.where(np.arange(n) % 2, "a", "b")))
    y = rng.integers(0, 2, n)
    y[:300] = 0
    y[:8] = 1  # 300 rows but only 8 positives
    p = np.where(rng.random(n) < 0.8, y, 1 - y)
    p[:8] = 0  # TPR 0 on 8 positives: noise that must not decide equal opportunity
    res = attribute_fairness("g", y, p, groups, FairnessGate(min_group_size=30, min_group_positives=20))
    rare = next(r for r in res["groups"] if r["group"] == "rare")
    assert rare["gating"] and not rare["tpr_gating"] and rare["fpr_gating"]
    assert "fewer than 20 positives" in rare["insufficient_data"]
    assert sorted(res["tpr_groups"]) == ["a", "b"] and sorted(res["gating_groups"]) == ["a", "b", "rare"]
    # disparate impact over every group with enough rows; TPR only where there are enough positives
    assert res["demographic_parity_ratio"] == pytest.approx(demographic_parity_ratio(y, p, sensitive_features=groups))
    keep = (groups != "rare").to_numpy()
    assert res["equal_opportunity_difference"] == pytest.approx(
        equal_opportunity_difference(y[keep], p[keep], sensitive_features=groups[keep])
    )
    fpr_gap = MetricFrame(metrics=false_positive_rate, y_true=y, y_pred=p, sensitive_features=groups).difference()
    assert res["equalized_odds_difference"] == pytest.approx(
        max(res["equal_opportunity_difference"], fpr_gap)
    )
    eo = next(c for c in res["checks"] if c["metric"] == "equal_opportunity_difference")
    assert eo["passed"] and "rare" not in eo["groups"]
    # with the minimum at 5 the rare group decides, and fails equal opportunity
    loose = attribute_fairness("g", y, p, groups, FairnessGate(min_group_size=30, min_group_positives=5))
    assert not next(c for c in loose["checks"] if c["metric"] == "equal_opportunity_difference")["passed"]


def test_the_spec_chooses_estimate_or_interval_bound():
    rng = np.random.default_rng(2)
    n = 160
    groups = pd.Series(np.where(np.arange(n) < 80, "x", "y"))
    y = rng.integers(0, 2, n)
    p = np.zeros(n, dtype=int)
    p[rng.permutation(80)[:22]] = 1  # x selected 22/80, y 30/80: DI 0.733 on 80-row groups
    p[80 + rng.permutation(80)[:30]] = 1
    kw = {"min_group_size": 30, "min_group_positives": 5, "bootstrap": 400}
    est = attribute_fairness("g", y, p, groups, FairnessGate(**kw))
    lenient = attribute_fairness("g", y, p, groups, FairnessGate(decide_on="lenient_bound", **kw))
    strict = attribute_fairness("g", y, p, groups, FairnessGate(decide_on="strict_bound", **kw))
    di = {r["decide_on"]: next(c for c in r["checks"] if c["metric"] == "demographic_parity_ratio")
          for r in (est, lenient, strict)}
    assert est["demographic_parity_ratio"] == pytest.approx(22 / 30)
    assert di["estimate"]["judged"] == est["demographic_parity_ratio"] and not di["estimate"]["passed"]
    lo, hi = lenient["intervals"]["demographic_parity_ratio"]
    assert di["lenient_bound"]["judged"] == hi > 0.8 and di["lenient_bound"]["passed"]
    assert di["strict_bound"]["judged"] == lo < di["estimate"]["judged"] and not di["strict_bound"]["passed"]
    assert "interval" in (di["strict_bound"]["reason"] or "")


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


@pytest.fixture(scope="module")
def biased():
    """Toy data where the outcome's base rate differs by region: demographic parity alone would
    push equal opportunity the other way (the failure the issue saw)."""
    spec = toy_spec()
    df = synthetic_frame(spec, 5000, seed=11, bias={"region_group": {"south": 1.5}})
    train, hold = split_holdout(df, spec)
    pipe = fit_pipeline(spec, train)
    oof = oof_scores(spec, train, spec.model.random_state)
    return {
        "spec": spec,
        "train": train,
        "hold": hold,
        "oof": oof,
        "y_train": target_vector(train[spec.target.name], spec),
        "scores": pipe.predict_proba(to_frame(hold, spec))[:, 1],
    }


def test_no_candidate_within_the_quality_budget_means_not_mitigated(biased):
    spec = biased["spec"]
    strict = toy_spec(gates={**spec.model_dump(mode="json")["gates"],
                             "fairness": {"min_group_size": 50, "disparate_impact_min": 0.98,
                                          "max_quality_loss": 0.0}})
    gate = strict.gates.fairness
    sens_hold = sensitive_frame(biased["hold"], spec)
    res = evaluate_fairness(
        target_vector(biased["hold"][spec.target.name], spec),
        biased["scores"],
        sens_hold,
        gate,
        spec.gates.quality.decision_threshold,
        train=(biased["oof"], biased["y_train"], sensitive_frame(biased["train"], spec)),
        random_state=7,
    )
    mit = res["mitigation"]
    assert mit["mitigated"] is False and mit["rule"] is None
    assert "max_quality_loss" in mit["reason"] or "no candidate meets" in mit["reason"]
    assert res["attributes"]["region_group"]["mitigated"]["error"].startswith("not mitigated")
    curve = mit["search"]["curve"]
    assert len(curve) >= 4 and {"quality", "worst_margin"} <= set(curve[0])
    # the trade-off spans looser to stricter limits: quality does not rise as the limits tighten
    q = [c["quality"] for c in curve if c["kind"] == "curve"]
    assert q[0] >= q[-1]
    card = model_card_html({"model": "toy", "version": "1", "fairness": res, "gates": {}, "quality": {}})
    assert "Not mitigated" in card and "<svg" in card and "Mitigation search" in card


def test_model_card_shows_groups_with_intervals_plain_vs_mitigated(biased):
    spec = biased["spec"]
    res = evaluate_fairness(
        target_vector(biased["hold"][spec.target.name], spec),
        biased["scores"],
        sensitive_frame(biased["hold"], spec),
        spec.gates.fairness,
        spec.gates.quality.decision_threshold,
        train=(biased["oof"], biased["y_train"], sensitive_frame(biased["train"], spec)),
        random_state=7,
    )
    card = model_card_html({"model": "toy", "version": "1", "fairness": res, "gates": {}, "quality": {}})
    assert "region_group: by group" in card and "age_group: by group" in card
    assert card.count("colspan='3'>plain") == 2 and card.count("colspan='3'>mitigated") == 2
    south = next(r for r in res["attributes"]["region_group"]["groups"] if r["group"] == "south")
    lo, hi = south["selection_rate_ci"]
    assert f"{south['selection_rate']:.3f} [{lo:.2f}, {hi:.2f}]" in card
    assert "Kept:" in card and "pass rate" in card


# --- the credit demo over the replay seeds ----------------------------------------------------------------
@pytest.fixture(scope="module")
def outcomes():
    spec = load_spec(CREDIT_SPEC)
    out = {}
    for seed in SEEDS:
        events, labels = build(spec, seed=seed, start=datetime(2026, 1, 1, tzinfo=UTC))
        frame = events.merge(labels[[spec.event_id, spec.target.name]], on=spec.event_id)
        out[seed] = train_and_judge(spec, frame)
    return spec, out


def test_mitigated_variant_passes_the_shipped_gate_on_the_replay_seeds(outcomes):
    spec, out = outcomes
    assert spec.gates.fairness.decide_on == "lenient_bound"  # the shipped spec's reading (its comment says why)
    summary = {}
    for seed, o in out.items():
        res = o["res"]
        assert res["mitigation"]["mitigated"], (seed, res["mitigation"]["reason"])
        assert res["mitigation"]["search"]["simulations_judged_on"] == "lenient_bound"
        mit = {a: r["mitigated"] for a, r in res["attributes"].items()}
        summary[seed] = {a: (m["passed"], m["demographic_parity_ratio"], m["equal_opportunity_difference"],
                             m["equalized_odds_difference"]) for a, m in mit.items()}
        # the gate's numbers are fairlearn's on the variant's decisions
        rule = res["mitigation"]["rule"]
        decided = GroupRule.from_dict(rule).decide(o["scores"], GroupRule.from_dict(rule).keys(o["sens"]))
        for a in o["sens"].columns:
            keep = np.isin(o["sens"][a], mit[a]["gating_groups"])
            assert mit[a]["demographic_parity_ratio"] == pytest.approx(
                demographic_parity_ratio(o["y"][keep], decided[keep], sensitive_features=o["sens"][a][keep])
            )
            # ... and the gate read the interval's lenient bound: the top for disparate impact
            di = next(c for c in mit[a]["checks"] if c["metric"] == "demographic_parity_ratio")
            assert di["judged"] == di["interval"][1] and di["passed"] == (di["judged"] >= di["limit"])
    print("credit_data mitigated variant per seed (passed, DI, EO diff, EOdds):", summary)
    passed = [s for s, attrs in summary.items() if all(v[0] for v in attrs.values())]
    # The plain model fails on the demo's seed (tests/e2e replays seed 0), so the demo shows the search.
    # On some seeds the plain model passes the lenient bound too (its small groups' intervals reach 0.8).
    assert out[0]["res"]["passed"] is False
    # Every seed passes. Not a property of these 8 seeds: over replay seeds 0-79 the variant passes 77
    # (benchmarks/mitigation_seeds.py). Read on the point estimate, no rule could pass all 8: even one
    # selecting every group at exactly the same true rate fails disparate impact on a 34-row group's
    # sampling noise about 4 holdouts in 10 (seeds 1, 3, 4), all 8 at once with probability 0.17.
    assert passed == list(SEEDS), summary
