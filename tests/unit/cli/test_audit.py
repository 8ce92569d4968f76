"""rtml.cli.audit: ``rtml audit show/verify/keygen`` in-process: show filters and limits the entries,
keygen writes a key pair and refuses to overwrite one, bad option values are usage errors."""

from __future__ import annotations

import json

import pytest

from rtml import cli
from rtml.cli import audit as cmd

ENTRIES = [
    {"seq": 1, "at": "t1", "action": "gate", "model": "m", "version": "1", "actor": "ci"},
    {"seq": 2, "at": "t2", "action": "approve", "model": "m", "version": "2", "actor": "ana", "reason": "ok"},
    {"seq": 3, "at": "t3", "action": "rollback", "model": "m", "version": "1", "from_version": "2", "actor": "bo",
     "on_behalf_of": "ana"},
    {"seq": 4, "at": "t4", "action": "gate", "model": "other", "version": "2", "actor": "ci"},
]


@pytest.fixture(autouse=True)
def log(monkeypatch):
    monkeypatch.setattr(cmd, "entries", lambda: list(ENTRIES))


def test_show_filters_by_model_and_version(capsys):
    assert cli.main(["audit", "show", "--model", "m", "--version", "2", "--json"]) == 0
    assert [e["seq"] for e in json.loads(capsys.readouterr().out)["entries"]] == [2, 3]  # as version or from-version
    assert cli.main(["audit", "show", "--limit", "1"]) == 0
    assert capsys.readouterr().out.strip() == "4 t4 gate       other v2 by ci"
    assert cli.main(["audit", "show", "--limit", "0", "--model", "m"]) == 0
    text = capsys.readouterr().out
    assert "v1 (from v2) by bo for ana" in text and "by ana: ok" in text and len(text.splitlines()) == 3
    assert cli.main(["audit", "show", "--model", "none"]) == 0
    assert "the decision log is empty" in capsys.readouterr().out


def test_limit_must_be_an_integer(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["audit", "show", "--limit", "all"])
    assert exit_.value.code == 2 and "argument --limit: invalid int value: 'all'" in capsys.readouterr().err


def test_keygen_writes_a_pair_and_never_overwrites_it(tmp_path, capsys):
    assert cli.main(["audit", "keygen", str(tmp_path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    priv, pub = tmp_path / "gate_signing.key", tmp_path / "gate_signing.pub"
    assert out["private_key"] == str(priv) and priv.stat().st_mode & 0o777 == 0o600 and pub.exists()
    before = priv.read_bytes()
    assert cli.main(["audit", "keygen", str(tmp_path), "--json"]) == 2
    assert "already holds a gate key" in json.loads(capsys.readouterr().out)["error"]
    assert priv.read_bytes() == before


def test_verify_passes_its_result_through(monkeypatch, capsys):
    seen = []
    monkeypatch.setattr(cmd, "verify", lambda anchors=None: seen.append(anchors) or {"ok": False,
                                                                                   "message": "entry 3 was edited"})
    assert cli.main(["audit", "verify", "--no-registry"]) == 1
    assert "entry 3 was edited" in capsys.readouterr().out
    assert seen == [None]  # --no-registry: the chain only, no anchors looked up
