"""rtml.evaluate.mitigation, the mitigated variant on frames (no MLflow): the gate's numbers are
those of the deterministic group rule, a planted bias fails plain and passes mitigated, the served
decision does not depend on the batch, the watermark fix. (The rule itself: test_grouprule.py and
test_fairsearch.py.)"""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from fairlearn.metrics import demographic_parity_ratio, equalized_odds_difference
from support.synthetic import synthetic_frame, toy_spec

from rtml.evaluate.fairsearch import search_rule
from rtml.evaluate.gates import evaluate_frames, run_fairness
from rtml.evaluate.mitigation import MitigatedModel, should_mitigate
from rtml.features import sensitive_frame, target_vector, to_frame
from rtml.names import OOF_SCORE
from rtml.train import fit_pipeline, oof_scores, split_holdout

BIAS = {"region_group": {"south": 1.5}}


@pytest.fixture(scope="module")
def spec():
    return toy_spec()


@pytest.fixture(scope="module")
def biased(spec):
    df = synthetic_frame(spec, 3000, seed=1, bias=BIAS)
    train, hold = split_holdout(df, spec)
    pipe = fit_pipeline(spec, train)
    oof = oof_scores(spec, train, spec.model.random_state)
    y_train = target_vector(train[spec.target.name], spec)
    # the registered variant's rule: the mitigation search (holdout-sized simulations as in the gates)
    rule, report = search_rule(
        oof,
        y_train,
        sensitive_frame(train, spec),
        spec.gates.fairness,
        spec.gates.quality.decision_threshold,
        spec.model.random_state,
        holdout_rows=len(hold),
    )
    assert rule is not None, report["reason"]
    model = MitigatedModel(spec.model_dump(mode="json"), rule.to_dict())
    model._setup(pipe)
    return {
        "pipe": pipe,
        "model": model,
        "rule": rule,
        "report": report,
        "train": train.assign(**{OOF_SCORE: oof}),
        "hold": hold,
        "scores": pipe.predict_proba(to_frame(hold, spec))[:, 1],
    }


def test_gate_numbers_are_those_of_the_deterministic_rule(spec, biased):
    model, hold = biased["model"], biased["hold"]
    X = to_frame(hold, spec)
    decisions = model.labels(X, biased["scores"])
    res = run_fairness(spec, hold, biased["scores"], decisions=decisions)
    y = target_vector(hold[spec.target.name], spec)
    for attr in ("region_group", "age_group"):
        groups = sensitive_frame(hold, spec)[attr]
        got = res["attributes"][attr]
        assert got["demographic_parity_ratio"] == pytest.approx(
            demographic_parity_ratio(y, decisions, sensitive_features=groups)
        )
        assert got["equalized_odds_difference"] == pytest.approx(
            equalized_odds_difference(y, decisions, sensitive_features=groups)
        )
        # the plain model's decisions are shown next to them
        plain = (biased["scores"] >= spec.gates.quality.decision_threshold).astype(int)
        assert got["plain"]["demographic_parity_ratio"] == pytest.approx(
            demographic_parity_ratio(y, plain, sensitive_features=groups)
        )
    # the variant shown in the plain version's report is exactly the one that gets registered
    plain_res = run_fairness(
        spec, hold, biased["scores"], biased["train"], biased["train"][OOF_SCORE].to_numpy()
    )
    assert plain_res["mitigation"]["rule"] == biased["rule"].to_dict()
    for attr in ("region_group", "age_group"):
        shown = plain_res["attributes"][attr]["mitigated"]
        assert shown["demographic_parity_ratio"] == pytest.approx(
            res["attributes"][attr]["demographic_parity_ratio"]
        )


def test_planted_bias_fails_plain_and_passes_mitigated(spec, biased, tmp_path):
    plain = evaluate_frames(spec, biased["pipe"], biased["train"], biased["hold"])
    assert plain["gates"]["fairness"]["passed"] is False
    assert plain["gates"]["quality"]["passed"] and plain["gates"]["drift"]["passed"]
    assert should_mitigate(spec, {**plain, "gates": {k: v["passed"] for k, v in plain["gates"].items()}})[0]
    out = tmp_path / "reports"
    mit = evaluate_frames(
        spec,
        biased["model"],
        biased["train"],
        biased["hold"],
        out_dir=out,
        meta={"model": "toy", "version": "2"},
    )
    assert mit["passed"] is True, mit["reasons"]
    region = mit["fairness"]["attributes"]["region_group"]
    assert region["demographic_parity_ratio"] >= 0.8 > region["plain"]["demographic_parity_ratio"]
    # same scores: the score-based quality metrics are identical, the decision ones are not
    for m in ("roc_auc", "pr_auc", "log_loss", "brier", "ece"):
        assert mit["quality"]["candidate"][m] == plain["quality"]["candidate"][m]
    assert mit["quality"]["candidate"]["f1"] != plain["quality"]["candidate"]["f1"]
    html = (out / "fairness.html").read_text()
    assert "plain model" in html and "this version, mitigated" in html


def test_served_decision_does_not_depend_on_the_batch(spec, biased):
    model, hold = biased["model"], biased["hold"]
    X = to_frame(hold, spec)
    full = model.predict(None, X)
    assert list(full.columns) == ["score", "label"] and full["label"].dtype == np.int64
    np.testing.assert_array_equal(full["score"].to_numpy(), biased["scores"])
    perm = np.random.default_rng(3).permutation(len(X))
    shuffled = model.predict(None, X.iloc[perm].reset_index(drop=True))
    np.testing.assert_array_equal(shuffled["label"].to_numpy(), full["label"].to_numpy()[perm])
    for i in (0, 5, 17):
        one = model.predict(None, X.iloc[[i]])
        assert one["label"].iloc[0] == full["label"].iloc[i] and one["score"].iloc[0] == full["score"].iloc[i]
    # repeated calls: identical (no randomness)
    np.testing.assert_array_equal(model.predict(None, X)["label"].to_numpy(), full["label"].to_numpy())


def test_pickled_wrapper_is_small_and_holds_no_pipeline(spec, biased):
    blob = pickle.dumps(biased["model"])
    assert len(blob) < 20_000
    back = pickle.loads(blob)
    assert back._pipe is None and back.rule_data == biased["rule"].to_dict()


def test_should_mitigate_only_when_fairness_alone_fails(spec):
    only_fair = {"passed": False, "gates": {"quality": True, "fairness": False, "drift": True}}
    assert should_mitigate(spec, only_fair)[0] is True
    assert should_mitigate(spec, {"passed": True, "gates": {}})[0] is False
    assert should_mitigate(spec, {**only_fair, "gates": {**only_fair["gates"], "quality": False}})[0] is False
    assert should_mitigate(spec, {**only_fair, "gates": {**only_fair["gates"], "drift": False}})[0] is False
    no = toy_spec(gates={"fairness": {"mitigate": False}})
    assert should_mitigate(no, only_fair) == (False, "gates.fairness.mitigate is false")
