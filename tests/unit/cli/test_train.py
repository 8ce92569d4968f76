"""rtml.cli.train: ``rtml train`` in-process: a missing spec and bad option values are clean errors
naming what is wrong; the options reach rtml.train.train."""

from __future__ import annotations

import json

import pytest

from rtml import cli
from rtml.cli import train as cmd
from rtml.settings import EXAMPLE_SPEC


@pytest.mark.parametrize(
    ("argv", "error"),
    [(["--window-days", "week"], "argument --window-days: invalid float value: 'week'"),
     (["--seed", "1.5"], "argument --seed: invalid int value: '1.5'")],
)
def test_badly_typed_options_are_usage_errors(capsys, argv, error):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["train", str(EXAMPLE_SPEC), *argv])
    assert exit_.value.code == 2 and error in capsys.readouterr().err


def test_a_spec_is_required(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["train"])
    assert exit_.value.code == 2 and "spec" in capsys.readouterr().err


def test_a_missing_spec_file_is_a_clean_error(tmp_path, capsys):
    assert cli.main(["train", str(tmp_path / "none.yaml"), "--json"]) == 2
    assert "cannot read project spec" in json.loads(capsys.readouterr().out)["error"]


def test_options_reach_train_and_its_value_errors_are_clean(monkeypatch, capsys):
    seen = []

    def fake(spec, **kw):
        seen.append(kw)
        raise ValueError("no labelled rows in the window ending 2026-01-01")

    monkeypatch.setattr(cmd, "train", fake)
    assert cli.main(["train", str(EXAMPLE_SPEC), "--window-days", "2.5", "--seed", "3", "--no-register",
                     "--end", "2026-01-01", "--json"]) == 2
    assert "no labelled rows" in json.loads(capsys.readouterr().out)["error"]
    assert seen == [{"end": "2026-01-01", "window_days": 2.5, "random_state": 3, "register": False}]


def test_lineage_prints_the_read_back_and_fails_when_the_lake_changed(monkeypatch, capsys, tmp_path):
    import pandas as pd

    from rtml import train as train_mod

    result = {"matches": True, "message": "credit_risk version 3: trained on 2 rows ...", "lineage": {}, "rows": 2}
    seen = []
    monkeypatch.setattr(train_mod, "version_lineage", lambda spec, name, version: seen.append((name, version)) or result)
    monkeypatch.setattr(train_mod, "read_lineage", lambda spec, lineage: pd.DataFrame({"a": [1, 2]}))
    out = tmp_path / "rows.csv"
    assert cli.main(["lineage", "credit_risk", "3", "--spec", str(EXAMPLE_SPEC), "--csv", str(out)]) == 0
    assert seen == [("credit_risk", "3")] and "trained on 2 rows" in capsys.readouterr().out
    assert out.read_text().splitlines() == ["a", "1", "2"]
    result.update(matches=False, message="credit_risk version 3: ... read back: NOT the rows trained on")
    assert cli.main(["lineage", "credit_risk", "3", "--json"]) == 1
    assert "NOT the rows trained on" in json.loads(capsys.readouterr().out)["error"]
