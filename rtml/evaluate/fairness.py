"""Fairness with fairlearn: metrics by group, disparity measures, the gate, a mitigated variant.

For each sensitive attribute of the spec, a ``MetricFrame`` gives selection rate, true/false
positive rate, precision and count by group. The disparity measures (demographic parity ratio =
disparate impact, equal opportunity difference and ratio, equalized odds difference) are computed
by fairlearn on the rows of groups with at least ``min_group_size`` rows: smaller groups are
reported but do not gate (their rates are too noisy to judge a model by). The "selected" outcome is
the spec's positive label predicted at the decision threshold.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from rtml.evaluate.replicates import interval, replicate_disparities, replicate_rates

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

    from rtml.spec import FairnessGate

GROUP_METRICS = ("selection_rate", "tpr", "fpr", "precision", "count")


def _num(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(f) or math.isinf(f) else f


def _precision(y_true, y_pred, sample_weight=None) -> float:
    from sklearn.metrics import precision_score

    return precision_score(y_true, y_pred, zero_division=0, sample_weight=sample_weight)


def compress(y_true: np.ndarray, y_pred: np.ndarray, groups: pd.Series):
    """The rows as (y_true, y_pred, group) combinations with their counts as sample weights.

    Every rtml fairness metric is a function of the per-group confusion matrix, so fairlearn on
    these <= 4 x groups weighted rows gives exactly the numbers of the full data, in milliseconds
    instead of minutes at 1M rows (fairlearn 0.15 copies each column element by element per call).
    """
    import numpy as np
    import pandas as pd

    codes, names = pd.factorize(pd.Series(np.asarray(groups, dtype=object)).astype(str), sort=True)
    t = np.asarray(y_true, dtype=np.int64)
    p = np.asarray(y_pred, dtype=np.int64)
    counts = np.bincount(codes * 4 + t * 2 + p, minlength=4 * len(names))
    nz = np.flatnonzero(counts)
    return (
        (nz % 4) // 2,
        nz % 2,
        pd.Series(np.asarray(names, dtype=object)[nz // 4]).astype(str),
        counts[nz].astype(np.float64),
    )


def metric_frame(y_true: np.ndarray, y_pred: np.ndarray, groups: pd.Series, sample_weight=None):
    """fairlearn's MetricFrame with the rtml group metrics (``count`` is added by the caller when
    the rows are weighted, as fairlearn's ``count`` ignores weights)."""
    from fairlearn.metrics import (
        MetricFrame,
        count,
        false_positive_rate,
        selection_rate,
        true_positive_rate,
    )

    metrics = {
        "selection_rate": selection_rate,
        "tpr": true_positive_rate,
        "fpr": false_positive_rate,
        "precision": _precision,
    }
    params = None
    if sample_weight is None:
        metrics["count"] = count
    else:
        params = {m: {"sample_weight": sample_weight} for m in metrics}
    return MetricFrame(
        metrics=metrics, y_true=y_true, y_pred=y_pred, sensitive_features=groups, sample_params=params
    )


def disparities(
    y_true: np.ndarray, y_pred: np.ndarray, groups: pd.Series, sample_weight=None
) -> dict[str, float | None]:
    """The disparity measures as fairlearn's functions define them (``demographic_parity_ratio``,
    ``equal_opportunity_difference``, ``equalized_odds_difference`` = the worse of the TPR and FPR
    differences, between groups), from ONE MetricFrame instead of five (each builds its own: 0.5 s
    per attribute and variant whatever the rows)."""
    from fairlearn.metrics import MetricFrame, false_positive_rate, selection_rate, true_positive_rate

    metrics = {"sel": selection_rate, "tpr": true_positive_rate, "fpr": false_positive_rate}
    params = None if sample_weight is None else {m: {"sample_weight": sample_weight} for m in metrics}
    mf = MetricFrame(
        metrics=metrics, y_true=y_true, y_pred=y_pred, sensitive_features=groups, sample_params=params
    )
    diff = mf.difference(method="between_groups")
    ratio = mf.ratio(method="between_groups")
    return {
        "demographic_parity_ratio": _num(ratio["sel"]),
        "demographic_parity_difference": _num(diff["sel"]),
        "equal_opportunity_difference": _num(diff["tpr"]),
        "equal_opportunity_ratio": _num(ratio["tpr"]),
        "equalized_odds_difference": _num(max(diff["tpr"], diff["fpr"])),
    }


