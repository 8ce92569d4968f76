"""Training: a sliding window of labelled data from the lake, an out-of-time holdout, MLflow logging.

``train(spec)`` reads events joined to labels (``Lake.labelled``), keeps the newest
``training.window_days`` of event time, holds out the newest ``training.holdout_fraction`` of rows
(out of time: the model is judged on data newer than anything it saw), fits the spec's Pipeline
with the spec's seed and logs to the MLflow server: params, holdout metrics, the model (signature +
input example), the exact lake batches (MLflow dataset lineage + ``lineage.json``), the code
version, and registers it as a new version of ``model.registered_name``. The train and holdout
frames are stored as run artifacts; the function returns references (URIs, ids, counts) only.
"""

from __future__ import annotations

import contextlib
import json
import math
import subprocess
import sys
import tempfile
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rtml.names import DATA_DIR, HOLDOUT_FILE, LINEAGE_FILE, OOF_SCORE, SCORE, TRAIN_FILE
from rtml.registry.client import setup_mlflow
from rtml.settings import Settings, get_settings

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

    from rtml.lake import Lake
    from rtml.spec import ProjectSpec

# Out-of-fold scores of the training window (rtml.names.OOF_SCORE): the reference for prediction
# drift and the data the fairness mitigation is fitted on. In-sample scores would be sharper than
# anything the model produces on new data, so every holdout would look "drifted".
OOF_FOLDS = 3
TAG_MAX = 4900  # MLflow tag values are limited to 5000 characters


class NotEnoughData(ValueError):
    """The lake has too little labelled data in the window to train (a normal state, not a bug)."""


# --- small helpers -----------------------------------------------------------------------------------
def code_version() -> dict[str, str]:
    """rtml's version and, when run from a checkout, the git commit (with '+dirty' if modified)."""
    from rtml import __version__

    out = {"rtml_version": __version__, "git_sha": ""}
    repo = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
        out["git_sha"] = sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return out


def _join(ids: list[str]) -> str:
    text = ",".join(ids)
    return text if len(text) <= TAG_MAX else text[: TAG_MAX - 20] + f",...(+{len(ids)})"


def _has_rows(manifest: dict[str, Any]) -> bool:
    """A manifest of a batch that holds data (not an empty ingestion interval)."""
    n = manifest.get("accepted", manifest.get("records_in"))
    if n is not None:
        return int(n) > 0
    return bool(manifest.get("files")) or manifest.get("watermark") is not None


def _utc(value: Any) -> pd.Timestamp:
    import pandas as pd

    t = pd.Timestamp(value)
    return t.tz_convert("UTC") if t.tzinfo else t.tz_localize("UTC")


