"""rtml.evaluate.grouprule: the group key of each row (intersection of the sensitive attributes), the
per-group threshold rule (fallback for unknown groups, never/always thresholds, the score on the
threshold selected), its plain-data round trip and its readable description."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from rtml.evaluate.grouprule import ALWAYS, NEVER, OTHER, GroupRule, group_keys

SOUTH_YOUNG = "region_group=south & age_group=18-39"


@pytest.fixture
def rule() -> GroupRule:
    return GroupRule(
        ["region_group", "age_group"],
        {SOUTH_YOUNG: 0.6, "region_group=north & age_group=40+": 0.2, OTHER: 0.4},
        OTHER,
        meta={"target_selection_rate": {SOUTH_YOUNG: 0.25}},
    )


def test_group_keys_name_the_intersection_in_column_order():
    sens = pd.DataFrame({"a": ["x", "y"], "b": ["1", None]}, index=[10, 2])  # any index: rows keep their order
    assert list(group_keys(sens)) == ["a=x & b=1", "a=y & b=None"]
    assert list(group_keys(pd.DataFrame({"a": ["x"], "b": ["1"]}))) == ["a=x & b=1"]
    assert list(group_keys(pd.DataFrame({"n": [1, 2]}))) == ["n=1", "n=2"]
    # no sensitive attribute: every row is in the pooled group
    assert list(group_keys(pd.DataFrame(index=range(3)))) == [OTHER] * 3


def test_unknown_groups_use_the_fallback_rule(rule):
    sens = pd.DataFrame({"region_group": ["west", "south"], "age_group": ["missing", "18-39"]})
    keys = rule.keys(sens)
    assert keys[0] == rule.fallback and keys[1] == SOUTH_YOUNG
    s = np.array([0.3, 0.3])
    np.testing.assert_array_equal(rule.decide(s, keys), rule.decide(s, np.array([rule.fallback, keys[1]])))


def test_keys_read_the_rules_attributes_whatever_the_frames_column_order(rule):
    sens = pd.DataFrame({"extra": ["z"], "age_group": ["18-39"], "region_group": ["south"]})
    assert list(rule.keys(sens)) == [SOUTH_YOUNG]
    with pytest.raises(KeyError, match="age_group"):
        rule.keys(pd.DataFrame({"region_group": ["south"]}))


def test_decide_selects_a_score_on_its_groups_threshold(rule):
    keys = np.array([SOUTH_YOUNG, SOUTH_YOUNG, "region_group=north & age_group=40+", "never seen"], dtype=object)
    np.testing.assert_array_equal(rule.row_thresholds(keys), [0.6, 0.6, 0.2, 0.4])
    decided = rule.decide(np.array([0.6, 0.5999, 0.2, 0.41]), keys)
    assert decided.dtype == np.int64 and list(decided) == [1, 0, 1, 1]


def test_never_and_always_thresholds_bound_every_score():
    r = GroupRule(["g"], {"g=a": NEVER, "g=b": ALWAYS}, "g=a")
    keys = np.array(["g=a", "g=a", "g=b", "g=b"], dtype=object)
    assert list(r.decide(np.array([0.0, 1.0, 0.0, 1.0]), keys)) == [0, 0, 1, 1]
    assert r.describe() == {"g=a": "never", "g=b": "always"}


def test_the_fallback_must_have_a_rule():
    with pytest.raises(ValueError, match="fallback group 'g=c' has no rule"):
        GroupRule(["g"], {"g=a": 0.5}, "g=c")


def test_round_trip_through_json_gives_the_same_decisions(rule):
    data = json.loads(json.dumps(rule.to_dict()))
    back = GroupRule.from_dict(data)
    assert back.to_dict() == rule.to_dict()
    keys = np.array([SOUTH_YOUNG, OTHER, "unseen"], dtype=object)
    s = np.array([0.55, 0.45, 0.39])
    np.testing.assert_array_equal(back.decide(s, keys), rule.decide(s, keys))
    # thresholds are stored as floats under string keys, whatever they were given as
    r = GroupRule(["g"], {1: 1}, "1")
    assert r.thresholds == {"1": 1.0} and GroupRule.from_dict({**r.to_dict(), "meta": None}).meta == {}


def test_describe_reads_each_groups_threshold_and_training_rate(rule):
    text = rule.describe()
    assert text[SOUTH_YOUNG] == ">= 0.6000 (selects 0.250 of the group in training)"
    assert text[OTHER] == ">= 0.4000"  # no training rate known for this group
