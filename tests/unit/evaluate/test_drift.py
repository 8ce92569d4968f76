"""rtml.evaluate.drift on tiny model-input frames: identical frames pass (HTML written), shifted
features and a shifted prediction fail with reasons naming the columns, the gate counts features
only (prediction drift fails it only when ``check_prediction``), a frame without the prediction
column checks features only, large frames are sampled with a seed. Evidently runs for real (its
import takes seconds: it happens inside ``drift_check``, so only in these tests)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from support.synthetic import synthetic_frame, toy_spec

from rtml.evaluate.drift import PREDICTION, _sample, drift_check
from rtml.features import to_frame
from rtml.spec import DriftGate

ROWS = 200


@pytest.fixture(scope="module")
def spec():
    return toy_spec()


def _frame(spec, seed: int, drift: float = 0.0, pred: tuple[float, float] = (2, 5)) -> pd.DataFrame:
    X = to_frame(synthetic_frame(spec, ROWS, seed=seed, drift=drift), spec)
    X[PREDICTION] = np.random.default_rng(seed).beta(*pred, ROWS)
    return X


def test_identical_frames_pass_and_the_report_is_written(spec, tmp_path):
    ref = _frame(spec, 1)
    html = tmp_path / "drift.html"
    res = drift_check(ref, ref.copy(), spec, name="replay", html_path=html)
    assert res["passed"] is True and res["reasons"] == []
    assert res["drifted_features"] == [] and res["drifted_share"] == 0.0
    assert set(res["columns"]) == {*spec.feature_names, PREDICTION} and res["prediction_drifted"] is False
    assert all(c["drifted"] is False and "p_value" in c["method"] for c in res["columns"].values())
    assert res["sampled"] is False and res["sample_rows"] == {"reference": ROWS, "current": ROWS}
    assert res["name"] == "replay" and res["max_drifted_share"] == spec.gates.drift.max_drifted_share
    assert html.stat().st_size > 1000 and "<html" in html.read_text(errors="replace").lower()


def test_shifted_features_and_prediction_fail_naming_them_on_a_seeded_sample(spec):
    res = drift_check(_frame(spec, 1), _frame(spec, 2, drift=0.3, pred=(5, 2)), spec, name="newest", max_rows=100)
    assert res["passed"] is False
    assert set(spec.numeric_features) <= set(res["drifted_features"]) and PREDICTION not in res["drifted_features"]
    assert res["drifted_share"] == len(res["drifted_features"]) / len(spec.feature_names)
    assert res["reasons"][0].startswith(f"drift: newest: {len(res['drifted_features'])} of 6 features drifted")
    assert "income" in res["reasons"][0] and "> 0.5" in res["reasons"][0]
    assert res["prediction_drifted"] is True and "drift: newest: the prediction drifted (K-S" in res["reasons"][1]
    # sampled before Evidently sees the rows; the counts are of the whole frames
    assert res["sampled"] is True and res["sample_rows"] == {"reference": 100, "current": 100}
    assert res["reference_rows"] == res["current_rows"] == ROWS


def test_prediction_drift_alone_fails_only_when_the_gate_checks_it(spec):
    ref = _frame(spec, 1)
    cur = ref.assign(**{PREDICTION: np.random.default_rng(9).beta(5, 2, ROWS)})  # same features
    res = drift_check(ref, cur, spec, DriftGate(check_prediction=False))
    assert res["prediction_drifted"] is True and res["columns"][PREDICTION]["score"] < 0.05
    assert res["drifted_features"] == [] and res["passed"] is True


def test_without_a_prediction_column_only_features_are_checked_against_the_share(spec):
    ref = _frame(spec, 1)
    cur = _frame(spec, 2, drift=0.3).drop(columns=PREDICTION)
    res = drift_check(ref, cur, spec, DriftGate(max_drifted_share=1.0))
    assert PREDICTION not in res["columns"] and res["prediction_drifted"] is None
    # every feature drifted, but the gate allows a share of 1.0: not more than the limit
    assert res["drifted_share"] == 1.0 and res["passed"] is True


def test_sample_is_seeded_and_leaves_small_frames_alone():
    df = pd.DataFrame({"x": range(50)})
    assert _sample(df, 50, 0) is df
    a, b = _sample(df, 10, 3), _sample(df, 10, 3)
    assert len(a) == 10 and list(a.index) == list(b.index) and list(a.index) != list(_sample(df, 10, 4).index)