# --- the window and the split -------------------------------------------------------------------------
def load_window(
    spec: ProjectSpec,
    lake: Lake,
    end: datetime | str | None = None,
    window_days: float | None = None,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The labelled rows with event time in [end - window_days, end) and their lineage.

    ``end`` defaults to just after the newest event received (labelled or not), so the window
    slides with the data. The lineage lists the lake batches that contributed rows.
    """
    ts = spec.event_time
    days = window_days if window_days is not None else spec.training.window_days
    newest = lake.newest_watermark(spec.dataset.name, "events") if end is None else None
    if end is not None:
        stop = _utc(end)
    elif newest is not None:  # from the day index: the newest day's batches, not every manifest
        stop = newest + timedelta(microseconds=1)
    else:
        # The window ends just after the newest event received: the manifests' watermarks say
        # when that is without reading any data (fall back to one full read if one lacks it).
        # An empty ingestion interval writes a manifest with ``watermark: null``: it has no
        # events, so it says nothing about the newest one; only batches with rows count.
        manifests = lake.manifests(spec.dataset.name, "events")
        marks = [m.get("watermark") for m in manifests if _has_rows(m)]
        if marks and all(marks):
            stop = max(_utc(w) for w in marks) + timedelta(microseconds=1)
        else:
            full, _ = lake.labelled(spec)
            if full.empty:
                raise NotEnoughData(
                    f"no labelled data in the lake {lake.uri} for dataset {spec.dataset.name!r}"
                )
            stop = full[ts].max() + timedelta(microseconds=1)
    start = stop - timedelta(days=days)
    snapshots = lake.snapshots(spec.dataset.name)  # before reading: later commits cannot change the window
    for kind, snap in snapshots.items():  # tagged: no expiry removes what this version trained on
        lake.tables.keep(spec.dataset.name, kind, snap)
    df, batches = lake.labelled(spec, start, stop, snapshots=snapshots or None)
    if df.empty:
        raise NotEnoughData(
            f"no labelled data in the lake {lake.uri} for dataset {spec.dataset.name!r} "
            f"between {start.isoformat()} and {stop.isoformat()}"
        )
    ds = spec.dataset.name
    events = [{"batch_id": b, "manifest": lake.manifest_key(ds, "events", b)} for b in batches["events"]]
    labels = [{"batch_id": b, "manifest": lake.manifest_key(ds, "labels", b)} for b in batches["labels"]]
    lineage = {
        "lake_uri": lake.uri,
        "dataset": spec.dataset.name,
        "window_start": start.isoformat(),
        "window_end": stop.isoformat(),
        "window_days": days,
        "rows": len(df),
        "schema_hash": spec.schema_hash(),
        "events_batches": [b["batch_id"] for b in events],
        "labels_batches": [b["batch_id"] for b in labels],
        "manifests": [b["manifest"] for b in events + labels],
        "rows_digest": frame_digest(df),
    }
    if snapshots:
        lineage["tables"] = {kind: {"table": lake.tables.identifier(ds, kind), "snapshot_id": snap}
                             for kind, snap in snapshots.items()}
    return df, lineage


def frame_digest(df: pd.DataFrame) -> str:
    """A digest of a frame's rows and columns (names, order, values): equal frames, equal digests."""
    import hashlib

    import pandas as pd

    h = hashlib.sha256(json.dumps([str(c) for c in df.columns]).encode())
    h.update(pd.util.hash_pandas_object(df, index=False).to_numpy().tobytes())
    return f"sha256:{h.hexdigest()}"


def read_lineage(spec: ProjectSpec, lineage: dict[str, Any], lake: Lake | None = None) -> pd.DataFrame:
    """A version's training window read back from the lake as it was: the same batches, and with
    Iceberg tables the same snapshots (later batches and re-runs of its batches change nothing)."""
    from rtml.lake import Lake

    lake = lake or Lake()
    snapshots = {kind: t.get("snapshot_id") for kind, t in (lineage.get("tables") or {}).items()}
    df, _ = lake.labelled(spec, _utc(lineage["window_start"]), _utc(lineage["window_end"]),
                          snapshots=snapshots or None,
                          batches={"events": lineage["events_batches"], "labels": lineage["labels_batches"]})
    return df


def split_holdout(df: pd.DataFrame, spec: ProjectSpec, fraction: float | None = None):
    """Out-of-time split: the newest ``fraction`` of rows (by event time, then event id) is the holdout."""
    frac = fraction if fraction is not None else spec.training.holdout_fraction
    df = df.sort_values([spec.event_time, spec.event_id], kind="stable").reset_index(drop=True)
    n_hold = max(1, int(math.ceil(len(df) * frac)))
    if n_hold >= len(df):
        raise ValueError(f"training.holdout_fraction {frac} leaves no training rows out of {len(df)}")
    return df.iloc[: len(df) - n_hold].reset_index(drop=True), df.iloc[len(df) - n_hold :].reset_index(
        drop=True
    )


def fit_pipeline(spec: ProjectSpec, train_df: pd.DataFrame, random_state: int | None = None):
    """Fit the spec's Pipeline on a labelled frame; raises if the target has one class only."""
    from rtml.features import build_pipeline, target_vector, thread_limit, to_frame

    X = to_frame(train_df, spec)
    y = target_vector(train_df[spec.target.name], spec)
    if len(set(y.tolist())) < 2:
        raise ValueError(f"target {spec.target.name!r}: the training window has a single class")
    pipe = build_pipeline(spec, random_state)
    with thread_limit(len(X)):
        pipe.fit(X, y)
    return pipe


def oof_scores(spec: ProjectSpec, train_df: pd.DataFrame, random_state: int) -> np.ndarray:
    """Out-of-fold positive-class scores of the training rows (stratified folds, seeded)."""
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    from rtml.features import build_pipeline, target_vector, thread_limit, to_frame

    y = target_vector(train_df[spec.target.name], spec)
    folds = min(OOF_FOLDS, int(min(y.sum(), len(y) - y.sum())))
    if folds < 2:
        raise ValueError(
            f"target {spec.target.name!r}: too few positives or negatives for out-of-fold scores"
        )
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=random_state)
    with thread_limit(len(y)):
        proba = cross_val_predict(
            build_pipeline(spec, random_state), to_frame(train_df, spec), y, cv=cv, method="predict_proba"
        )
    return proba[:, 1]


