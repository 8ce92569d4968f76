"""rtml.evaluate.fairsearch: the limits a candidate must meet, disparities and decision quality from
counts (worked out by hand), the pooling of small cells, fairlearn's ThresholdOptimizer made a
deterministic rule, and the mitigation search (meets every limit on every attribute per fairlearn,
deterministic, "not mitigated" with a reason when no candidate qualifies)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from fairlearn.metrics import (
    demographic_parity_ratio,
    equal_opportunity_difference,
    equalized_odds_difference,
)
from support.synthetic import synthetic_frame, toy_spec

from rtml.evaluate.fairsearch import (
    REDUCTIONS,
    CellThresholds,
    CountModel,
    GateReading,
    Targets,
    _threshold_for_rate,
    decision_quality,
    fit_reduction,
    fit_rule,
    group_disparities,
    judged_disparities,
    mitigate,
    qualifying,
    rule_cells,
    search_rule,
    violation,
)
from rtml.evaluate.grouprule import ALWAYS, NEVER, OTHER, GroupRule, group_keys
from rtml.features import sensitive_frame, target_vector, to_frame
from rtml.spec import FairnessGate
from rtml.train import fit_pipeline, oof_scores, split_holdout

BIAS = {"region_group": {"south": 1.5}}


@pytest.fixture(scope="module")
def biased():
    """Toy data where the outcome's base rate differs by region, with the training window's
    out-of-fold scores (what the search is fitted on) and the holdout's scores."""
    spec = toy_spec()
    df = synthetic_frame(spec, 3000, seed=1, bias=BIAS)
    train, hold = split_holdout(df, spec)
    pipe = fit_pipeline(spec, train)
    oof = oof_scores(spec, train, spec.model.random_state)
    y_train = target_vector(train[spec.target.name], spec)
    to_rule, opt = fit_rule(
        oof,
        y_train,
        sensitive_frame(train, spec),
        spec.model.random_state,
        spec.gates.fairness.min_group_size,
        return_optimizer=True,
    )
    return {
        "spec": spec,
        "train": train,
        "hold": hold,
        "oof": oof,
        "y_train": y_train,
        "to_rule": to_rule,
        "opt": opt,
        "scores": pipe.predict_proba(to_frame(hold, spec))[:, 1],
    }


# --- pure parts ------------------------------------------------------------------------------------------
def test_targets_move_the_limits_stricter_and_stay_in_range():
    gate = FairnessGate(disparate_impact_min=0.8, equal_opportunity_diff_max=0.2, equalized_odds_diff_max=0.25)
    t = Targets.from_gate(gate, 0.05)
    assert (t.di_min, t.eo_max, t.eodds_max) == pytest.approx((0.85, 0.15, 0.20))
    assert (t.min_group_size, t.min_group_positives) == (gate.min_group_size, gate.min_group_positives)
    wide = Targets.from_gate(gate, 0.5)
    assert wide.di_min == 1.0 and wide.eo_max == 0.0 and wide.eodds_max == 0.0
    assert Targets.from_gate(FairnessGate(disparate_impact_min=0.1), -0.5).di_min == 0.0


