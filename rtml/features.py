"""Features: one definition for training and serving.

The spec's features become a scikit-learn ``ColumnTransformer`` (numeric: median imputation +
scaling; categorical: constant imputation + one-hot with unknown categories ignored), fitted inside
the same ``Pipeline`` as the estimator. That pipeline is what is logged to MLflow, so the served
model transforms exactly as in training. ``to_frame`` turns records (dicts or a DataFrame) into the
exact frame the pipeline was trained on (spec column order, float64 numerics, object categoricals
with ``None`` for missing); training, evaluation and serving all go through it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd
    from sklearn.pipeline import Pipeline

    from rtml.spec import Feature, ProjectSpec, Sensitive

# The category missing values are imputed to; one-hot gets its own column for it.
MISSING = "__missing__"
BOOL_VALUES = ["false", "true"]


def _categories(feature: Feature) -> list[str]:
    values = list(feature.values or []) if feature.type == "categorical" else list(BOOL_VALUES)
    return [*values, MISSING]


def build_preprocessor(spec: ProjectSpec):
    """The ColumnTransformer of the spec's features (output in a fixed, spec-driven column order)."""
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    transformers = []
    if spec.numeric_features:
        numeric = Pipeline([("impute", SimpleImputer(strategy="median")), ("scale", StandardScaler())])
        transformers.append(("numeric", numeric, spec.numeric_features))
    if spec.categorical_features:
        # Categories come from the spec, not the data: the encoded width never depends on which
        # values happened to be in the window, and unseen values at serving time encode to zeros.
        cats = [_categories(spec.feature(name)) for name in spec.categorical_features]
        categorical = Pipeline(
            [
                # Two imputers: scikit-learn's NaN check does not see None in object columns
                # (None != None is False), and a None-imputer rejects NaN; NaN first, then None.
                ("impute_nan", SimpleImputer(strategy="constant", fill_value=MISSING)),
                ("impute_none", SimpleImputer(missing_values=None, strategy="constant", fill_value=MISSING)),
                (
                    "onehot",
                    OneHotEncoder(categories=cats, handle_unknown="ignore", sparse_output=False, dtype=float),
                ),
            ]
        )
        transformers.append(("categorical", categorical, spec.categorical_features))
    return ColumnTransformer(transformers, remainder="drop", verbose_feature_names_out=True)


def build_estimator(spec: ProjectSpec, random_state: int | None = None):
    from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
    from sklearn.linear_model import LogisticRegression

    seed = spec.model.random_state if random_state is None else random_state
    params = dict(spec.model.params)
    kind = spec.model.estimator
    try:
        if kind == "gradient_boosting":
            return HistGradientBoostingClassifier(random_state=seed, **params)
        if kind == "random_forest":
            params.setdefault("n_jobs", 1)
            return RandomForestClassifier(random_state=seed, **params)
        params.setdefault("max_iter", 1000)
        return LogisticRegression(random_state=seed, **params)
    except TypeError as err:
        raise ValueError(f"model.params: not valid for model.estimator {kind!r}: {err}") from None


def build_pipeline(spec: ProjectSpec, random_state: int | None = None) -> Pipeline:
    """The unfitted model: preprocessing + estimator in one Pipeline."""
    from sklearn.pipeline import Pipeline

    return Pipeline([("features", build_preprocessor(spec)), ("model", build_estimator(spec, random_state))])


def thread_limit(n_rows: int, small: int = 200_000):
    """One OpenMP thread for small fits/predictions. HistGradientBoosting's OpenMP threads spin-wait:
    on a busy machine (parallel Airflow tasks, 2 shared cores) a 3k-row fit went from 0.2 s to 10 s.
    Large inputs keep the default thread count, where the parallelism pays off."""
    import contextlib

    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1, user_api="openmp") if n_rows < small else contextlib.nullcontext()


# --- frames ----------------------------------------------------------------------------------------
def _is_missing(v: Any) -> bool:
    if v is None:
        return True
    if isinstance(v, float) and math.isnan(v):
        return True
    try:
        import pandas as pd

        return v is pd.NA or v is pd.NaT
    except ImportError:  # pragma: no cover
        return False


def _cat_value(v: Any, feature: Feature) -> str | None:
    if _is_missing(v):
        return None
    if feature.type == "boolean":
        if isinstance(v, str):
            low = v.strip().lower()
            if low in ("true", "1", "yes", "y", "t"):
                return "true"
            if low in ("false", "0", "no", "n", "f"):
                return "false"
            return low  # unknown: encoded to zeros, the validator reports it
        return "true" if bool(v) else "false"
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    return str(v)


