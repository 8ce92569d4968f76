"""rtml.evaluate.replicates: group rates and disparities of bootstrap replicates from per-group counts
(worked out by hand), the groups that qualify, and NaN where a replicate leaves too few groups."""

from __future__ import annotations

import math

import numpy as np
import pytest

from rtml.evaluate.replicates import interval, range_over, replicate_disparities, replicate_rates


def test_rates_per_group_with_nan_for_an_empty_denominator():
    # group 1 has rows but no positive; group 2 no row at all in this replicate
    r = replicate_rates([10, 5, 0], [4, 0, 0], [5, 2, 0], [3, 0, 0])
    assert r["selection_rate"][:2].tolist() == [0.5, 0.4] and math.isnan(r["selection_rate"][2])
    assert r["tpr"][0] == 0.75 and math.isnan(r["tpr"][1])
    assert r["fpr"].tolist()[:2] == [pytest.approx(2 / 6), pytest.approx(2 / 5)]
    assert r["precision"].tolist() == [0.6, 0.0, 0.0]


def test_range_over_the_masked_finite_groups_needs_two():
    values = np.array([[0.2, 0.5, np.nan, 0.9], [0.3, np.nan, np.nan, 0.1]])
    mask = np.array([True, True, True, False])  # the last group does not qualify
    lo, hi = range_over(values, mask)
    assert lo[0] == 0.2 and hi[0] == 0.5
    assert math.isnan(lo[1]) and math.isnan(hi[1])  # one qualifying finite group left: undefined


def test_disparities_of_two_replicates_by_hand():
    boot = {  # 2 replicates x 2 groups
        "N": np.array([[100, 50], [100, 50]]),
        "P": np.array([[40, 20], [40, 0]]),
        "S": np.array([[50, 20], [40, 30]]),
        "TP": np.array([[30, 10], [20, 0]]),
    }
    ok = np.array([True, True])
    d = replicate_disparities(boot, ok, ok, ok)
    assert d["demographic_parity_ratio"].tolist() == [pytest.approx(0.4 / 0.5), pytest.approx(0.4 / 0.6)]
    assert d["demographic_parity_difference"][0] == pytest.approx(0.1)
    # replicate 0: TPR 0.75 vs 0.5, FPR 20/60 vs 10/30; replicate 1: group 1 has no positive
    assert d["equal_opportunity_difference"][0] == pytest.approx(0.25)
    assert d["equalized_odds_difference"][0] == pytest.approx(max(0.25, 0.0))
    assert math.isnan(d["equal_opportunity_difference"][1])
    assert d["equalized_odds_difference"][1] == pytest.approx(30 / 50 - 20 / 60)  # the FPR gap alone
    # a group that does not qualify for TPR is left out of equal opportunity
    d2 = replicate_disparities(boot, ok, np.array([True, False]), ok)
    assert math.isnan(d2["equal_opportunity_difference"][0])


def test_interval_over_the_finite_replicates_of_each_column():
    values = np.array([[0.1, np.nan, 1.0], [0.2, np.inf, np.nan], [0.3, 0.5, np.nan], [0.4, np.nan, np.nan]])
    lo, hi = interval(values, 0.5)  # the 25th and 75th percentiles
    assert lo[0] == pytest.approx(np.quantile([0.1, 0.2, 0.3, 0.4], 0.25))
    assert hi[0] == pytest.approx(np.quantile([0.1, 0.2, 0.3, 0.4], 0.75))
    # one finite replicate (inf is not one) or fewer: no interval
    assert math.isnan(lo[1]) and math.isnan(hi[1]) and math.isnan(lo[2]) and math.isnan(hi[2])
