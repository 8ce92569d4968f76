"""``rtml`` verbs of :mod:`rtml.evaluate.gates`: argument parsing and printing; the work is done by the stages.

``rtml evaluate`` does what the training DAG's ``evaluate`` and ``mitigate`` tasks do, with the same
two stage functions: the version's gates (``rtml.evaluate.gates.evaluate``), then, when only the
fairness gate failed, the mitigation search and the mitigated variant's gates
(``rtml.evaluate.mitigation.mitigate_version``). The result reports both versions.
"""

from __future__ import annotations

import argparse
from typing import Any

from rtml.cli import CLIError, command
from rtml.evaluate.gates import evaluate
from rtml.names import MITIGATED, PLAIN


def evaluate_with_mitigation(spec: Any, version: str, mitigate: bool = True) -> dict[str, Any]:
    """The plain version's decision, then its mitigated variant's when it applies, as the DAG does.

    ``ok`` is true when one of them passed every gate (it got the ``challenger`` alias), so a run
    in which no version can be served exits non-zero.
    """
    plain = evaluate(spec, version)
    if plain.get("variant") == MITIGATED:
        why = "the version is itself a mitigated variant"
        mitigated: dict[str, Any] = {"ran": False, "passed": False, "version": None, "reason": why,
                                     "message": f"no mitigated variant: {why}"}
    elif not mitigate:
        why = "--no-mitigate"
        mitigated = {"ran": False, "passed": False, "version": None, "reason": why,
                     "message": f"no mitigated variant: {why}"}
    else:
        from rtml.evaluate.mitigation import mitigate_version

        mitigated = mitigate_version(spec, plain)
    winner = plain if plain.get("passed") else (mitigated if mitigated.get("passed") else None)
    challenger = None
    if winner is not None:
        challenger = {"name": winner.get("name"), "version": winner.get("version"),
                      "variant": winner.get("variant") or (MITIGATED if winner is mitigated else PLAIN)}
    return {
        "ok": winner is not None,
        "challenger": challenger,
        "plain": plain,
        "mitigated": mitigated,
        "message": "\n".join(m for m in (plain.get("message"), mitigated.get("message")) if m),
    }


def _cmd_evaluate(args: argparse.Namespace) -> dict[str, Any]:
    from rtml.cli import load_spec_arg

    spec = load_spec_arg(args.spec)
    try:
        return evaluate_with_mitigation(spec, args.version, mitigate=not args.no_mitigate)
    except ValueError as err:
        raise CLIError(str(err)) from None


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = command(
        sub,
        "evaluate",
        _cmd_evaluate,
        "run the quality, fairness and drift gates on a registered version, then (only fairness failed) "
        "the mitigation search and its variant's gates, as the training DAG does; passing -> alias challenger",
    )
    p.add_argument("spec", help="path to the project spec YAML")
    p.add_argument("--version", required=True, help="the registered model version to evaluate")
    p.add_argument("--no-mitigate", action="store_true",
                   help="only the version's own gates (no mitigation search even when only fairness failed)")