def test_group_disparities_from_counts():
    # two groups of 100 rows: 40 and 20 positives, 50 and 25 selected, 30 and 10 selected positives
    d = group_disparities([100, 100], [40, 20], [50, 25], [30, 10], min_group_size=30, min_group_positives=5)
    assert list(d["sel"]) == [0.5, 0.25] and d["di"] == pytest.approx(0.5)
    assert d["eo"] == pytest.approx(0.75 - 0.5)  # TPR 30/40 vs 10/20
    assert d["fpr_gap"] == pytest.approx(20 / 60 - 15 / 80)
    assert d["eodds"] == pytest.approx(max(0.25, 20 / 60 - 15 / 80))
    # one group too small: fewer than 2 groups compare, every disparity is undefined (NaN)
    small = group_disparities([100, 10], [40, 5], [50, 5], [30, 2], min_group_size=30, min_group_positives=5)
    assert math.isnan(small["di"]) and math.isnan(small["eo"]) and math.isnan(small["eodds"])
    # too few positives for TPR in one group: TPR parity is undefined, the FPR gap still decides
    few = group_disparities([100, 100], [40, 3], [50, 25], [30, 1], min_group_size=30, min_group_positives=5)
    assert math.isnan(few["eo"]) and few["eodds"] == pytest.approx(few["fpr_gap"])
    # candidates on leading axes: one row per candidate
    many = group_disparities([100, 100], [40, 20], [[50, 25], [50, 50]], [[30, 10], [30, 15]], 30, 5)
    assert many["di"] == pytest.approx([0.5, 1.0])


def test_qualifying_groups_need_rows_then_positives_or_negatives():
    big, tpr_ok, fpr_ok = qualifying([100, 100, 10], [40, 3, 5], min_group_size=30, min_group_positives=5)
    assert big.tolist() == [True, True, False]
    assert tpr_ok.tolist() == [True, False, False]  # 3 positives < 5
    assert fpr_ok.tolist() == [True, True, False]  # the small group never qualifies
    assert qualifying([100, 100], [100, 0], 30, 5)[2].tolist() == [False, True]  # no negatives: no FPR


def test_violation_sums_shortfalls_and_counts_undefined_as_met():
    t = Targets(di_min=0.8, eo_max=0.2, eodds_max=0.25, min_group_size=30, min_group_positives=5)
    assert violation({"di": 0.7, "eo": 0.3, "eodds": 0.25}, t) == pytest.approx(0.1 + 0.1)
    assert violation({"di": np.nan, "eo": np.nan, "eodds": np.nan}, t) == 0.0
    assert violation({"di": 0.9, "eo": 0.1, "eodds": 0.2}, t) == 0.0


def test_judged_disparities_read_the_gates_interval_bound():
    """On one sample, the bound the simulation reads is the gate's own (attribute_fairness), up to the
    bootstrap's noise: same resampling (rows with replacement), same qualifying groups, same bound."""
    from rtml.evaluate.fairness import attribute_fairness

    rng = np.random.default_rng(3)
    n = 600
    groups = pd.Series(rng.choice(["a", "b", "c"], n, p=[0.6, 0.33, 0.07]))  # c: ~42 rows
    y = (rng.random(n) < 0.35).astype(int)
    pred = (rng.random(n) < np.where(groups == "c", 0.55, 0.4)).astype(int)
    names = ["a", "b", "c"]
    m = [(groups == g).to_numpy() for g in names]
    N = np.array([[mk.sum() for mk in m]], dtype=float)
    P = np.array([[y[mk].sum() for mk in m]], dtype=float)
    S = np.array([[pred[mk].sum() for mk in m]], dtype=float)
    TP = np.array([[(y & pred)[mk].sum() for mk in m]], dtype=float)
    t = Targets(di_min=0.8, eo_max=0.2, eodds_max=0.25, min_group_size=30, min_group_positives=5)
    est = group_disparities(N, P, S, TP, t.min_group_size, t.min_group_positives)
    for decide_on in ("lenient_bound", "strict_bound"):
        gate = FairnessGate(decide_on=decide_on, bootstrap=4000, min_group_size=30, min_group_positives=5)
        checks = {c["metric"]: c for c in attribute_fairness("g", y, pred, groups, gate, 0)["checks"]}
        got = judged_disparities(est, N, P, S, TP, t, GateReading(decide_on, 0.95, 4000), np.random.default_rng(0))
        assert got["di"][0] == pytest.approx(checks["demographic_parity_ratio"]["judged"], abs=0.02)
        assert got["eo"][0] == pytest.approx(checks["equal_opportunity_difference"]["judged"], abs=0.02)
        assert got["eodds"][0] == pytest.approx(checks["equalized_odds_difference"]["judged"], abs=0.02)
    lenient = judged_disparities(est, N, P, S, TP, t, GateReading("lenient_bound", 0.95, 500), np.random.default_rng(0))
    strict = judged_disparities(est, N, P, S, TP, t, GateReading("strict_bound", 0.95, 500), np.random.default_rng(0))
    assert strict["di"][0] < est["di"][0] < lenient["di"][0]  # ">=" limit: lenient reads the top
    assert lenient["eo"][0] < est["eo"][0] < strict["eo"][0]  # "<=" limits: lenient reads the bottom
    # fewer than 2 qualifying groups: no interval, the (undefined) estimate stays
    t_big = Targets(0.8, 0.2, 0.25, min_group_size=300, min_group_positives=5)
    e2 = group_disparities(N, P, S, TP, t_big.min_group_size, 5)
    one = judged_disparities(e2, N, P, S, TP, t_big, GateReading("lenient_bound", 0.95, 200), np.random.default_rng(0))
    assert math.isnan(one["di"][0]) and math.isnan(one["eodds"][0])


