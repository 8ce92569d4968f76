"""The fairness-mitigated variant as a registered candidate of its own.

When ``gates.fairness.mitigate`` is on and a plain version fails ONLY the fairness gate,
``mitigate_version`` runs the mitigation search (``rtml.evaluate.fairsearch.search_rule``: fairlearn's
ThresholdOptimizer under each constraint and a joint per-group threshold search, on the training
window's out-of-fold scores; the candidate that meets every fairness limit of the spec at the least
quality cost, one score threshold per intersection of the sensitive attributes). When none meets
them within ``gates.fairness.max_quality_loss``, no variant is registered (the plain version's
model card shows the search and its trade-off). Otherwise it registers a new version of the same registered model: an MLflow pyfunc (``MitigatedModel``)
wrapping the plain version's Pipeline. Its ``predict`` takes the same DataFrame of spec features
and returns ``score`` (the plain model's P(positive), unchanged) and ``label`` (0/1: score >= the
threshold of the row's group; the groups are derived from the features, so callers send nothing
extra). The new version is tagged ``rtml.variant=mitigated`` and ``rtml.base_version=<plain
version>`` and goes through exactly the same gates (``rtml.evaluate.gates.evaluate``); passing them all
gives it the ``challenger`` alias.
"""

from __future__ import annotations

import contextlib
import json
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlflow.pyfunc import PythonModel

from rtml.names import (
    BASE_VERSION_TAG,
    DATA_DIR,
    HOLDOUT_FILE,
    LABEL,
    LINEAGE_FILE,
    MITIGATED,
    MITIGATED_VERSION_TAG,
    OOF_SCORE,
    PIPELINE_ARTIFACT,
    RULE_FILE,
    SCORE,
    TRAIN_FILE,
    VARIANT_TAG,
    is_mitigated,
)
from rtml.settings import Settings, get_settings

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

    from rtml.spec import ProjectSpec



