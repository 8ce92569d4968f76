"""The evaluation gates: quality vs the champion, fairness, drift, and the decision.

``rtml evaluate SPEC --version V`` (and the training DAG's tasks) judge a registered version on the
out-of-time holdout its training run stored, side by side with the current ``champion`` on the SAME
rows. Each gate returns a JSON-able dict with ``passed`` and ``reasons``; ``decide`` writes the
reports (Evidently drift HTML, fairness HTML, model card, JSON summary) into the training run's
``evaluation/`` artifacts, tags the version (``gate.quality|fairness|drift|decision`` =
passed/failed, ``gate.reasons``, ``report.*`` links), and gives a version that passed everything
the alias ``challenger``. The frame-level functions (``evaluate_frames`` and friends) need no MLflow.
"""

from __future__ import annotations

import json
import math
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rtml.names import (
    BASE_VERSION_TAG,
    CHALLENGER,
    CHAMPION,
    DATA_DIR,
    EVAL_DIR,
    FILES,
    HOLDOUT_FILE,
    LINEAGE_FILE,
    OOF_SCORE,
    SCORE,
    TRAIN_FILE,
    is_mitigated,
)
from rtml.settings import Settings, get_settings

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

    from rtml.spec import ProjectSpec, QualityGate



def clean(obj: Any) -> Any:
    """JSON-safe copy: NaN/inf -> None, numpy scalars -> Python."""
    if isinstance(obj, dict):
        return {str(k): clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [clean(v) for v in obj]
    if hasattr(obj, "item") and not isinstance(obj, str | bytes):
        try:
            obj = obj.item()
        except (ValueError, AttributeError):
            return str(obj)
    if isinstance(obj, float) and (math.isnan(obj) or math.isinf(obj)):
        return None
    return obj


# --- quality -----------------------------------------------------------------------------------------------
def quality_gate(
    candidate: dict[str, float], champion: dict[str, float] | None, gate: QualityGate
) -> tuple[bool, list[str], str]:
    """Candidate vs champion on the gate metric with the tolerance, plus the absolute ROC AUC floor."""
    from rtml.evaluate.quality import LOWER_IS_BETTER

    reasons = []
    auc = candidate.get("roc_auc")
    if auc is None or (isinstance(auc, float) and math.isnan(auc)) or auc < gate.min_roc_auc:
        reasons.append(f"quality: ROC AUC {_f(auc)} < min_roc_auc {gate.min_roc_auc:g}")
    m, tol = gate.metric, gate.tolerance
    lower = m in LOWER_IS_BETTER
    rule = f"roc_auc >= {gate.min_roc_auc:g}"
    if champion is not None:
        c, ch = candidate.get(m), champion.get(m)
        rule += f"; {m} {'<=' if lower else '>='} champion {'+' if lower else '-'} {tol:g}"
        if c is not None and ch is not None:
            if lower and c > ch + tol:
                reasons.append(
                    f"quality: {m} {c:.4f} is worse than the champion's {ch:.4f} by more than {tol:g}"
                )
            if not lower and c < ch - tol:
                reasons.append(
                    f"quality: {m} {c:.4f} is worse than the champion's {ch:.4f} by more than {tol:g}"
                )
    return not reasons, reasons, rule


def _f(v: Any) -> str:
    return "n/a" if v is None else f"{v:.4f}"


def _scores(model, X: pd.DataFrame) -> np.ndarray:
    from rtml.features import thread_limit

    with thread_limit(len(X)):
        return model.predict_proba(X)[:, 1]


def _rows_of(frame: pd.DataFrame, part: pd.DataFrame, key: str) -> np.ndarray | None:
    """Positions in ``frame`` of the rows of ``part`` (by the unique ``key``), or None when some are
    not there or the key is missing or repeated."""
    import pandas as pd

    if key not in frame.columns or key not in part.columns:
        return None
    index = pd.Index(frame[key])
    if not index.is_unique:
        return None
    rows = index.get_indexer(part[key])
    return None if (rows < 0).any() else rows


def _decisions(model, X: pd.DataFrame, scores: np.ndarray) -> np.ndarray | None:
    """A model's own decisions when it has them (the mitigated variant), else None (= threshold)."""
    labels = getattr(model, "labels", None)
    return None if labels is None else labels(X, scores)


def load_model(client, name: str, version: str):
    """A registered version for evaluation: the sklearn Pipeline, or for a mitigated variant the
    unwrapped ``MitigatedModel`` (``predict_proba`` + ``labels``), loaded through mlflow.pyfunc."""
    import mlflow

    if is_mitigated(client.get_model_version(name, version).tags):
        return mlflow.pyfunc.load_model(f"models:/{name}/{version}").unwrap_python_model()
    return mlflow.sklearn.load_model(f"models:/{name}/{version}")


def run_quality(
    spec: ProjectSpec,
    y: np.ndarray,
    scores: np.ndarray,
    champion_scores: np.ndarray | None = None,
    champion_version: str | None = None,
    champion_error: str | None = None,
    decisions: np.ndarray | None = None,
) -> dict[str, Any]:
    """Quality of the scores; a candidate with its own decisions (the mitigated variant) has the
    decision metrics (F1, precision, recall, predicted positive rate) of those decisions."""
    from rtml.evaluate.quality import (
        decision_metrics,
        expected_calibration_error,
        quality_metrics,
        reliability_table,
    )

    gate = spec.gates.quality
    t = gate.decision_threshold
    cand = quality_metrics(y, scores, t)
    if decisions is not None:
        cand.update(decision_metrics(y, decisions))
    rel = reliability_table(y, scores)
    cand["ece"] = expected_calibration_error(rel)
    champ = None
    champ_metrics = None
    if champion_scores is not None:
        champ_metrics = quality_metrics(y, champion_scores, t)
        champ_rel = reliability_table(y, champion_scores)
        champ_metrics["ece"] = expected_calibration_error(champ_rel)
        champ = {"version": champion_version, "metrics": champ_metrics, "reliability": champ_rel}
    passed, reasons, rule = quality_gate(cand, champ_metrics, gate)
    out = {
        "passed": passed,
        "reasons": reasons,
        "rule": rule,
        "metric": gate.metric,
        "tolerance": gate.tolerance,
        "threshold": t,
        "candidate": cand,
        "reliability": rel,
        "champion": champ,
        "decisions": "group rule (mitigated variant)" if decisions is not None else f"score >= {t:g}",
    }
    if champion_error:
        out["champion_error"] = champion_error
    return clean(out)


# --- fairness ------------------------------------------------------------------------------------------
def run_fairness(
    spec: ProjectSpec,
    holdout: pd.DataFrame,
    scores: np.ndarray,
    train: pd.DataFrame | None = None,
    train_scores: np.ndarray | None = None,
    decisions: np.ndarray | None = None,
) -> dict[str, Any]:
    """Fairness of the candidate's decisions (default: ``scores >= decision_threshold``). With
    ``decisions`` (the mitigated variant) the plain model's decisions are shown next to them."""
    import numpy as np

    from rtml.evaluate.fairness import evaluate_fairness
    from rtml.features import sensitive_frame, target_vector

    gate = spec.gates.fairness
    if not spec.sensitive:
        return {
            "passed": True,
            "reasons": [],
            "attributes": {},
            "note": "the spec names no sensitive attribute",
        }
    y = target_vector(holdout[spec.target.name], spec)
    tr = None
    if train is not None and train_scores is not None and gate.mitigate and decisions is None:
        tr = (train_scores, target_vector(train[spec.target.name], spec), sensitive_frame(train, spec))
    res = evaluate_fairness(
        y,
        scores,
        sensitive_frame(holdout, spec),
        gate,
        spec.gates.quality.decision_threshold,
        train=tr,
        random_state=spec.model.random_state,
        y_pred=decisions,
        plain_pred=None
        if decisions is None
        else (np.asarray(scores) >= spec.gates.quality.decision_threshold).astype(int),
    )
    return clean(res)


# --- drift -----------------------------------------------------------------------------------------------
def run_drift(
    spec: ProjectSpec,
    train_X: pd.DataFrame,
    train_scores: np.ndarray,
    currents: dict[str, tuple[pd.DataFrame, np.ndarray]],
    out_dir: Path | None = None,
    max_rows: int | None = None,
) -> dict[str, Any]:
    """Each current frame (``{"holdout": (X, scores), "newest": ...}``) against the training window."""
    from rtml.evaluate.drift import MAX_ROWS, PREDICTION, drift_check

    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
    ref = train_X.assign(**{PREDICTION: train_scores})
    checks, reasons = {}, []
    for name, (X, s) in currents.items():
        html = out_dir / f"drift_{name}.html" if out_dir is not None else None
        res = drift_check(
            ref,
            X.assign(**{PREDICTION: s}),
            spec,
            name=name,
            html_path=html,
            max_rows=max_rows or MAX_ROWS,
            random_state=spec.model.random_state,
        )
        checks[name] = res
        reasons += res["reasons"]
    return clean({"passed": not reasons, "reasons": reasons, "checks": checks})


# --- decision + reports ------------------------------------------------------------------------------------
def combine(quality: dict, fairness: dict, drift: dict) -> dict[str, Any]:
    gates = {
        "quality": {"passed": bool(quality["passed"]), "reasons": quality["reasons"]},
        "fairness": {"passed": bool(fairness["passed"]), "reasons": fairness["reasons"]},
        "drift": {"passed": bool(drift["passed"]), "reasons": drift["reasons"]},
    }
    reasons = [r for g in gates.values() for r in g["reasons"]]
    return {"passed": all(g["passed"] for g in gates.values()), "reasons": reasons, "gates": gates}


def write_reports(summary: dict[str, Any], out_dir: Path) -> dict[str, str]:
    """Fairness HTML, model card and JSON summary into ``out_dir`` (the drift HTML is already there)."""
    from rtml.reports import fairness_html, model_card_html

    out_dir.mkdir(parents=True, exist_ok=True)
    title = f"{summary.get('model')} version {summary.get('version')}"
    (out_dir / FILES["fairness"]).write_text(fairness_html(summary.get("fairness", {}), title))
    (out_dir / FILES["model_card"]).write_text(model_card_html(summary))
    (out_dir / FILES["summary"]).write_text(json.dumps(clean(summary), indent=2, default=str))
    return {k: str(out_dir / v) for k, v in FILES.items() if (out_dir / v).exists()}


def evaluate_frames(
    spec: ProjectSpec,
    model,
    train: pd.DataFrame,
    holdout: pd.DataFrame,
    *,
    champion=None,
    champion_version: str | None = None,
    newest: pd.DataFrame | None = None,
    out_dir: Path | None = None,
    max_drift_rows: int | None = None,
    meta: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The full evaluation on frames (no MLflow): quality, fairness, drift, decision, reports.

    ``train`` is the reference window; its scores are its ``_oof_score`` column when present,
    else the model's own scores (fine when the model did not see those rows).
    """
    import time

    from rtml.features import target_vector, to_frame
    timings: dict[str, float] = {}
    t = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal t
        now = time.perf_counter()
        timings[name] = round(now - t, 3)
        t = now

    X_hold = to_frame(holdout, spec)
    X_train = to_frame(train, spec)
    y = target_vector(holdout[spec.target.name], spec)
    scores = _scores(model, X_hold)
    if OOF_SCORE in train.columns:
        train_scores = train[OOF_SCORE].to_numpy(dtype=float)
    else:
        train_scores = _scores(model, X_train)
    champ_scores = _scores(champion, X_hold) if champion is not None else None
    decisions = _decisions(model, X_hold, scores)
    X_new, new_scores = None, None
    if newest is not None and len(newest):
        rows = _rows_of(holdout, newest, spec.event_id)
        if rows is not None:  # the newest batches are holdout rows: their scores are already known
            X_new, new_scores = X_hold.iloc[rows].reset_index(drop=True), scores[rows]
        else:
            X_new = to_frame(newest, spec)
            new_scores = _scores(model, X_new)
    lap("prepare_and_score")
    quality = run_quality(spec, y, scores, champ_scores, champion_version, decisions=decisions)
    lap("quality")
    fairness = run_fairness(spec, holdout, scores, train, train_scores, decisions)
    lap("fairness")
    currents = {"holdout": (X_hold, scores)}
    if X_new is not None and new_scores is not None:
        currents["newest"] = (X_new, new_scores)
    drift = run_drift(spec, X_train, train_scores, currents, out_dir, max_drift_rows)
    lap("drift")
    summary = {
        **(meta or {}),
        **combine(quality, fairness, drift),
        "quality": quality,
        "fairness": fairness,
        "drift": drift,
        "evaluated_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    if out_dir is not None:
        summary["reports"] = {k: Path(v).name for k, v in write_reports(summary, out_dir).items()}
        lap("reports")
        summary["timings"] = timings
        (out_dir / FILES["summary"]).write_text(json.dumps(clean(summary), indent=2, default=str))
    summary["timings"] = timings
    return clean(summary)


# --- MLflow layer ----------------------------------------------------------------------------------------
@dataclass
class Context:
    """A registered version with what its evaluation needs, loaded from the MLflow server."""

    spec: ProjectSpec
    settings: Settings
    client: Any
    name: str
    version: str
    run_id: str
    model: Any
    train: pd.DataFrame
    holdout: pd.DataFrame
    lineage: dict[str, Any]
    cache: dict[str, Any] = field(default_factory=dict)

    def X(self, which: str) -> pd.DataFrame:
        from rtml.features import to_frame

        key = f"X_{which}"
        if key not in self.cache:
            self.cache[key] = to_frame(getattr(self, which), self.spec)
        return self.cache[key]

    @property
    def variant(self) -> str:
        return "mitigated" if hasattr(self.model, "labels") else "plain"

    def decisions(self, which: str = "holdout") -> np.ndarray | None:
        """The candidate's own decisions (mitigated variant) of a frame, else None."""
        key = f"d_{which}"
        if key not in self.cache:
            self.cache[key] = _decisions(self.model, self.X(which), self.scores(which))
        return self.cache[key]

    def scores(self, which: str) -> np.ndarray:
        """The model's scores of the holdout (as training stored them next to the rows); of the
        train window, its out-of-fold scores."""
        if which == "train" and OOF_SCORE in self.train.columns:
            return self.train[OOF_SCORE].to_numpy(dtype=float)
        if which == "holdout" and SCORE in self.holdout.columns:
            return self.holdout[SCORE].to_numpy(dtype=float)
        key = f"s_{which}"
        if key not in self.cache:
            self.cache[key] = _scores(self.model, self.X(which))
        return self.cache[key]


_CONTEXTS: dict[tuple[str, str, str], Context] = {}


def load_context(spec: ProjectSpec, version: str | int, settings: Settings | None = None) -> Context:
    import mlflow
    from mlflow.exceptions import MlflowException

    from rtml.lake import from_parquet_bytes
    from rtml.registry.client import setup_mlflow

    s = settings or get_settings()
    name, version = spec.model.registered_name, str(version)
    key = (s.mlflow_tracking_uri, name, version)
    if key in _CONTEXTS:
        return _CONTEXTS[key]
    client = setup_mlflow(s)
    try:
        mv = client.get_model_version(name, version)
    except MlflowException as err:
        raise ValueError(
            f"--version: {name} version {version} not found in the registry: {err.message}"
        ) from None
    model = load_model(client, name, version)
    with tempfile.TemporaryDirectory(prefix="rtml-eval-") as tmp:

        def fetch(path: str) -> Path:
            return Path(
                mlflow.artifacts.download_artifacts(run_id=mv.run_id, artifact_path=path, dst_path=tmp)
            )

        train = from_parquet_bytes(fetch(f"{DATA_DIR}/{TRAIN_FILE}").read_bytes())
        holdout = from_parquet_bytes(fetch(f"{DATA_DIR}/{HOLDOUT_FILE}").read_bytes())
        lineage = json.loads(fetch(LINEAGE_FILE).read_text())
    if not mv.run_id:
        raise ValueError(f"{name} version {version} has no MLflow run: rtml cannot evaluate it")
    ctx = Context(spec, s, client, name, version, mv.run_id, model, train, holdout, lineage)
    _CONTEXTS.clear()  # one version at a time is enough; frames can be large
    _CONTEXTS[key] = ctx
    return ctx


def _champion(ctx: Context):
    """The current champion's (version, model), or (None, None) when there is none or it is this version."""
    from mlflow.exceptions import MlflowException

    try:
        mv = ctx.client.get_model_version_by_alias(ctx.name, CHAMPION)
    except MlflowException:
        return None, None
    if str(mv.version) == ctx.version:
        return None, None
    return str(mv.version), load_model(ctx.client, ctx.name, str(mv.version))


def evaluate_quality(
    spec: ProjectSpec, version: str | int, settings: Settings | None = None
) -> dict[str, Any]:
    from rtml.features import target_vector

    ctx = load_context(spec, version, settings)
    champ_version, champ = _champion(ctx)
    champ_scores, err = None, None
    if champ is not None:
        try:
            champ_scores = _scores(champ, ctx.X("holdout"))
        except (KeyError, ValueError) as e:  # e.g. the spec's features changed since the champion
            err = f"champion version {champ_version} could not score this holdout ({e}); not compared"
    y = target_vector(ctx.holdout[spec.target.name], spec)
    return run_quality(
        spec, y, ctx.scores("holdout"), champ_scores, champ_version, err, decisions=ctx.decisions("holdout")
    )


def evaluate_fairness(
    spec: ProjectSpec, version: str | int, settings: Settings | None = None
) -> dict[str, Any]:
    ctx = load_context(spec, version, settings)
    return run_fairness(
        spec, ctx.holdout, ctx.scores("holdout"), ctx.train, ctx.scores("train"), ctx.decisions("holdout")
    )


def newest_events(ctx: Context, max_rows: int = 50_000) -> tuple[pd.DataFrame, list[str]]:
    """Events batches newer than the training window (unlabelled is fine); else the newest used one.

    Only batches with rows count: an empty batch (an interval in which nothing arrived, committed
    after training) says nothing, and taking it would skip the check depending on the clock."""
    import pandas as pd

    from rtml.lake import Lake
    from rtml.storage import open_store

    lake_uri = ctx.lineage.get("lake_uri") or ctx.settings.lake_uri
    lake = Lake(ctx.settings, open_store(lake_uri, ctx.settings))
    ds = ctx.spec.dataset.name
    used = ctx.lineage.get("events_batches", [])
    last = used[-1] if used else ""
    committed = lake.batch_ids(ds, "events", after=last)  # names only: the manifests read are the newest few
    ids, rows = [], 0
    for bid in reversed(committed):  # newest first, until max_rows
        m = lake.manifest(ds, "events", bid) or {}
        if not int(m.get("accepted") or 0):
            continue
        ids.append(bid)
        rows += int(m["accepted"])
        if rows >= max_rows:
            break
    if not ids and last:  # nothing newer with rows: the newest batch training used
        ids = [last]
    frame = lake.read_batches(ds, "events", ids) if ids else pd.DataFrame()
    if frame.empty:
        return pd.DataFrame(), []
    return frame.tail(max_rows).reset_index(drop=True), sorted(ids)


def evaluate_drift(
    spec: ProjectSpec, version: str | int, settings: Settings | None = None, out_dir: Path | None = None
) -> dict[str, Any]:
    """Drift of the holdout and the newest batches vs the training window; logs the Evidently HTML."""
    from rtml.features import to_frame

    ctx = load_context(spec, version, settings)
    currents = {"holdout": (ctx.X("holdout"), ctx.scores("holdout"))}
    newest, batch_ids = newest_events(ctx)
    if len(newest):
        X_new = to_frame(newest, spec)
        currents["newest"] = (X_new, _scores(ctx.model, X_new))
    with tempfile.TemporaryDirectory(prefix="rtml-drift-") as tmp:
        out = Path(out_dir) if out_dir is not None else Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        res = run_drift(spec, ctx.X("train"), ctx.scores("train"), currents, out)
        for name in currents:
            ctx.client.log_artifact(ctx.run_id, str(out / f"drift_{name}.html"), EVAL_DIR)
    res["newest_batches"] = batch_ids
    return res


def _report_uri(ctx: Context, key: str) -> str:
    return f"runs:/{ctx.run_id}/{EVAL_DIR}/{FILES[key]}"


def _ui_url(ctx: Context, path: str = f"{EVAL_DIR}/{FILES['model_card']}") -> str:
    """The MLflow UI page showing one artifact of the run (the UI renders HTML artifacts inline)."""
    run = ctx.client.get_run(ctx.run_id)
    base = ctx.settings.mlflow_tracking_uri.rstrip("/")
    return f"{base}/#/experiments/{run.info.experiment_id}/runs/{ctx.run_id}/artifactPath/{path}"


def decide(
    spec: ProjectSpec,
    version: str | int,
    quality: dict[str, Any],
    fairness: dict[str, Any],
    drift: dict[str, Any],
    settings: Settings | None = None,
) -> dict[str, Any]:
    """Combine the gates, write + log the reports, tag the version, set ``challenger`` on a pass."""
    from mlflow.exceptions import MlflowException

    ctx = load_context(spec, version, settings)
    decision = combine(quality, fairness, drift)
    reports = {k: _report_uri(ctx, k) for k in FILES}
    variant: dict[str, str | None] = {"variant": ctx.variant}
    if ctx.variant == "mitigated":
        variant["base_version"] = ctx.lineage.get("base_version") or (
            ctx.client.get_model_version(ctx.name, ctx.version).tags or {}
        ).get(BASE_VERSION_TAG)
    if "newest" not in (drift.get("checks") or {}):
        reports.pop("drift_newest")
    summary = {
        "model": ctx.name,
        "version": ctx.version,
        "run_id": ctx.run_id,
        **variant,
        **decision,
        "quality": quality,
        "fairness": fairness,
        "drift": drift,
        "lineage": {k: v for k, v in ctx.lineage.items() if k != "committed_batches"},
        "reports": {**reports, "mlflow_ui": _ui_url(ctx)},
        "evaluated_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    with tempfile.TemporaryDirectory(prefix="rtml-reports-") as tmp:
        out = Path(tmp)
        write_reports(summary, out)
        for key in ("fairness", "model_card", "summary"):
            ctx.client.log_artifact(ctx.run_id, str(out / FILES[key]), EVAL_DIR)

    # metrics on the training run, so runs can be compared in the UI
    metrics = {
        f"eval_candidate_{k}": v for k, v in quality["candidate"].items() if isinstance(v, int | float)
    }
    if quality.get("champion"):
        metrics.update(
            {
                f"eval_champion_{k}": v
                for k, v in quality["champion"]["metrics"].items()
                if isinstance(v, int | float)
            }
        )
    for name, res in fairness.get("attributes", {}).items():
        for m in ("demographic_parity_ratio", "equal_opportunity_difference", "equalized_odds_difference"):
            if isinstance(res.get(m), int | float):
                metrics[f"eval_fairness_{name}_{m}"] = res[m]
    for name, res in (drift.get("checks") or {}).items():
        metrics[f"eval_drift_{name}_share"] = res["drifted_share"]
    for k, v in metrics.items():
        ctx.client.log_metric(ctx.run_id, k, float(v))

    word = {True: "passed", False: "failed"}
    reasons_text = "; ".join(decision["reasons"]) or "all gates passed"
    tags = {
        "gate.quality": word[decision["gates"]["quality"]["passed"]],
        "gate.fairness": word[decision["gates"]["fairness"]["passed"]],
        "gate.drift": word[decision["gates"]["drift"]["passed"]],
        "gate.decision": word[decision["passed"]],
        "gate.reasons": reasons_text[:4900],
        "gate.evaluated_at": summary["evaluated_at"],
        "report.model_card": reports["model_card"],
        "report.fairness": reports["fairness"],
        "report.drift": reports["drift_holdout"],
        "report.summary": reports["summary"],
        "report.url": summary["reports"]["mlflow_ui"],
    }
    for k, v in tags.items():
        ctx.client.set_model_version_tag(ctx.name, ctx.version, k, v)
        ctx.client.set_tag(ctx.run_id, k, v)
    # Signed where decided (before any alias): promotion and serving verify it (rtml.registry.signing).
    from rtml.registry.signing import sign_and_record

    sign_and_record(ctx.client, ctx.name, ctx.version, decision, ctx.settings)
    q = quality["candidate"]
    champ_txt = (
        f" vs champion v{quality['champion']['version']} {quality['champion']['metrics'].get('roc_auc', 0):.4f}"
        if quality.get("champion")
        else " (no champion)"
    )
    lines = [
        *(
            [
                f"Fairness-mitigated variant of version {variant['base_version']}: the same scores, "
                "per-group decision thresholds."
            ]
            if ctx.variant == "mitigated"
            else []
        ),
        f"**Gates: {word[decision['passed']].upper()}** (quality {tags['gate.quality']}, fairness "
        f"{tags['gate.fairness']}, drift {tags['gate.drift']}).",
        f"Holdout ROC AUC {q.get('roc_auc') or float('nan'):.4f}{champ_txt}.",
        *(f"- {r}" for r in decision["reasons"]),
        f"Model card: `{reports['model_card']}`; fairness: `{reports['fairness']}`; drift: `{reports['drift_holdout']}`; "
        f"summary: `{reports['summary']}`.",
        f"Model card in the UI: {summary['reports']['mlflow_ui']} (all reports: run artifacts, folder `{EVAL_DIR}/`).",
    ]
    ctx.client.update_model_version(ctx.name, ctx.version, description="\n\n".join(lines))

    if decision["passed"]:
        ctx.client.set_registered_model_alias(ctx.name, CHALLENGER, ctx.version)
    else:
        try:  # a re-evaluation that now fails must not leave this version as the challenger
            current = ctx.client.get_model_version_by_alias(ctx.name, CHALLENGER)
            if str(current.version) == ctx.version:
                ctx.client.delete_registered_model_alias(ctx.name, CHALLENGER)
        except MlflowException:
            pass
    return clean(
        {
            "ok": True,
            "passed": decision["passed"],
            "name": ctx.name,
            "version": ctx.version,
            "run_id": ctx.run_id,
            **variant,
            "gates": {k: v["passed"] for k, v in decision["gates"].items()},
            "reasons": decision["reasons"],
            "alias": CHALLENGER if decision["passed"] else None,
            "reports": summary["reports"],
            "message": (
                f"{ctx.name} version {ctx.version}: gates {word[decision['passed']]}"
                + (f" -> alias {CHALLENGER}" if decision["passed"] else f": {reasons_text}")
            ),
        }
    )


def evaluate(spec: ProjectSpec, version: str | int, settings: Settings | None = None) -> dict[str, Any]:
    """All gates in one process (the CLI); the DAG runs the same steps as separate tasks."""
    q = evaluate_quality(spec, version, settings)
    f = evaluate_fairness(spec, version, settings)
    d = evaluate_drift(spec, version, settings)
    return decide(spec, version, q, f, d, settings)
