"""Features: the ColumnTransformer from the spec, to_frame's exact dtypes, sensitive-attribute groups."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from support.synthetic import TOY_SPEC, synthetic_frame, toy_spec

from rtml.features import (
    MISSING,
    build_pipeline,
    build_preprocessor,
    sensitive_frame,
    sensitive_groups,
    target_vector,
    to_frame,
)
from rtml.spec import load_spec, parse_spec

CREDIT = load_spec()  # the shipped example spec


@pytest.fixture(scope="module")
def spec():
    return toy_spec()


@pytest.fixture(scope="module")
def fitted(spec):
    df = synthetic_frame(spec, 1500, seed=3)
    pipe = build_pipeline(spec)
    pipe.fit(to_frame(df, spec), target_vector(df[spec.target.name], spec))
    return pipe, df


def test_to_frame_exact_dtypes_and_order(spec):
    records = [
        {
            "region": "north",
            "age": 30,
            "income": "1200.5",
            "debt": 10,
            "amount": 500,
            "home": None,
            "extra": 1,
        },
        {"amount": 700.0, "debt": 0, "income": None, "age": 61.0, "home": "rent", "region": "east"},
    ]
    X = to_frame(records, spec)
    assert list(X.columns) == spec.feature_names  # spec order, extra column dropped
    for f in spec.features:
        expected = "float64" if f.is_numeric else "object"
        assert str(X[f.name].dtype) == expected, f.name
    assert X.loc[0, "income"] == 1200.5
    assert math.isnan(X.loc[1, "income"])
    assert X.loc[0, "home"] is None  # None stays None, not the string "None"
    assert X.loc[1, "age"] == 61.0


def test_to_frame_same_result_for_dataframe_dict_and_records(spec):
    df = synthetic_frame(spec, 20, seed=1)
    a = to_frame(df, spec)
    b = to_frame(df.to_dict(orient="records"), spec)
    c = pd.concat([to_frame(r, spec) for r in df.to_dict(orient="records")], ignore_index=True)
    pd.testing.assert_frame_equal(a, b)
    pd.testing.assert_frame_equal(a, c)


def test_to_frame_missing_values_normalised(spec):
    X = to_frame(
        pd.DataFrame({f: [np.nan] for f in spec.feature_names}).assign(home=[float("nan")], region=[pd.NA]),
        spec,
    )
    assert X.loc[0, "home"] is None and X.loc[0, "region"] is None
    assert X["income"].isna().all()


def test_to_frame_errors_name_the_feature(spec):
    good = synthetic_frame(spec, 3, seed=1)
    with pytest.raises(ValueError, match="'debt' is missing"):
        to_frame(good.drop(columns=["debt"]), spec)
    bad = good.astype({"income": object})
    bad.loc[1, "income"] = "a lot"
    with pytest.raises(ValueError, match="feature 'income': 'a lot' is not a number"):
        to_frame(bad, spec)
    X = to_frame(good.drop(columns=["debt"]), spec, allow_missing_columns=True)
    assert X["debt"].isna().all() and X["debt"].dtype == "float64"


def test_to_frame_categorical_numbers_and_booleans():
    data = {
        **TOY_SPEC,
        "features": [
            *TOY_SPEC["features"],
            {"name": "has_car", "type": "boolean"},
            {"name": "grade", "type": "categorical", "values": ["1", "2", "3"]},
        ],
    }
    spec = parse_spec(data)
    X = to_frame(
        [
            {**{f: 1 for f in spec.feature_names}, "has_car": "Yes", "grade": 2.0},
            {**{f: 1 for f in spec.feature_names}, "has_car": False, "grade": 3},
        ],
        spec,
    )
    assert X["has_car"].tolist() == ["true", "false"]
    assert X["grade"].tolist() == ["2", "3"]  # 2.0 from a float column is the category "2"


def test_preprocessor_width_is_fixed_by_the_spec(spec):
    # Only one category present in the data: the encoded width still comes from the spec's values.
    df = synthetic_frame(spec, 50, seed=2).assign(region="north", home="rent")
    ct = build_preprocessor(spec)
    out = ct.fit_transform(to_frame(df, spec))
    n_cat = sum(len(spec.feature(c).values) + 1 for c in spec.categorical_features)
    assert out.shape == (50, len(spec.numeric_features) + n_cat)
    names = list(ct.get_feature_names_out())
    assert f"categorical__home_{MISSING}" in names and "categorical__region_east" in names


def test_pipeline_handles_unknown_and_missing_categories(spec, fitted):
    pipe, df = fitted
    X = to_frame(df.head(5), spec)
    unknown = X.assign(region="atlantis")
    proba = pipe.predict_proba(unknown)  # handle_unknown="ignore": no error
    assert proba.shape == (5, 2) and np.all((proba >= 0) & (proba <= 1))
    ct = pipe.named_steps["features"]
    enc = ct.transform(unknown)
    region_cols = [
        i for i, n in enumerate(ct.get_feature_names_out()) if n.startswith("categorical__region_")
    ]
    assert np.all(enc[:, region_cols] == 0)  # an unknown value encodes to all zeros
    # None and NaN are the same "missing" category
    a = pipe.predict_proba(X.assign(home=None))
    b = pipe.predict_proba(X.assign(home=np.nan))
    np.testing.assert_array_equal(a, b)
    assert np.all(
        ct.transform(X.assign(home=None))[
            :, list(ct.get_feature_names_out()).index(f"categorical__home_{MISSING}")
        ]
        == 1
    )


def test_pipeline_is_seeded(spec):
    df = synthetic_frame(spec, 800, seed=5)
    X, y = to_frame(df, spec), target_vector(df[spec.target.name], spec)
    a = build_pipeline(spec).fit(X, y).predict_proba(X)
    b = build_pipeline(spec).fit(X, y).predict_proba(X)
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("estimator", ["logistic_regression", "random_forest", "gradient_boosting"])
def test_every_estimator_trains(estimator):
    params = {"gradient_boosting": {"max_iter": 20}, "random_forest": {"n_estimators": 20}}.get(estimator, {})
    spec = toy_spec(model={"registered_name": "t", "estimator": estimator, "params": params})
    df = synthetic_frame(spec, 400, seed=1)
    pipe = build_pipeline(spec).fit(to_frame(df, spec), target_vector(df[spec.target.name], spec))
    assert pipe.predict_proba(to_frame(df.head(3), spec)).shape == (3, 2)


def test_invalid_model_params_name_the_field():
    spec = toy_spec(model={"registered_name": "t", "estimator": "gradient_boosting", "params": {"nope": 1}})
    with pytest.raises(ValueError, match="model.params"):
        build_pipeline(spec)


def test_sensitive_bins_and_labels():
    attr = next(s for s in CREDIT.sensitive if s.name == "age_group")  # bins 18, 30, 45, 101
    df = pd.DataFrame({"Age": [18, 29.99, 30, 44, 45, 100, 101, 17, None]})
    assert sensitive_groups(df, attr).tolist() == [
        "18-29",
        "18-29",
        "30-44",
        "30-44",
        "45+",
        "45+",
        "out of range",
        "out of range",
        "missing",
    ]
    marital = next(s for s in CREDIT.sensitive if s.name == "marital_status")
    m = sensitive_groups(pd.DataFrame({"Marital": ["single", None, "widow"]}), marital)
    assert m.tolist() == ["single", "missing", "widow"] and m.name == "marital_status"
    # strings (fast path), numbers and NaN (per value) name the same groups
    mixed = sensitive_groups(pd.DataFrame({"Marital": [1, 2.0, np.nan, "x"]}), marital)
    assert mixed.tolist() == ["1", "2.0", "missing", "x"]
    nan_str = sensitive_groups(pd.DataFrame({"Marital": ["a", np.nan, pd.NA]}, dtype=object), marital)
    assert nan_str.tolist() == ["a", "missing", "missing"]


def test_sensitive_default_labels_and_frame(spec):
    data = {**TOY_SPEC, "sensitive": [{"name": "age_band", "column": "age", "bins": [18, 40, 91]}]}
    s = parse_spec(data)
    frame = sensitive_frame(pd.DataFrame({"age": [20, 50]}), s)
    assert frame["age_band"].tolist() == ["[18, 40)", "[40, 91)"]
    both = sensitive_frame(synthetic_frame(spec, 10, seed=1), spec)
    assert list(both.columns) == ["region_group", "age_group"]


def test_target_vector(spec):
    y = target_vector(pd.Series(["yes", "no", "YES", None]), spec)
    assert y.tolist() == [1, 0, 1, 0] and y.dtype == np.int64
    assert target_vector(
        [1, 0, "1"], parse_spec({**TOY_SPEC, "target": {"name": "default", "positive": 1}})
    ).tolist() == [1, 0, 1]
    # 1, 1.0 and True are different strings: each decided on its own (1.0 is "1.0", not "1")
    assert target_vector(
        [1, 1.0, True, "1", None], parse_spec({**TOY_SPEC, "target": {"name": "default", "positive": 1}})
    ).tolist() == [1, 0, 0, 1, 0]
    many = pd.Series(np.random.default_rng(0).choice(["yes", "no", "Yes", None], 5000))
    assert target_vector(many, spec).tolist() == [int(str(v).lower() == "yes") for v in many]
