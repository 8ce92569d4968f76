"""rtml.cli.ingest: ``rtml ingest`` in-process: the interval options are checked (together, ordered,
ISO 8601) and --stream needs one kind, with errors naming the option; produce + ingest into a
local lake speak JSON."""

from __future__ import annotations

import json

import pytest

from rtml import cli
from rtml.cli import ingest as cmd


@pytest.fixture
def calls(monkeypatch):
    seen: list[tuple] = []
    monkeypatch.setattr(cmd, "ingest_run", lambda *a, **kw: seen.append((a, kw)) or {"ok": True, "message": "done"})
    return seen


@pytest.mark.parametrize(
    ("argv", "error"),
    [
        (["--start", "2026-11-25T12:05:00"], "--start and --end go together"),
        (["--end", "2026-11-25T12:05:00"], "--start and --end go together"),
        (["--start", "2026-11-25T12:05:00", "--end", "2026-11-25T12:00:00"], "--end must be after --start"),
        (["--start", "2026-11-25T12:05:00", "--end", "2026-11-25T12:05:00"], "--end must be after --start"),
        (["--start", "monday", "--end", "2026-11-25T12:05:00"], "--start: not an ISO 8601 time: 'monday'"),
        (["--stream", "rtml:credit:events"], "--stream names one stream"),
    ],
)
def test_bad_values_are_clean_errors_naming_the_option(calls, capsys, argv, error):
    assert cli.main(["ingest", *argv, "--json"]) == 2
    assert error in json.loads(capsys.readouterr().out)["error"]
    assert calls == []


@pytest.mark.parametrize(
    ("argv", "error"),
    [(["--kind", "rows"], "argument --kind: invalid choice: 'rows'"),
     (["--max-records", "1e3"], "argument --max-records: invalid int value: '1e3'")],
)
def test_badly_typed_options_are_usage_errors(capsys, argv, error):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["ingest", *argv])
    assert exit_.value.code == 2 and error in capsys.readouterr().err


def test_arguments_reach_ingest_run(calls):
    assert cli.main(["ingest", "--kind", "labels", "--stream", "s", "--start", "2026-11-25T12:00:00",
                     "--end", "2026-11-25T12:05:00Z", "--max-records", "5"]) == 0
    (args, kw), = calls
    assert args[0] == ["labels"] and args[1].isoformat() == "2026-11-25T12:00:00+00:00"
    assert kw["stream"] == "s" and kw["max_records"] == 5


def test_cli_produce_and_ingest_json(tmp_path, monkeypatch, capsys):
    from rtml.settings import get_settings

    monkeypatch.setenv("RTML_STORAGE", "local")
    monkeypatch.setenv("RTML_HOME", str(tmp_path))
    monkeypatch.setenv("RTML_LAKE_URI", str(tmp_path / "lake"))
    get_settings(refresh=True)
    try:
        assert cli.main(["produce", "--rows", "50", "--start", "2026-11-25T12:00:00Z", "--format", "csv", "--json"]) == 0
        out = json.loads(capsys.readouterr().out)
        assert out["events"] == 50 and out["event_files"] == 1
        assert cli.main(["ingest", "--start", "2026-11-25T12:00:00", "--end", "2026-11-25T12:05:00", "--json"]) == 0
        res = json.loads(capsys.readouterr().out)
        assert res["events"]["accepted"] == 50 and res["labels"]["records_in"] == 0
        assert cli.main(["ingest", "--start", "2026-11-25T12:05:00", "--json"]) == 2
        assert "--start and --end go together" in capsys.readouterr().out
    finally:
        monkeypatch.undo()
        get_settings(refresh=True)
