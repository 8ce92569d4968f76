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
        # Cut the name before escaping: cutting "&lt;" in half would leave a broken entity.
        parts.append(f'<text x="0" y="{y0 + n_series * bar_h / 2 + 4}">{esc(str(g)[:18])}</text>')
        for si, (name, values) in enumerate(series.items()):
            v = values[gi]
            if v is not None and v != v:  # NaN: min/max would draw it as a full bar
                v = None
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
        dict(
            r,
            gating="yes" if r["gating"] and not r.get("insufficient_data") else (
                f"insufficient data: {r['insufficient_data']}" if r.get("insufficient_data")
                else f"no (< {res['min_group_size']})"
            ),
            selection_rate=_with_ci(r, "selection_rate", None),
            tpr=_with_ci(r, "tpr", "tpr_gating"),
            fpr=_with_ci(r, "fpr", "fpr_gating"),
        )
        for r in res["groups"]
    ]
    out.append(
        table(
            rows,
            ["group", "count", "positives", "selection_rate", "tpr", "fpr", "precision", "gating"],
            ["group", "count", "positives", "selection rate", "TPR", "FPR", "precision", "gates"],
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
        ci = (res.get("intervals") or {}).get(key)
        d["interval"] = f"[{ci[0]:.3f}, {ci[1]:.3f}]" if ci and None not in ci else "-"
        d["limit"] = f"{c['op']} {c['limit']:g}" if c else "-"
        d["judged"] = f"{c['judged']:.3f} ({c.get('basis', 'estimate')})" if c and c.get("judged") is not None else "-"
        d["result"] = ("passed" if c["passed"] else "FAILED") if c else "-"
    out.append(table(disp, ["measure", "value", "interval", "limit", "judged", "result"]))
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
def _with_ci(row: dict[str, Any], metric: str, flag: str | None) -> str:
    v = row.get(metric)
    if v is None:
        return "n/a"
    ci = row.get(f"{metric}_ci")
    text = f"{v:.3f}" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci and None not in ci else "")
    ok = row.get("gating", True) and (flag is None or row.get(flag, True))
    return text if ok else text + " *"


def _variants(res: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(label, attribute result) of the plain and the mitigated decisions present in ``res``."""
    out = []
    if res.get("plain"):  # this version is the mitigated variant
        out += [("plain", res["plain"]), ("mitigated", res)]
    else:
        out.append(("plain", res))
        mit = res.get("mitigated") or {}
        if mit.get("groups"):
            out.append(("mitigated", mit))
    return out


def _group_side_by_side(name: str, res: dict[str, Any]) -> str:
    """Per group: size, positives, then selection rate / TPR / FPR with intervals, plain | mitigated."""
    variants = _variants(res)
    cols = ["selection_rate", "tpr", "fpr"]
    flags = {"selection_rate": None, "tpr": "tpr_gating", "fpr": "fpr_gating"}
    head = "<tr><th rowspan='2'>group</th><th rowspan='2'>size</th><th rowspan='2'>positives</th>" + "".join(
        f"<th colspan='{len(cols)}'>{esc(label)}</th>" for label, _ in variants
    ) + "</tr><tr>" + "".join(
        "".join(f"<th>{h}</th>" for h in ("selection rate", "TPR", "FPR")) for _ in variants
    ) + "</tr>"
    by_variant = [{r["group"]: r for r in v.get("groups", [])} for _, v in variants]
    body = []
    for r in res.get("groups", []):
        g = r["group"]
        cells = [esc(g), fmt(r.get("count"), 0), fmt(r.get("positives"), 0)]
        for rows in by_variant:
            vr = rows.get(g, {})
            cells += [esc(_with_ci(vr, m, flags[m])) for m in cols]
        title = f" title='{esc(r['insufficient_data'])}'" if r.get("insufficient_data") else ""
        body.append(f"<tr{title}>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    status_line = " &middot; ".join(
        f"{esc(label)}: {status(v.get('passed'))} DI {fmt(v.get('demographic_parity_ratio'))}, "
        f"EO diff {fmt(v.get('equal_opportunity_difference'))}, EOdds {fmt(v.get('equalized_odds_difference'))}"
        for label, v in variants
    )
    groups = [r["group"] for r in res.get("groups", [])]
    series = {}
    for (label, _), rows in zip(variants, by_variant, strict=True):
        for m, short in (("selection_rate", "selected"), ("tpr", "TPR"), ("fpr", "FPR")):
            series[f"{label} {short}"] = [rows.get(g, {}).get(m) for g in groups]
    return (
        f"<h3>{esc(name)}: by group</h3><p>{status_line}</p><table>{head}{''.join(body)}</table>"
        + svg_group_bars(groups, series, title=f"{name}: rates by group (plain vs mitigated)")
    )


def svg_tradeoff(points: list[dict[str, Any]]) -> str:
    """Quality (decision metric) vs the worst fairness margin of each candidate; the joint search's
    curve (limits moved looser/stricter) as a line. Right of 0 = meets every limit on the fit rows."""
    pts = [p for p in points if p.get("quality") is not None and p.get("worst_margin") is not None]
    if not pts:
        return ""
    w, h, pad = 420, 240, 40
    xs = [p["worst_margin"] for p in pts] + [0.0]
    ys = [p["quality"] for p in pts]
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys), max(ys)
    x1, y1 = (x1 if x1 > x0 else x0 + 1e-3), (y1 if y1 > y0 else y0 + 1e-3)

    def X(v: float) -> float:
        return pad + (v - x0) / (x1 - x0) * (w - 2 * pad)

    def Y(v: float) -> float:
        return h - pad - (v - y0) / (y1 - y0) * (h - 2 * pad)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="10">',
        f'<rect x="{pad}" y="{pad}" width="{w - 2 * pad}" height="{h - 2 * pad}" fill="none" stroke="#999"/>',
        f'<line x1="{X(0):.1f}" y1="{pad}" x2="{X(0):.1f}" y2="{h - pad}" stroke="#b3261e" stroke-dasharray="4"/>',
        f'<text x="{pad}" y="{h - 8}">worst fairness margin ({x0:.2f} .. {x1:.2f}; right of the red line: meets)</text>',
        f'<text x="2" y="{pad - 10}">decision quality ({y0:.3f} .. {y1:.3f})</text>',
    ]
    curve = sorted((p for p in pts if p.get("kind") in ("curve", "plain")), key=lambda p: p["worst_margin"])
    if len(curve) > 1:
        coords = " ".join(f"{X(p['worst_margin']):.1f},{Y(p['quality']):.1f}" for p in curve)
        parts.append(f'<polyline points="{coords}" fill="none" stroke="{COLORS[0]}" stroke-width="1.5"/>')
    for p in pts:
        color = "#888" if p.get("kind") == "curve" else COLORS[1] if p.get("kind") == "plain" else (
            "#137333" if p.get("meets_limits") and p.get("within_quality_loss") else "#b3261e"
        )
        parts.append(
            f'<circle cx="{X(p["worst_margin"]):.1f}" cy="{Y(p["quality"]):.1f}" r="4" fill="{color}">'
            f'<title>{esc(p.get("candidate"))}: quality {p["quality"]:.3f}, worst margin {p["worst_margin"]:.3f}'
            f"</title></circle>"
        )
    parts.append("</svg>")
    return "".join(parts)


def _mitigation_search(mitigation: dict[str, Any] | None) -> str:
    """The search's verdict, its candidates and the trade-off (on the plain version's card)."""
    if not mitigation or not mitigation.get("search"):
        return ""
    rep = mitigation["search"]
    out = ["<h2>Mitigation search</h2>"]
    if mitigation.get("mitigated"):
        out.append(f"<p class='pass'>Kept: {esc(rep.get('chosen'))}.</p><p>{esc(mitigation.get('reason'))}</p>")
    else:
        out.append(
            "<p class='fail'>Not mitigated: no candidate meets every fairness limit within "
            f"max_quality_loss {fmt(rep.get('max_quality_loss'))}. {esc(mitigation.get('reason'))}</p>"
            "<p>The trade-off below shows what is possible on the training window.</p>"
        )
    out.append(
        f"<p class='muted'>Fitted on {fmt(rep.get('fit_rows'), 0)} rows: {esc(rep.get('fit_on'))}. Quality = "
        f"{esc(rep.get('quality_metric'))} of the decisions (plain {fmt(rep.get('plain_quality'))}); worst margin = "
        "the smallest distance of any disparity to its limit (negative: fails); pass rate = share of "
        f"{fmt(rep.get('simulations'), 0)} simulated holdouts of {fmt(rep.get('simulated_holdout_rows'), 0)} rows "
        "that pass the gate, judged on the "
        f"{esc(str(rep.get('simulations_judged_on') or 'estimate').replace('_', ' '))} as the gate is.</p>"
    )
    rows = [
        {
            "candidate": c.get("candidate"),
            "quality": c.get("quality"),
            "quality loss": c.get("quality_loss"),
            "worst margin": c.get("worst_margin"),
            "meets limits": c.get("meets_limits"),
            "within loss": c.get("within_quality_loss"),
            "pass rate": c.get("pass_rate"),
        }
        for c in rep.get("candidates", []) + rep.get("curve", [])
    ]
    out.append(table(rows))
    out.append(svg_tradeoff(rep.get("candidates", []) + rep.get("curve", [])))
    return "".join(out)



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
        label = f"{name} (intersection)" if res.get("intersection") else name
        if pl:  # this version is the mitigated one: plain | mitigated side by side
            frows.append(
                {
                    "attribute": label,
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
                "attribute": label,
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
    if f.get("attributes"):
        first = next(iter(f["attributes"].values()))
        if first.get("bootstrap"):
            b.append(
                f"<p class='muted'>Intervals: {fmt(first.get('confidence'), 2)} bootstrap intervals "
                f"({first.get('bootstrap')} seeded replicates of the holdout rows); the gate reads "
                f"{esc(str(first.get('decide_on', 'estimate')).replace('_', ' '))}. A group below "
                f"{first.get('min_group_size')} rows, or below {first.get('min_group_positives')} positives "
                "(negatives) for TPR (FPR), is insufficient data (*) and does not decide the gate.</p>"
            )
    for name, res in f.get("attributes", {}).items():
        b.append(_group_side_by_side(name, res))
    b.append(_mitigation_search(f.get("mitigation")))
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
    if summary.get("decisions"):  # added by rtml.registry.audit.refresh_model_card
        b.append(decision_log_html(summary["decisions"]))
    if summary.get("live_fairness"):  # rtml.monitor.live's evaluation/live_fairness.json, when given
        live = summary["live_fairness"]
        b.append(live_fairness_html(live, str(live.get("checked_at", ""))))
    return _page(f"Model card {title}", "".join(b))


# --- live fairness (rtml.monitor.live) -------------------------------------------------------------------
LIVE_FAIRNESS_MARK = "<!-- rtml:live-fairness -->"
SHADOW_MARK = "<!-- rtml:shadow -->"
# Sections that monitoring adds to a rendered card; re-rendering the card keeps them.
LIVE_SECTIONS = (SHADOW_MARK, LIVE_FAIRNESS_MARK)


def replace_section(card: str, section: str, mark: str) -> str:
    """``card`` with the section between two ``mark`` comments replaced by ``section`` (which
    carries the marks), else ``section`` added before ``</body>``: refreshes do not stack up."""
    if mark in card:
        start = card.index(mark)
        end = card.find(mark, start + len(mark))
        if end >= 0:
            return card[:start] + section + card[end + len(mark):]
    if "</body>" in card:
        return card.replace("</body>", section + "</body>", 1)
    return card + section


def carry_sections(old_card: str, new_card: str, marks: tuple[str, ...] = LIVE_SECTIONS) -> str:
    """``new_card`` with the marked sections of ``old_card`` (shadow, live fairness) carried over,
    so re-rendering a card after a decision does not drop what monitoring attached to it."""
    for mark in marks:
        start = old_card.find(mark)
        end = old_card.find(mark, start + len(mark)) if start >= 0 else -1
        if end >= 0:
            new_card = replace_section(new_card, old_card[start:end + len(mark)], mark)
    return new_card


def live_fairness_html(live: dict[str, Any], checked_at: str) -> str:
    """The "live fairness" section of the champion's model card: the gate's group metrics on the
    labelled live predictions, within the marks ``replace_section`` looks for."""
    b = [
        "<h2>Live fairness (served decisions, labels that arrived later)</h2>",
        f"<p>{status(live.get('passed'))} &middot; checked {esc(checked_at)} &middot; "
        f"{fmt(live.get('rows'), 0)} labelled predictions of version {esc(live.get('version') or 'any')}"
        f" &middot; selection rate {fmt(live.get('selection_rate'))}. The fairness gate's metrics, limits "
        "and minimums; a group marked insufficient data does not decide.</p>",
    ]
    if live.get("skipped"):
        b.append(f"<p class='muted'>{esc(live['skipped'])}</p>")
    if live.get("reasons"):
        b.append("<ul>" + "".join(f"<li class='fail'>{esc(r)}</li>" for r in live["reasons"]) + "</ul>")
    for name, res in (live.get("attributes") or {}).items():
        b.append(_fairness_attribute(name, res, " (live)"))
    return f"{LIVE_FAIRNESS_MARK}<section id='live-fairness'>{''.join(b)}</section>{LIVE_FAIRNESS_MARK}"


def decision_log_html(entries: list[dict[str, Any]]) -> str:
    """The version's entries of the hash-chained decision log (rtml.registry.audit), oldest first."""
    rows = [
        {"#": e.get("seq"), "when": e.get("at"), "what": e.get("action"), "version": e.get("version"),
         "from": e.get("from_version"), "who": e.get("actor"), "for": e.get("on_behalf_of"),
         "why": (e.get("reason") or "")[:300], "hash": str(e.get("hash", ""))[:12]}
        for e in entries
    ]
    return ("<h2>Decisions</h2><p class='muted'>From the append-only decision log in the lake; "
            "<code>rtml audit verify</code> checks its hash chain.</p>" + table(rows))