def _skops_trusted(pipe) -> list[str]:
    # skops refuses types it does not know; trust only numpy/sklearn internals (OneHotEncoder's
    # numpy.dtype, HistGradientBoosting's TreePredictor) and fail loudly on anything else.
    import skops.io as sio

    untrusted = sio.get_untrusted_types(data=sio.dumps(pipe))
    bad = [t for t in untrusted if not t.startswith(("numpy.", "sklearn."))]
    if bad:
        raise ValueError(f"model.estimator: refusing to serialize untrusted types {bad}")
    return list(untrusted)


def model_requirements() -> list[str]:
    """Pinned pip requirements of the logged model. Given explicitly because mlflow's inference
    loads the model in a subprocess (~8 s per training) to find what we already know."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as pkg_version

    out = []
    for pkg in ("mlflow", "scikit-learn", "skops", "numpy", "pandas", "scipy"):
        try:
            out.append(f"{pkg}=={pkg_version(pkg)}")
        except PackageNotFoundError:
            out.append(pkg)
    return out


def log_model(pipe, spec: ProjectSpec, X_example: pd.DataFrame, register: bool = True):
    """Log the Pipeline (signature + input example) in the active run; returns mlflow's ModelInfo."""
    import mlflow
    from mlflow.models import infer_signature

    from rtml.features import thread_limit

    with thread_limit(len(X_example)):
        signature = infer_signature(X_example, pipe.predict_proba(X_example))
    return mlflow.sklearn.log_model(
        pipe,
        name="model",
        signature=signature,
        input_example=X_example.head(5),
        registered_model_name=spec.model.registered_name if register else None,
        # pyfunc/served predictions are the class probabilities [P(negative), P(positive)].
        pyfunc_predict_fn="predict_proba",
        serialization_format="skops",
        skops_trusted_types=_skops_trusted(pipe),
        pip_requirements=model_requirements(),
    )


def log_datasets(
    spec: ProjectSpec,
    source: str,
    train_df: pd.DataFrame,
    hold_df: pd.DataFrame,
    train_tags: dict[str, str] | None = None,
    holdout_tags: dict[str, str] | None = None,
):
    """Log the training window and the holdout as MLflow datasets of the active run (lineage)."""
    import mlflow
    from mlflow.data.pandas_dataset import from_pandas

    name, target = spec.dataset.name, spec.target.name
    train_ds = from_pandas(train_df, source=source, name=f"{name}-train", targets=target)
    hold_ds = from_pandas(hold_df, source=source, name=f"{name}-holdout", targets=target)
    mlflow.log_input(train_ds, context="training", tags=train_tags)
    mlflow.log_input(hold_ds, context="holdout", tags=holdout_tags)
    return train_ds, hold_ds


def _frame_to_parquet(df: pd.DataFrame, path: Path) -> None:
    from rtml.lake import to_parquet_bytes

    path.write_bytes(to_parquet_bytes(df))