def test_pass_rate_simulates_the_gate_as_the_spec_reads_it(biased):
    """Same simulated holdouts, judged on the estimate or on an interval bound: the lenient bound
    passes at least as often as the estimate, the strict one at most as often."""
    spec, gate = biased["spec"], biased["spec"].gates.fairness
    sens = sensitive_frame(biased["train"], spec)
    cell_of_row, cells, _ = rule_cells(group_keys(sens), biased["y_train"], gate.min_group_size)
    model = CountModel(biased["oof"], biased["y_train"], sens, cell_of_row, cells)
    t = Targets.from_gate(gate)
    plain = model.index_of({c: _on_grid(model, i, 0.5) for i, c in enumerate(cells)})
    k = model.search(plain, t, gate.quality_metric)
    rows = 150  # small holdouts: the estimate is noisy, the interval wide
    rate = {d: model.pass_rate(k, t, rows, 200, 7, GateReading(d, 0.95, 200))
            for d in ("estimate", "lenient_bound", "strict_bound")}
    assert rate["strict_bound"] <= rate["estimate"] <= rate["lenient_bound"]
    assert rate["strict_bound"] < rate["lenient_bound"]
    assert model.pass_rate(k, t, rows, 200, 7) == rate["estimate"]  # no reading: the estimate
    assert model.pass_rate(k, t, rows, 200, 7, GateReading("lenient_bound", 0.95, 0)) == rate["estimate"]


def _on_grid(model: CountModel, ci: int, value: float) -> float:
    grid = model.grids[ci]
    return float(grid[np.argmin(np.abs(grid - value))])


def test_decision_quality_from_confusion_counts():
    # 10 rows, 4 positives, 5 selected of which 3 positive: tp 3, fp 2, fn 1, tn 4
    assert decision_quality("f1", 3, 5, 4, 10) == pytest.approx(6 / 9)
    assert decision_quality("accuracy", 3, 5, 4, 10) == pytest.approx(0.7)
    assert decision_quality("balanced_accuracy", 3, 5, 4, 10) == pytest.approx((3 / 4 + 4 / 6) / 2)
    assert decision_quality("f1", 0, 0, 0, 10) == 0.0  # nothing to find, nothing selected: no 0/0


def test_threshold_for_rate_selects_the_top_share():
    s = np.array([0.1, 0.9, 0.4, 0.7])
    assert _threshold_for_rate(s, 0.5) == 0.7  # the two highest scores are >= 0.7
    assert _threshold_for_rate(s, 0.1) == NEVER and _threshold_for_rate(s, 0.9) == ALWAYS


