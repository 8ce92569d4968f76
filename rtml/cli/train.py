"""``rtml`` verbs of :mod:`rtml.train`: argument parsing and printing only; the work is done there."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from rtml.cli import CLIError, command
from rtml.train import train

if TYPE_CHECKING:
    from rtml.spec import ProjectSpec


def _load(path: str) -> ProjectSpec:
    from rtml.cli import load_spec_arg

    return load_spec_arg(path)


def _cmd_train(args: argparse.Namespace) -> dict[str, Any]:
    spec = _load(args.spec)
    try:
        result = train(
            spec,
            end=args.end,
            window_days=args.window_days,
            random_state=args.seed,
            register=not args.no_register,
        )
    except ValueError as err:
        raise CLIError(str(err)) from None
    if args.evaluate and result.get("version"):
        from rtml.evaluate.gates import evaluate
        from rtml.evaluate.mitigation import mitigate_version

        result["evaluation"] = evaluate(spec, result["version"])
        result["message"] += "\n" + result["evaluation"]["message"]
        mitigated = mitigate_version(spec, result["evaluation"])
        result["mitigated"] = mitigated
        if mitigated["ran"]:
            result["message"] += "\n" + mitigated["message"]
    return result


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = command(
        sub, "train", _cmd_train, "train a model on the lake's labelled window and register it in MLflow"
    )
    p.add_argument("spec", help="path to the project spec YAML")
    p.add_argument(
        "--end", help="window end (event time, exclusive; default: just after the newest event in the lake)"
    )
    p.add_argument("--window-days", type=float, help="window length in days (default: training.window_days)")
    p.add_argument("--seed", type=int, help="random state (default: model.random_state)")
    p.add_argument("--no-register", action="store_true", help="log the run without registering a version")
    p.add_argument("--evaluate", action="store_true", help="run the evaluation gates on the new version")
    add_lineage(sub)


def _cmd_lineage(args: argparse.Namespace) -> dict[str, Any]:
    from rtml.train import version_lineage

    spec = _load(args.spec) if args.spec else _load_default()
    try:
        result = version_lineage(spec, args.name, args.version)
    except Exception as err:
        if type(err).__name__ in ("MlflowException", "RestException"):
            raise CLIError(f"{args.name} version {args.version}: {err}") from None
        raise
    if args.csv:
        from rtml.train import read_lineage

        read_lineage(spec, result["lineage"]).to_csv(args.csv, index=False)
        result["csv"] = args.csv
    if result["matches"] is False:  # a failed check, not a usage error
        raise CLIError(result["message"], code=1)
    return result


def _load_default() -> ProjectSpec:
    from rtml.spec import load_spec

    return load_spec()


def add_lineage(sub: argparse._SubParsersAction) -> None:
    p = command(sub, "lineage", _cmd_lineage,
                "what a model version was trained on: its window, batches and table snapshots, read back and checked")
    p.add_argument("name", help="registered model name")
    p.add_argument("version", help="model version")
    p.add_argument("--spec", help="project spec YAML (default: RTML_SPEC / the example)")
    p.add_argument("--csv", help="also write the rows read back to this CSV file")
