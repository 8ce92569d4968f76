"""The Airflow Assets that chain the DAGs (rtml.assets): fixed names, URIs from the deployment's spec
(``RTML_SPEC``), so that producers and consumers of an Asset agree, and a spec of another dataset or
model gives other URIs."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from airflow.sdk import Asset

from rtml import assets
from rtml.settings import EXAMPLE_SPEC, get_settings
from rtml.spec import load_spec

ALL = {"EVENTS": "rtml_events", "LABELS": "rtml_labels", "CHALLENGER": "rtml_challenger", "RETRAIN": "rtml_retrain"}


def _load_fresh(monkeypatch, spec_path: Path):
    """rtml.assets imported anew under ``RTML_SPEC=spec_path`` (as a separate module: the imported one stays)."""
    monkeypatch.setenv("RTML_SPEC", str(spec_path))
    get_settings(refresh=True)
    try:
        spec = importlib.util.spec_from_file_location("rtml_assets_under_test", assets.__file__)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        monkeypatch.delenv("RTML_SPEC")
        get_settings(refresh=True)


def test_assets_are_named_for_their_role_and_rooted_in_the_spec():
    ds, model = assets.SPEC.dataset.name, assets.SPEC.model.registered_name
    got = {attr: getattr(assets, attr) for attr in ALL}
    assert all(isinstance(a, Asset) for a in got.values())
    assert {attr: a.name for attr, a in got.items()} == ALL
    assert {attr: a.uri for attr, a in got.items()} == {
        "EVENTS": f"rtml://{ds}/events", "LABELS": f"rtml://{ds}/labels",
        "CHALLENGER": f"rtml://{model}/challenger", "RETRAIN": f"rtml://{model}/retrain"}
    assert len({a.uri for a in got.values()}) == 4  # no two Assets could be confused


def test_the_spec_is_the_configured_one():
    assert assets.SPEC_PATH == str(get_settings().spec)
    assert assets.SPEC == load_spec(assets.SPEC_PATH)


def test_another_deployment_spec_gives_other_uris(monkeypatch, tmp_path):
    text = EXAMPLE_SPEC.read_text()
    assert "name: credit_applications" in text and "registered_name: credit_risk" in text
    other = tmp_path / "loans.yaml"
    other.write_text(text.replace("name: credit_applications", "name: loan_events", 1)
                     .replace("registered_name: credit_risk", "registered_name: loan-model.v2", 1))
    module = _load_fresh(monkeypatch, other)
    assert module.SPEC_PATH == str(other)
    assert module.EVENTS.uri == "rtml://loan_events/events" and module.LABELS.uri == "rtml://loan_events/labels"
    assert module.CHALLENGER.uri == "rtml://loan-model.v2/challenger"
    assert module.RETRAIN.uri == "rtml://loan-model.v2/retrain"
    assert module.EVENTS.name == assets.EVENTS.name  # the names stay: the DAGs refer to them
    assert get_settings().spec != other  # the environment is back as it was


def test_a_broken_deployment_spec_fails_the_import_naming_the_field(monkeypatch, tmp_path):
    from rtml.spec import SpecError

    bad = tmp_path / "bad.yaml"
    bad.write_text(EXAMPLE_SPEC.read_text().replace("registered_name: credit_risk", "registered_name: credit/risk", 1))
    with pytest.raises(SpecError, match="registered_name"):
        _load_fresh(monkeypatch, bad)


def test_a_run_publishes_the_asset_of_its_own_model(tmp_path):
    """The deployment's own model: the Asset rtml_promote is scheduled on; another: its own Asset."""
    from rtml.spec import parse_spec

    assert assets.asset_for("challenger", assets.SPEC) == assets.CHALLENGER
    assert assets.asset_for("retrain", assets.SPEC) == assets.RETRAIN
    data = assets.SPEC.model_dump(mode="json")
    data["model"]["registered_name"] = "loan-model.v2"
    other = parse_spec(data)
    got = assets.asset_for("challenger", other)
    assert (got.name, got.uri) == ("rtml_challenger__loan-model.v2", "rtml://loan-model.v2/challenger")
    assert got != assets.CHALLENGER and assets.asset_for("retrain", other).uri == "rtml://loan-model.v2/retrain"
    with pytest.raises(ValueError, match="role must be one of"):
        assets.asset_for("events", other)
