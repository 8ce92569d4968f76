"""rtml.serve.model: a loaded version's scores and decisions (global threshold or its own labels), its
fast paths used only when identical, pyfunc outputs, 0/1 label checks and the class names answered."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from support.serving import good_record

from rtml.serve.model import (
    LoadedModel,
    binary_labels,
    decide,
    decision_labels,
    outputs_for_pyfunc,
    scorer_for_estimator,
)
from rtml.serve.validation import RecordValidator

pytestmark = pytest.mark.filterwarnings("ignore:.*Add type hints to the `predict` method")


class Fixed:
    def __init__(self, out):
        self.out = out

    def predict(self, df):
        return self.out


def test_pyfunc_outputs_take_scores_and_labels_from_one_frame():
    scores, labels = outputs_for_pyfunc(Fixed(pd.DataFrame({"score": [0.2, 0.9], "label": [1, 0]})), "bad")(None)
    assert scores.tolist() == [0.2, 0.9] and labels.tolist() == [1, 0] and labels.dtype == np.int64
    # no score-like column: the last column that is not the label
    scores, labels = outputs_for_pyfunc(Fixed(pd.DataFrame({"p": [0.3], "label": [True]})), "bad")(None)
    assert scores.tolist() == [0.3] and labels.tolist() == [1]
    scores, labels = outputs_for_pyfunc(Fixed(np.array([[0.6, 0.4]])), "bad")(None)
    assert scores.tolist() == [0.4] and labels is None
    # a column named like the positive class wins over "score"
    scores, _ = outputs_for_pyfunc(Fixed(pd.DataFrame({"score": [0.1], "bad": [0.7]})), "bad")(None)
    assert scores.tolist() == [0.7]


@pytest.mark.parametrize("bad", [[0, 2], [0.5, 1.0], ["bad", "good"], [np.nan, 1.0]])
def test_binary_labels_refuse_anything_but_0_and_1(bad):
    with pytest.raises(ValueError, match="0/1"):
        binary_labels(bad)


def test_binary_labels_accept_bools_ints_and_integral_floats():
    for values in ([True, False], [1, 0], [1.0, 0.0]):
        out = binary_labels(values)
        assert out.tolist() == [1, 0] and out.dtype == np.int64


def test_decide_uses_own_labels_else_the_threshold(spec):
    names = decision_labels(spec)
    assert names == ("good", "bad")
    assert decide([0.2, 0.5, 0.9], None, 0.5, names) == ["good", "bad", "bad"]
    assert decide([0.2, 0.5, 0.9], [1, 0, 0], 0.5, names) == ["bad", "good", "good"]


def test_decision_labels_without_a_negative_name(spec):
    for positive, negative in (("bad", "not_bad"), (1, 0), (True, False)):
        s = spec.model_copy(update={"target": spec.target.model_copy(update={"positive": positive, "negative": None})})
        assert decision_labels(s) == (negative, positive)


def _plain(spec, fitted, **kw) -> LoadedModel:
    return LoadedModel(name="credit_risk", version="1", score=scorer_for_estimator(fitted, spec.target.positive),
                       validator=RecordValidator(spec), samples=[good_record(spec)], **kw)


def test_fast_path_is_enabled_only_when_it_gives_the_same_scores(spec, fitted):
    model = _plain(spec, fitted)
    assert model.enable_fast_path(fitted, spec.target.positive) is True and model.info()["fast_path"] is True
    # A scorer that differs from the pipeline in the last bit: the replay is refused.
    off = _plain(spec, fitted)
    off.score = lambda df: fitted.predict_proba(df)[:, 1] + 1e-15
    assert off.enable_fast_path(fitted, spec.target.positive) is False and off.fast is None
    assert off.info()["fast_path"] is False


def test_check_rows_add_rows_with_every_nullable_input_missing(spec, fitted):
    model = _plain(spec, fitted)
    cols = model.check_rows([{"not": "a record"}])  # rows the validator refuses are left out
    assert len(cols["Age"]) == 2
    nullable = [r.name for r in model.validator.rules if r.nullable]
    assert nullable and all(cols[c][1] is None for c in nullable)
    assert all(cols[r.name][1] is not None for r in model.validator.rules if not r.nullable)


def test_run_of_a_plain_model_and_its_native_output(spec, fitted, data):
    from rtml.serve.source import frame_to_records

    raw, X = data
    model = _plain(spec, fitted)
    cols, _ = model.validator.validate(frame_to_records(raw[spec.feature_names].head(5)), single=False)
    scores, labels, native = model.run(cols)
    assert labels is None and native is None
    np.testing.assert_array_equal(scores, fitted.predict_proba(X.head(5))[:, 1])
    _, _, native = model.run(cols, native=True)  # MLflow's predict_fn=predict_proba: the class probabilities
    np.testing.assert_array_equal(native, fitted.predict_proba(X.head(5)))
    model.predict_fn = "predict"
    _, _, native = model.run(cols, native=True)
    assert native.tolist() == fitted.predict(X.head(5)).tolist()


def test_a_model_that_must_decide_itself_fails_without_labels(spec, fitted):
    model = _plain(spec, fitted, own_labels=True)
    cols, _ = model.validator.validate([good_record(spec)], single=False)
    with pytest.raises(ValueError, match="own labels"):
        model.run(cols)
    no_label = outputs_for_pyfunc(Fixed(pd.DataFrame({"score": [0.3]})), "bad")
    model = _plain(spec, fitted, own_labels=True, outputs=no_label, variant="mitigated")
    with pytest.raises(ValueError, match="no 'label' column"):
        model.predict_columns(cols)
    assert model.info()["decisions"] == "model labels" and model.info()["variant"] == "mitigated"


def test_group_fast_path_equals_the_pyfunc(spec, data, mitigated):
    from rtml.serve.fastpath import group_edge_rows
    from rtml.serve.source import frame_to_records
    from rtml.serve.validation import RequestError

    raw, X = data
    model, inner = mitigated()
    assert model.enable_group_fast_path() is True
    rows = frame_to_records(raw[spec.feature_names].head(300)) + group_edge_rows(spec, [good_record(spec)])
    ok = []
    for r in rows:
        try:
            model.validator.validate([r], single=True)
            ok.append(r)
        except RequestError:  # rows the endpoint would refuse
            continue
    cols, _ = model.validator.validate(ok, single=False)
    want = inner.predict(None, model.validator.frame(cols))
    scores, labels, native = model.run(cols, native=True)
    np.testing.assert_array_equal(scores, want["score"].to_numpy())
    np.testing.assert_array_equal(labels, want["label"].to_numpy())
    assert len(set(labels.tolist())) == 2 and len(ok) > 300
    assert native["label"] is labels
    assert model.info()["fast_path"] is True


def test_group_fast_path_is_not_used_when_it_would_differ(mitigated, monkeypatch):
    import rtml.serve.model as serve  # where LoadedModel looks it up

    model, _ = mitigated()
    real = serve.compile_group_thresholds

    def off_by_one_group(rule, mspec, columns):
        fn = real(rule, mspec, columns)
        return lambda cols: fn(cols) + 0.05  # a replay that decides differently
    monkeypatch.setattr(serve, "compile_group_thresholds", off_by_one_group)
    assert model.enable_group_fast_path() is False
    assert model.fast_outputs is None and model.info()["fast_path"] is False


def test_group_fast_path_only_for_the_mitigated_wrapper(spec, fitted, deciding_model, group_decider):
    # a pyfunc deciding itself that is not rtml's wrapper (no unwrap_python_model): called as it is
    model = deciding_model("m", group_decider(fitted))
    assert model.enable_group_fast_path() is False and model.fast_outputs is None
    assert _plain(spec, fitted).enable_group_fast_path() is False  # no pyfunc at all