class MitigatedModel(PythonModel):
    """Plain Pipeline score + deterministic per-group decision. Pickled small: the spec and the rule
    as plain dicts; the Pipeline is the logged ``pipeline`` artifact (the plain version's model)."""

    def __init__(self, spec: dict[str, Any], rule: dict[str, Any]) -> None:
        self._reset(spec, rule)

    def _reset(self, spec: dict[str, Any], rule: dict[str, Any]) -> None:
        self.spec_data = spec
        self.rule_data = rule
        # Set by _setup (load_context, or the gates on the unwrapped model).
        self._spec: Any = None
        self._rule: Any = None
        self._pipe: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {"spec_data": self.spec_data, "rule_data": self.rule_data}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._reset(state["spec_data"], state["rule_data"])

    def _setup(self, pipe) -> None:
        from rtml.evaluate.grouprule import GroupRule
        from rtml.spec import parse_spec

        self._spec = parse_spec(self.spec_data, "<mitigated model>")
        self._rule = GroupRule.from_dict(self.rule_data)
        self._pipe = pipe

    def load_context(self, context) -> None:
        import os

        import mlflow.sklearn

        # the wrapped Pipeline is rtml's own artifact (same trust as the plain version)
        os.environ.setdefault("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "true")
        self._setup(mlflow.sklearn.load_model(context.artifacts[PIPELINE_ARTIFACT]))

    # the gates call these directly on the unwrapped model
    def predict_proba(self, X: pd.DataFrame) -> np.ndarray:
        from rtml.features import thread_limit, to_frame

        X = to_frame(X, self._spec)
        with thread_limit(len(X)):
            return self._pipe.predict_proba(X)

    def labels(self, X: pd.DataFrame, scores: np.ndarray | None = None) -> np.ndarray:
        from rtml.features import sensitive_frame, to_frame

        X = to_frame(X, self._spec)
        if scores is None:
            scores = self.predict_proba(X)[:, 1]
        return self._rule.decide(scores, self._rule.keys(sensitive_frame(X, self._spec)))

    def predict(self, context, model_input, params=None):
        import numpy as np
        import pandas as pd

        from rtml.features import to_frame

        X = to_frame(model_input, self._spec)
        scores = self.predict_proba(X)[:, 1].astype(np.float64)
        return pd.DataFrame({"score": scores, "label": self.labels(X, scores).astype(np.int64)})


class NoMitigation(ValueError):
    """The mitigation search found no candidate that meets every limit within max_quality_loss."""

    def __init__(self, report: dict[str, Any]) -> None:
        super().__init__(report.get("reason", "no mitigation candidate"))
        self.report = report


def should_mitigate(spec: ProjectSpec, decision: dict[str, Any]) -> tuple[bool, str]:
    """Only a plain version that failed the fairness gate and passed the others gets a variant."""
    gates = decision.get("gates") or {}
    if decision.get("passed"):
        return False, "the plain version passed every gate"
    if not spec.gates.fairness.mitigate:
        return False, "gates.fairness.mitigate is false"
    if not spec.sensitive:
        return False, "the spec names no sensitive attribute"
    if gates.get("fairness") is not False:
        return False, "the fairness gate did not fail"
    others = [g for g in ("quality", "drift") if gates.get(g) is not True]
    if others:
        return False, f"the plain version also failed {', '.join(others)}: mitigation would not help"
    return True, "the plain version failed only the fairness gate"


def register_mitigated(
    spec: ProjectSpec, base_version: str | int, settings: Settings | None = None
) -> dict[str, Any]:
    """Fit the group rule on the base version's training window and register the mitigated pyfunc."""
    import mlflow
    import numpy as np
    from mlflow.models import Model as MlflowModel
    from mlflow.models import ModelSignature, infer_signature

    from rtml.evaluate.fairsearch import search_rule
    from rtml.evaluate.gates import load_context
    from rtml.features import sensitive_frame, target_vector, to_frame
    from rtml.registry.client import setup_mlflow
    from rtml.train import _frame_to_parquet, code_version, log_datasets, model_requirements

    s = settings or get_settings()
    base = load_context(spec, base_version, s)
    client = setup_mlflow(s)
    if is_mitigated(client.get_model_version(base.name, base.version).tags):
        raise ValueError(f"version {base.version} is already a mitigated variant")
    gate = spec.gates.fairness
    train, hold = base.train, base.holdout
    rule, report = search_rule(
        train[OOF_SCORE].to_numpy(dtype=float),
        target_vector(train[spec.target.name], spec),
        sensitive_frame(train, spec),
        gate,
        spec.gates.quality.decision_threshold,
        spec.model.random_state,
        holdout_rows=len(hold),
        reductions=gate.reductions,
    )
    if rule is None:
        raise NoMitigation(report)
    X_hold = to_frame(hold, spec)
    hold_labels = rule.decide(hold[SCORE].to_numpy(dtype=float), rule.keys(sensitive_frame(X_hold, spec)))
    base_run = client.get_run(base.run_id)
    version = code_version()
    wrapper = MitigatedModel(spec.model_dump(mode="json"), rule.to_dict())

    with contextlib.redirect_stdout(sys.stderr), tempfile.TemporaryDirectory(prefix="rtml-mitigate-") as tmp:
        tmpdir = Path(tmp)
        plain_dir = mlflow.artifacts.download_artifacts(
            artifact_uri=f"models:/{base.name}/{base.version}", dst_path=str(tmpdir / "plain")
        )
        plain_sig = MlflowModel.load(plain_dir).signature
        import mlflow.sklearn

        wrapper._setup(mlflow.sklearn.load_model(plain_dir))
        example = to_frame(train.head(200), spec)
        out_example = wrapper.predict(None, example)
        signature = ModelSignature(
            inputs=plain_sig.inputs if plain_sig is not None else infer_signature(example).inputs,
            outputs=infer_signature(example, out_example).outputs,
        )
        with mlflow.start_run(run_name=f"train-{spec.name}-mitigated") as run:
            run_id = run.info.run_id
            params = dict(base_run.data.params)
            params.update({"variant": MITIGATED, "base_version": base.version, "base_run_id": base.run_id})
            mlflow.log_params(params)
            mlflow.log_metrics(
                {k: v for k, v in base_run.data.metrics.items() if k.startswith(("holdout_", "train_rows"))}
            )
            mlflow.set_tags(
                {
                    **{k: v for k, v in base_run.data.tags.items() if k.startswith("rtml.")},
                    "mlflow.source.git.commit": base_run.data.tags.get("mlflow.source.git.commit", ""),
                    "rtml.stage": "train",
                    VARIANT_TAG: MITIGATED,
                    BASE_VERSION_TAG: base.version,
                    "rtml.base_run_id": base.run_id,
                }
            )
            # the same rows as the base version (lineage), with the variant's decisions on the holdout
            log_datasets(spec, base.lineage.get("lake_uri", ""), train.drop(columns=[OOF_SCORE]),
                         hold.drop(columns=[SCORE]))
            hold_out = hold.copy()
            hold_out[LABEL] = hold_labels
            _frame_to_parquet(train, tmpdir / TRAIN_FILE)
            _frame_to_parquet(hold_out, tmpdir / HOLDOUT_FILE)
            mlflow.log_artifact(str(tmpdir / TRAIN_FILE), DATA_DIR)
            mlflow.log_artifact(str(tmpdir / HOLDOUT_FILE), DATA_DIR)
            lineage = {
                **base.lineage,
                "base_version": base.version,
                "base_run_id": base.run_id,
                "code": version,
            }
            (tmpdir / LINEAGE_FILE).write_text(json.dumps(lineage, indent=2, default=str))
            mlflow.log_artifact(str(tmpdir / LINEAGE_FILE))
            (tmpdir / RULE_FILE).write_text(
                json.dumps({**rule.to_dict(), "readable": rule.describe(), "search": report}, indent=2)
            )
            mlflow.log_artifact(str(tmpdir / RULE_FILE))
            mlflow.log_metric("holdout_mitigated_selection_rate", float(np.mean(hold_labels)))
            info = mlflow.pyfunc.log_model(
                name="model",
                python_model=wrapper,
                artifacts={PIPELINE_ARTIFACT: plain_dir},
                signature=signature,
                input_example=example.head(5),
                registered_model_name=base.name,
                pip_requirements=model_requirements(),
            )
    v = str(info.registered_model_version)
    base_tags = client.get_model_version(base.name, base.version).tags or {}
    tags: dict[str, str] = {
        k: base_tags[k]
        for k in ("rtml.window_end", "rtml.events_last_batch", "rtml.labels_last_batch", "rtml.git_sha")
        if k in base_tags
    }
    tags.update(
        {
            VARIANT_TAG: MITIGATED,
            BASE_VERSION_TAG: base.version,
            "rtml.lineage": f"runs:/{run_id}/{LINEAGE_FILE}",
            "rtml.holdout": f"runs:/{run_id}/{DATA_DIR}/{HOLDOUT_FILE}",
            "rtml.mitigation": f"runs:/{run_id}/{RULE_FILE}",
        }
    )
    for k, val in tags.items():
        client.set_model_version_tag(base.name, v, k, val)
    client.set_model_version_tag(base.name, base.version, MITIGATED_VERSION_TAG, v)
    client.update_model_version(
        base.name,
        v,
        description=(
            f"Fairness-mitigated variant of version {base.version}: same scores, per-group decisions "
            f"({rule.meta['method']}). Not evaluated yet."
        ),
    )
    return {
        "ok": True,
        "run_id": run_id,
        "version": v,
        "base_version": base.version,
        "model_uri": info.model_uri,
        "holdout_uri": tags["rtml.holdout"],
        "rule": rule.to_dict(),
        "thresholds": rule.describe(),
        "message": f"registered {base.name} version {v}: mitigated variant of version {base.version}",
    }


def mitigate_version(
    spec: ProjectSpec, decision: dict[str, Any], settings: Settings | None = None
) -> dict[str, Any]:
    """After a plain version's decision: register + evaluate its mitigated variant when it applies.

    Returns ``{"ran": False, "passed": False, "reason": ...}`` when it does not apply, else the
    variant's gate decision (``rtml.evaluate.gates.decide``'s result) with ``ran``, ``base_version`` added.
    """
    from rtml.evaluate.gates import evaluate

    ok, why = should_mitigate(spec, decision)
    if not ok:
        return {
            "ran": False,
            "passed": False,
            "version": None,
            "reason": why,
            "message": f"no mitigated variant: {why}",
        }
    from rtml.registry.client import setup_mlflow

    client = setup_mlflow(settings or get_settings())
    name = spec.model.registered_name
    existing = (client.get_model_version(name, str(decision["version"])).tags or {}).get(
        MITIGATED_VERSION_TAG
    )
    if existing:  # a retried task: evaluate the variant registered before instead of adding another
        reg: dict[str, Any] = {
            "version": existing,
            "base_version": str(decision["version"]),
            "thresholds": {},
            "message": f"mitigated variant of version {decision['version']} already registered: {name} version {existing}",
        }
    else:
        try:
            reg = register_mitigated(spec, decision["version"], settings)
        except NoMitigation as no:  # the plain version's model card shows the search and its trade-off
            return {
                "ran": False,
                "passed": False,
                "version": None,
                "reason": str(no),
                "search": no.report,
                "message": f"no mitigated variant: {no}",
            }
    res = evaluate(spec, reg["version"], settings)
    res.update(
        {"ran": True, "base_version": reg["base_version"], "reason": why, "thresholds": reg["thresholds"]}
    )
    res["message"] = reg["message"] + "\n" + res["message"]
    return res
