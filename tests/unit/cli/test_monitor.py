"""rtml.cli.monitor: ``rtml monitor`` in-process: --window-hours must be a number (usage error naming
it) and reaches the live monitor; a bad spec is a clean error."""

from __future__ import annotations

import json

import pytest

from rtml import cli
from rtml.cli import monitor as cmd
from rtml.settings import EXAMPLE_SPEC


def test_window_hours_must_be_a_number(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["monitor", "--window-hours", "a day"])
    assert exit_.value.code == 2 and "argument --window-hours: invalid float value: 'a day'" in capsys.readouterr().err


def test_window_hours_reach_the_monitor(monkeypatch):
    seen = []
    monkeypatch.setattr(cmd, "monitor", lambda spec, settings, window_hours: seen.append(window_hours) or {"ok": True})
    assert cli.main(["monitor", str(EXAMPLE_SPEC), "--window-hours", "6"]) == 0
    assert cli.main(["monitor", str(EXAMPLE_SPEC)]) == 0
    assert seen == [6.0, 24.0]


def test_a_missing_spec_is_a_clean_error(tmp_path, capsys):
    assert cli.main(["monitor", str(tmp_path / "none.yaml"), "--json"]) == 2
    assert "cannot read project spec" in json.loads(capsys.readouterr().out)["error"]