def test_rule_cells_pool_small_cells_and_refuse_a_window_without_any():
    keys = np.array(["a"] * 40 + ["b"] * 5 + ["c"] * 5, dtype=object)
    y = np.tile([0, 1], 25)
    cell, known, fallback = rule_cells(keys, y, min_group_size=30)
    assert known == ["a"] and fallback == "a"  # the 10-row pool is too small: the largest cell's rule
    assert set(cell) == {"a"}
    cell, known, fallback = rule_cells(keys, y, min_group_size=5)
    assert known == ["a", "b", "c"] and fallback == "a" and OTHER not in known
    one_outcome = np.zeros(50, dtype=int)
    with pytest.raises(ValueError, match="enough rows with both outcomes"):
        rule_cells(keys, one_outcome, min_group_size=5)


def test_small_cells_are_pooled():
    rng = np.random.default_rng(0)
    n = 2000
    a = np.where(np.arange(n) % 2, "x", "y").astype(object)
    a[:20] = "tiny"
    y = rng.integers(0, 2, n)
    s = np.clip(y * 0.3 + rng.random(n) * 0.7, 0, 1)
    rule = fit_rule(s, y, pd.DataFrame({"a": a}), 0, min_group_size=30)
    # 20 rows: no rule of their own, and too few to pool; they use the largest cell's rule
    assert set(rule.thresholds) == {"a=x", "a=y"} and rule.fallback in {"a=x", "a=y"}
    a[20:40] = "small"  # two small cells: pooled together (40 rows), the pool gets a rule
    rule = fit_rule(s, y, pd.DataFrame({"a": a}), 0, min_group_size=30)
    assert set(rule.thresholds) == {"a=x", "a=y", "__other__"} and rule.fallback == "__other__"
    keys = rule.keys(pd.DataFrame({"a": ["tiny", "small", "x", "never-seen"]}))
    assert list(keys) == ["__other__", "__other__", "a=x", "__other__"]


def test_count_model_refuses_a_threshold_off_its_grid_and_rows_without_a_cell():
    s = np.array([0.1, 0.2, 0.8, 0.9])
    y = np.array([0, 1, 0, 1])
    sens = pd.DataFrame({"g": ["a", "a", "b", "b"]})
    cells = np.array(["g=a", "g=a", "g=b", "g=b"], dtype=object)
    model = CountModel(s, y, sens, cells, ["g=a", "g=b"], extra_thresholds={"g=a": [0.15]}, grid_points=2)
    k = model.index_of({"g=a": 0.15, "g=b": ALWAYS})
    assert model.thresholds(k) == {"g=a": 0.15, "g=b": ALWAYS}
    t = Targets(0.8, 0.2, 0.25, 1, 1)
    judged = model.judge(k, t, "accuracy")
    # selects 0.2 (positive), 0.8 (negative), 0.9 (positive); 0.1 (negative) not: 3 of 4 right
    assert judged["selection_rate"] == 0.75 and judged["quality"] == pytest.approx(0.75)
    assert model.judge(model.index_of({"g=a": NEVER, "g=b": NEVER}), t, "accuracy")["quality"] == 0.5
    with pytest.raises(ValueError, match="threshold 0.33 of 'g=a' is not on the grid"):
        model.index_of({"g=a": 0.33, "g=b": ALWAYS})
    with pytest.raises(ValueError, match="every row needs a cell"):
        CountModel(s, y, sens, cells, ["g=a"])


