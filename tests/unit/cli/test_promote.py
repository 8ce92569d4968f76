"""rtml.cli.promote: ``rtml approve/reject/rollback`` in-process: --force needs --reason, refusals of
the registry are clean errors, the endpoint is notified unless --no-reload (best effort)."""

from __future__ import annotations

import json

import pytest

from rtml import cli
from rtml.cli import promote as cmd
from rtml.registry.promotion import PromotionError


@pytest.fixture
def registry(monkeypatch):
    seen: list[tuple] = []

    def approve(name, version, by, force=False, reason=""):
        seen.append(("approve", name, version, by, force, reason))
        if version == "9":
            raise PromotionError("version 9 is not the challenger")
        return {"ok": True, "message": f"{name} version {version} is champion"}

    monkeypatch.setattr(cmd, "approve", approve)
    monkeypatch.setattr(cmd, "rollback", lambda name, by, reason: {"ok": True, "message": "rolled back"})
    monkeypatch.setattr(cmd, "reject", lambda name, version, by, reason: seen.append(("reject", reason)) or
                        {"ok": True, "message": "rejected"})
    return seen


def test_force_needs_a_reason(registry, capsys):
    assert cli.main(["approve", "credit_risk", "3", "--force", "--no-reload", "--json"]) == 2
    assert "--force needs --reason" in json.loads(capsys.readouterr().out)["error"]
    assert registry == []


def test_registry_refusals_are_clean_errors(registry, capsys):
    assert cli.main(["approve", "credit_risk", "9", "--no-reload", "--json"]) == 2
    assert json.loads(capsys.readouterr().out)["error"] == "version 9 is not the challenger"


def test_approve_notifies_the_endpoint_unless_told_not_to(registry, monkeypatch, capsys):
    import rtml.serve.client

    reloads = []
    monkeypatch.setattr(rtml.serve.client, "request_reload",
                        lambda url, timeout: reloads.append(url) or {"version": "3"})
    assert cli.main(["approve", "credit_risk", "3", "--by", "ana", "--url", "http://serve.test", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["endpoint_version"] == "3" and out["message"].endswith("the endpoint serves version 3")
    assert reloads == ["http://serve.test"] and registry[0] == ("approve", "credit_risk", "3", "ana", False, "")
    assert cli.main(["approve", "credit_risk", "3", "--force", "--reason", "hotfix", "--no-reload", "--json"]) == 0
    assert reloads == ["http://serve.test"] and registry[1][4:] == (True, "hotfix")


def test_an_unreachable_endpoint_does_not_fail_the_promotion(registry, monkeypatch, capsys):
    import rtml.serve.client

    def down(url, timeout):
        raise ConnectionError("refused")

    monkeypatch.setattr(rtml.serve.client, "request_reload", down)
    assert cli.main(["rollback", "credit_risk", "--json"]) == 0
    assert "not notified (ConnectionError)" in json.loads(capsys.readouterr().out)["endpoint"]


def test_reject_has_no_endpoint_options(registry, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["reject", "credit_risk", "3", "--no-reload"])
    assert exit_.value.code == 2 and "unrecognized arguments: --no-reload" in capsys.readouterr().err
    assert cli.main(["reject", "credit_risk", "3", "--reason", "biased"]) == 0
    assert registry == [("reject", "biased")]