# --- the stage -------------------------------------------------------------------------------------------
def train(
    spec: ProjectSpec,
    settings: Settings | None = None,
    *,
    end: datetime | str | None = None,
    window_days: float | None = None,
    random_state: int | None = None,
    register: bool = True,
    lake: Lake | None = None,
    run_name: str | None = None,
) -> dict[str, Any]:
    """Train on the window, log everything to MLflow, register a version; returns references only."""
    import mlflow

    from rtml.evaluate.quality import quality_metrics
    from rtml.features import target_vector, thread_limit, to_frame
    from rtml.lake import Lake

    s = settings or get_settings()
    lake = lake or Lake(s)
    seed = spec.model.random_state if random_state is None else random_state
    df, lineage = load_window(spec, lake, end, window_days)
    if len(df) < spec.training.min_rows:
        raise NotEnoughData(
            f"training.min_rows: the window has {len(df)} labelled rows, fewer than {spec.training.min_rows}"
        )
    train_df, hold_df = split_holdout(df, spec)
    pipe = fit_pipeline(spec, train_df, seed)
    train_oof = oof_scores(spec, train_df, seed)
    X_hold = to_frame(hold_df, spec)
    y_hold = target_vector(hold_df[spec.target.name], spec)
    with thread_limit(len(X_hold)):
        proba = pipe.predict_proba(X_hold)[:, 1]
    threshold = spec.gates.quality.decision_threshold
    metrics = quality_metrics(y_hold, proba, threshold)
    lineage["holdout_start"] = str(hold_df[spec.event_time].iloc[0])
    lineage["train_rows"], lineage["holdout_rows"] = len(train_df), len(hold_df)
    version = code_version()

    client = setup_mlflow(s)
    keep = [spec.entity_id, spec.event_id, spec.event_time, *spec.feature_names, spec.target.name]
    # mlflow prints "View run ..." links on stdout; send them to stderr so `--json` stays parseable.
    with contextlib.redirect_stdout(sys.stderr):
        with mlflow.start_run(run_name=run_name or f"train-{spec.name}") as run:
            run_id = run.info.run_id
            mlflow.log_params(
                {
                    "estimator": spec.model.estimator,
                    **{f"model.{k}": v for k, v in spec.model.params.items()},
                    "random_state": seed,
                    "window_days": lineage["window_days"],
                    "window_start": lineage["window_start"],
                    "window_end": lineage["window_end"],
                    "holdout_fraction": spec.training.holdout_fraction,
                    "holdout_start": lineage["holdout_start"],
                    "decision_threshold": threshold,
                    "features": len(spec.features),
                    "schema_hash": spec.schema_hash(),
                }
            )
            mlflow.log_metrics({f"holdout_{k}": v for k, v in metrics.items() if not math.isnan(v)})
            mlflow.log_metrics({"train_rows": len(train_df), "holdout_rows": len(hold_df)})
            mlflow.set_tags(
                {
                    "rtml.stage": "train",
                    "rtml.spec": spec.name,
                    "rtml.dataset": spec.dataset.name,
                    "rtml.lake_uri": lake.uri,
                    "rtml.version": version["rtml_version"],
                    "rtml.git_sha": version["git_sha"],
                    "mlflow.source.git.commit": version["git_sha"].removesuffix("+dirty"),
                    "rtml.window_start": lineage["window_start"],
                    "rtml.window_end": lineage["window_end"],
                    "rtml.events_batches": _join(lineage["events_batches"]),
                    "rtml.labels_batches": _join(lineage["labels_batches"]),
                }
            )
            # Dataset lineage: the rows actually used, pointing at the lake they came from.
            src = lake.uri
            train_ds, hold_ds = log_datasets(
                spec, src, train_df[keep], hold_df[keep],
                train_tags={"window_end": lineage["window_end"]},
                holdout_tags={"holdout_start": lineage["holdout_start"]},
            )
            lineage["dataset_digests"] = {"train": train_ds.digest, "holdout": hold_ds.digest}

            with tempfile.TemporaryDirectory(prefix="rtml-train-") as tmp:
                tmpdir = Path(tmp)
                hold_out = hold_df[keep].copy()
                hold_out[SCORE] = proba
                train_out = train_df[keep].copy()
                train_out[OOF_SCORE] = train_oof
                _frame_to_parquet(train_out, tmpdir / TRAIN_FILE)
                _frame_to_parquet(hold_out, tmpdir / HOLDOUT_FILE)
                mlflow.log_artifact(str(tmpdir / TRAIN_FILE), DATA_DIR)
                mlflow.log_artifact(str(tmpdir / HOLDOUT_FILE), DATA_DIR)
                (tmpdir / LINEAGE_FILE).write_text(
                    json.dumps({**lineage, "code": version}, indent=2, default=str)
                )
                mlflow.log_artifact(str(tmpdir / LINEAGE_FILE))

            info = log_model(pipe, spec, to_frame(train_df.head(200), spec), register=register)

    result: dict[str, Any] = {
        "ok": True,
        "run_id": run_id,
        "model_uri": info.model_uri,
        "registered_name": spec.model.registered_name if register else None,
        "version": None,
        "train_uri": f"runs:/{run_id}/{DATA_DIR}/{TRAIN_FILE}",
        "holdout_uri": f"runs:/{run_id}/{DATA_DIR}/{HOLDOUT_FILE}",
        "lineage_uri": f"runs:/{run_id}/{LINEAGE_FILE}",
        "train_rows": len(train_df),
        "holdout_rows": len(hold_df),
        "window_start": lineage["window_start"],
        "window_end": lineage["window_end"],
        "events_batches": len(lineage["events_batches"]),
        "labels_batches": len(lineage["labels_batches"]),
        "metrics": {k: v for k, v in metrics.items() if not math.isnan(v)},
    }
    if register:
        v = str(info.registered_model_version)
        result["version"] = v
        name = spec.model.registered_name
        tags = {
            "rtml.window_end": lineage["window_end"],
            "rtml.events_last_batch": lineage["events_batches"][-1] if lineage["events_batches"] else "",
            "rtml.labels_last_batch": lineage["labels_batches"][-1] if lineage["labels_batches"] else "",
            "rtml.lineage": result["lineage_uri"],
            "rtml.holdout": result["holdout_uri"],
            "rtml.git_sha": version["git_sha"],
        }
        for k, val in tags.items():
            client.set_model_version_tag(name, v, k, val)
        client.update_model_version(
            name,
            v,
            description=(
                f"Trained by rtml {version['rtml_version']} on {len(train_df)} rows of {spec.dataset.name} "
                f"({lineage['window_start']} to {lineage['window_end']}); holdout ROC AUC "
                f"{metrics['roc_auc']:.4f}. Not evaluated yet."
            ),
        )
        result["message"] = (
            f"trained {name} version {v} (run {run_id}): {len(train_df)} train / {len(hold_df)} holdout rows, "
            f"holdout ROC AUC {metrics['roc_auc']:.4f}"
        )
    else:
        result["message"] = f"trained run {run_id} (not registered): holdout ROC AUC {metrics['roc_auc']:.4f}"
    return result


