"""rtml.cli (its __init__): the parser holds every verb with --help, ``spec check`` speaks JSON, CLIError
exits non-zero with its message, --json errors are JSON, parse_time reads ISO 8601 as UTC."""

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
    # one verb (or group) per command module, none lost when a module fails to register
    assert {"stack", "produce", "ingest", "train", "evaluate", "approve", "reject", "rollback", "audit", "serve",
            "serve-reload", "shadow", "monitor", "demo"} <= {v[0] for v in VERBS}


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


def test_parse_time_reads_iso_8601_as_utc():
    from datetime import UTC, datetime, timedelta

    assert cli.parse_time(None, "--start") is None
    assert cli.parse_time("2026-11-25T12:00:00Z", "--start") == datetime(2026, 11, 25, 12, tzinfo=UTC)
    assert cli.parse_time("2026-11-25T12:00:00", "--start") == datetime(2026, 11, 25, 12, tzinfo=UTC)
    t = cli.parse_time("2026-11-25T14:00:00+02:00", "--end")
    assert t == datetime(2026, 11, 25, 12, tzinfo=UTC) and t.utcoffset() == timedelta(0)


@pytest.mark.parametrize("value", ["yesterday", "2026-13-01", "", "12:00"])
def test_parse_time_errors_name_the_flag(value):
    with pytest.raises(cli.CLIError, match=f"--drift-from: not an ISO 8601 time: {value!r}") as err:
        cli.parse_time(value, "--drift-from")
    assert err.value.code == 2


def _parser_with(handler):
    parser = argparse.ArgumentParser(prog="t")
    sub = parser.add_subparsers(dest="command", required=True)
    cli.command(sub, "go", handler, "a test verb")
    return parser


@pytest.mark.parametrize(
    ("result", "json_flag", "code", "printed"),
    [
        ({"message": "all good", "ok": True}, False, 0, "all good"),
        ({"a": 1, "long_key": "x"}, False, 0, "a         1\nlong_key  x"),
        ({"ok": False, "message": "a gate failed"}, False, 1, "a gate failed"),
        ({"ok": False, "message": "m"}, True, 1, '"ok": false'),
        ("plain text", False, 0, "plain text"),
        (None, False, 0, ""),
        (cli.CLIError("bad --x value", code=3), True, 3, '{"ok": false, "error": "bad --x value"}'),
        (KeyboardInterrupt(), False, 130, ""),
    ],
)
def test_main_prints_results_and_maps_errors_to_exit_codes(monkeypatch, capsys, result, json_flag, code, printed):
    def handler(args):
        if isinstance(result, BaseException):
            raise result
        return result

    monkeypatch.setattr(cli, "build_parser", lambda: _parser_with(handler))
    assert cli.main(["go", *(["--json"] if json_flag else [])]) == code
    out = capsys.readouterr().out
    assert printed in out
    if json_flag:
        json.loads(out)


def test_a_cli_error_without_json_goes_to_stderr(monkeypatch, capsys):
    def handler(args):
        raise cli.CLIError("--rate must be positive")

    monkeypatch.setattr(cli, "build_parser", lambda: _parser_with(handler))
    assert cli.main(["go"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == "rtml: error: --rate must be positive\n"


def test_spec_check_of_a_missing_file_is_a_clean_error(tmp_path, capsys):
    assert cli.main(["spec", "check", str(tmp_path / "nope.yaml"), "--json"]) == 2
    assert "cannot read project spec" in json.loads(capsys.readouterr().out)["error"]
