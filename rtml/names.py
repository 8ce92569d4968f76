"""Names every stage shares: registry aliases, version tags, artifact paths, frame columns.

One light module (no imports beyond the standard library) so that the producer and every reader of a
name agree on it, and so that importing a name never pulls in a stage (evaluation, serving) or a
heavy library.
"""

from __future__ import annotations

from typing import Any

# --- registry aliases and decisions ---------------------------------------------------------------
CHAMPION, CHALLENGER, PREVIOUS_CHAMPION = "champion", "challenger", "previous_champion"
APPROVED, REJECTED = "approved", "rejected"
APPROVAL_TAG = "approval"  # set by a person in the MLflow UI: approved | rejected
APPROVAL_BY_TAG = "approval.by"
# On a version: "<seq>:<hash>" of the newest decision-log entry about it (see rtml.registry.audit).
AUDIT_ANCHOR_TAG = "audit.anchor"

# --- gate results on a model version ---------------------------------------------------------------
GATE_TAGS = ("gate.quality", "gate.fairness", "gate.drift", "gate.decision")
SIGNED_TAGS = (*GATE_TAGS, "gate.reasons", "gate.evaluated_at")

# On the champion: its live fairness as monitoring last measured it (compact JSON, see
# rtml.monitor.live.fairness_tag); the serving endpoint exposes it in /metrics.
LIVE_FAIRNESS_TAG = "live_fairness"

# --- variants: the plain model and its fairness-mitigated version ------------------------------------
VARIANT_TAG = "rtml.variant"
BASE_VERSION_TAG = "rtml.base_version"  # on a mitigated version: the plain version it wraps
MITIGATED_VERSION_TAG = "rtml.mitigated_version"  # on the plain version: its variant
PLAIN, MITIGATED = "plain", "mitigated"

# --- artifacts of a training run (MLflow) ---------------------------------------------------------------
DATA_DIR = "data"
TRAIN_FILE = "train.parquet"
HOLDOUT_FILE = "holdout.parquet"
LINEAGE_FILE = "lineage.json"
RULE_FILE = "mitigation.json"
PIPELINE_ARTIFACT = "pipeline"
EVAL_DIR = "evaluation"
FILES = {
    "model_card": "model_card.html",
    "fairness": "fairness.html",
    "drift_holdout": "drift_holdout.html",
    "drift_newest": "drift_newest.html",
    "summary": "summary.json",
}
MODEL_CARD = f"{EVAL_DIR}/{FILES['model_card']}"

# --- columns stored next to the training and holdout rows ---------------------------------------------
SCORE = "_score"  # the training-time positive-class probability
OOF_SCORE = "_oof_score"  # out-of-fold score of a training-window row
LABEL = "_label"  # the mitigated variant's training-time decision


def normalize_decision(value: Any) -> str | None:
    """A person's approval tag as rtml reads it: ``approved``, ``rejected`` or None (undecided)."""
    v = str(value or "").strip().lower()
    if v in (APPROVED, "approve", "yes"):
        return APPROVED
    if v in (REJECTED, "reject", "no"):
        return REJECTED
    return None


def is_mitigated(tags: dict[str, str] | None) -> bool:
    """Whether a version's tags mark it as the fairness-mitigated variant."""
    return (tags or {}).get(VARIANT_TAG) == MITIGATED
