"""rtml.evaluate.quality: the holdout metrics of scores (values worked out by hand on four rows), the
decision metrics of given 0/1 decisions, single-class and extreme-score holdouts, the reliability
table's bins and the expected calibration error."""

from __future__ import annotations

import math

import numpy as np
import pytest

from rtml.evaluate.quality import (
    LOWER_IS_BETTER,
    decision_metrics,
    expected_calibration_error,
    quality_metrics,
    reliability_table,
)

Y = np.array([0, 0, 1, 1])
P = np.array([0.1, 0.6, 0.4, 0.9])


def test_quality_metrics_on_four_rows_worked_out_by_hand():
    m = quality_metrics(Y, P, 0.5)
    # decisions [0, 1, 0, 1]: one true positive, one false positive, one false negative
    assert m["precision"] == m["recall"] == m["f1"] == pytest.approx(0.5)
    # positive/negative pairs ranked right: (0.4 > 0.1), (0.9 > 0.1), (0.9 > 0.6); wrong: (0.4 < 0.6)
    assert m["roc_auc"] == pytest.approx(0.75)
    assert m["brier"] == pytest.approx((0.01 + 0.36 + 0.36 + 0.01) / 4)
    assert m["log_loss"] == pytest.approx(-(2 * math.log(0.9) + 2 * math.log(0.4)) / 4)
    assert m["positive_rate"] == 0.5 and m["predicted_positive_rate"] == 0.5 and m["rows"] == 4.0
    assert all(isinstance(v, float) for v in m.values())


def test_a_score_equal_to_the_threshold_is_a_positive_decision():
    at = quality_metrics(Y, P, 0.4)  # 0.4 >= 0.4: now three positives, both true ones among them
    assert at["recall"] == 1.0 and at["predicted_positive_rate"] == 0.75
    assert quality_metrics(Y, P, 0.41)["recall"] == 0.5


def test_single_class_holdout_has_no_ranking_metrics_but_the_rest():
    m = quality_metrics(np.zeros(3, dtype=int), np.array([0.2, 0.7, 0.1]), 0.5)
    assert math.isnan(m["roc_auc"]) and math.isnan(m["pr_auc"])
    assert math.isfinite(m["log_loss"]) and m["positive_rate"] == 0.0
    assert m["predicted_positive_rate"] == pytest.approx(1 / 3) and m["precision"] == 0.0  # no 0/0 warning


def test_scores_of_exactly_zero_and_one_give_a_finite_log_loss():
    m = quality_metrics(np.array([1, 0]), np.array([0.0, 1.0]), 0.5)  # confidently wrong on both rows
    assert math.isfinite(m["log_loss"]) and m["log_loss"] > 30
    assert m["brier"] == pytest.approx(1.0) and m["roc_auc"] == 0.0


def test_decision_metrics_of_given_decisions():
    d = decision_metrics(np.array([1, 1, 0, 0, 1]), np.array([1, 0, 0, 1, 1]))
    assert d["precision"] == pytest.approx(2 / 3) and d["recall"] == pytest.approx(2 / 3)
    assert d["f1"] == pytest.approx(2 / 3) and d["predicted_positive_rate"] == pytest.approx(0.6)
    none = decision_metrics(np.array([1, 0]), np.array([0, 0]))
    assert none == {"f1": 0.0, "precision": 0.0, "recall": 0.0, "predicted_positive_rate": 0.0}


def test_reliability_table_bins_scores_by_equal_width():
    y = np.array([0, 1, 1, 0, 1])
    p = np.array([0.0, 0.05, 0.55, 0.95, 1.0])
    rows = reliability_table(y, p, bins=4)
    assert [r["bin"] for r in rows] == ["0.0-0.2", "0.2-0.5", "0.5-0.8", "0.8-1.0"]
    assert [r["count"] for r in rows] == [2, 0, 1, 2]  # a score of exactly 1.0 falls in the last bin
    assert rows[0]["mean_predicted"] == pytest.approx(0.025) and rows[0]["observed_rate"] == 0.5
    assert rows[1]["mean_predicted"] is None and rows[1]["observed_rate"] is None
    assert rows[3]["mean_predicted"] == pytest.approx(0.975) and rows[3]["observed_rate"] == 0.5
    assert sum(r["count"] for r in reliability_table(y, p)) == len(y)


def test_expected_calibration_error_weights_bins_by_rows():
    table = [
        {"count": 3, "mean_predicted": 0.2, "observed_rate": 0.5},
        {"count": 0, "mean_predicted": None, "observed_rate": None},  # empty bins are skipped
        {"count": 1, "mean_predicted": 0.9, "observed_rate": 0.9},
    ]
    assert expected_calibration_error(table) == pytest.approx(3 * 0.3 / 4)
    assert math.isnan(expected_calibration_error([{"count": 0, "mean_predicted": None, "observed_rate": None}]))
    # perfectly calibrated scores: every row's score is its bin's observed rate
    y = np.array([0, 1, 0, 1])
    assert expected_calibration_error(reliability_table(y, np.full(4, 0.5))) == 0.0


def test_lower_is_better_names_metrics_that_quality_metrics_returns():
    assert LOWER_IS_BETTER <= set(quality_metrics(Y, P, 0.5))


def test_threshold_metrics_are_sklearns_including_the_zero_division_cases():
    from sklearn.metrics import f1_score, precision_score, recall_score

    rng = np.random.default_rng(5)
    for trial in range(30):
        y = rng.integers(0, 2, 200)
        pred = rng.integers(0, 2, 200)
        if trial % 3 == 0:
            pred[:] = 0  # nothing selected: precision 0/0
        if trial % 4 == 0:
            y[:] = 0  # no positive: recall 0/0
        got = decision_metrics(y, pred)
        for name, fn in (("f1", f1_score), ("precision", precision_score), ("recall", recall_score)):
            assert got[name] == pytest.approx(fn(y, pred, zero_division=0), abs=1e-15), (trial, name)
        assert quality_metrics(y, pred * 0.9, 0.5)["f1"] == got["f1"]
