"""rtml.cli.shadow: ``rtml shadow`` in-process: the spec and --version reach the comparison; a bad spec
is a clean error."""

from __future__ import annotations

import json

from rtml import cli
from rtml.cli import shadow as cmd
from rtml.settings import EXAMPLE_SPEC


def test_version_reaches_compare(monkeypatch, capsys):
    seen = []
    monkeypatch.setattr(cmd, "compare", lambda spec, settings, version: seen.append((spec.name, version)) or
                        {"ok": True, "message": "compared"})
    assert cli.main(["shadow", str(EXAMPLE_SPEC), "--version", "7"]) == 0
    assert cli.main(["shadow", str(EXAMPLE_SPEC)]) == 0
    assert seen == [("credit_risk", "7"), ("credit_risk", None)] and "compared" in capsys.readouterr().out


def test_a_bad_spec_is_a_clean_error(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed")
    assert cli.main(["shadow", str(bad), "--json"]) == 2
    assert json.loads(capsys.readouterr().out)["ok"] is False