def _extremes(table: list[dict[str, Any]], metric: str, flag: str = "gating") -> tuple[dict, dict] | None:
    rows = [r for r in table if r[flag] and r[metric] is not None]
    if len(rows) < 2:
        return None
    return min(rows, key=lambda r: r[metric]), max(rows, key=lambda r: r[metric])


DISPARITIES = (
    "demographic_parity_ratio",
    "demographic_parity_difference",
    "equal_opportunity_difference",
    "equal_opportunity_ratio",
    "equalized_odds_difference",
)


def _seed(random_state: int, name: str) -> list[int]:
    """A bootstrap seed per attribute: the same rows and spec give the same intervals."""
    import zlib

    return [int(random_state) & 0xFFFFFFFF, zlib.crc32(name.encode())]


def _bootstrap(
    ct: np.ndarray, cp: np.ndarray, cg: pd.Series, w: np.ndarray, names: list[str], n_boot: int, seed: list[int]
) -> dict[str, np.ndarray]:
    """Bootstrap replicates of the per-group counts: resampling the rows with replacement is a
    multinomial draw of the (group, y, decision) cell counts, exact and O(cells) per replicate."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    n = int(w.sum())
    draws = rng.multinomial(n, w / n, size=n_boot).astype(float)  # (B, cells)
    gi = pd.Index(names).get_indexer(cg)
    G = len(names)

    def per_group(mask: np.ndarray) -> np.ndarray:
        out = np.zeros((n_boot, G))
        for j in range(G):
            out[:, j] = draws[:, (gi == j) & mask].sum(axis=1)
        return out

    ones = np.ones(len(w), dtype=bool)
    return {
        "N": per_group(ones),
        "P": per_group(ct == 1),
        "S": per_group(cp == 1),
        "TP": per_group((ct == 1) & (cp == 1)),
    }


def _interval(values: np.ndarray, confidence: float) -> list[float | None] | None:
    import numpy as np

    lo, hi = interval(values, confidence)
    return None if np.isnan(lo) else [_num(lo), _num(hi)]


def attribute_fairness(
    name: str,
    y_true: np.ndarray,
    y_pred: np.ndarray,
    groups: pd.Series,
    gate: FairnessGate,
    random_state: int = 0,
) -> dict[str, Any]:
    """Group table (with bootstrap intervals), disparities and gate checks for one attribute.

    A group with fewer than ``min_group_size`` rows is "insufficient data" for every metric; one
    with fewer than ``min_group_positives`` positives (negatives) is for TPR (FPR). Insufficient
    groups are shown but do not decide the gate. The disparities are fairlearn's functions on the
    rows of the groups that qualify for each: selection rate (disparate impact) over the groups
    with enough rows, TPR (equal opportunity) over those with enough positives, and equalized odds
    as the larger of the TPR and FPR differences (= fairlearn's ``equalized_odds_difference`` when
    the same groups qualify for both). ``gate.decide_on`` picks what meets the limit: the point
    estimate or a bound of the seeded bootstrap interval (``gate.bootstrap`` replicates).
    """
    import numpy as np
    import pandas as pd
    from fairlearn.metrics import MetricFrame, false_positive_rate

    y_true = np.asarray(y_true)
    y_pred = np.asarray(y_pred)
    ct, cp, cg, w = compress(y_true, y_pred, groups)
    names = sorted(set(cg))
    mf = metric_frame(ct, cp, cg, sample_weight=w)
    by = mf.by_group
    sizes = pd.Series(w).groupby(cg.to_numpy()).sum()
    positives = pd.Series(w[ct == 1]).groupby(cg.to_numpy()[ct == 1]).sum()
    min_pos = gate.min_group_positives
    n_boot = gate.bootstrap
    boot = _bootstrap(ct, cp, cg, w, names, n_boot, _seed(random_state, name)) if n_boot else None
    boot_rates = replicate_rates(boot["N"], boot["P"], boot["S"], boot["TP"]) if boot else None
    table = []
    for j, g in enumerate(names):
        row: dict[str, Any] = {"group": str(g)}
        for m in GROUP_METRICS[:-1]:
            row[m] = _num(by.loc[g, m])
        row["count"] = int(sizes.get(g, 0))
        row["positives"] = int(positives.get(g, 0))
        row["negatives"] = row["count"] - row["positives"]
        row["gating"] = row["count"] >= gate.min_group_size
        row["tpr_gating"] = row["gating"] and row["positives"] >= min_pos
        row["fpr_gating"] = row["gating"] and row["negatives"] >= min_pos
        insufficient = []
        if not row["gating"]:
            insufficient.append(f"fewer than {gate.min_group_size} rows")
        else:
            if not row["tpr_gating"]:
                insufficient.append(f"TPR: fewer than {min_pos} positives")
            if not row["fpr_gating"]:
                insufficient.append(f"FPR: fewer than {min_pos} negatives")
        row["insufficient_data"] = "; ".join(insufficient) or None
        if boot_rates is not None:
            for m in ("selection_rate", "tpr", "fpr"):
                row[f"{m}_ci"] = _interval(boot_rates[m][:, j], gate.confidence)
        table.append(row)
    big = [r["group"] for r in table if r["gating"]]
    small = [r["group"] for r in table if not r["gating"]]
    tpr_groups = [r["group"] for r in table if r["tpr_gating"]]
    fpr_groups = [r["group"] for r in table if r["fpr_gating"]]
    result: dict[str, Any] = {
        "attribute": name,
        "groups": table,
        "overall": {**{m: _num(mf.overall[m]) for m in GROUP_METRICS[:-1]}, "count": len(y_true)},
        "gating_groups": big,
        "small_groups": small,
        "tpr_groups": tpr_groups,
        "fpr_groups": fpr_groups,
        "min_group_size": gate.min_group_size,
        "min_group_positives": min_pos,
        "decide_on": gate.decide_on,
        "confidence": gate.confidence if n_boot else None,
        "bootstrap": n_boot,
        "intervals": {},
        "checks": [],
        "passed": True,
    }
    result.update(dict.fromkeys(DISPARITIES))
    if len(big) < 2:
        result["note"] = f"fewer than 2 groups with at least {gate.min_group_size} rows: not gated"
        return result

    def rows_of(keep_groups: list[str]):
        keep = cg.isin(keep_groups).to_numpy()
        return ct[keep], cp[keep], cg[keep].reset_index(drop=True), w[keep]

    t_, p_, g_, w_ = rows_of(big)
    dp = disparities(t_, p_, g_, w_)
    result["demographic_parity_ratio"] = dp["demographic_parity_ratio"]
    result["demographic_parity_difference"] = dp["demographic_parity_difference"]
    tpr_gap = fpr_gap = None
    if len(tpr_groups) >= 2:
        d = disparities(*rows_of(tpr_groups))
        result["equal_opportunity_difference"] = d["equal_opportunity_difference"]
        result["equal_opportunity_ratio"] = d["equal_opportunity_ratio"]
        tpr_gap = d["equal_opportunity_difference"]
    if len(fpr_groups) >= 2:
        t_, p_, g_, w_ = rows_of(fpr_groups)
        fmf = MetricFrame(
            metrics=false_positive_rate, y_true=t_, y_pred=p_, sensitive_features=g_,
            sample_params={"sample_weight": w_},
        )
        fpr_gap = _num(fmf.difference())
    if tpr_gap is not None or fpr_gap is not None:
        result["equalized_odds_difference"] = max(v for v in (tpr_gap, fpr_gap) if v is not None)
    if boot is not None:
        idx = {g: j for j, g in enumerate(names)}

        def mask(gs: list[str]) -> np.ndarray:
            m = np.zeros(len(names), dtype=bool)
            m[[idx[g] for g in gs]] = True
            return m

        bd = replicate_disparities(boot, mask(big), mask(tpr_groups), mask(fpr_groups))
        for m in DISPARITIES:
            result["intervals"][m] = None if result[m] is None else _interval(bd[m], gate.confidence)

    def check(metric: str, limit: float, op: str, by_metric: str, label: str, flag: str) -> None:
        value = result[metric]
        if value is None:
            return
        ci = result["intervals"].get(metric)
        judged, basis = value, "estimate"
        if gate.decide_on != "estimate" and ci is not None:
            lenient = gate.decide_on == "lenient_bound"
            # ">=" limits: the lenient bound is the interval's top; "<=" limits: its bottom
            judged = ci[1] if (op == ">=") == lenient else ci[0]
            basis = f"{gate.decide_on.replace('_', ' ')} of the {gate.confidence:.0%} interval"
        ok = judged >= limit if op == ">=" else judged <= limit
        ext = _extremes(table, by_metric, flag)
        detail = ""
        pair: list[str] = []
        if ext is not None:
            low, high = ext
            pair = [low["group"], high["group"]]
            detail = (
                f": {by_metric} of group {low['group']!r} is {low[by_metric]:.3f} vs "
                f"{high[by_metric]:.3f} for group {high['group']!r}"
            )
        reason = None
        if not ok:
            bad = "<" if op == ">=" else ">"
            shown = f"{value:.3f}" if basis == "estimate" else f"{value:.3f} ({basis} {judged:.3f})"
            reason = f"fairness: {name}: {label} {shown} {bad} {limit:g}{detail}"
        result["checks"].append(
            {
                "metric": metric,
                "value": value,
                "interval": ci,
                "judged": judged,
                "basis": basis,
                "limit": limit,
                "op": op,
                "passed": ok,
                "groups": pair,
                "by": by_metric,
                "reason": reason,
            }
        )

    check(
        "demographic_parity_ratio", gate.disparate_impact_min, ">=", "selection_rate",
        "disparate impact (demographic parity ratio)", "gating",
    )
    check(
        "equal_opportunity_difference", gate.equal_opportunity_diff_max, "<=", "tpr",
        "equal opportunity difference", "tpr_gating",
    )
    # Equalized odds difference is the larger of the TPR and FPR gaps: name the one that is larger.
    eo_by = "fpr" if (fpr_gap or 0) > (tpr_gap or 0) else "tpr"
    check(
        "equalized_odds_difference", gate.equalized_odds_diff_max, "<=", eo_by,
        "equalized odds difference", f"{eo_by}_gating",
    )
    result["passed"] = all(c["passed"] for c in result["checks"])
    return result


def _decision_quality(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float | None]:
    from sklearn.metrics import balanced_accuracy_score, f1_score

    return {
        "f1": float(f1_score(y_true, y_pred, zero_division=0)),
        "balanced_accuracy": float(balanced_accuracy_score(y_true, y_pred)),
        "selection_rate": float(y_pred.mean()) if len(y_pred) else None,
    }


def evaluate_fairness(
    y_true: np.ndarray,
    scores: np.ndarray,
    sensitive: pd.DataFrame,
    gate: FairnessGate,
    threshold: float,
    *,
    train: tuple[np.ndarray, np.ndarray, pd.DataFrame] | None = None,
    random_state: int = 0,
    y_pred: np.ndarray | None = None,
    plain_pred: np.ndarray | None = None,
) -> dict[str, Any]:
    """The fairness section for every sensitive attribute (columns of ``sensitive``).

    The gate judges ``y_pred`` (the candidate's decisions; default: ``scores >= threshold``).
    For a plain candidate, ``train`` = (scores, y, sensitive frame) of the training window enables
    the mitigated variant (when ``gate.mitigate``): the same deterministic rule that would be
    registered, reported next to the plain model under ``mitigated``. For a mitigated candidate,
    ``plain_pred`` (the plain model's decisions) is reported next to it under ``plain``.
    """
    import time

    import numpy as np

    t0 = time.perf_counter()
    y_true = np.asarray(y_true, dtype=int)
    plain_threshold = (np.asarray(scores) >= threshold).astype(int)
    own = plain_threshold if y_pred is None else np.asarray(y_pred, dtype=int)
    out: dict[str, Any] = {
        "threshold": threshold,
        "variant": "plain" if y_pred is None else "mitigated",
        "attributes": {},
        "reasons": [],
        "passed": True,
    }
    mit_pred, mit_error, method = None, None, None
    if gate.mitigate and train is not None and y_pred is None:
        tr_scores, tr_y, tr_sens = train
        from rtml.evaluate.fairsearch import mitigate

        try:  # one rule over the intersection of all attributes, then judged per attribute
            mit_pred, rule, report = mitigate(
                tr_scores, tr_y, tr_sens[list(sensitive.columns)], scores, sensitive, random_state, gate, threshold
            )
            out["mitigation"] = {
                "mitigated": rule is not None,
                "reason": report["reason"],
                "search": report,
                "rule": None if rule is None else rule.to_dict(),
                "thresholds": None if rule is None else rule.describe(),
            }
            if rule is not None:
                method = f"{rule.meta['method']}; kept: {rule.meta['candidate']}"
            else:
                mit_error = f"not mitigated: {report['reason']}"
        except (ValueError, KeyError) as err:  # e.g. no group with both outcomes in training
            mit_error = str(err)
    t1 = time.perf_counter()
    judged = with_intersections(sensitive, gate)  # crossed attributes judged, not fitted on
    for name in judged.columns:
        groups = judged[name].reset_index(drop=True)
        res = attribute_fairness(name, y_true, own, groups, gate, random_state)
        if INTERSECTION in name:
            res["intersection"] = name.split(INTERSECTION)
        res["plain_quality"] = _decision_quality(y_true, own)  # the candidate's own decisions
        if mit_pred is not None:
            mit = attribute_fairness(name, y_true, mit_pred, groups, gate, random_state)
            mit["quality"] = _decision_quality(y_true, mit_pred)
            mit["method"] = method
            res["mitigated"] = mit
        elif mit_error is not None:
            res["mitigated"] = {"error": mit_error}
        if plain_pred is not None:
            pl = attribute_fairness(name, y_true, np.asarray(plain_pred, dtype=int), groups, gate, random_state)
            pl["quality"] = _decision_quality(y_true, np.asarray(plain_pred, dtype=int))
            pl["method"] = f"plain model: score >= {threshold:g} for every group"
            res["plain"] = pl
        out["attributes"][name] = res
        for c in res["checks"]:
            if not c["passed"]:
                out["reasons"].append(c["reason"])
    out["passed"] = not out["reasons"]
    out["timings"] = {
        "mitigation_search": round(t1 - t0, 3),
        "group_metrics_and_intervals": round(time.perf_counter() - t1, 3),
    }
    return out


# --- groups of rows: shared by the gate and live monitoring ------------------------------------------
if TYPE_CHECKING:
    from rtml.spec import ProjectSpec


INTERSECTION = " x "  # "sex x age_group"; attribute names have no spaces, so no name collides


def with_intersections(sensitive: pd.DataFrame, gate: FairnessGate) -> pd.DataFrame:
    """``sensitive`` (one column per attribute) plus one column per ``gate.intersections`` entry:
    the attributes crossed, named ``"a x b"``, groups ``"<a's group> & <b's group>"``."""
    import pandas as pd

    extra = {}
    for i, combo in enumerate(gate.intersections):
        missing = [a for a in combo if a not in sensitive.columns]
        if missing:
            raise ValueError(f"gates.fairness.intersections[{i}]: no sensitive attribute {missing[0]!r}")
        keys = sensitive[combo[0]].astype(str)
        for a in combo[1:]:
            keys = keys + " & " + sensitive[a].astype(str)
        extra[INTERSECTION.join(combo)] = keys.astype(object)
    if not extra:
        return sensitive
    return pd.concat([sensitive, pd.DataFrame(extra, index=sensitive.index)], axis=1)


def fairness_groups(df: pd.DataFrame, spec: ProjectSpec) -> dict[str, pd.Series]:
    """The group of each row of ``df`` per sensitive attribute of the spec (``rtml.features``'
    grouping) and per intersection, by name: what the gate and live monitoring judge, alike."""
    from rtml.features import sensitive_frame

    frame = with_intersections(sensitive_frame(df, spec), spec.gates.fairness)
    return {name: frame[name] for name in frame.columns}
