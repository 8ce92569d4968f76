"""Where models come from: the MLflow registry (``RegistrySource``), with the governance check
(gates passed, signed, approved) before a version is loaded, and the smoke check on sample rows."""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

from rtml.names import VARIANT_TAG
from rtml.registry.client import mlflow_client
from rtml.serve.model import (
    MITIGATED,
    PLAIN,
    LoadedModel,
    SmokeCheckError,
    outputs_for_pyfunc,
    scorer_for_estimator,
    scores_of,
)
from rtml.serve.validation import RecordValidator, RequestError

if TYPE_CHECKING:
    import pandas as pd

    from rtml.settings import Settings
    from rtml.spec import ProjectSpec


def smoke_check(model: LoadedModel, extra_rows: Sequence[dict[str, Any]] = ()) -> int:
    """Score the stored sample rows; every score must be finite and in [0, 1]. Returns rows used."""
    import numpy as np

    rows = list(model.samples)
    for row in extra_rows:  # recent live rows, when they fit this version's inputs
        try:
            model.validator.validate([row], single=True)
            rows.append(row)
        except RequestError:
            continue
    if not rows:
        raise SmokeCheckError(f"version {model.version}: no sample rows to smoke-check with")
    try:
        cols, _ = model.validator.validate(rows, single=False)
    except RequestError as err:
        raise SmokeCheckError(f"version {model.version}: sample rows do not fit its inputs: {err.message}") from None
    try:
        scores, labels = model.predict_columns(cols)
        scores = np.asarray(scores, dtype="float64")
    except Exception as err:  # noqa: BLE001 - any failure means "do not serve this version"
        raise SmokeCheckError(f"version {model.version}: scoring the sample rows failed: {err!r}") from None
    if scores.shape != (len(rows),):
        raise SmokeCheckError(f"version {model.version}: {scores.shape} scores for {len(rows)} rows")
    if not np.all(np.isfinite(scores)) or scores.min() < 0 or scores.max() > 1:
        raise SmokeCheckError(f"version {model.version}: scores not finite in [0, 1]: {scores[:5].tolist()}")
    if labels is not None:
        labels = np.asarray(labels)
        if labels.shape != (len(rows),):
            raise SmokeCheckError(f"version {model.version}: {labels.shape} labels for {len(rows)} rows")
        if not np.isin(labels, (0, 1)).all():
            raise SmokeCheckError(f"version {model.version}: labels not 0/1: {labels[:5].tolist()}")
        model.own_labels = True  # it decided on its samples: from now on it must, and info says so
    return len(rows)


def spec_sample_rows(spec: ProjectSpec, n: int = 3) -> list[dict[str, Any]]:
    """Plausible rows from the spec alone (used when a model has no input example)."""
    rows = []
    for i in range(n):
        row: dict[str, Any] = {}
        for f in spec.features:
            if f.type == "categorical":
                values: list[Any] = list(f.values) if f.values else [None]
                row[f.name] = values[i % len(values)]
            elif f.type == "boolean":
                row[f.name] = bool(i % 2)
            else:
                lo = f.min if f.min is not None else 0.0
                hi = f.max if f.max is not None else lo + 100.0
                v = lo + (hi - lo) * (i + 1) / (n + 1)
                row[f.name] = float(round(v)) if f.type == "integer" else v
        rows.append(row)
    return rows


def frame_to_records(df: pd.DataFrame) -> list[dict[str, Any]]:
    """DataFrame -> JSON-able records (NaN -> None, numpy scalars -> Python)."""
    import pandas as pd

    out = []
    for rec in df.to_dict("records"):
        clean: dict[str, Any] = {}
        for k, v in rec.items():
            if v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA or v is pd.NaT:
                clean[k] = None
            elif hasattr(v, "item"):
                clean[k] = v.item()
            else:
                clean[k] = v
        out.append(clean)
    return out


class ModelSource(Protocol):
    def resolve(self, alias: str) -> tuple[str, list[str]] | None:
        """(version, aliases of that version) the alias points to, or None."""

    def load(self, version: str) -> LoadedModel: ...




