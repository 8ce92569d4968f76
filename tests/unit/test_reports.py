"""rtml.reports: the HTML building blocks (escaping, number formats, tables), the SVG charts (bars,
reliability, trade-off), the fairness report and the model card. Hostile strings ("<script>" as a
group, model or feature name, in reasons, lineage and the decision log) come out escaped; NaN and
missing values render without breaking a page or drawing a bar."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from rtml.reports import (
    LIVE_FAIRNESS_MARK,
    _with_ci,
    decision_log_html,
    esc,
    fairness_html,
    fmt,
    live_fairness_html,
    model_card_html,
    replace_section,
    status,
    svg_group_bars,
    svg_reliability,
    svg_tradeoff,
    table,
)

XSS = "<script>alert('x')</script>"
IMG = '<img src=x onerror="alert(1)">'


def _raw_tags(page: str) -> set[str]:
    return set(re.findall(r"<(script|img|iframe)\b", page, flags=re.I))


@pytest.fixture(scope="module")
def attribute():
    """A real attribute result (rtml.evaluate.fairness) whose groups are named by an attacker."""
    from rtml.evaluate.fairness import attribute_fairness
    from rtml.spec import FairnessGate

    rng = np.random.default_rng(0)
    n = 400
    groups = pd.Series(np.where(np.arange(n) < 200, XSS, np.where(np.arange(n) < 390, "plain", IMG)))
    y = rng.integers(0, 2, n)
    p = np.where(rng.random(n) < 0.8, y, 1 - y)
    return attribute_fairness("g", y, p, groups, FairnessGate(min_group_size=30, bootstrap=20), random_state=1)


# --- building blocks ----------------------------------------------------------------------------------
def test_fmt_and_status():
    assert fmt(None) == '<span class="muted">n/a</span>'
    assert fmt(True) == "yes" and fmt(False) == "no"  # not "1"/"0": bool before number
    assert fmt(0.12345) == "0.123" and fmt(2.0, 0) == "2" and fmt(7) == "7"
    assert fmt(float("nan")) == "nan" and fmt(float("inf")) == "inf"
    assert fmt(XSS) == esc(XSS) == "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;"
    assert "not run" in status(None) and "passed" in status(True) and "failed" in status(False)


def test_table_escapes_headers_and_cells_and_shows_missing_cells():
    html = table([{"a": XSS, "b": 0.5}, {"a": "ok"}], ["a", "b"], [IMG, "b"])
    assert not _raw_tags(html) and esc(XSS) in html and esc(IMG) in html
    assert html.count("<tr>") == 3 and "0.500" in html and "n/a" in html
    assert table([]) == '<p class="muted">(none)</p>'


def test_with_ci_marks_values_that_do_not_gate():
    row = {"tpr": 0.5, "tpr_ci": [0.4, 0.6], "gating": True, "tpr_gating": False}
    assert _with_ci(row, "tpr", "tpr_gating") == "0.500 [0.40, 0.60] *"
    assert _with_ci({**row, "tpr_gating": True}, "tpr", "tpr_gating") == "0.500 [0.40, 0.60]"
    assert _with_ci({"tpr": 0.5, "tpr_ci": [None, 0.6]}, "tpr", None) == "0.500"  # half an interval: none
    assert _with_ci({}, "tpr", None) == "n/a"


# --- charts -------------------------------------------------------------------------------------------
def test_group_bars_escape_and_cut_names_without_breaking_an_entity():
    name = "a" * 16 + "<b>bold"
    svg = svg_group_bars([name, XSS], {"rate": [0.5, 0.25]}, title=IMG)
    assert "a" * 16 + "&lt;b<" in svg  # cut to 18 characters, then escaped: no "&l" left dangling
    assert not _raw_tags(svg) and esc(IMG) in svg
    widths = [float(w) for w in re.findall(r'<rect x="120" y="[\d.]+" width="([\d.]+)"', svg)]
    assert widths == [180.0, 90.0]  # 360 px for a rate of 1


def test_group_bars_draw_no_bar_for_nan_none_and_clip_out_of_range():
    svg = svg_group_bars(["a", "b", "c", "d"], {"rate": [float("nan"), None, 1.7, -0.2]})
    widths = [float(w) for w in re.findall(r'<rect x="120" y="[\d.]+" width="([\d.]+)"', svg)]
    assert widths == [0.0, 0.0, 360.0, 0.0]
    assert svg.count(">n/a</text>") == 2 and "nan" not in svg


def test_reliability_skips_empty_bins_and_draws_the_champion_too():
    rows = [
        {"count": 4, "mean_predicted": 0.1, "observed_rate": 0.0},
        {"count": 0, "mean_predicted": None, "observed_rate": None},
        {"count": 2, "mean_predicted": 0.9, "observed_rate": 1.0},
    ]
    svg = svg_reliability(rows)
    assert svg.count("<circle") == 2 and svg.count("<polyline") == 1
    assert 'points="52.0,250.0 228.0,30.0"' in svg  # (0.1, 0) and (0.9, 1) on the 220 px square
    assert svg_reliability(rows, rows[:1]).count("<circle") == 3
    assert "<polyline" not in svg_reliability([])


def test_tradeoff_colours_candidates_and_escapes_their_names():
    pts = [
        {"candidate": XSS, "quality": 0.7, "worst_margin": 0.05, "meets_limits": True, "within_quality_loss": True},
        {"candidate": "bad", "quality": 0.75, "worst_margin": -0.1, "meets_limits": False},
        {"candidate": "plain", "kind": "plain", "quality": 0.8, "worst_margin": -0.2},
        {"candidate": "c1", "kind": "curve", "quality": 0.72, "worst_margin": 0.0},
        {"candidate": "undefined", "quality": None, "worst_margin": 0.1},  # left out
    ]
    svg = svg_tradeoff(pts)
    assert svg.count("<circle") == 4 and svg.count("<polyline") == 1
    assert 'fill="#137333"' in svg and 'fill="#b3261e"' in svg and 'fill="#888"' in svg
    assert not _raw_tags(svg) and esc(XSS) in svg
    assert svg_tradeoff([]) == "" and svg_tradeoff([{"quality": None, "worst_margin": None}]) == ""
    # one point only: the axes still have a width (no division by zero)
    assert "<circle" in svg_tradeoff([{"candidate": "x", "quality": 0.5, "worst_margin": 0.0}])


# --- pages --------------------------------------------------------------------------------------------
def test_fairness_report_escapes_hostile_group_names_and_reasons(attribute):
    fairness = {
        "passed": False,
        "threshold": 0.35,
        "reasons": [f"fairness: {XSS} fails"],
        "attributes": {IMG: attribute},
        "mitigation": {"thresholds": {XSS: ">= 0.5000"}},
    }
    page = fairness_html(fairness, title=XSS)
    assert page.startswith("<!doctype html>") and not _raw_tags(page)
    assert page.count(esc(XSS)) >= 4 and esc(IMG) in page
    assert "decision rule by group" in page and "0.350" in page
    # the groups of the attribute and its disparities are shown
    dpr = attribute["demographic_parity_ratio"]
    assert f"<td>{dpr:.3f}</td>" in page and "<svg" in page


def test_fairness_report_of_an_attribute_in_error():
    page = fairness_html({"attributes": {"a": {"passed": None, "error": XSS}}}, "t")
    assert "not run" in page and f"<p class='fail'>{esc(XSS)}</p>" in page and not _raw_tags(page)


def _summary(attribute) -> dict:
    return {
        "model": XSS,
        "version": "3",
        "passed": False,
        "run_id": IMG,
        "reasons": [XSS],
        "gates": {"quality": {"passed": True}, "fairness": {"passed": False, "reasons": [IMG]}},
        "quality": {
            "candidate": {"roc_auc": float("nan"), "log_loss": 0.5, "rows": 100.0},
            "champion": {"version": "2", "metrics": {"roc_auc": 0.7}, "reliability": []},
            "reliability": [{"count": 3, "mean_predicted": 0.2, "observed_rate": 0.3}],
            "rule": XSS,
        },
        "fairness": {"attributes": {XSS: attribute}},
        "drift": {"checks": {XSS: {"current_rows": 10, "drifted_share": float("nan"),
                                   "drifted_features": [IMG], "prediction_drifted": None}}},
        "lineage": {"batches": [XSS], "note": IMG, "committed_batches": ["hidden"]},
        "reports": {XSS: IMG},
        "decisions": [{"seq": 1, "action": "promote", "reason": XSS + "x" * 400, "hash": "abcdef0123456789"}],
    }


def test_model_card_escapes_every_hostile_string_and_renders_nan(attribute):
    card = model_card_html(_summary(attribute))
    assert not _raw_tags(card)
    assert f"Model card: {esc(XSS)} version 3" in card and esc(IMG) in card
    assert "<td>nan</td>" in card  # the NaN ROC AUC and drift share are shown, not dropped
    assert "champion (v2)" in card and "<td>0.700</td>" in card and "100 holdout rows" in card
    assert "hidden" not in card  # committed_batches is left out of the lineage table
    assert "Decisions" in card and "abcdef012345<" in card and "abcdef0123456" not in card
    assert "x" * 300 not in card.replace(esc(XSS), "")  # the reason is cut to 300 characters


def test_model_card_of_an_empty_summary_still_renders():
    card = model_card_html({})
    assert "Model card: None version None" in card and "champion (none)" in card
    assert card.count("not run") == 4 and card.endswith("</body></html>")  # the decision and 3 gates


def test_decision_section_in_the_model_card():
    entry = {"seq": 4, "at": "2026-11-25T12:00:00Z", "action": "promotion", "version": "3", "from_version": "2",
             "actor": "alice", "on_behalf_of": None, "reason": "<b>ok</b>", "hash": "ab" * 32}
    html = model_card_html({"model": "credit", "version": "3", "decisions": [entry]})
    assert "<h2>Decisions</h2>" in html and "promotion" in html and "alice" in html
    assert "&lt;b&gt;ok&lt;/b&gt;" in html and "<b>ok</b>" not in html
    assert "<h2>Decisions</h2>" not in model_card_html({"model": "credit", "version": "3"})


def test_decision_log_rows():
    html = decision_log_html([{"seq": 2, "at": "t", "action": XSS, "version": "4", "hash": None}])
    assert esc(XSS) in html and not _raw_tags(html) and "<td>2</td>" in html
    assert "<td>None</td>" in html  # a missing hash reads as None, cut to 12 characters


def test_live_fairness_section_escapes_and_replaces_itself(attribute):
    live = {"version": XSS, "rows": 400, "passed": False, "selection_rate": 0.4,
            "reasons": [f"live fairness: {XSS}"], "attributes": {IMG: attribute}, "checked_at": "t0"}
    section = live_fairness_html(live, "t0")
    assert section.startswith(LIVE_FAIRNESS_MARK) and section.endswith(LIVE_FAIRNESS_MARK)
    assert not _raw_tags(section) and esc(XSS) in section and "(live)" in section
    card = "<html><body><h1>card</h1></body></html>"
    once = replace_section(card, section, LIVE_FAIRNESS_MARK)
    again = replace_section(once, live_fairness_html({**live, "passed": True, "reasons": []}, "t1"), LIVE_FAIRNESS_MARK)
    assert once.index("<h1>card</h1>") < once.index(LIVE_FAIRNESS_MARK) < once.index("</body>")
    assert again.count("id='live-fairness'") == 1 and "t1" in again and "t0" not in again
    # a card re-rendered from its summary keeps the section when the summary carries it
    page = model_card_html({"model": "m", "version": "1", "live_fairness": live})
    assert "id='live-fairness'" in page and not _raw_tags(page)


def test_carry_sections_keeps_monitoring_sections_across_a_re_render():
    """A card re-rendered after a decision keeps the shadow and live-fairness sections monitoring
    attached to the old one, once each, and a card without them is left as rendered."""
    from rtml.reports import LIVE_FAIRNESS_MARK, SHADOW_MARK, carry_sections

    shadow = f"{SHADOW_MARK}<section id='shadow'>S1</section>{SHADOW_MARK}"
    live = f"{LIVE_FAIRNESS_MARK}<section id='live-fairness'>L1</section>{LIVE_FAIRNESS_MARK}"
    old = f"<html><body><h1>old</h1>{shadow}{live}</body></html>"
    new = "<html><body><h1>new</h1></body></html>"
    out = carry_sections(old, new)
    assert "<h1>new</h1>" in out and "<h1>old</h1>" not in out
    assert out.count("S1") == 1 and out.count("L1") == 1 and out.endswith("</body></html>")
    # Re-rendering a card that already has the sections replaces them instead of stacking.
    newer = carry_sections(out.replace("S1", "S2"), out)
    assert newer.count(SHADOW_MARK) == 2 and "S2" in newer and "S1" not in newer
    assert carry_sections("<html><body>no sections</body></html>", new) == new
    # An unterminated mark (a truncated card) is not carried.
    assert carry_sections(f"<body>{SHADOW_MARK}half", new) == new
