"""Synthetic labelled data for any project spec: tests and benchmarks of training and the gates.

``synthetic_frame`` draws events that respect the spec's types, ranges and allowed values, with a
target that depends on the features through a seeded logistic model. Two knobs plant the problems
the gates must catch: ``bias`` (the outcome depends on a sensitive group) and ``drift`` (numeric
features shift by a share of their range). ``write_to_lake`` stores the frame as events + labels
batches with manifests, as ingestion does, so training reads it through ``Lake.labelled``.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

    from rtml.lake import BatchRef, Lake
    from rtml.spec import ProjectSpec

START = datetime(2026, 1, 1)

TOY_SPEC: dict[str, Any] = {
    "name": "toy_risk",
    "description": "A small spec for tests and benchmarks of training and the gates.",
    "dataset": {"name": "toy_applications"},
    "entity_id": "application_id",
    "event_id": "event_id",
    "event_time": "event_time",
    "target": {"name": "default", "positive": "yes", "negative": "no"},
    "features": [
        {"name": "income", "type": "numeric", "min": 0, "max": 10000, "nullable": True},
        {"name": "debt", "type": "numeric", "min": 0, "max": 5000},
        {"name": "amount", "type": "numeric", "min": 100, "max": 50000},
        {"name": "age", "type": "integer", "min": 18, "max": 90},
        {"name": "home", "type": "categorical", "values": ["owner", "rent", "parents"], "nullable": True},
        {"name": "region", "type": "categorical", "values": ["north", "south", "east"]},
    ],
    "sensitive": [
        {"name": "region_group", "column": "region"},
        {"name": "age_group", "column": "age", "bins": [18, 40, 91], "labels": ["18-39", "40+"]},
    ],
    "model": {
        "registered_name": "toy_risk",
        "estimator": "gradient_boosting",
        "params": {"max_iter": 60, "learning_rate": 0.1},
        "random_state": 7,
    },
    "training": {"window_days": 30, "holdout_fraction": 0.25, "min_rows": 200},
    "gates": {
        "quality": {"decision_threshold": 0.35, "min_roc_auc": 0.6, "tolerance": 0.01},
        "fairness": {"min_group_size": 50},
    },
}


def toy_spec(**overrides: Any) -> ProjectSpec:
    """The toy spec, with top-level sections replaced by ``overrides`` (e.g. ``model={...}``)."""
    from rtml.spec import parse_spec

    return parse_spec({**TOY_SPEC, **overrides}, "<toy spec>")


def synthetic_frame(
    spec: ProjectSpec,
    n: int,
    seed: int = 0,
    *,
    start: datetime = START,
    step_seconds: float = 60.0,
    bias: dict[str, dict[str, float]] | None = None,
    drift: float = 0.0,
    id_offset: int = 0,
    model_seed: int = 7,
) -> pd.DataFrame:
    """``n`` labelled events (keys, features, target label) one every ``step_seconds`` from ``start``.

    ``bias``: ``{sensitive_name: {group: logit_shift}}`` adds to the outcome's log-odds in that group.
    ``drift``: shift of every numeric feature, as a share of its range (0 = none).
    ``model_seed`` fixes the feature/outcome relation, so frames with different ``seed`` share it.
    The columns of the sensitive attributes have no effect on the outcome unless ``bias`` says so.
    """
    import numpy as np
    import pandas as pd

    from rtml.features import sensitive_groups

    rng = np.random.default_rng(seed)
    coef = np.random.default_rng(model_seed)
    cols: dict[str, Any] = {}
    logit = np.full(n, -1.0)
    neutral = {s.column for s in spec.sensitive}
    for f in spec.features:
        if f.is_numeric:
            lo = f.min if f.min is not None else 0.0
            hi = f.max if f.max is not None else lo + 100.0
            u = rng.beta(2.0, 5.0, size=n)
            weight = coef.normal(0.0, 1.2) * (f.name not in neutral)
            logit += weight * (u - 2.0 / 7.0) * 10.0
            u = np.clip(u + drift, 0.0, 1.0)
            v = lo + (hi - lo) * u
            if f.type == "integer":
                v = np.round(v)
            col = v.astype(object) if f.nullable else v
            if f.nullable:
                col[rng.random(n) < 0.02] = None
            cols[f.name] = col
        else:
            values = list(f.values or []) if f.type == "categorical" else [False, True]
            p = coef.dirichlet(np.full(len(values), 2.0))
            if drift:
                p = np.roll(p, 1)
            idx = rng.choice(len(values), size=n, p=p)
            effects = coef.normal(0.0, 1.0, size=len(values)) * (f.name not in neutral)
            logit += effects[idx]
            col = np.array(values, dtype=object)[idx]
            if f.nullable:
                col[rng.random(n) < 0.01] = None
            cols[f.name] = col
    df = pd.DataFrame(cols)
    for name, shifts in (bias or {}).items():
        attr = next((s for s in spec.sensitive if s.name == name), None)
        if attr is None:
            raise ValueError(f"bias: {name!r} is not a sensitive attribute of the spec")
        groups = sensitive_groups(df, attr).to_numpy()
        for group, shift in shifts.items():
            logit += np.where(groups == group, shift, 0.0)
    y = rng.random(n) < 1.0 / (1.0 + np.exp(-logit))
    negative = spec.target.negative if spec.target.negative is not None else "negative"
    ids = np.arange(id_offset, id_offset + n)
    times = pd.Timestamp(start, tz="UTC") + pd.to_timedelta(np.arange(n) * step_seconds, unit="s")
    out = pd.DataFrame(
        {
            spec.entity_id: [f"app-{i:08d}" for i in ids],
            spec.event_id: [f"evt-{i:08d}" for i in ids],
            spec.event_time: times,
        }
    )
    out = pd.concat([out, df], axis=1)
    out[spec.target.name] = np.where(y, spec.target.positive, negative).astype(object)
    return out


def write_to_lake(lake: Lake, spec: ProjectSpec, df: pd.DataFrame, batches: int = 4) -> list[BatchRef]:
    """Store a labelled frame as ``batches`` events batches and as many labels batches (manifests last)."""
    import numpy as np

    from support.lake import commit_frame

    ds = spec.dataset.name
    refs: list[BatchRef] = []
    feature_cols = [spec.entity_id, spec.event_id, spec.event_time, *spec.feature_names]
    for i, part in enumerate(np.array_split(np.arange(len(df)), batches)):
        chunk = df.iloc[part]
        if chunk.empty:
            continue
        first = chunk[spec.event_time].iloc[0]
        batch_id = f"{first:%Y%m%dT%H%M%S}-{i:04d}"
        for kind, cols in (("events", feature_cols), ("labels", [spec.event_id, spec.target.name])):
            refs.append(commit_frame(
                lake, ds, kind, batch_id, chunk[cols], time_column=spec.event_time if kind == "events" else None,
                min_time=chunk[spec.event_time].iloc[0].isoformat(),
                watermark=chunk[spec.event_time].iloc[-1].isoformat(),
                schema_hash=spec.schema_hash(), source="support.synthetic"))
    return refs