class RegistrySource:
    """Model versions from the MLflow registry (``models:/NAME/VERSION``).

    An sklearn Pipeline is scored with ``predict_proba`` (and the numpy fast path when exact);
    any other pyfunc, and any version that decides itself (tag ``rtml.variant=mitigated`` or a
    ``label`` output in its signature), through ``predict``, its labels taken from the same call.
    """

    def __init__(self, name: str, spec: ProjectSpec, settings: Settings) -> None:
        self.name = name
        self.spec = spec
        self.settings = settings
        self._client = None
        # Tags of the version each alias named at the last resolve (the poller's read, no extra call):
        # the champion's live fairness tag reaches /metrics this way.
        self.tags: dict[str, dict[str, str]] = {}

    @property
    def client(self):
        if self._client is None:
            self._client = mlflow_client(self.settings)
        return self._client

    def resolve(self, alias: str) -> tuple[str, list[str]] | None:
        from mlflow.exceptions import MlflowException

        try:
            mv = self.client.get_model_version_by_alias(self.name, alias)
        except MlflowException as err:
            if err.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
                return None
            raise
        self.tags[alias] = dict(getattr(mv, "tags", None) or {})
        return str(mv.version), list(mv.aliases or [])

    def vet(self, version: str, alias: str) -> None:
        """Before any swap: refuse (``rtml.registry.signing.NotServable``) a version whose gates did not all
        pass, whose gate result is not validly signed, or, as champion, that nobody approved."""
        from rtml.registry.signing import check_servable

        mv = self.client.get_model_version(self.name, version)
        check_servable(self.name, version, mv.run_id, dict(mv.tags or {}), alias, self.settings)

    def record(self, action: str, version: str, **kw: Any) -> None:
        """Append the endpoint's reloads and refusals to the decision log (best effort)."""
        from rtml.registry.audit import try_record

        try_record(action, self.name, version, settings=self.settings, **kw)

    def load(self, version: str) -> LoadedModel:
        # mlflow 3.17 refuses to deserialize any sklearn model (skops included) unless this is set;
        # the registry is rtml's own, its versions are trusted. An explicit "false" still wins.
        os.environ.setdefault("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "true")
        import mlflow
        from mlflow.models import Model

        mv = self.client.get_model_version(self.name, version)
        tmp = tempfile.mkdtemp(prefix=f"rtml-serve-{self.name}-{version}-")
        try:
            # Resolved through this source's own client: never through the process's registry-URI
            # context (``MLFLOW_REGISTRY_URI`` inherited from a parent could name another server).
            local = mlflow.artifacts.download_artifacts(
                artifact_uri=self.client.get_model_version_download_uri(self.name, version),
                dst_path=tmp,
                tracking_uri=self.settings.mlflow_tracking_uri,
            )
            from rtml.registry.signing import verify_files  # the files must be the ones the evaluator signed

            verify_files(self.name, version, mv.run_id, dict(mv.tags or {}), local, self.settings)
            meta = Model.load(local)
            sig_cols = None
            if meta.signature is not None and meta.signature.inputs is not None:
                sig_cols = []
                for spec_col in meta.signature.inputs.inputs:
                    t = getattr(spec_col, "type", None)
                    tname = getattr(t, "name", str(t))
                    sig_cols.append((spec_col.name, tname, bool(getattr(spec_col, "required", True))))
            validator = RecordValidator(self.spec, sig_cols)
            positive = self.spec.target.positive
            variant = (mv.tags or {}).get(VARIANT_TAG) or PLAIN
            out_names: list[str] = []
            if meta.signature is not None and meta.signature.outputs is not None:
                out_names = [str(n) for n in meta.signature.outputs.input_names()]
            # A version that decides itself must be served with its decisions or not at all.
            own_labels = variant == MITIGATED or "label" in out_names
            outputs = None
            if "sklearn" in meta.flavors and not own_labels:
                estimator = mlflow.sklearn.load_model(local)
                scorer, flavor = scorer_for_estimator(estimator, positive), "sklearn"
            else:
                outputs = outputs_for_pyfunc(mlflow.pyfunc.load_model(local), positive)
                scorer, flavor = scores_of(outputs), "pyfunc"
            samples: list[dict[str, Any]] = []
            example: Any
            try:
                example = meta.load_input_example(local)
            except Exception:  # noqa: BLE001 - an unreadable example only means fewer samples
                example = None
            if example is not None and hasattr(example, "to_dict"):
                samples = frame_to_records(example.head(20))
            if not samples:
                samples = spec_sample_rows(self.spec)
            model = LoadedModel(
                name=self.name,
                version=str(version),
                score=scorer,
                validator=validator,
                aliases=list(mv.aliases or []),
                run_id=mv.run_id,
                flavor=flavor,
                samples=samples,
                outputs=outputs,
                variant=variant,
                own_labels=own_labels,
                predict_fn=(meta.flavors.get("python_function") or {}).get("predict_fn") or "predict",
            )
            if flavor == "sklearn":
                model.enable_fast_path(estimator, positive)
            return model
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
