"""rtml.cli.serve: ``rtml serve`` and ``rtml serve-reload`` in-process: the options become the server's
configuration, bad values are usage errors naming the option, an unreachable endpoint is a clean error."""

from __future__ import annotations

import json

import pytest

from rtml import cli
from rtml.cli import serve as cmd


@pytest.mark.parametrize(
    ("argv", "error"),
    [(["--port", "http"], "argument --port: invalid int value: 'http'"),
     (["--max-wait-ms", "fast"], "argument --max-wait-ms: invalid float value: 'fast'"),
     (["--max-records", "-"], "argument --max-records: invalid int value: '-'")],
)
def test_badly_typed_options_are_usage_errors(capsys, argv, error):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["serve", *argv])
    assert exit_.value.code == 2 and error in capsys.readouterr().err


def test_options_become_the_server_config(monkeypatch):
    runs = []
    monkeypatch.setattr(cmd, "run", lambda *a: runs.append(a))
    assert cli.main(["serve", "--port", "9100", "--max-batch", "8", "--max-wait-ms", "0.5", "--no-shadow",
                     "--model", "m2"]) == 0
    (host, port, spec, model, cfg), = runs
    assert (host, port, spec, model) == (None, 9100, None, "m2")
    assert (cfg.max_batch, cfg.max_wait_ms, cfg.shadow) == (8, 0.5, False)


def test_reload_reports_the_served_version_or_a_clean_error(monkeypatch, capsys):
    monkeypatch.setattr(cmd, "request_reload", lambda url: {"version": "4", "swapped": True,
                                                             "last_error": {"version": "5"}})
    assert cli.main(["serve-reload", "--url", "http://serve.test"]) == 0
    out = capsys.readouterr().out
    assert "serving version 4 (swapped: True)" in out and "last load failure" in out

    def down(url):
        raise ConnectionError("connection refused")

    monkeypatch.setattr(cmd, "request_reload", down)
    assert cli.main(["serve-reload", "--json"]) == 2
    assert "cannot reach the serving endpoint: connection refused" in json.loads(capsys.readouterr().out)["error"]
