"""HTML reports of the evaluation: the fairness report and the model card (one per version).

Plain HTML with inline SVG charts and no external assets, so the files render inside the MLflow
UI's artifact viewer and anywhere else they are copied to.
"""

from __future__ import annotations

import html
import json
from typing import Any

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#222;max-width:1200px}
h1{font-size:22px}h2{font-size:18px;margin-top:28px;border-bottom:1px solid #ddd}h3{font-size:15px}
table{border-collapse:collapse;margin:8px 0 16px}td,th{border:1px solid #ccc;padding:4px 8px;font-size:13px;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}
.pass{color:#137333;font-weight:600}.fail{color:#b3261e;font-weight:600}.muted{color:#777}
.badge{display:inline-block;padding:2px 10px;border-radius:10px;color:#fff;font-weight:600}
.badge.pass{background:#137333;color:#fff}.badge.fail{background:#b3261e;color:#fff}
.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(260px,1fr));gap:12px}
.card{border:1px solid #ddd;border-radius:6px;padding:10px 14px}
code{background:#f5f5f5;padding:1px 4px}
"""

COLORS = ["#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7"]


def esc(v: Any) -> str:
    return html.escape(str(v))


def fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return '<span class="muted">n/a</span>'
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return esc(v)


def status(passed: bool | None) -> str:
    if passed is None:
        return '<span class="badge" style="background:#888">not run</span>'
    return f'<span class="badge {"pass" if passed else "fail"}">{"passed" if passed else "failed"}</span>'


def table(
    rows: list[dict[str, Any]], columns: list[str] | None = None, headers: list[str] | None = None
) -> str:
    if not rows:
        return '<p class="muted">(none)</p>'
    columns = columns or list(rows[0].keys())
    head = "".join(f"<th>{esc(h)}</th>" for h in (headers or columns))
    body = "".join("<tr>" + "".join(f"<td>{fmt(r.get(c))}</td>" for c in columns) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def svg_group_bars(groups: list[str], series: dict[str, list[float | None]], title: str = "") -> str:
    """Grouped horizontal bars (values in [0, 1]): one block per group, one bar per series."""
    bar_h, gap, label_w, width = 12, 10, 120, 360
    n_series = len(series)
    block = n_series * bar_h + gap
    height = 30 + len(groups) * block + 20 * ((n_series + 2) // 3)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{label_w + width + 60}" height="{height}" '
        f'font-family="sans-serif" font-size="11">'
    ]
    if title:
        parts.append(f'<text x="0" y="14" font-weight="bold">{esc(title)}</text>')
    for gi, g in enumerate(groups):
        y0 = 24 + gi * block
        parts.append(f'<text x="0" y="{y0 + n_series * bar_h / 2 + 4}">{esc(g)[:18]}</text>')
        for si, (name, values) in enumerate(series.items()):
            v = values[gi]
            w = 0 if v is None else max(0.0, min(1.0, v)) * width
            y = y0 + si * bar_h
            parts.append(
                f'<rect x="{label_w}" y="{y}" width="{w:.1f}" height="{bar_h - 2}" '
                f'fill="{COLORS[si % len(COLORS)]}"><title>{esc(name)} {fmt(v)}</title></rect>'
            )
            parts.append(
                f'<text x="{label_w + w + 4:.1f}" y="{y + bar_h - 3}">{"n/a" if v is None else f"{v:.2f}"}</text>'
            )
    ly = 24 + len(groups) * block + 6
    for si, name in enumerate(series):
        x = (si % 3) * 150
        y = ly + (si // 3) * 18
        parts.append(
            f'<rect x="{x}" y="{y}" width="10" height="10" fill="{COLORS[si % len(COLORS)]}"/>'
            f'<text x="{x + 14}" y="{y + 9}">{esc(name)}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def svg_reliability(rows: list[dict[str, Any]], other: list[dict[str, Any]] | None = None) -> str:
    """Reliability diagram: observed rate vs mean predicted score per bin (candidate, champion)."""
    size, pad = 220, 30
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{size + 2 * pad}" height="{size + 2 * pad}" '
        f'font-family="sans-serif" font-size="10">',
        f'<rect x="{pad}" y="{pad}" width="{size}" height="{size}" fill="none" stroke="#999"/>',
        f'<line x1="{pad}" y1="{pad + size}" x2="{pad + size}" y2="{pad}" stroke="#bbb" stroke-dasharray="4"/>',
        f'<text x="{pad}" y="{pad + size + 20}">mean predicted</text>',
        f'<text x="2" y="{pad - 8}">observed rate</text>',
    ]
    for rows_, color in ((rows, COLORS[0]), (other or [], COLORS[1])):
        pts = [(r["mean_predicted"], r["observed_rate"]) for r in rows_ if r.get("count")]
        if not pts:
            continue
        coords = " ".join(f"{pad + x * size:.1f},{pad + (1 - y) * size:.1f}" for x, y in pts)
        parts.append(f'<polyline points="{coords}" fill="none" stroke="{color}" stroke-width="2"/>')
        for x, y in pts:
            parts.append(
                f'<circle cx="{pad + x * size:.1f}" cy="{pad + (1 - y) * size:.1f}" r="3" fill="{color}"/>'
            )
    parts.append("</svg>")
    return "".join(parts)


def _page(title: str, body: str) -> str:
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{esc(title)}</title>"
        f"<style>{CSS}</style></head><body>{body}</body></html>"
    )


# --- fairness ------------------------------------------------------------------------------------------
def _fairness_attribute(name: str, res: dict[str, Any], label: str = "") -> str:
    out = [f"<h3>{esc(name)}{esc(label)} {status(res.get('passed'))}</h3>"]
    if res.get("error"):
        return out[0] + f"<p class='fail'>{esc(res['error'])}</p>"
    rows = [
        dict(r, gating="yes" if r["gating"] else f"no (< {res['min_group_size']})") for r in res["groups"]
    ]
    out.append(
        table(
            rows,
            ["group", "count", "selection_rate", "tpr", "fpr", "precision", "gating"],
            ["group", "count", "selection rate", "TPR", "FPR", "precision", "gates"],
        )
    )
    if res.get("note"):
        out.append(f"<p class='muted'>{esc(res['note'])}</p>")
    disp = [
        {
            "measure": "demographic parity ratio (disparate impact)",
            "value": res.get("demographic_parity_ratio"),
        },
        {"measure": "demographic parity difference", "value": res.get("demographic_parity_difference")},
        {"measure": "equal opportunity difference (TPR)", "value": res.get("equal_opportunity_difference")},
        {"measure": "equal opportunity ratio (TPR)", "value": res.get("equal_opportunity_ratio")},
        {"measure": "equalized odds difference", "value": res.get("equalized_odds_difference")},
    ]
    limits = {c["metric"]: c for c in res.get("checks", [])}
    keymap = [
        "demographic_parity_ratio",
        "demographic_parity_difference",
        "equal_opportunity_difference",
        "equal_opportunity_ratio",
        "equalized_odds_difference",
    ]
    for d, key in zip(disp, keymap, strict=True):
        c = limits.get(key)
        d["limit"] = f"{c['op']} {c['limit']:g}" if c else "-"
        d["result"] = ("passed" if c["passed"] else "FAILED") if c else "-"
    out.append(table(disp, ["measure", "value", "limit", "result"]))
    groups = [r["group"] for r in res["groups"]]
    out.append(
        svg_group_bars(
            groups,
            {m: [r[m] for r in res["groups"]] for m in ("selection_rate", "tpr", "fpr", "precision")},
            title=f"{name}{label}: rates by group",
        )
    )
    return "".join(out)


def fairness_html(fairness: dict[str, Any], title: str) -> str:
    body = [
        f"<h1>Fairness: {esc(title)}</h1>",
        f"<p>Overall {status(fairness.get('passed'))} &middot; decision threshold "
        f"{fmt(fairness.get('threshold'))} &middot; selected = the positive label predicted. Disparities are "
        "computed by fairlearn on the groups that meet the minimum size; smaller groups are shown but do "
        "not gate.</p>",
    ]
    if fairness.get("reasons"):
        body.append(
            "<ul>" + "".join(f"<li class='fail'>{esc(r)}</li>" for r in fairness["reasons"]) + "</ul>"
        )
    mitigated_version = fairness.get("variant") == "mitigated"
    if mitigated_version:
        body.append(
            "<p>This version is the <b>fairness-mitigated variant</b>: the plain model's scores with "
            "per-group decision thresholds; the gate judges its decisions. The plain model's decisions "
            "on the same rows are shown next to them.</p>"
        )
    for name, res in fairness.get("attributes", {}).items():
        body.append(f"<h2>{esc(name)}</h2><div class='grid'>")
        if res.get("plain"):  # plain first, then this (mitigated) version: left to right as in time
            pl = res["plain"]
            body.append("<div class='card'>" + _fairness_attribute(name, pl, " (plain model)"))
            body.append(_quality_line(pl.get("quality") or {}))
            body.append(f"<p class='muted'>{esc(pl.get('method', ''))}; for comparison.</p></div>")
        body.append("<div class='card'>")
        body.append(
            _fairness_attribute(name, res, " (this version, mitigated)" if mitigated_version else " (model)")
        )
        q = res.get("plain_quality") or {}
        body.append(
            f"<p>F1 {fmt(q.get('f1'))}, balanced accuracy {fmt(q.get('balanced_accuracy'))}, "
            f"selection rate {fmt(q.get('selection_rate'))}</p></div>"
        )
        mit = res.get("mitigated")
        if mit:
            body.append("<div class='card'>")
            body.append(_fairness_attribute(name, mit, " (mitigated)"))
            if mit.get("quality"):
                q = mit["quality"]
                body.append(
                    f"<p>F1 {fmt(q.get('f1'))}, balanced accuracy {fmt(q.get('balanced_accuracy'))}, "
                    f"selection rate {fmt(q.get('selection_rate'))}</p>"
                )
            if mit.get("method"):
                body.append(
                    f"<p class='muted'>{esc(mit['method'])}. It does not gate this version; when only the "
                    "fairness gate fails, it is registered as a version of its own and gated.</p>"
                )
            body.append("</div>")
        body.append("</div>")
    rule = (fairness.get("mitigation") or {}).get("thresholds")
    if rule:
        rows = [{"group": g, "decision: score": t} for g, t in sorted(rule.items())]
        body.append("<h2>Mitigated variant: decision rule by group</h2>" + table(rows))
    return _page(f"Fairness {title}", "".join(body))


def _quality_line(q: dict[str, Any]) -> str:
    return (
        f"<p>F1 {fmt(q.get('f1'))}, balanced accuracy {fmt(q.get('balanced_accuracy'))}, "
        f"selection rate {fmt(q.get('selection_rate'))}</p>"
    )


# --- model card ----------------------------------------------------------------------------------------
def model_card_html(summary: dict[str, Any]) -> str:
    """One page per model version: decision, quality, fairness, drift and lineage side by side."""
    gates = summary.get("gates", {})
    q = summary.get("quality", {})
    f = summary.get("fairness", {})
    d = summary.get("drift", {})
    lin = summary.get("lineage", {})
    links = summary.get("reports", {})
    title = f"{summary.get('model')} version {summary.get('version')}"
    b = [
        f"<h1>Model card: {esc(title)}</h1>",
        f"<p>Decision: {status(summary.get('passed'))} &middot; evaluated {esc(summary.get('evaluated_at', ''))} "
        f"&middot; run <code>{esc(summary.get('run_id', ''))}</code></p>",
    ]
    if summary.get("variant") == "mitigated":
        b.append(
            f"<p><b>Fairness-mitigated variant</b> of version {esc(summary.get('base_version'))}: the same "
            "scores (quality metrics of the scores are identical), per-group decision thresholds "
            "(F1/precision/recall are of these decisions). Plain vs mitigated below.</p>"
        )
    if summary.get("reasons"):
        b.append("<ul>" + "".join(f"<li class='fail'>{esc(r)}</li>" for r in summary["reasons"]) + "</ul>")
    b.append("<div class='grid'>")
    for gate in ("quality", "fairness", "drift"):
        g = gates.get(gate, {})
        b.append(f"<div class='card'><h3>{gate} {status(g.get('passed'))}</h3>")
        b.append(
            "".join(f"<p class='fail'>{esc(r)}</p>" for r in g.get("reasons", [])) or "<p>all checks met</p>"
        )
        b.append("</div>")
    b.append("</div>")

    # quality
    b.append("<h2>Quality (same out-of-time holdout)</h2>")
    cand = q.get("candidate", {})
    champ = (q.get("champion") or {}).get("metrics", {})
    names = ["roc_auc", "pr_auc", "log_loss", "f1", "precision", "recall", "brier", "ece"]
    rows = [
        {"metric": n, "candidate": cand.get(n), "champion": champ.get(n) if champ else None} for n in names
    ]
    champ_label = f"champion (v{q['champion']['version']})" if q.get("champion") else "champion (none)"
    b.append("<div class='grid'><div>")
    b.append(table(rows, ["metric", "candidate", "champion"], ["metric", "candidate", champ_label]))
    b.append(
        f"<p class='muted'>gate: {esc(q.get('rule', ''))}; decision threshold {fmt(q.get('threshold'))}; "
        f"{fmt(cand.get('rows'), 0)} holdout rows</p></div><div>"
    )
    b.append(svg_reliability(q.get("reliability", []), (q.get("champion") or {}).get("reliability")))
    b.append("<p class='muted'>reliability: blue = candidate, orange = champion</p></div></div>")

    # fairness
    b.append("<h2>Fairness</h2>")
    frows = []
    for name, res in f.get("attributes", {}).items():
        mit = res.get("mitigated") or {}
        pl = res.get("plain")
        if pl:  # this version is the mitigated one: plain | mitigated side by side
            frows.append(
                {
                    "attribute": name,
                    "groups (gating)": f"{len(res.get('gating_groups', []))} ({len(res.get('small_groups', []))} small)",
                    "plain DI": pl.get("demographic_parity_ratio"),
                    "plain EO diff": pl.get("equal_opportunity_difference"),
                    "plain EOdds": pl.get("equalized_odds_difference"),
                    "mitigated DI": res.get("demographic_parity_ratio"),
                    "mitigated EO diff": res.get("equal_opportunity_difference"),
                    "mitigated EOdds": res.get("equalized_odds_difference"),
                    "result": "passed" if res.get("passed") else "FAILED",
                }
            )
            continue
        frows.append(
            {
                "attribute": name,
                "groups (gating)": f"{len(res.get('gating_groups', []))} ({len(res.get('small_groups', []))} small)",
                "DI ratio": res.get("demographic_parity_ratio"),
                "EO diff": res.get("equal_opportunity_difference"),
                "EOdds diff": res.get("equalized_odds_difference"),
                "result": "passed" if res.get("passed") else "FAILED",
                "mitigated DI": mit.get("demographic_parity_ratio"),
                "mitigated EOdds": mit.get("equalized_odds_difference"),
            }
        )
    b.append(table(frows))
    # drift
    b.append("<h2>Drift (against the training window)</h2>")
    drows = []
    for name, res in (d.get("checks") or {}).items():
        drows.append(
            {
                "current": name,
                "rows": res.get("current_rows"),
                "drifted share": res.get("drifted_share"),
                "limit": res.get("max_drifted_share"),
                "drifted features": ", ".join(res.get("drifted_features", [])) or "-",
                "prediction drifted": res.get("prediction_drifted"),
                "sampled": res.get("sampled"),
            }
        )
    b.append(table(drows))
    # lineage
    b.append("<h2>Lineage</h2>")
    lrows = [
        {"field": k, "value": v if not isinstance(v, list | dict) else json.dumps(v)[:400]}
        for k, v in lin.items()
        if k not in ("committed_batches",)
    ]
    b.append(table(lrows, ["field", "value"]))
    # links
    if links:
        b.append(
            "<h2>Reports</h2><ul>"
            + "".join(f"<li>{esc(k)}: <code>{esc(v)}</code></li>" for k, v in links.items())
            + "</ul>"
        )
    if summary.get("decisions"):  # added by rtml.audit.refresh_model_card
        b.append(decision_log_html(summary["decisions"]))
    return _page(f"Model card {title}", "".join(b))


def decision_log_html(entries: list[dict[str, Any]]) -> str:
    """The version's entries of the hash-chained decision log (rtml.audit), oldest first."""
    rows = [
        {"#": e.get("seq"), "when": e.get("at"), "what": e.get("action"), "version": e.get("version"),
         "from": e.get("from_version"), "who": e.get("actor"), "for": e.get("on_behalf_of"),
         "why": (e.get("reason") or "")[:300], "hash": str(e.get("hash", ""))[:12]}
        for e in entries
    ]
    return ("<h2>Decisions</h2><p class='muted'>From the append-only decision log in the lake; "
            "<code>rtml audit verify</code> checks its hash chain.</p>" + table(rows))
