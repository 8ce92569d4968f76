"""rtml.serve.fastpath: the numpy replay of a fitted pipeline equals the pipeline bit for bit or is not
built; the positive-class column; the mitigated variant's per-group thresholds equal the groups of
rtml.features and GroupRule; the edge rows that check a group fast path."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from support.serving import good_record

from rtml.serve.fastpath import compile_fast_path, compile_group_thresholds, group_edge_rows, positive_column


def test_fast_path_is_exact_or_not_used(spec, fitted, data):
    """The numpy replay equals the pipeline bit for bit, missing values included; unknown shapes opt out."""
    from sklearn.linear_model import LogisticRegression

    from rtml.serve.source import frame_to_records
    from rtml.serve.validation import RecordValidator

    raw, X = data
    validator = RecordValidator(spec)
    rows = frame_to_records(raw[spec.feature_names].head(200))
    assert any(r["Income"] is None for r in rows) and any(r["Home"] is None for r in rows)
    cols, _ = validator.validate(rows, single=False)
    fast = compile_fast_path(fitted, validator.columns, validator.numeric, spec.target.positive)
    assert fast is not None
    np.testing.assert_array_equal(fast(cols), fitted.predict_proba(validator.frame(cols))[:, 1])
    np.testing.assert_array_equal(fast(cols), fitted.predict_proba(X.head(200))[:, 1])
    np.testing.assert_array_equal(fast.proba(cols), fitted.predict_proba(X.head(200)))
    # Not a Pipeline(ColumnTransformer, classifier): no fast path.
    assert compile_fast_path(LogisticRegression(), validator.columns, validator.numeric, "bad") is None


@pytest.mark.parametrize(
    ("classes", "positive", "column"),
    [(["bad", "good"], "bad", 0), (["good", "bad"], "bad", 1), ([0, 1], 1, 1), (np.array(["0", "1"]), 1, 1),
     ([False, True], True, 1), (["x", "y", "z"], "none of them", 2), (None, "bad", -1)],
)
def test_positive_column(classes, positive, column):
    assert positive_column(classes, positive) == column


def _tiny_pipeline(num_steps, cat_steps):
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline, make_pipeline

    X = pd.DataFrame({"a": [1.0, np.nan, 3.0, 4.0, 5.0, 6.0], "c": np.array(["x", "y", None, "x", "y", "x"], dtype=object)})
    y = np.array([0, 1, 0, 1, 1, 0])
    ct = ColumnTransformer([("num", make_pipeline(*num_steps), ["a"]), ("cat", make_pipeline(*cat_steps), ["c"])])
    pipe = Pipeline([("prep", ct), ("model", LogisticRegression(random_state=0))]).fit(X, y)
    return pipe, X


def test_supported_steps_replay_exactly_with_unknown_categories():
    from sklearn.impute import SimpleImputer
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    pipe, X = _tiny_pipeline(
        [SimpleImputer(strategy="median"), StandardScaler()],
        [SimpleImputer(missing_values=None, strategy="constant", fill_value="missing"),
         OneHotEncoder(handle_unknown="ignore", sparse_output=False)],
    )
    fast = compile_fast_path(pipe, ["a", "c"], ["a"], 1)
    assert fast is not None
    cols = {"a": [None, 2.5, 1e6], "c": ["never seen", None, "y"]}
    frame = pd.DataFrame({"a": np.array([np.nan, 2.5, 1e6]), "c": np.array(cols["c"], dtype=object)})
    np.testing.assert_array_equal(fast(cols), pipe.predict_proba(frame)[:, 1])


@pytest.mark.parametrize("case", ["indicator", "sparse", "drop", "unknown step"])
def test_unsupported_steps_give_no_fast_path(case):
    from sklearn.impute import SimpleImputer
    from sklearn.preprocessing import MinMaxScaler, OneHotEncoder, StandardScaler

    num = [SimpleImputer(add_indicator=True)] if case == "indicator" else (
        [SimpleImputer(), MinMaxScaler()] if case == "unknown step" else [SimpleImputer(), StandardScaler()])
    ohe = OneHotEncoder(handle_unknown="ignore", sparse_output=case == "sparse",
                        drop="first" if case == "drop" else None)
    pipe, _ = _tiny_pipeline(num, [SimpleImputer(missing_values=None, strategy="constant", fill_value="m"), ohe])
    assert compile_fast_path(pipe, ["a", "c"], ["a"], 1) is None


def test_group_thresholds_follow_the_groups_of_rtml_features(spec):
    from rtml.evaluate.grouprule import GroupRule
    from rtml.features import sensitive_frame

    rule = GroupRule(["marital_status", "age_group"],
                     {"marital_status=single & age_group=18-29": 0.1, "marital_status=married & age_group=45+": 0.2,
                      "marital_status=missing & age_group=30-44": 0.3, "__other__": 0.9}, "__other__")
    columns = spec.feature_names
    fn = compile_group_thresholds(rule, spec, columns)
    base = good_record(spec)
    rows = group_edge_rows(spec, [base]) + [{**base, "Marital": "single", "Age": 18.0},
                                            {**base, "Marital": None, "Age": 44.999}]
    cols = {c: [r[c] for r in rows] for c in columns}
    got = fn(cols)
    frame = pd.DataFrame({"Marital": pd.Series(cols["Marital"], dtype=object),
                          "Age": pd.to_numeric(pd.Series(cols["Age"], dtype=object))})
    want = rule.row_thresholds(rule.keys(sensitive_frame(frame, spec)))
    np.testing.assert_array_equal(got, want)
    assert list(got[-2:]) == [0.1, 0.3]  # the table is used, not only the fallback
    assert {0.1, 0.3, 0.9} <= set(got.tolist())


def test_group_thresholds_need_the_attribute_columns(spec):
    from rtml.evaluate.grouprule import GroupRule

    rule = GroupRule(["age_group"], {"__other__": 0.5}, "__other__")
    assert compile_group_thresholds(rule, spec, ["Marital", "Income"]) is None  # no Age input
    unknown = GroupRule(["no_such_attribute"], {"__other__": 0.5}, "__other__")
    assert compile_group_thresholds(unknown, spec, spec.feature_names) is None


def test_group_edge_rows_cover_every_value_and_both_sides_of_every_edge(spec):
    base = good_record(spec)
    rows = group_edge_rows(spec, [base])
    marital = {r["Marital"] for r in rows}
    assert marital == {"married", "single", "separated", "widow", "divorced", None}
    ages = {r["Age"] for r in rows}
    assert None in ages
    for edge in (18.0, 30.0, 45.0, 101.0):
        assert {np.nextafter(edge, -np.inf), edge, np.nextafter(edge, np.inf)} <= ages
    assert all(set(r) == set(base) for r in rows)
