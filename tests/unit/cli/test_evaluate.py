"""rtml.cli.evaluate: ``rtml evaluate`` in-process: --version is required, a bad spec and the gates'
ValueErrors are clean errors; like the training DAG, the plain version's gates and then, only when
fairness alone failed, the mitigated variant's, both reported (the stages are faked: no registry)."""

from __future__ import annotations

import json

import pytest

from rtml import cli
from rtml.cli import evaluate as cmd
from rtml.evaluate import mitigation
from rtml.settings import EXAMPLE_SPEC

pytestmark = pytest.mark.filterwarnings("ignore:.*Add type hints to the `predict` method")


def test_version_is_required(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["evaluate", str(EXAMPLE_SPEC)])
    assert exit_.value.code == 2 and "the following arguments are required: --version" in capsys.readouterr().err


def test_a_missing_spec_file_is_a_clean_error(tmp_path, capsys):
    assert cli.main(["evaluate", str(tmp_path / "none.yaml"), "--version", "1", "--json"]) == 2
    assert "cannot read project spec" in json.loads(capsys.readouterr().out)["error"]


def _decision(version: str, quality=True, fairness=True, drift=True, variant="plain") -> dict:
    gates = {"quality": quality, "fairness": fairness, "drift": drift}
    passed = all(gates.values())
    return {"ok": True, "passed": passed, "name": "credit_risk", "version": version, "variant": variant,
            "gates": gates, "reasons": [] if passed else [f"{g} failed" for g, ok in gates.items() if not ok],
            "message": f"version {version}: gates {'passed' if passed else 'failed'}"}


@pytest.fixture
def stages(monkeypatch):
    """Fake gates: version -> decision; the real mitigate_version decides whether mitigation applies
    (it returns before touching the registry when it does not); its registering part is faked."""
    decisions: dict[str, dict] = {}
    calls: list[tuple[str, str]] = []

    def fake_evaluate(spec, version):
        calls.append(("evaluate", version))
        if version == "404":
            raise ValueError("credit_risk has no version 404")
        return decisions[version]

    real = mitigation.mitigate_version

    def fake_mitigate(spec, decision, settings=None):
        calls.append(("mitigate", decision["version"]))
        ok, _ = mitigation.should_mitigate(spec, decision)
        if not ok:
            return real(spec, decision, settings)
        out = dict(decisions[f"{decision['version']}m"], ran=True, base_version=decision["version"])
        out["message"] = f"registered the mitigated variant\n{out['message']}"
        return out

    monkeypatch.setattr(cmd, "evaluate", fake_evaluate)
    monkeypatch.setattr(mitigation, "mitigate_version", fake_mitigate)
    return decisions, calls


def _run(capsys, *args: str) -> tuple[int, dict]:
    code = cli.main(["evaluate", str(EXAMPLE_SPEC), *args, "--json"])
    return code, json.loads(capsys.readouterr().out)


def test_gate_value_errors_are_clean(stages, capsys):
    code, out = _run(capsys, "--version", "404")
    assert code == 2 and "no version 404" in out["error"]


def test_a_passing_plain_version_is_the_challenger_and_nothing_is_mitigated(stages, capsys):
    decisions, calls = stages
    decisions["1"] = _decision("1")
    code, out = _run(capsys, "--version", "1")
    assert code == 0 and out["ok"] is True
    assert out["challenger"] == {"name": "credit_risk", "version": "1", "variant": "plain"}
    assert out["plain"]["passed"] is True
    assert out["mitigated"]["ran"] is False and "passed every gate" in out["mitigated"]["reason"]
    assert calls == [("evaluate", "1"), ("mitigate", "1")]


def test_only_fairness_failed_runs_the_mitigation_and_reports_both(stages, capsys):
    decisions, calls = stages
    decisions["2"] = _decision("2", fairness=False)
    decisions["2m"] = _decision("3", variant="mitigated")
    code, out = _run(capsys, "--version", "2")
    assert code == 0 and out["ok"] is True
    assert out["plain"]["version"] == "2" and out["plain"]["gates"]["fairness"] is False
    assert out["mitigated"]["ran"] is True and out["mitigated"]["base_version"] == "2"
    assert out["challenger"] == {"name": "credit_risk", "version": "3", "variant": "mitigated"}
    assert "version 2: gates failed" in out["message"] and "registered the mitigated variant" in out["message"]
    # a mitigated variant that fails too: both reported, no challenger, exit 1
    decisions["2m"] = _decision("3", fairness=False, variant="mitigated")
    code, out = _run(capsys, "--version", "2")
    assert code == 1 and out["ok"] is False and out["challenger"] is None
    assert out["mitigated"]["ran"] is True and out["mitigated"]["passed"] is False


def test_mitigation_does_not_apply_when_another_gate_failed(stages, capsys):
    decisions, _ = stages
    decisions["4"] = _decision("4", quality=False, fairness=False)
    code, out = _run(capsys, "--version", "4")
    assert code == 1 and out["challenger"] is None
    assert out["mitigated"]["ran"] is False and "also failed quality" in out["mitigated"]["reason"]


def test_no_mitigation_of_a_mitigated_version_nor_with_no_mitigate(stages, capsys):
    decisions, calls = stages
    decisions["5"] = _decision("5", fairness=False, variant="mitigated")
    code, out = _run(capsys, "--version", "5")
    assert code == 1 and "itself a mitigated variant" in out["mitigated"]["reason"]
    decisions["6"] = _decision("6", fairness=False)
    code, out = _run(capsys, "--version", "6", "--no-mitigate")
    assert code == 1 and out["mitigated"]["reason"] == "--no-mitigate"
    assert ("mitigate", "5") not in calls and ("mitigate", "6") not in calls
    # without --json: the messages of both, one per line
    decisions["7"] = _decision("7")
    assert cli.main(["evaluate", str(EXAMPLE_SPEC), "--version", "7"]) == 0
    assert "version 7: gates passed\nno mitigated variant" in capsys.readouterr().out