# --- fairlearn's ThresholdOptimizer as a deterministic rule -----------------------------------------------
def test_rule_reproduces_thresholdoptimizers_selection_rates(biased):
    spec, rule, opt, oof = biased["spec"], biased["to_rule"], biased["opt"], biased["oof"]
    keys = rule.keys(sensitive_frame(biased["train"], spec))
    assert set(keys) == set(rule.thresholds) and len(rule.thresholds) == 6  # the intersection cells
    # fairlearn's own expected selection, per group, on the rows it was fitted on ...
    pmf = opt._pmf_predict(pd.DataFrame({"score": oof}), sensitive_features=keys)[:, 1]
    decided = rule.decide(oof, keys)
    for g in rule.thresholds:
        m = keys == g
        assert rule.meta["target_selection_rate"][g] == pytest.approx(pmf[m].mean())
        # ... is what the deterministic rule selects there, up to one row (rounding; no ties in scores)
        assert abs(decided[m].sum() - pmf[m].sum()) <= 0.5 + 1e-9, g
    # the decision is a plain per-group threshold, the same on any batch of rows
    hold_keys = rule.keys(sensitive_frame(biased["hold"], spec))
    expected = np.array([s >= rule.thresholds[k] for s, k in zip(biased["scores"], hold_keys, strict=True)])
    np.testing.assert_array_equal(rule.decide(biased["scores"], hold_keys), expected.astype(int))
    # serialisable as plain JSON-able data, and back
    again = GroupRule.from_dict(rule.to_dict())
    np.testing.assert_array_equal(
        again.decide(biased["scores"], hold_keys), rule.decide(biased["scores"], hold_keys)
    )
    assert all(">=" in t or t.startswith(("never", "always")) for t in rule.describe().values())


# --- the search ----------------------------------------------------------------------------------------
def test_search_meets_every_limit_on_every_attribute_per_fairlearn(biased):
    spec, gate = biased["spec"], biased["spec"].gates.fairness
    sens = sensitive_frame(biased["train"], spec)
    args = (biased["oof"], biased["y_train"], sens, gate, spec.gates.quality.decision_threshold, 7)
    rule, report = search_rule(*args, holdout_rows=len(biased["hold"]))
    again, _ = search_rule(*args, holdout_rows=len(biased["hold"]))
    assert rule is not None, report["reason"]
    assert again.to_dict() == rule.to_dict()  # deterministic
    names = {c["candidate"] for c in report["candidates"]}
    assert any("ThresholdOptimizer(demographic_parity)" in n for n in names)
    assert any("ThresholdOptimizer(equalized_odds)" in n for n in names)
    assert any(n.startswith("joint search") for n in names)
    chosen = next(c for c in report["candidates"] if c["candidate"] == report["chosen"])
    assert chosen["meets_limits"] and chosen["within_quality_loss"]
    # the numbers the search judged are fairlearn's on the rule's decisions of the fit rows
    decided = rule.decide(biased["oof"], rule.keys(sens))
    for attr in sens.columns:
        g = sens[attr]
        di = demographic_parity_ratio(biased["y_train"], decided, sensitive_features=g)
        eo = equal_opportunity_difference(biased["y_train"], decided, sensitive_features=g)
        eodds = equalized_odds_difference(biased["y_train"], decided, sensitive_features=g)
        got = chosen["attributes"][attr]
        assert got["di"] == pytest.approx(di, abs=1e-6) and di >= gate.disparate_impact_min
        assert got["eo"] == pytest.approx(eo, abs=1e-6) and eo <= gate.equal_opportunity_diff_max
        assert got["eodds"] == pytest.approx(eodds, abs=1e-6) and eodds <= gate.equalized_odds_diff_max
    # the kept one is the best-quality qualifying candidate among the most likely to pass
    ok = [c for c in report["candidates"] if c["meets_limits"] and c["within_quality_loss"]]
    top = max(c["pass_rate"] for c in ok)
    assert chosen["pass_rate"] >= top - 0.05
    assert chosen["quality"] == max(c["quality"] for c in ok if c["pass_rate"] >= top - 0.05)
    # the rule's meta says where it came from, and the rates it selects per cell
    assert rule.meta["candidate"] == report["chosen"] and set(rule.meta["target_selection_rate"]) == set(
        rule.thresholds
    )


