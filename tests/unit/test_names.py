"""The shared names (rtml.names): how a person's approval tag is read (``normalize_decision``), which
tags mark the mitigated variant (``is_mitigated``), the consistency of the name constants, and that
the module stays light (standard library only)."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

from rtml import names
from rtml.names import APPROVED, MITIGATED, PLAIN, REJECTED, VARIANT_TAG, is_mitigated, normalize_decision


@pytest.mark.parametrize("value", ["approved", "Approved", " APPROVED ", "approve", "yes", "Yes\n", "\u00a0approved\t"])
def test_approvals(value):
    assert normalize_decision(value) == APPROVED


@pytest.mark.parametrize("value", ["rejected", "REJECTED", " reject ", "no", "No"])
def test_rejections(value):
    assert normalize_decision(value) == REJECTED


@pytest.mark.parametrize("value", [
    None, "", "   ", "maybe", "approvedd", "y", "n", "ok", "true", "false", "approved, rejected",
    "appro\u200bved",  # a zero-width space inside is not whitespace: not the word
    "\ud800", "approved\ud800",  # a lone surrogate reads as undecided, it does not raise
    "a" * 100_000,
    0, False, True, 1, float("nan"), float("inf"), ["approved"], {"approval": "approved"},
])
def test_anything_else_is_undecided(value):
    assert normalize_decision(value) is None


def test_decisions_are_the_tag_values_rtml_writes():
    assert (APPROVED, REJECTED) == ("approved", "rejected")
    assert normalize_decision(APPROVED) == APPROVED and normalize_decision(REJECTED) == REJECTED


@pytest.mark.parametrize(("tags", "expected"), [
    ({VARIANT_TAG: MITIGATED}, True),
    ({VARIANT_TAG: MITIGATED, names.BASE_VERSION_TAG: "3"}, True),
    ({VARIANT_TAG: PLAIN}, False),
    ({VARIANT_TAG: "Mitigated"}, False),  # the tag rtml writes is exact
    ({VARIANT_TAG: " mitigated"}, False),
    ({names.BASE_VERSION_TAG: "3"}, False),  # only the variant tag decides
    ({"variant": MITIGATED}, False),
    ({}, False),
    (None, False),
])
def test_is_mitigated(tags, expected):
    assert is_mitigated(tags) is expected


def test_signed_tags_cover_every_gate_then_the_summary():
    assert names.SIGNED_TAGS[: len(names.GATE_TAGS)] == names.GATE_TAGS
    assert len(set(names.SIGNED_TAGS)) == len(names.SIGNED_TAGS)
    assert all(t.startswith("gate.") for t in names.SIGNED_TAGS)
    assert names.GATE_TAGS[-1] == "gate.decision"


def test_aliases_and_artifact_names_are_distinct():
    assert len({names.CHAMPION, names.CHALLENGER, names.PREVIOUS_CHAMPION}) == 3
    assert len(set(names.FILES.values())) == len(names.FILES)
    assert names.MODEL_CARD == f"{names.EVAL_DIR}/{names.FILES['model_card']}"
    assert len({names.SCORE, names.OOF_SCORE, names.LABEL}) == 3
    assert all(c.startswith("_") for c in (names.SCORE, names.OOF_SCORE, names.LABEL))  # never a spec column
    assert names.BASE_VERSION_TAG != names.MITIGATED_VERSION_TAG


def test_the_module_imports_only_the_standard_library():
    tree = ast.parse(Path(names.__file__).read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add((node.module or "").split(".")[0])
    assert imported and imported <= set(sys.stdlib_module_names) | {"__future__"}, imported
