"""The fast path: a fitted sklearn preprocessing + estimator replayed in numpy on column lists, and
the mitigated variant's per-group thresholds applied after scoring; used only where its results are
identical to the model's own on the check rows (sample rows, missing inputs, every group edge)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

    from rtml.spec import ProjectSpec

log = logging.getLogger("rtml.serve.fastpath")


# --- fast path: the fitted preprocessing replayed in numpy, used only when results are identical ---
def positive_column(classes: Sequence[Any] | None, positive: Any) -> int:
    """Which predict_proba column is the spec's positive class."""
    if classes is None:
        return -1
    classes = list(classes)
    for candidate in (positive, str(positive), 1, True):
        for i, c in enumerate(classes):
            if c == candidate or str(c) == str(candidate):
                return i
    return len(classes) - 1


class _Unsupported(Exception):
    pass


def _step_fn(step: Any) -> Callable[[np.ndarray], np.ndarray]:
    """A numpy function doing exactly what one fitted transformer's ``transform`` does."""
    import numpy as np
    from sklearn.impute import SimpleImputer
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    if isinstance(step, SimpleImputer):
        if step.add_indicator:
            raise _Unsupported("SimpleImputer(add_indicator=True)")
        stats = step.statistics_
        if stats.dtype.kind == "f" and np.isnan(stats).any():
            raise _Unsupported("an all-missing column at fit time")
        mv = step.missing_values
        nan_marker = isinstance(mv, float) and mv != mv

        def impute(X: np.ndarray) -> np.ndarray:
            if X.dtype.kind == "f":
                if not nan_marker:
                    raise _Unsupported("numeric imputer with a non-NaN marker")
                mask = np.isnan(X)
                if mask.any():
                    X = X.copy()
                    X[mask] = np.take(stats, np.nonzero(mask)[1])
                return X
            X = X.copy()
            for j in range(X.shape[1]):
                col = X[:, j]
                for i, v in enumerate(col):
                    if (v is None and mv is None) or (nan_marker and isinstance(v, float) and v != v):
                        col[i] = stats[j]
            return X

        return impute
    if isinstance(step, StandardScaler):
        mean, scale = step.mean_ if step.with_mean else None, step.scale_ if step.with_std else None

        def standardize(X: np.ndarray) -> np.ndarray:
            X = np.array(X, dtype="float64", copy=True)
            if mean is not None:
                X -= mean
            if scale is not None:
                X /= scale
            return X

        return standardize
    if isinstance(step, OneHotEncoder):
        if step.drop is not None or getattr(step, "_infrequent_enabled", False) or step.sparse_output:
            raise _Unsupported("OneHotEncoder with drop/infrequent/sparse output")
        lookups = [{v: k for k, v in enumerate(cats)} for cats in step.categories_]
        offsets = np.cumsum([0] + [len(c) for c in step.categories_])
        ignore = step.handle_unknown != "error"
        dtype = step.dtype

        def onehot(X: np.ndarray) -> np.ndarray:
            out = np.zeros((X.shape[0], offsets[-1]), dtype=dtype)
            for j, lookup in enumerate(lookups):
                for i, v in enumerate(X[:, j]):
                    k = lookup.get(v)
                    if k is not None:
                        out[i, offsets[j] + k] = 1
                    elif not ignore:
                        raise ValueError(f"unknown category {v!r} in column {j}")
            return out

        return onehot
    raise _Unsupported(type(step).__name__)


