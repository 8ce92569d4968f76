"""A loaded model version as the endpoint calls it: scores, decisions (plain threshold or the
mitigated variant's per-group rule), its metadata; scorers for sklearn estimators and pyfuncs."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from rtml.names import MITIGATED, PLAIN
from rtml.serve.fastpath import compile_fast_path, compile_group_thresholds, group_edge_rows, positive_column
from rtml.serve.validation import RecordValidator, RequestError

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

    from rtml.spec import ProjectSpec

log = logging.getLogger("rtml.serve.model")


class SmokeCheckError(RuntimeError):
    pass


# (scores, 0/1 decisions or None): None means "decide with the spec's global threshold".
Outputs = tuple["np.ndarray", "np.ndarray | None"]



@dataclass
class LoadedModel:
    """A model version ready to score: ``score(df) -> P(positive)`` per row.

    A model that makes its own decisions (the fairness-mitigated variant: per-group thresholds
    derived from the features) also has ``outputs(df) -> (scores, labels)``, both from ONE model
    call; its 0/1 labels then replace the global threshold everywhere (answers, logs, shadow).
    """

    name: str
    version: str
    # The model functions may carry more of the model as attributes (scorer_for_estimator,
    # outputs_for_pyfunc, compile_fast_path): typed Any for that reason.
    score: Any  # DataFrame -> scores
    validator: RecordValidator
    aliases: list[str] = field(default_factory=list)
    run_id: str | None = None
    flavor: str = "sklearn"
    loaded_at: str = field(default_factory=lambda: _now_iso())
    samples: list[dict[str, Any]] = field(default_factory=list)
    # cols -> scores without pandas; set only after it gave identical scores on the samples.
    fast: Any = None  # cols -> scores, or None
    outputs: Any = None  # DataFrame -> Outputs, or None
    variant: str = PLAIN
    # True when the version must decide itself (tagged mitigated, or its signature has a label
    # output): answering with the global threshold instead would be wrong, so missing labels fail.
    own_labels: bool = False
    # The pyfunc's predict_fn (MLflow's MLmodel): what ``POST /invocations`` answers with.
    predict_fn: str = "predict_proba"
    # cols -> (scores, labels) without pandas for a model that decides itself (the mitigated
    # variant: compiled pipeline, then its per-group thresholds); set only when identical.
    fast_outputs: Callable[[dict[str, list]], Outputs] | None = None

    def score_columns(self, cols: dict[str, list]) -> np.ndarray:
        if self.fast is not None:
            return self.fast(cols)
        return self.score(self.validator.frame(cols))

    def predict_columns(self, cols: dict[str, list]) -> Outputs:
        """(scores, labels or None) in one model call; labels only from a model that decides itself."""
        scores, labels, _ = self.run(cols)
        return scores, labels

    def run(self, cols: dict[str, list], native: bool = False) -> tuple[np.ndarray, np.ndarray | None, Any]:
        """(scores, labels or None, the pyfunc's own output or None) from one model call.

        ``native`` asks for what MLflow's pyfunc ``predict`` returns too (``POST /invocations``):
        the class probabilities of an sklearn model logged with ``predict_fn=predict_proba``, the
        ``score``/``label`` frame of the mitigated wrapper, whatever another pyfunc returns.
        """
        if self.outputs is None:
            if self.own_labels:
                raise ValueError(f"version {self.version} must give its own labels but has no label output")
            if not native:
                return self.score_columns(cols), None, None
            proba = getattr(self.fast, "proba", None)
            estimator = getattr(self.score, "estimator", None)
            if proba is not None and self.predict_fn == "predict_proba":
                matrix = proba(cols)
                return matrix[:, self.fast.column], None, matrix
            frame = self.validator.frame(cols)
            if estimator is None:
                scores = self.score(frame)
                return scores, None, scores
            matrix = estimator.predict_proba(frame)
            scores = matrix[:, self.score.column]
            return scores, None, (matrix if self.predict_fn == "predict_proba" else estimator.predict(frame))
        if self.fast_outputs is not None:
            scores, labels = self.fast_outputs(cols)
            return scores, labels, ({"score": scores, "label": labels} if native else None)
        frame = self.validator.frame(cols)
        raw = getattr(self.outputs, "raw", None)
        if native and raw is not None:
            out = raw(frame)
            scores, labels = self.outputs.split(out)
        else:
            (scores, labels), out = self.outputs(frame), None
        if labels is None and self.own_labels:
            raise ValueError(f"version {self.version} ({self.variant}): its output has no 'label' column")
        return scores, labels, (out if native else None)

    def check_rows(self, extra: Sequence[dict[str, Any]] = ()) -> dict[str, list]:
        """The columns a fast path is checked on: the samples, the same rows with every nullable input
        missing (the imputation path must match too) and ``extra`` rows (edge values)."""
        v = self.validator
        rows = list(self.samples)
        rows += [{k: (None if r.nullable else row[k]) for k, r in zip(v.columns, v.rules, strict=True)}
                 for row in rows[:3]]
        good = []
        for row in [*rows, *extra]:
            try:
                v.validate([row], single=True)
                good.append(row)
            except RequestError:
                continue
        cols, _ = v.validate(good, single=False)
        return cols

    def enable_fast_path(self, estimator: Any, positive: Any) -> bool:
        """Use the numpy replay of the pipeline if it scores the sample rows bit-for-bit the same."""
        import numpy as np

        fast = compile_fast_path(estimator, self.validator.columns, self.validator.numeric, positive)
        if fast is None:
            return False
        try:
            cols = self.check_rows()
            same = np.array_equal(fast(cols), self.score(self.validator.frame(cols)))
        except Exception as err:  # noqa: BLE001 - any doubt: the plain pipeline
            log.info("fast path disabled for version %s: %r", self.version, err)
            return False
        if not same:
            log.warning("fast path disabled for version %s: scores differ from the pipeline's", self.version)
            return False
        self.fast = fast
        return True

    def enable_group_fast_path(self) -> bool:
        """The mitigated variant's fast path: its Pipeline compiled, then its per-group thresholds.

        Used only if scores AND labels equal the pyfunc's own ``predict`` on the sample rows, the
        rows with missing inputs, and rows at every bin edge / value of each sensitive attribute.
        """
        import numpy as np

        pyfunc = getattr(self.outputs, "pyfunc", None)
        if pyfunc is None or self.variant != MITIGATED:
            return False
        try:
            inner = pyfunc.unwrap_python_model()
            pipe, rule, mspec = inner._pipe, inner._rule, inner._spec
        except Exception as err:  # noqa: BLE001 - not the wrapper rtml.evaluate.mitigation builds
            log.info("no fast path for version %s: %r", self.version, err)
            return False
        if pipe is None or rule is None or mspec is None:
            return False
        fast = compile_fast_path(pipe, self.validator.columns, self.validator.numeric, mspec.target.positive)
        thresholds = compile_group_thresholds(rule, mspec, self.validator.columns)
        if fast is None or thresholds is None:
            return False

        def fast_outputs(cols: dict[str, list]) -> Outputs:
            # the wrapper scores with predict_proba(X)[:, 1] and decides score >= its group's threshold
            scores = np.asarray(fast.proba(cols)[:, 1], dtype=np.float64)
            return scores, (scores >= thresholds(cols)).astype(np.int64)

        try:
            cols = self.check_rows(group_edge_rows(mspec, self.samples[:1]))
            want_scores, want_labels = self.outputs(self.validator.frame(cols))
            got_scores, got_labels = fast_outputs(cols)
            same = (
                want_labels is not None
                and got_labels is not None
                and np.array_equal(got_scores, np.asarray(want_scores, dtype=np.float64))
                and np.array_equal(got_labels, np.asarray(want_labels))
            )
        except Exception as err:  # noqa: BLE001 - any doubt: the pyfunc as it is
            log.info("group fast path disabled for version %s: %r", self.version, err)
            return False
        if not same:
            log.warning("group fast path disabled for version %s: results differ from the pyfunc's", self.version)
            return False
        self.fast, self.fast_outputs = fast, fast_outputs
        return True

    def info(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "aliases": sorted(self.aliases),
            "loaded_at": self.loaded_at,
            "run_id": self.run_id,
            "flavor": self.flavor,
            "variant": self.variant,
            "decisions": "model labels" if self.own_labels else "global threshold",
            "fast_path": self.fast is not None,
            "features": self.validator.columns,
        }


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def scorer_for_estimator(estimator: Any, positive: Any) -> Callable[[pd.DataFrame], np.ndarray]:
    col = positive_column(getattr(estimator, "classes_", None), positive)

    def score(df: pd.DataFrame) -> np.ndarray:
        return estimator.predict_proba(df)[:, col]

    out: Any = score  # carrying the whole predict_proba too, for /invocations
    out.estimator, out.column = estimator, col
    return out


def outputs_for_pyfunc(pyfunc_model: Any, positive: Any) -> Callable[[pd.DataFrame], Outputs]:
    """A pyfunc's ``predict`` -> (P(positive), 0/1 labels or None), from one call.

    The score is the column named like the positive class, ``score``, ``probability`` or
    ``proba`` (else the last column); labels are the ``label`` column when there is one (the
    fairness-mitigated wrapper returns ``score`` and ``label``).
    """
    import numpy as np
    import pandas as pd

    def split(out: Any) -> Outputs:
        labels = None
        if isinstance(out, pd.DataFrame):
            cols = [str(c) for c in out.columns]
            if "label" in cols:
                labels = binary_labels(out.iloc[:, cols.index("label")])
            for name in (str(positive), "score", "probability", "proba"):
                if name in cols:
                    return out.iloc[:, cols.index(name)].to_numpy(dtype="float64"), labels
            out = out.drop(columns=[c for c, n in zip(out.columns, cols, strict=True) if n == "label"]).to_numpy()
        arr = np.asarray(out, dtype="float64")
        return (arr[:, -1] if arr.ndim == 2 else arr), labels

    def outputs(df: pd.DataFrame) -> Outputs:
        return split(pyfunc_model.predict(df))

    # The raw predict output is what /invocations answers with; the pyfunc itself lets serving
    # compile a fast path for the wrapper rtml.evaluate.mitigation builds.
    out: Any = outputs
    out.raw, out.split, out.pyfunc = pyfunc_model.predict, split, pyfunc_model
    return out


def scorer_for_pyfunc(pyfunc_model: Any, positive: Any) -> Callable[[pd.DataFrame], np.ndarray]:
    """A pyfunc (e.g. a fairness-mitigated wrapper): the positive probability of its predict."""
    return scores_of(outputs_for_pyfunc(pyfunc_model, positive))


def scores_of(outputs: Callable[[pd.DataFrame], Outputs]) -> Callable[[pd.DataFrame], np.ndarray]:
    def score(df: pd.DataFrame) -> np.ndarray:
        return outputs(df)[0]

    return score


def binary_labels(values: Any) -> np.ndarray:
    """0/1 decisions as int64; anything else (2, 0.5, "bad", NaN) is refused, never guessed."""
    import numpy as np

    arr = np.asarray(values)
    if arr.dtype.kind == "b":
        return arr.astype("int64")
    if arr.dtype.kind in "iuf" and np.isin(arr, (0, 1)).all():
        return arr.astype("int64")
    bad = arr[~np.isin(arr, (0, 1))][:5].tolist() if arr.dtype.kind in "iuf" else arr[:5].tolist()
    raise ValueError(f"the model's 'label' output must be 0/1, got {bad!r}")


def decision_labels(spec: ProjectSpec) -> tuple[Any, Any]:
    """(negative, positive) class names the endpoint answers with."""
    pos, neg = spec.target.positive, spec.target.negative
    if neg is None:
        neg = (not pos) if isinstance(pos, bool) else (0 if isinstance(pos, int) else f"not_{pos}")
    return neg, pos


def decide(scores: Sequence[float], labels: Sequence[int] | None, threshold: float, names: tuple[Any, Any]) -> list:
    """Class names per row: the model's own 0/1 labels when it gives them, else score >= threshold."""
    neg, pos = names
    if labels is None:
        return [pos if s >= threshold else neg for s in scores]
    return [pos if lab == 1 else neg for lab in labels]
