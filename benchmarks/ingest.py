"""Ingestion throughput: read + validate + write of a replayed stream vs plain pandas, same rows, same run.

    python benchmarks/ingest.py [--rows 1000000] [--format jsonl|csv|parquet] [--files 10]

The stream is the demo dataset replayed by the producer into landing files (a local folder). Two
pipelines read exactly those files:

* plain: ``pandas.read_json(lines=True)`` (or ``read_csv`` / ``read_parquet``) per file, concat,
  ``DataFrame.to_parquet`` - no checks at all;
* rtml: the landing source + the spec's contract (types, ranges, categories, required fields,
  NaN/inf, duplicate ids, sizes) + the lake's deterministic Parquet write + manifest.

It prints rows/s of both, their ratio, and the cost of validation alone against the plain write
(the aim: validation < half of the plain write time). Timings are wall-clock on this machine.
"""

from __future__ import annotations

import argparse
import io
import shutil
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd

from rtml.ingest import produce as prod
from rtml.ingest.batches import ingest_interval
from rtml.ingest.contract import Contract
from rtml.ingest.sources import LandingSource, landing_store
from rtml.lake import Lake, arrow_to_parquet_bytes
from rtml.settings import Settings
from rtml.spec import load_spec

T0 = datetime(2026, 11, 25, 0, 0, tzinfo=UTC)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--format", choices=["jsonl", "csv", "parquet"], default="jsonl")
    ap.add_argument("--files", type=int, default=10, help="landing files the rows are spread over")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = ap.parse_args()

    spec = load_spec()
    tmp = Path(tempfile.mkdtemp(prefix="rtml-bench-"))
    settings = Settings(storage="local", home=tmp, lake_uri=str(tmp / "lake"))
    rate = 1000.0
    span = args.rows / rate
    try:
        t = time.perf_counter()
        events, _ = prod.build(spec, rows=args.rows, start=T0, rate=rate, seed=0)
        keys = prod.write_landing(
            spec, "events", events, spec.event_time, args.format, file_seconds=span / args.files, settings=settings
        )
        del events
        store = landing_store(settings)
        size = sum(len(store.get(k)) for k in keys)
        print(f"stream: {args.rows:,} rows in {len(keys)} {args.format} files, {size / 1e6:.0f} MB "
              f"(generated in {time.perf_counter() - t:.1f}s)")
        end = T0 + timedelta(seconds=span + 1)

        # --- plain pandas: read + write Parquet, no checks -------------------------------------------
        reader = {"jsonl": lambda b: pd.read_json(io.BytesIO(b), lines=True),
                  "csv": lambda b: pd.read_csv(io.BytesIO(b)),
                  "parquet": lambda b: pd.read_parquet(io.BytesIO(b))}[args.format]
        t0 = time.perf_counter()
        df = pd.concat([reader(store.get(k)) for k in keys], ignore_index=True)
        t1 = time.perf_counter()
        df.to_parquet(tmp / "plain.parquet", index=False)
        t2 = time.perf_counter()
        plain_read, plain_write = t1 - t0, t2 - t1
        n_plain = len(df)
        del df
        fast_read = None
        if args.format == "jsonl":
            # The same plain pipeline with pandas' fastest JSON reader, for an honest second baseline.
            t0 = time.perf_counter()
            df = pd.concat([pd.read_json(io.BytesIO(store.get(k)), lines=True, engine="pyarrow") for k in keys],
                           ignore_index=True)
            fast_read = time.perf_counter() - t0
            del df

        # --- rtml: the same phases one by one, then the whole batch end to end -------------------------
        contract = Contract(spec, "events")
        t0 = time.perf_counter()
        batch = LandingSource(store, spec.dataset.name, "events", T0, end).read(contract)
        t1 = time.perf_counter()
        res = contract.validate(batch.raw)
        t2 = time.perf_counter()
        Lake(settings).store.put("bench/part-00000.parquet", arrow_to_parquet_bytes(res.table))
        t3 = time.perf_counter()
        r_read, r_validate, r_write = t1 - t0, t2 - t1, t3 - t2
        assert len(res) == args.rows and not res.rejects, res.reason_counts
        del batch, res

        t0 = time.perf_counter()
        summary = ingest_interval(spec, "events", T0, end, settings=settings)
        total = time.perf_counter() - t0
        assert summary["accepted"] == args.rows

        plain = plain_read + plain_write
        print(f"plain pandas : read {plain_read:6.2f}s  write {plain_write:6.2f}s  total {plain:6.2f}s  "
              f"{n_plain / plain:>10,.0f} rows/s")
        if fast_read is not None:
            fast = fast_read + plain_write
            print(f"plain (arrow): read {fast_read:6.2f}s  write {plain_write:6.2f}s  total {fast:6.2f}s  "
                  f"{n_plain / fast:>10,.0f} rows/s   (pandas read_json engine='pyarrow')")
        print(f"rtml ingest  : read {r_read:6.2f}s  validate {r_validate:5.2f}s  write {r_write:6.2f}s  "
              f"end-to-end {total:6.2f}s  {args.rows / total:>10,.0f} rows/s")
        print(f"ratio        : rtml end-to-end / plain = {total / plain:.2f}x time "
              f"({(args.rows / total) / (n_plain / plain):.2f}x the plain rows/s)")
        if fast_read is not None:
            print(f"ratio (arrow): rtml end-to-end / plain with the pyarrow reader = {total / fast:.2f}x time")
        print(f"validation   : {r_validate:.2f}s = {r_validate / plain_write:.2f} of the plain write time "
              f"(aim < 0.5: {'met' if r_validate < 0.5 * plain_write else 'NOT met'})")
    finally:
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
