"""Benchmark: the full evaluation (quality + fairness + drift + reports) on growing holdouts.

    .venv/bin/python benchmarks/evaluate.py [--sizes 10000,100000,1000000]

Uses the shipped credit-risk spec (13 features, 2 sensitive attributes) with synthetic data: a
model trained on 20k rows, a 100k-row reference window (its scores feed the mitigation search, as a
training window's out-of-fold scores do), a champion to compare against, and
holdouts of each size (the "newest batches" are the last 10% of the holdout). Evidently sees at
most ``--drift-rows`` rows per frame (seeded sample; the drift section of the summary says
``sampled``), the other gates use every row; fairness includes the mitigation search and the
bootstrap intervals of every group metric. Prints seconds per stage and part and how they grow, and the
CPU seconds of the evaluation (comparable across runs on a shared machine). For a baseline in the same
conditions, run this script with PYTHONPATH pointing at another checkout of rtml.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

# The synthetic data generator is test support (tests/support/synthetic.py), shared with the tests.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    p.add_argument("--sizes", default="10000,100000,1000000")
    p.add_argument("--drift-rows", type=int, default=50_000, help="Evidently sample cap per frame")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]

    t0 = time.perf_counter()
    import evidently  # noqa: F401  (import cost measured apart from the evaluation)

    t_import = time.perf_counter() - t0
    from support.synthetic import synthetic_frame

    from rtml.evaluate.gates import evaluate_frames
    from rtml.spec import load_spec
    from rtml.train import fit_pipeline

    spec = load_spec()
    t = time.perf_counter()
    model = fit_pipeline(spec, synthetic_frame(spec, 20_000, seed=1))
    champion = fit_pipeline(spec, synthetic_frame(spec, 5_000, seed=2))
    reference = synthetic_frame(spec, 100_000, seed=3)
    biggest = synthetic_frame(spec, max(sizes), seed=4, id_offset=10_000_000)
    print(
        f"setup (data + 2 models): {time.perf_counter() - t:.1f}s; evidently import {t_import:.1f}s",
        file=sys.stderr,
    )

    rows = []
    for n in sizes:
        hold = biggest.head(n)
        newest = hold.tail(max(1, n // 10))
        with tempfile.TemporaryDirectory(prefix="rtml-bench-") as tmp:
            t, cpu = time.perf_counter(), time.process_time()
            summary = evaluate_frames(
                spec,
                model,
                reference,
                hold,
                champion=champion,
                champion_version="1",
                newest=newest,
                out_dir=Path(tmp),
                max_drift_rows=args.drift_rows,
                meta={"model": "bench", "version": str(n)},
            )
            total = time.perf_counter() - t
            cpu = time.process_time() - cpu
            sizes_kb = {f.name: f.stat().st_size // 1024 for f in Path(tmp).iterdir()}
        row = {
            "holdout_rows": n,
            "total_s": round(total, 2),
            "cpu_s": round(cpu, 2),
            **summary["timings"],
            **{f"fairness.{k}": v for k, v in (summary["fairness"].get("timings") or {}).items()},
            "mitigation": (summary["fairness"].get("mitigation") or {}).get("search", {}).get("chosen")
            or (summary["fairness"].get("mitigation") or {}).get("reason"),
            "drift_sampled": summary["drift"]["checks"]["holdout"]["sampled"],
            "reports_kb": sum(sizes_kb.values()),
            "decision": "passed" if summary["passed"] else "failed",
        }
        rows.append(row)
        print(json.dumps(row), file=sys.stderr)

    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    cols = [
        "holdout_rows",
        "total_s",
        "cpu_s",
        "prepare_and_score",
        "quality",
        "fairness",
        "fairness.mitigation_search",
        "fairness.group_metrics_and_intervals",
        "drift",
        "reports",
        "drift_sampled",
        "reports_kb",
    ]
    print(" | ".join(f"{c:>17}" for c in cols))
    for r in rows:
        print(" | ".join(f"{r.get(c)!s:>17}" for c in cols))
    print("fairness.* are parts of fairness: the mitigation search on the reference window's scores, then the group "
          f"metrics with {spec.gates.fairness.bootstrap} bootstrap replicates per attribute (plain and mitigated).")
    for r in rows:
        print(f"{r['holdout_rows']:>9} rows: mitigation {r.get('mitigation')}")
    for prev, cur in zip(rows, rows[1:], strict=False):
        ratio = cur["total_s"] / prev["total_s"] if prev["total_s"] else float("nan")
        print(
            f"{prev['holdout_rows']:>9} -> {cur['holdout_rows']:>9} rows: x{cur['holdout_rows'] / prev['holdout_rows']:.0f} "
            f"rows, x{ratio:.1f} time"
        )
    print(
        f"Evidently sees at most {args.drift_rows} rows per frame (seeded sample); quality and fairness use all rows."
    )
    print("cpu_s = CPU seconds of this process (all its threads) during the evaluation: the work, apart from "
          "waiting for a core on a shared machine (then total_s grows, cpu_s does not).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