def new_data_status(
    spec: ProjectSpec,
    settings: Settings | None = None,
    *,
    min_new_rows: int | None = None,
    lake: Lake | None = None,
) -> dict[str, Any]:
    """Is there enough new labelled data to train? Compares the lake's label batches with the
    ``rtml.labels_last_batch`` tag of the newest registered version (no version: everything is new)."""
    from mlflow.exceptions import MlflowException

    from rtml.lake import Lake

    s = settings or get_settings()
    lake = lake or Lake(s)
    needed = spec.training.min_rows if min_new_rows is None else min_new_rows
    manifests = lake.manifests(spec.dataset.name, "labels")
    total = sum(int(m.get("accepted", m.get("records_in", 0)) or 0) for m in manifests)
    last = ""
    try:
        client = setup_mlflow(s)
        versions = client.search_model_versions(f"name='{spec.model.registered_name}'")
        if versions:
            newest = max(versions, key=lambda mv: int(mv.version))
            last = (newest.tags or {}).get("rtml.labels_last_batch", "")
    except MlflowException as err:
        if "RESOURCE_DOES_NOT_EXIST" not in str(err):
            raise
    new = sum(int(m.get("accepted", m.get("records_in", 0)) or 0) for m in manifests if m["batch_id"] > last)
    ready = total >= spec.training.min_rows and new >= needed
    return {
        "ready": ready,
        "labelled_rows": total,
        "new_labelled_rows": new,
        "needed_new_rows": needed,
        "last_trained_labels_batch": last,
        "message": (
            f"{new} new labelled rows since batch {last or '(none)'} ({total} in total); "
            f"{'enough' if ready else 'not enough'} to train (need {needed} new, {spec.training.min_rows} total)"
        ),
    }


def version_lineage(spec: ProjectSpec, name: str, version: str | int, settings: Settings | None = None,
                    lake: Lake | None = None) -> dict[str, Any]:
    """What a registered version was trained on (its run's ``lineage.json``), read back from the
    lake and checked row for row against the digest recorded at training time."""
    import tempfile

    import mlflow

    from rtml.lake import Lake
    from rtml.registry.client import mlflow_client

    s = settings or get_settings()
    mv = mlflow_client(s).get_model_version(name, str(version))
    with tempfile.TemporaryDirectory() as tmp:
        path = mlflow.artifacts.download_artifacts(f"runs:/{mv.run_id}/{LINEAGE_FILE}", dst_path=tmp,
                                                   tracking_uri=s.mlflow_tracking_uri)
        lineage = json.loads(Path(path).read_text())
    df = read_lineage(spec, lineage, lake or Lake(s))
    digest = frame_digest(df)
    recorded = lineage.get("rows_digest")
    matches = recorded == digest if recorded else None
    tables = lineage.get("tables") or {}
    where = ", ".join(f"{t['table']}@{t['snapshot_id']}" for t in tables.values()) or f"files in {lineage['lake_uri']}"
    verdict = {True: "the same rows as at training time", False: "NOT the rows trained on (the lake changed)",
               None: "no digest recorded at training time to compare with"}[matches]
    return {
        "name": name, "version": str(version), "run_id": mv.run_id, "lineage": lineage, "rows": len(df),
        "digest": digest, "matches": matches,
        "message": (f"{name} version {version}: trained on {len(df)} rows, event time {lineage['window_start']} .. "
                    f"{lineage['window_end']}, {len(lineage['events_batches'])} event and "
                    f"{len(lineage['labels_batches'])} label batches ({where}); read back: {verdict}"),
    }