def test_no_candidate_within_the_quality_budget_is_not_mitigated_with_the_reason(biased):
    spec = biased["spec"]
    gate = FairnessGate(min_group_size=50, disparate_impact_min=1.0, equal_opportunity_diff_max=0.0,
                        equalized_odds_diff_max=0.0, max_quality_loss=0.0)
    sens = sensitive_frame(biased["train"], spec)
    rule, report = search_rule(biased["oof"], biased["y_train"], sens, gate, 0.35, 7, n_sim=0)
    assert rule is None and report["chosen"] is None
    assert report["reason"].startswith("no candidate meets every fairness limit")
    assert all(c["pass_rate"] is None for c in report["candidates"])  # no simulations asked for
    assert [c["kind"] for c in report["curve"]][0] == "plain" and len(report["curve"]) == 7


def test_mitigate_returns_the_kept_rules_decisions_on_new_rows(biased):
    spec = biased["spec"]
    sens_hold = sensitive_frame(biased["hold"], spec)
    decisions, rule, report = mitigate(
        biased["oof"], biased["y_train"], sensitive_frame(biased["train"], spec), biased["scores"],
        sens_hold, 7, spec.gates.fairness, spec.gates.quality.decision_threshold,
    )
    assert rule is not None and report["simulated_holdout_rows"] == len(biased["scores"])
    np.testing.assert_array_equal(decisions, rule.decide(biased["scores"], rule.keys(sens_hold)))
    assert list(group_keys(sens_hold.head(1)))[0] in rule.thresholds


# --- fairlearn's reductions as candidates ------------------------------------------------------------------
def test_cell_thresholds_is_the_least_weighted_error_threshold_of_each_cell():
    rng = np.random.default_rng(3)
    n = 400
    s = np.round(rng.random(n), 2)  # ties: a threshold keeps every row of a tied score
    code = rng.integers(0, 3, n)
    y = (rng.random(n) < s).astype(int)
    w = rng.random(n) * 2
    est = CellThresholds().fit(np.column_stack([s, code]), y, sample_weight=w)
    for c in range(3):
        m = code == c
        cost = {t: w[m & (s >= t) & (y == 0)].sum() + w[m & (s < t) & (y == 1)].sum() for t in np.unique(s[m])}
        cost[NEVER] = w[m & (y == 1)].sum()
        assert cost[est.thresholds_[c]] == pytest.approx(min(cost.values()), abs=1e-9)
    pred = est.predict(np.column_stack([s, code]))
    assert pred.tolist() == (s >= est.thresholds_[code]).astype(int).tolist()


def test_reduction_is_a_servable_rule_at_the_mixtures_selection_shares(biased):
    spec = biased["spec"]
    sens = sensitive_frame(biased["train"], spec).reset_index(drop=True)
    cells = rule_cells(group_keys(sens), biased["y_train"], spec.gates.fairness.min_group_size)
    rule = fit_reduction(biased["oof"], biased["y_train"], sens, 7, "demographic_parity", cells=cells)
    again = fit_reduction(biased["oof"], biased["y_train"], sens, 7, "demographic_parity", cells=cells)
    assert rule.to_dict() == again.to_dict()  # deterministic
    assert set(rule.thresholds) == set(cells[1])
    # a GroupRule: the served variant (plain score + one threshold per cell) decides the same
    restored = GroupRule.from_dict(rule.to_dict())
    decided = restored.decide(biased["oof"], restored.keys(sens))
    keys = cells[0]
    for g, rate in rule.meta["target_selection_rate"].items():
        m = keys == g
        assert abs(decided[m].mean() - rate) <= 1.0 / m.sum() + 1e-9, g  # the share, up to one row
    # demographic parity moved the cells' selection rates towards each other
    plain = (biased["oof"] >= spec.gates.quality.decision_threshold).astype(int)
    g = sens["region_group"]
    assert demographic_parity_ratio(biased["y_train"], decided, sensitive_features=g) > demographic_parity_ratio(
        biased["y_train"], plain, sensitive_features=g
    )
    with pytest.raises(ValueError, match="unknown reduction"):
        fit_reduction(biased["oof"], biased["y_train"], sens, 7, "bounded_group_loss", cells=cells)
    with pytest.raises(ValueError, match="unknown reduction method"):
        fit_reduction(biased["oof"], biased["y_train"], sens, 7, "demographic_parity", cells=cells, method="Grid")