def compile_fast_path(estimator: Any, columns: Sequence[str], numeric: Sequence[str], positive: Any):
    """``cols -> scores`` for a fitted Pipeline(ColumnTransformer, classifier) without pandas, or None.

    Only simple imputers, standard scalers and dense one-hot encoders are replayed; anything else
    (or a pipeline of another shape) returns None and the model is called as it is.
    """
    import numpy as np
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import Pipeline

    if not isinstance(estimator, Pipeline) or len(estimator.steps) != 2:
        return None
    ct, clf = estimator.steps[0][1], estimator.steps[1][1]
    if not isinstance(ct, ColumnTransformer) or not hasattr(clf, "predict_proba") or ct.sparse_output_:
        return None
    numeric_set = set(numeric)
    blocks = []
    try:
        for _name, trans, cols in ct.transformers_:
            if trans == "drop":
                continue
            cols = list(cols)
            if any(not isinstance(c, str) or c not in columns for c in cols):
                raise _Unsupported("columns selected by position or unknown")
            kinds = {c in numeric_set for c in cols}
            if len(kinds) != 1:
                raise _Unsupported("mixed numeric/categorical block")
            steps = [] if trans == "passthrough" else (
                [s for _, s in trans.steps] if isinstance(trans, Pipeline) else [trans])
            if any(s == "passthrough" or s is None for s in steps):
                raise _Unsupported("passthrough step")
            if trans == "passthrough" and not kinds.pop():
                raise _Unsupported("categorical passthrough")
            blocks.append((cols, cols[0] in numeric_set, [_step_fn(s) for s in steps]))
    except _Unsupported as why:
        log.info("no fast path for this model (%s): the pipeline is called as it is", why)
        return None
    col = positive_column(getattr(clf, "classes_", None), positive)

    def proba(cols: dict[str, list]) -> np.ndarray:
        parts = []
        for names, is_num, fns in blocks:
            if is_num:
                X = np.array([[np.nan if x is None else x for x in cols[c]] for c in names], dtype="float64").T
            else:
                X = np.empty((len(cols[names[0]]), len(names)), dtype=object)
                for j, c in enumerate(names):
                    X[:, j] = cols[c]
            for fn in fns:
                X = fn(X)
            parts.append(np.asarray(X, dtype="float64"))
        return clf.predict_proba(np.hstack(parts))

    def score(cols: dict[str, list]) -> np.ndarray:
        return proba(cols)[:, col]

    out: Any = score  # a function carrying the whole predict_proba too, for /invocations
    out.proba, out.column = proba, col
    return out


def compile_group_thresholds(rule: Any, spec: ProjectSpec, columns: Sequence[str]):
    """``cols -> per-row threshold`` of a ``rtml.evaluate.grouprule.GroupRule``, without pandas, or None.

    The same groups as ``rtml.features.sensitive_groups`` + ``GroupRule.keys``: a categorical
    attribute's value as text (``missing`` for none), a binned one's label, ``[lo, hi)`` bins,
    ``missing`` for no value and ``out of range`` outside the edges; a group without a rule of its
    own takes the fallback's threshold.
    """
    import numpy as np

    by_name = {a.name: a for a in spec.sensitive}
    parts: list[tuple[Any, str, list[float] | None, np.ndarray | None]] = []
    for name in rule.attributes:
        attr = by_name.get(name)
        if attr is None or attr.column not in columns:
            return None
        if attr.bins is None:
            parts.append((name, attr.column, None, None))
        else:
            labels = attr.labels or [f"[{lo:g}, {hi:g})" for lo, hi in zip(attr.bins[:-1], attr.bins[1:], strict=True)]
            parts.append((name, attr.column, list(attr.bins), np.array(labels, dtype=object)))
    table = dict(rule.thresholds)
    fallback = table[rule.fallback]

    def thresholds(cols: dict[str, list]) -> np.ndarray:
        n = len(cols[columns[0]]) if columns else 0
        keys = [""] * n
        for k, (name, column, bins, labels) in enumerate(parts):
            values = cols[column]
            if bins is None:
                text = [f"{name}=" + ("missing" if v is None else str(v)) for v in values]
            else:
                assert labels is not None  # set with the bins
                num = np.array([np.nan if v is None else v for v in values], dtype=float)
                idx = np.digitize(num, bins[1:-1], right=False)
                inside = (num >= bins[0]) & (num < bins[-1])
                named = np.where(np.isnan(num), "missing", np.where(inside, labels[idx], "out of range"))
                text = [f"{name}={g}" for g in named]
            keys = text if k == 0 else [a + " & " + b for a, b in zip(keys, text, strict=True)]
        return np.array([table.get(key, fallback) for key in keys], dtype=float)

    return thresholds if parts else None


def group_edge_rows(spec: ProjectSpec, base: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows that put each sensitive attribute on every group and bin edge (checks of a group fast path)."""
    import numpy as np

    rows = []
    for row in base:
        for attr in spec.sensitive:
            values: list[Any]
            if attr.bins is None:
                feature = next((f for f in spec.features if f.name == attr.column), None)
                values = list(feature.values or []) if feature is not None else []
            else:
                values = [x for e in attr.bins for x in (np.nextafter(e, -np.inf), e, np.nextafter(e, np.inf))]
                values = [float(v) for v in values]
            rows += [{**row, attr.column: v} for v in [*values, None]]
    return rows
