"""rtml.cli.evaluate: ``rtml evaluate`` in-process: --version is required, a bad spec and the gates'
ValueErrors are clean errors."""

from __future__ import annotations

import json

import pytest

from rtml import cli
from rtml.cli import evaluate as cmd
from rtml.settings import EXAMPLE_SPEC


def test_version_is_required(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["evaluate", str(EXAMPLE_SPEC)])
    assert exit_.value.code == 2 and "the following arguments are required: --version" in capsys.readouterr().err


def test_a_missing_spec_file_is_a_clean_error(tmp_path, capsys):
    assert cli.main(["evaluate", str(tmp_path / "none.yaml"), "--version", "1", "--json"]) == 2
    assert "cannot read project spec" in json.loads(capsys.readouterr().out)["error"]


def test_gate_value_errors_are_clean_and_results_pass_through(monkeypatch, capsys):
    def fake(spec, version):
        if version == "404":
            raise ValueError("credit_risk has no version 404")
        return {"ok": version == "1", "message": f"version {version} evaluated"}

    monkeypatch.setattr(cmd, "evaluate", fake)
    assert cli.main(["evaluate", str(EXAMPLE_SPEC), "--version", "404", "--json"]) == 2
    assert "no version 404" in json.loads(capsys.readouterr().out)["error"]
    assert cli.main(["evaluate", str(EXAMPLE_SPEC), "--version", "1"]) == 0
    assert cli.main(["evaluate", str(EXAMPLE_SPEC), "--version", "2"]) == 1  # a failed gate: exit 1
    assert "version 2 evaluated" in capsys.readouterr().out