def test_grid_search_reduction_serves_its_kept_learners_thresholds(biased, caplog):
    """GridSearch keeps ONE base learner (no mixture): the rule is that learner's thresholds, so the
    served variant decides exactly as fairlearn's GridSearch.predict does on the fit rows."""
    from fairlearn.reductions import DemographicParity, GridSearch

    from rtml.evaluate.fairsearch import GRID_SEARCH_POINTS

    spec = biased["spec"]
    sens = sensitive_frame(biased["train"], spec).reset_index(drop=True)
    cells = rule_cells(group_keys(sens), biased["y_train"], spec.gates.fairness.min_group_size)
    args = (biased["oof"], biased["y_train"], sens, 7, "demographic_parity")
    with caplog.at_level("WARNING"):
        rule = fit_reduction(*args, cells=cells, method="GridSearch")
    assert not [r for r in caplog.records if r.name.startswith("fairlearn")]  # the sparse-grid warning is ours to know
    assert rule.to_dict() == fit_reduction(*args, cells=cells, method="GridSearch").to_dict()  # deterministic
    assert "GridSearch" in rule.meta["method"] and set(rule.thresholds) == set(cells[1])
    # fairlearn's own GridSearch on the same rows, features and groups
    code = pd.Index(cells[1]).get_indexer(cells[0])
    X = np.column_stack([biased["oof"], code.astype(float)])
    grid = GridSearch(CellThresholds(), constraints=DemographicParity(), grid_size=GRID_SEARCH_POINTS)
    grid.fit(X, biased["y_train"], sensitive_features=code)
    restored = GroupRule.from_dict(rule.to_dict())
    decided = restored.decide(biased["oof"], restored.keys(sens))
    np.testing.assert_array_equal(decided, grid.predict(X))
    for g, rate in rule.meta["target_selection_rate"].items():
        assert decided[cells[0] == g].mean() == pytest.approx(rate)


def test_search_with_reductions_lists_them_beside_the_other_candidates(biased):
    spec, gate = biased["spec"], biased["spec"].gates.fairness
    sens = sensitive_frame(biased["train"], spec)
    args = (biased["oof"], biased["y_train"], sens, gate, spec.gates.quality.decision_threshold, 7)
    rule, report = search_rule(*args, holdout_rows=len(biased["hold"]), reductions=True)
    plain_rule, plain_report = search_rule(*args, holdout_rows=len(biased["hold"]))
    names = [c["candidate"] for c in report["candidates"]] + [a for c in report["candidates"] for a in c["also"]]
    for method, c in REDUCTIONS:
        assert f"fairlearn {method}({c})" in names
        assert f"fairlearn {method}({c})" not in [c["candidate"] for c in plain_report["candidates"]]
    assert rule is not None and report["chosen"] is not None
    # the kept one is still the best qualifying candidate: reductions only add choices
    ok = [c for c in report["candidates"] if c["meets_limits"] and c["within_quality_loss"]]
    top = max(c["pass_rate"] for c in ok)
    chosen = next(c for c in report["candidates"] if c["candidate"] == report["chosen"])
    assert chosen["quality"] == max(c["quality"] for c in ok if c["pass_rate"] >= top - 0.05)
    # the spec's gates.fairness.reductions turns them on for the gate's mitigation too
    hold_sens = sensitive_frame(biased["hold"], spec)
    _, _, via_gate = mitigate(biased["oof"], biased["y_train"], sens, biased["scores"], hold_sens, 7,
                              gate.model_copy(update={"reductions": True}), spec.gates.quality.decision_threshold)
    assert [c["candidate"] for c in via_gate["candidates"]] == [c["candidate"] for c in report["candidates"]]
