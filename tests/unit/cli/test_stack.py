"""rtml.cli.stack: ``rtml stack up/down/status`` in-process: status of a state folder with nothing
started, unknown services and bad option values are clean errors, the status text (off vs DOWN)."""

from __future__ import annotations

import json

import pytest

from rtml import cli
from rtml.cli.stack import _format_status, _parse_only


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


def test_stack_up_timeout_must_be_a_number(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["stack", "up", "--timeout", "soon"])
    assert exit_.value.code == 2
    assert "argument --timeout: invalid float value: 'soon'" in capsys.readouterr().err


def test_parse_only():
    assert _parse_only(None) is None and _parse_only("") is None
    assert _parse_only(" s3, mlflow,,airflow ") == ["s3", "mlflow", "airflow"]


def test_format_status_tells_off_from_down():
    def svc(healthy, detail=None, **kw):
        return {"healthy": healthy, "detail": detail, "pid": None, "url": "http://127.0.0.1:1", **kw}

    st = {"home": "/h", "logs": "/h/logs", "services": {
        "mlflow": svc(True, ui="http://127.0.0.1:1/#/models"),
        "airflow": svc(False, "port closed", pid={"airflow-scheduler": 12, "airflow-api-server": 13},
                       username="admin", password=None, restarts=2, last_exit="exit 1"),
        "kafka": svc(False, "not started"),
    }}
    lines = _format_status(st).splitlines()
    assert lines[0] == "rtml stack (state in /h, logs in /h/logs)"
    row = {line.split()[0]: line.split()[1] for line in lines if line.startswith("  ") and not line.startswith("   ")}
    assert row == {"mlflow": "healthy", "airflow": "DOWN", "kafka": "off"}
    text = "\n".join(lines)
    assert "pid scheduler=12, api-server=13" in text and "restarted 2x, last: exit 1" in text
    assert "login: admin / (generated at first start)" in text and "UI: http://127.0.0.1:1/#/models" in text
