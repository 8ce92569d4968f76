"""rtml.cli.produce: ``rtml produce`` in-process: option values are checked with errors naming the option
(exit 2), the arguments reach rtml.ingest.produce.produce, and its ValueErrors become clean errors."""

from __future__ import annotations

import json

import pytest

from rtml import cli
from rtml.cli import produce as cmd


@pytest.fixture
def calls(monkeypatch):
    seen: list[dict] = []

    def fake(spec, **kw):
        seen.append(kw)
        return {"ok": True, "message": "produced"}

    monkeypatch.setattr(cmd, "produce", fake)
    return seen


@pytest.mark.parametrize(
    ("argv", "error"),
    [
        (["--rate", "0"], "--rate must be positive, got 0"),
        (["--rate", "nan"], "--rate must be positive, got nan"),
        (["--start", "noon"], "--start: not an ISO 8601 time: 'noon'"),
        (["--drift-from", "2026-99-01"], "--drift-from: not an ISO 8601 time"),
        (["--group-shift", "Marital"], "--group-shift 'Marital': expected COLUMN=VALUE:SHARE"),
        (["--group-shift", "Marital=single:2"], "share must be in [0, 1]"),
    ],
)
def test_bad_values_are_clean_errors_naming_the_option(calls, capsys, argv, error):
    assert cli.main(["produce", *argv, "--json"]) == 2
    assert error in json.loads(capsys.readouterr().out)["error"]
    assert calls == []


@pytest.mark.parametrize(
    ("argv", "error"),
    [(["--rows", "many"], "argument --rows: invalid int value: 'many'"),
     (["--to", "s3"], "argument --to: invalid choice: 's3'"),
     (["--format", "xml"], "argument --format: invalid choice: 'xml'")],
)
def test_badly_typed_options_are_usage_errors(capsys, argv, error):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["produce", *argv])
    assert exit_.value.code == 2 and error in capsys.readouterr().err


def test_arguments_reach_the_producer(calls):
    assert cli.main(["produce", "--rows", "10", "--start", "2026-11-25T12:00:00", "--drift-features", "Income,,Amount",
                     "--group-shift", "Marital=single:0.6", "--no-labels", "--to", "redis", "--maxlen", "99"]) == 0
    (kw,) = calls
    assert kw["rows"] == 10 and kw["start"].isoformat() == "2026-11-25T12:00:00+00:00"
    assert kw["drift_features"] == ["Income", "Amount"] and kw["group_shift"].share == 0.6
    assert kw["labels"] is False and kw["to"] == "redis" and kw["maxlen"] == 99


def test_producer_value_errors_are_clean_errors(monkeypatch, capsys):
    def refuse(spec, **kw):
        raise ValueError("--drift-features: 'Nope' is not a feature of the spec")

    monkeypatch.setattr(cmd, "produce", refuse)
    assert cli.main(["produce", "--start", "2026-11-25T12:00:00Z"]) == 2
    assert "'Nope' is not a feature" in capsys.readouterr().err
