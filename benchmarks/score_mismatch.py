"""Measure: does the mitigated variant select each group at the rate its thresholds were fitted for?

    .venv/bin/python benchmarks/score_mismatch.py [--seeds 0-39] [--spec rtml/examples/credit_risk.yaml] [--rows N]

The mitigation search fits per-group thresholds on the training rows' out-of-fold scores (models on
(k-1)/k of the rows, ``rtml.train.oof_scores``); the served variant applies them to the plain model
trained on ALL the rows. Per replay seed this fits the same rule (``search_rule``, as ``mitigate``
does) and applies it to four sets of scores:

* ``fit``: the out-of-fold scores of the training rows (the rates the rule was fitted for);
* ``served, holdout``: the served model on the out-of-time holdout (what the gate judges);
* ``folds, holdout``: each fold model on the same holdout rows (scores distributed like the fit);
* ``served, train``: the served model on its own training rows (in-sample).

``served, holdout`` minus ``folds, holdout`` (same rows, same thresholds) is the part of the gap that
comes from the served model alone, not from the holdout's sampling. The gate is then judged with the
same rule on the holdout twice, with the served model's scores and with the fold models' (mean over
the folds): whether serving scores distributed like the fit would pass more often.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from mitigation_seeds import _seeds  # noqa: E402


def _wilson(k: float, n: int) -> str:
    z = 1.96
    p = k / n
    mid = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return f"{k:g}/{n} ({p:.0%}, 95% interval {mid - half:.0%}-{mid + half:.0%})"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", default="0-39", help="replay seeds: 0-39 or 0,3,5-7")
    p.add_argument("--spec", default=str(ROOT / "rtml" / "examples" / "credit_risk.yaml"))
    p.add_argument("--rows", type=int, help="events replayed per seed (default: the whole table)")
    args = p.parse_args(argv)

    import numpy as np
    import pandas as pd
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.model_selection import StratifiedKFold

    from rtml.evaluate.fairness import evaluate_fairness
    from rtml.evaluate.fairsearch import search_rule
    from rtml.features import build_pipeline, sensitive_frame, target_vector, thread_limit, to_frame
    from rtml.ingest.produce import build
    from rtml.spec import load_spec
    from rtml.train import OOF_FOLDS, fit_pipeline, split_holdout

    spec = load_spec(Path(args.spec))
    gate, thr, rs = spec.gates.fairness, spec.gates.quality.decision_threshold, spec.model.random_state
    rates, passes, losses = [], {"served": [], "folds": []}, {"served": [], "folds": []}
    t0 = time.perf_counter()
    for seed in _seeds(args.seeds):
        events, labels = build(spec, rows=args.rows, seed=seed, start=datetime(2026, 1, 1, tzinfo=UTC))
        frame = events.merge(labels[[spec.event_id, spec.target.name]], on=spec.event_id)
        train, hold = split_holdout(frame, spec)
        X_tr, X_ho = to_frame(train, spec), to_frame(hold, spec)
        y_tr = target_vector(train[spec.target.name], spec)
        y_ho = target_vector(hold[spec.target.name], spec)
        served = fit_pipeline(spec, train, rs)
        # the folds of rtml.train.oof_scores (cross_val_predict fits clones on these same splits)
        folds = min(OOF_FOLDS, int(min(y_tr.sum(), len(y_tr) - y_tr.sum())))
        cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=rs)
        oof, fold_ho = np.zeros(len(y_tr)), []
        with thread_limit(len(y_tr)):
            for fit_rows, out_rows in cv.split(X_tr, y_tr):
                m = build_pipeline(spec, rs).fit(X_tr.iloc[fit_rows], y_tr[fit_rows])
                oof[out_rows] = m.predict_proba(X_tr.iloc[out_rows])[:, 1]
                fold_ho.append(m.predict_proba(X_ho)[:, 1])
            s_ho = served.predict_proba(X_ho)[:, 1]
            s_tr = served.predict_proba(X_tr)[:, 1]
        sens_tr = sensitive_frame(train, spec).reset_index(drop=True)
        sens_ho = sensitive_frame(hold, spec).reset_index(drop=True)
        rule, report = search_rule(oof, y_tr, sens_tr, gate, thr, rs, holdout_rows=len(hold),
                                   reductions=gate.reductions)
        if rule is None:
            print(f"seed {seed:>3}: no mitigated variant ({report['reason']})", flush=True)
            continue
        k_tr, k_ho = rule.keys(sens_tr), rule.keys(sens_ho)
        decided = {
            "fit": (rule.decide(oof, k_tr), sens_tr),
            "served, holdout": (rule.decide(s_ho, k_ho), sens_ho),
            "folds, holdout": (np.mean([rule.decide(f, k_ho) for f in fold_ho], axis=0), sens_ho),
            "served, train": (rule.decide(s_tr, k_tr), sens_tr),
        }
        for source, (d, sens) in {**decided, "holdout rows": (np.ones(len(y_ho)), sens_ho)}.items():
            count = source == "holdout rows"
            row = {"seed": seed, "source": source, "all rows": float(np.sum(d) if count else np.mean(d))}
            for a in sens.columns:
                g = sens[a].astype(str).to_numpy()
                row.update({f"{a}={v}": float(d[g == v].sum() if count else d[g == v].mean()) for v in np.unique(g)})
            rates.append(row)
        plain_ba = balanced_accuracy_score(y_ho, s_ho >= thr)
        judged = []
        for scores in (s_ho, *fold_ho):  # the gate on the same holdout rows and the same rule
            d = rule.decide(scores, k_ho)
            res = evaluate_fairness(y_ho, scores, sens_ho, gate, thr, y_pred=d, random_state=rs)
            judged.append((bool(res["passed"]), plain_ba - balanced_accuracy_score(y_ho, d)))
        (served_ok, served_loss), by_fold = judged[0], judged[1:]
        passes["served"].append(served_ok)
        losses["served"].append(served_loss)
        passes["folds"].append(float(np.mean([ok for ok, _ in by_fold])))
        losses["folds"].append(float(np.mean([q for _, q in by_fold])))
        means = {s: f"{np.mean(d):.3f}" for s, (d, _) in decided.items()}
        print(f"seed {seed:>3}: selection rate {means}; gate served {'PASS' if served_ok else 'fail'}, "
              f"fold models {sum(ok for ok, _ in by_fold)}/{len(by_fold)}", flush=True)

    df = pd.DataFrame(rates)
    groups = [c for c in df.columns if c not in ("seed", "source")]
    by = {s: df[df.source == s].set_index("seed")[groups] for s in df.source.unique()}
    table = pd.DataFrame({"fit": by["fit"].mean()})
    for s in ("served, holdout", "folds, holdout", "served, train"):
        table[f"{s} - fit"] = (by[s] - by["fit"]).mean()
    table["served - folds, same holdout rows"] = (by["served, holdout"] - by["folds, holdout"]).mean()
    table["holdout rows (mean)"] = by["holdout rows"].mean().round(0)
    print("mean selection rate of the fitted rule per group, and mean differences over the seeds:")
    print(table.round(3).to_string())
    n = len(passes["served"])
    for s, label in (("served", "the served model's scores"), ("folds", "the fold models' scores (mean over folds)")):
        print(f"gate on the holdout with {label}: passes {_wilson(round(sum(passes[s]), 1), n)}; "
              f"mean balanced-accuracy loss vs the plain model {np.mean(losses[s]):+.3f}")
    print(f"{time.perf_counter() - t0:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
