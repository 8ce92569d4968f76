"""Model-card rendering (rtml.reports): the decisions section, escaped, and absent without decisions."""

from __future__ import annotations


def test_decision_section_in_the_model_card():
    from rtml.reports import model_card_html

    entry = {"seq": 4, "at": "2026-11-25T12:00:00Z", "action": "promotion", "version": "3", "from_version": "2",
             "actor": "alice", "on_behalf_of": None, "reason": "<b>ok</b>", "hash": "ab" * 32}
    html = model_card_html({"model": "credit", "version": "3", "decisions": [entry]})
    assert "<h2>Decisions</h2>" in html and "promotion" in html and "alice" in html
    assert "&lt;b&gt;ok&lt;/b&gt;" in html and "<b>ok</b>" not in html
    assert "<h2>Decisions</h2>" not in model_card_html({"model": "credit", "version": "3"})
