"""The rtml command line: every verb has --help, spec check speaks JSON, errors exit non-zero."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

from rtml import cli
from rtml.settings import EXAMPLE_SPEC

RTML = str(Path(sys.executable).parent / "rtml")


def _verbs(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command path (``("stack", "up")``, ...) of the parser, depth first."""
    out = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                out.append((*prefix, name))
                out += _verbs(sub, (*prefix, name))
    return out


VERBS = _verbs(cli.build_parser())


def test_expected_verbs_exist():
    assert ("spec", "check") in VERBS
    assert {("stack", "up"), ("stack", "down"), ("stack", "status")} <= set(VERBS)


def test_top_level_help_via_entry_point():
    result = subprocess.run([RTML, "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "usage: rtml" in result.stdout
    for verb in {v[0] for v in VERBS}:
        assert verb in result.stdout


@pytest.mark.parametrize("verb", VERBS, ids=[" ".join(v) for v in VERBS])
def test_every_verb_has_help(verb, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main([*verb, "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: rtml " + " ".join(verb))


def test_spec_check_json():
    result = subprocess.run(
        [RTML, "spec", "check", str(EXAMPLE_SPEC), "--json"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["ok"] is True
    assert data["name"] == "credit_risk"
    assert data["target"] == "Status"
    assert len(data["features"]) == 13
    assert data["sensitive"] == ["marital_status", "age_group"]
    assert len(data["schema_hash"]) == 16


def test_spec_check_bad_spec_exits_2_naming_the_field(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(EXAMPLE_SPEC.read_text().replace("min_roc_auc: 0.7", "min_roc_auc: 7"))
    assert cli.main(["spec", "check", str(bad), "--json"]) == 2
    data = json.loads(capsys.readouterr().out)
    assert data["ok"] is False
    assert "gates.quality.min_roc_auc" in data["error"]


def test_spec_check_human_output(capsys):
    assert cli.main(["spec", "check", str(EXAMPLE_SPEC)]) == 0
    assert "OK (credit_risk: 13 features, target Status" in capsys.readouterr().out


def test_stack_status_json_when_nothing_runs(tmp_path, monkeypatch, capsys):
    """A state folder with nothing started: status answers (exit 1, not a crash) and says DOWN."""
    from rtml.platform.stack import free_port_block
    from rtml.settings import get_settings

    base = free_port_block(15)
    monkeypatch.setenv("RTML_HOME", str(tmp_path))
    monkeypatch.setenv("RTML_S3_PORT", str(base))
    monkeypatch.setenv("RTML_MLFLOW_PORT", str(base + 10))
    monkeypatch.setenv("RTML_AIRFLOW_PORT", str(base + 11))
    monkeypatch.setenv("RTML_SERVE_PORT", str(base + 14))
    get_settings(refresh=True)
    try:
        assert cli.main(["stack", "status", "--json"]) == 1
        data = json.loads(capsys.readouterr().out)
        assert data["ok"] is False
        assert set(data["services"]) == {"s3", "mlflow", "airflow", "serve", "kafka"}
        assert all(not s["healthy"] for s in data["services"].values())
        assert data["services"]["mlflow"]["url"] == f"http://127.0.0.1:{base + 10}"
        assert cli.main(["stack", "down", "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["stopped"] == {}
    finally:
        monkeypatch.undo()
        get_settings(refresh=True)


def test_stack_up_rejects_unknown_service(capsys):
    assert cli.main(["stack", "up", "--only", "zookeeper", "--json"]) == 1
    assert "unknown service" in json.loads(capsys.readouterr().out)["error"]
