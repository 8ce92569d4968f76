"""Shadow comparison: how the challenger would have answered live traffic, next to the champion.

While a challenger waits for approval, the serving endpoint scores every request with it too
(not answered to the caller) and logs both answers to the lake (kind ``shadow``). This stage
summarises those rows for the challenger: agreement of the decisions, decisions that would flip,
score shift, and positive rates by sensitive group. It appends that section to the challenger's
model card, logs ``evaluation/shadow.json`` to its run and tags the version (``shadow.rows``,
``shadow.agreement``), so the person approving in MLflow sees real-traffic differences where they
already read the gates. The ``rtml_monitor`` DAG refreshes it hourly; ``rtml shadow`` on demand.
"""

from __future__ import annotations

import html
import json
import tempfile
from pathlib import Path
from typing import Any

from rtml.lake import Lake
from rtml.names import CHALLENGER, MODEL_CARD
from rtml.reports import SHADOW_MARK, replace_section
from rtml.settings import Settings, get_settings
from rtml.spec import ProjectSpec

CARD = MODEL_CARD
MARK = SHADOW_MARK


def summarize(df: Any, spec: ProjectSpec) -> dict[str, Any]:
    """The comparison of the challenger's shadow answers with the champion's on the same rows."""
    from rtml.features import sensitive_groups

    pos = str(spec.target.positive)
    ch = (df["label"].astype(str) == pos).to_numpy()
    cp = (df["champion_label"].astype(str) == pos).to_numpy()
    score = df["score"].astype(float).to_numpy()
    champ = df["champion_score"].astype(float).to_numpy()
    out: dict[str, Any] = {
        "rows": int(len(df)),
        "champion_versions": sorted(df["champion_version"].astype(str).unique().tolist()),
        "first": str(df["time"].min()),
        "last": str(df["time"].max()),
        "agreement": float((ch == cp).mean()),
        "flipped_to_positive": int((ch & ~cp).sum()),
        "flipped_to_negative": int((~ch & cp).sum()),
        "positive_rate": float(ch.mean()),
        "champion_positive_rate": float(cp.mean()),
        "mean_score": float(score.mean()),
        "champion_mean_score": float(champ.mean()),
        "mean_abs_score_diff": float(abs(score - champ).mean()),
        "by_group": {},
    }
    for attr in spec.sensitive:
        groups = sensitive_groups(df, attr).to_numpy()
        rows = []
        for g in sorted(set(groups)):
            m = groups == g
            rows.append({"group": str(g), "rows": int(m.sum()), "positive_rate": float(ch[m].mean()),
                         "champion_positive_rate": float(cp[m].mean())})
        out["by_group"][attr.name] = rows
    return out


def render(summary: dict[str, Any], version: str) -> str:
    """An HTML section for the model card."""
    e = html.escape
    s = summary
    head = (f"<h2>Shadow traffic (live requests, not answered by this version)</h2>"
            f"<p>{s['rows']} requests from {e(s['first'])} to {e(s['last'])}, answered by champion "
            f"version(s) {e(', '.join(s['champion_versions']))}; version {e(version)} scored them in the shadow.</p>")
    pct = "{:.1%}".format
    table = (
        "<table><tr><th>measure</th><th>this version</th><th>champion</th></tr>"
        f"<tr><td>decisions agreeing</td><td colspan=2>{pct(s['agreement'])}</td></tr>"
        f"<tr><td>would flip to positive / to negative</td><td colspan=2>{s['flipped_to_positive']} / "
        f"{s['flipped_to_negative']}</td></tr>"
        f"<tr><td>positive rate</td><td>{pct(s['positive_rate'])}</td><td>{pct(s['champion_positive_rate'])}</td></tr>"
        f"<tr><td>mean score</td><td>{s['mean_score']:.3f}</td><td>{s['champion_mean_score']:.3f}</td></tr>"
        f"<tr><td>mean |score difference|</td><td colspan=2>{s['mean_abs_score_diff']:.3f}</td></tr></table>"
    )
    groups = ""
    for attr, rows in s["by_group"].items():
        groups += f"<h3>Positive rate by {e(attr)}</h3><table><tr><th>group</th><th>rows</th><th>this version</th><th>champion</th></tr>"
        for r in rows:
            groups += (f"<tr><td>{e(r['group'])}</td><td>{r['rows']}</td><td>{pct(r['positive_rate'])}</td>"
                       f"<td>{pct(r['champion_positive_rate'])}</td></tr>")
        groups += "</table>"
    return f"{MARK}<section id='shadow'>{head}{table}{groups}</section>{MARK}"


def compare(spec: ProjectSpec, settings: Settings | None = None, version: str | None = None) -> dict[str, Any]:
    """Summarise the challenger's (or ``version``'s) shadow rows and attach them to its model card."""
    from mlflow.exceptions import MlflowException

    from rtml.registry.client import mlflow_client

    settings = settings or get_settings()
    client = mlflow_client(settings)
    name = spec.model.registered_name
    if version is None:
        try:
            version = client.get_model_version_by_alias(name, CHALLENGER).version
        except MlflowException:
            return {"ok": True, "model": name, "version": None, "rows": 0,
                    "message": f"{name} has no challenger: nothing is shadow-scored"}
    version = str(version)
    df = Lake(settings).read_batches(spec.dataset.name, "shadow")
    if not df.empty:
        df = df[(df["model"].astype(str) == name) & (df["version"].astype(str) == version)]
    if df.empty:
        return {"ok": True, "model": name, "version": version, "rows": 0,
                "message": f"no shadow traffic for {name} version {version} yet"}
    summary = summarize(df.reset_index(drop=True), spec)
    mv = client.get_model_version(name, version)
    if not mv.run_id:
        raise ValueError(f"{name} version {version} has no MLflow run: nothing to attach the shadow report to")
    with tempfile.TemporaryDirectory(prefix="rtml-shadow-") as tmp:
        tmpdir = Path(tmp)
        (tmpdir / "shadow.json").write_text(json.dumps(summary, indent=2, sort_keys=True))
        client.log_artifact(mv.run_id, str(tmpdir / "shadow.json"), "evaluation")
        try:
            card_path = Path(client.download_artifacts(mv.run_id, CARD, str(tmpdir)))
        except MlflowException:
            card_path = None  # a version evaluated before cards existed: the JSON and tags still tell
        if card_path is not None:
            card_path.write_text(replace_section(card_path.read_text(), render(summary, version), MARK))
            client.log_artifact(mv.run_id, str(card_path), "evaluation")
    client.set_model_version_tag(name, version, "shadow.rows", str(summary["rows"]))
    client.set_model_version_tag(name, version, "shadow.agreement", f"{summary['agreement']:.4f}")
    summary.update(
        ok=True, model=name, version=version,
        message=(f"{name} version {version}: {summary['rows']} shadow requests, "
                 f"{summary['agreement']:.1%} decisions agree with the champion"),
    )
    return summary