def to_frame(
    records: pd.DataFrame | Iterable[Mapping[str, Any]] | Mapping[str, Any],
    spec: ProjectSpec,
    *,
    allow_missing_columns: bool = False,
) -> pd.DataFrame:
    """Records -> the exact input frame of the model: spec feature order, float64 numerics,
    object categoricals (``str`` or ``None``). Extra columns are dropped.

    A feature column absent from the input is an error naming it, unless ``allow_missing_columns``
    (then it is all-missing). A numeric value that is not a number is an error naming the feature.
    """
    import numpy as np
    import pandas as pd

    if isinstance(records, pd.DataFrame):
        df = records
    elif isinstance(records, Mapping):
        df = pd.DataFrame([dict(records)])
    else:
        df = pd.DataFrame(list(records))
    n = len(df)
    out: dict[str, Any] = {}
    for f in spec.features:
        if f.name not in df.columns:
            if not allow_missing_columns:
                raise ValueError(f"feature {f.name!r} is missing from the input")
            col = pd.Series([None] * n, index=df.index, dtype=object)
        else:
            col = df[f.name]
        if f.is_numeric:
            if col.dtype == object or isinstance(col.dtype, pd.StringDtype):
                num = pd.to_numeric(col.where(col.notna(), np.nan).replace("", np.nan), errors="coerce")
                bad = num.isna() & col.notna() & (col.astype(str).str.strip() != "")
                if bad.any():
                    example = col[bad].iloc[0]
                    raise ValueError(f"feature {f.name!r}: {example!r} is not a number")
                col = num
            elif col.dtype == bool:
                col = col.astype(float)
            out[f.name] = pd.to_numeric(col, errors="raise").astype("float64").to_numpy()
        else:
            values = col.to_numpy(dtype=object)
            kind = pd.api.types.infer_dtype(values, skipna=True)
            if f.type == "categorical" and kind in ("string", "empty"):
                # fast path (large frames): strings already, only the missing values to normalise
                values = values.copy()
                values[pd.isna(values)] = None
                out[f.name] = values
            else:
                out[f.name] = np.array([_cat_value(v, f) for v in values], dtype=object)
    return pd.DataFrame(out, index=pd.RangeIndex(n), columns=spec.feature_names)


def target_vector(values: pd.Series | Iterable[Any], spec: ProjectSpec) -> np.ndarray:
    """The target as 0/1 ints (1 = the spec's positive label); compared as strings, so "1" == 1."""
    import numpy as np
    import pandas as pd

    pos = str(spec.target.positive).lower()
    arr = np.asarray(list(values) if not hasattr(values, "to_numpy") else values.to_numpy(), dtype=object)
    if pd.api.types.infer_dtype(arr, skipna=True) == "string":
        # strings: decided once per distinct value (a 1M-row holdout has two), not per row; other
        # types stay per value (factorize would merge 1, 1.0 and True, whose strings differ)
        codes, uniques = pd.factorize(arr, use_na_sentinel=True)
        hit = np.array([int(str(v).lower() == pos) for v in uniques] + [0], dtype=np.int64)
        return hit[codes]  # code -1 (missing) picks the trailing 0
    return np.array([0 if _is_missing(v) else int(str(v).lower() == pos) for v in arr], dtype=np.int64)


# --- sensitive attributes --------------------------------------------------------------------------
def sensitive_groups(df: pd.DataFrame, attr: Sensitive, missing: str = "missing") -> pd.Series:
    """The group of each row for one sensitive attribute (categorical value, or named bin)."""
    import numpy as np
    import pandas as pd

    col = df[attr.column]
    if attr.bins is None:
        vals = col.astype(object).where(col.notna(), None)
        arr = vals.to_numpy(dtype=object)
        if pd.api.types.infer_dtype(arr, skipna=True) == "string":  # strings already: no per-row str()
            arr = arr.copy()
            arr[pd.isna(arr)] = missing
            return pd.Series(arr, index=df.index, name=attr.name, dtype=object)
        return pd.Series(
            [missing if v is None else str(v) for v in vals], index=df.index, name=attr.name, dtype=object
        )
    labels = attr.labels or [
        f"[{lo:g}, {hi:g})" for lo, hi in zip(attr.bins[:-1], attr.bins[1:], strict=True)
    ]
    num = pd.to_numeric(col, errors="coerce").to_numpy(dtype=float)
    # right=False: bins are [lo, hi), matching labels like "18-29" for edges 18, 30.
    idx = np.digitize(num, attr.bins[1:-1], right=False)
    inside = (num >= attr.bins[0]) & (num < attr.bins[-1])
    names = np.array(labels, dtype=object)[idx]
    names = np.where(np.isnan(num), missing, np.where(inside, names, "out of range"))
    return pd.Series(names, index=df.index, name=attr.name, dtype=object)


def sensitive_frame(df: pd.DataFrame, spec: ProjectSpec) -> pd.DataFrame:
    """All sensitive attributes of the spec, one column per attribute name."""
    import pandas as pd

    return pd.DataFrame({s.name: sensitive_groups(df, s) for s in spec.sensitive}, index=df.index)
