"""Ingestion throughput: read + validate + write of a replayed stream vs plain pandas, same rows, same run.

    python benchmarks/ingest.py [--rows 1000000] [--format jsonl|csv|parquet] [--files 10] [--no-kafka]
    python benchmarks/ingest.py --history 100,10000
    python benchmarks/ingest.py --dedupe 10 [--rows 100000]
    python benchmarks/ingest.py --commit-cost 100,1000

The stream is the demo dataset replayed by the producer into landing files (a local folder). Two
pipelines read exactly those files:

* plain: ``pandas.read_json(lines=True)`` (or ``read_csv`` / ``read_parquet``) per file, concat,
  ``DataFrame.to_parquet`` - no checks at all;
* rtml: the landing source + the spec's contract (types, ranges, categories, required fields,
  NaN/inf, duplicate ids, sizes) + one commit to the lake's Iceberg table + manifest.

It prints rows/s of both, their ratio, and the cost of validation alone against the plain write
(the aim: validation < half of the plain write time), and rtml's ingestion into tables beside the
manifest-based writer before tables (the same source and contract, then Parquet parts at keys
fixed by the batch id and the manifest; kept here as the baseline): the aim is within 1.5x.

Kafka (unless ``--no-kafka``): the stack's KRaft broker is started in the benchmark's temporary home
on free ports (as the tests start it; the jars come from the machine's cache), the same rows are
produced to a one-partition topic, and one ingest process (one worker) drains it: topic -> contract
-> lake -> manifest -> offsets committed, timed until the group's offset is at the end of the topic.
Beside it, a plain consumer that only pulls the same messages into Python (the floor of any Kafka
source in Python) and the landing zone's end-to-end rate above (the aim: at least 100k records/s).

``--commit-cost A,B`` measures what one Iceberg batch commit (:meth:`Tables.commit_batch`, the real
overwrite-by-batch) costs when the table already holds A, then B, batches committed the same way:
each table is built by commits, then the sizes take turns committing 10 more batches, 5 rounds, and
the median time per commit of each size and their ratio are printed (the aim: flat, within 1.5x).

``--history A,B`` measures what reading one day's training window costs when the lake holds A, then
B, committed batches (the same batches in the window at both sizes, the rest before it): the aim is
that the read costs what the window costs, within 1.5x from A to B. It prints how each lake was built
(Iceberg batches by append: see ``history``; the daily maintenance of ``rtml_maintenance`` runs
whenever the batches reach a new day, as it would in use) and the best of 5 reads, the sizes in turns. Timings are
wall-clock on this machine.

``--dedupe N`` measures the cross-batch duplicate check of a drain of N batches of ``--rows`` events
each (every batch repeats a few ids of earlier ones): the per-batch rebuild of every id in the
lookback (what each batch did before) against the drain's :class:`CommittedIds`
(earlier batches read once, the batch's own ids looked up), the same quarantine in both.
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
    ap.add_argument("--no-kafka", action="store_true", help="skip the Kafka topic -> lake measurement")
    ap.add_argument("--history", help="A,B: read cost of one day's window with A then B batches in the lake")
    ap.add_argument("--commit-cost", help="A,B: time of one Iceberg batch commit with A then B batches in the table")
    ap.add_argument("--kafka-before", action="store_true",
                    help="Kafka: also drain the topic with the former per-batch duplicate check, for comparison")
    ap.add_argument("--dedupe", type=int, help="N: the duplicate check of a drain of N batches of --rows events")
    args = ap.parse_args()
    if args.dedupe:
        dedupe(args.dedupe, args.rows, args.keep)
        return
    if args.history:
        sizes = [int(x) for x in args.history.split(",")]
        history(sizes, args.keep)
        return
    if args.commit_cost:
        commit_cost([int(x) for x in args.commit_cost.split(",")], args.keep)
        return

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

        Lake(settings).tables.catalog.list_namespaces()  # pyiceberg imported, the catalog made: once per process
        t0, c0 = time.perf_counter(), time.process_time()
        summary = ingest_interval(spec, "events", T0, end, settings=settings)
        total, cpu = time.perf_counter() - t0, time.process_time() - c0
        assert summary["accepted"] == args.rows

        plain = plain_read + plain_write
        print(f"plain pandas : read {plain_read:6.2f}s  write {plain_write:6.2f}s  total {plain:6.2f}s  "
              f"{n_plain / plain:>10,.0f} rows/s")
        if fast_read is not None:
            fast = fast_read + plain_write
            print(f"plain (arrow): read {fast_read:6.2f}s  write {plain_write:6.2f}s  total {fast:6.2f}s  "
                  f"{n_plain / fast:>10,.0f} rows/s   (pandas read_json engine='pyarrow')")
        print(f"rtml ingest  : read {r_read:6.2f}s  validate {r_validate:5.2f}s  write {r_write:6.2f}s  "
              f"end-to-end {total:6.2f}s  {args.rows / total:>10,.0f} rows/s  (cpu {cpu:.2f}s)")
        print(f"ratio        : rtml end-to-end / plain = {total / plain:.2f}x time "
              f"({(args.rows / total) / (n_plain / plain):.2f}x the plain rows/s)")
        if fast_read is not None:
            print(f"ratio (arrow): rtml end-to-end / plain with the pyarrow reader = {total / fast:.2f}x time")
        print(f"validation   : {r_validate:.2f}s = {r_validate / plain_write:.2f} of the plain write time "
              f"(aim < 0.5: {'met' if r_validate < 0.5 * plain_write else 'NOT met'})")

        # --- the same batch by the manifest-based writer before tables (a lake of its own, same files) --
        old = Settings(storage="local", home=tmp / "old", lake_uri=str(tmp / "lake_old"))
        old_landing = landing_store(old)
        for k in keys:
            old_landing.put(k, store.get(k))
        t0 = time.perf_counter()
        assert _ingest_as_files(spec, old, T0, end) == args.rows
        files_total = time.perf_counter() - t0
        print(f"before tables: end-to-end {files_total:6.2f}s  {args.rows / files_total:>10,.0f} rows/s  "
              "(Parquet parts + manifest, the writer before tables)")
        print(f"ratio        : rtml into tables / the writer before tables = {total / files_total:.2f}x time "
              f"(aim <= 1.5: {'met' if total <= 1.5 * files_total else 'NOT met'})")

        if not args.no_kafka:
            kafka(spec, events, args.rows, total, cpu, tmp, rebuild=args.kafka_before)
    finally:
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def kafka(spec, events: pd.DataFrame, rows: int, landing_total: float, landing_cpu: float, tmp: Path,
          rebuild: bool = False) -> None:
    """Kafka topic -> committed lake batches with one ingest process, beside a plain consumer.

    Wall time and this process's CPU time (all its threads, librdkafka's included; the broker's
    not): on a shared machine the CPU time says what one worker costs when others take the cores."""
    from rtml.ingest.batches import ingest_kafka
    from rtml.ingest.kafka import ensure_topic
    from rtml.ingest.produce import write_kafka
    from rtml.platform.stack import Stack, free_port_block

    settings = Settings(storage="local", home=tmp / "kafka", lake_uri=str(tmp / "lake_kafka"),
                        kafka_port=free_port_block(2), kafka_partitions=1)
    stack = Stack(settings)
    try:
        t = time.perf_counter()
        stack.up(["kafka"])
        up = time.perf_counter() - t
        topic = f"rtml.{spec.dataset.name}.events"
        ensure_topic(topic, partitions=1, settings=settings)
        t = time.perf_counter()
        sent = write_kafka(events, topic, spec.event_time, settings=settings, key_column=spec.event_id)
        produced = time.perf_counter() - t
        assert sent == rows
        print(f"kafka        : broker up in {up:.1f}s; {rows:,} records produced to {topic} in {produced:.1f}s")

        plain, plain_cpu = _plain_consume(settings, topic, rows)
        print(f"kafka plain  : consume only (messages into Python, no parse)      {plain:6.2f}s  "
              f"{rows / plain:>10,.0f} records/s  (cpu {plain_cpu:.2f}s)")

        if rebuild:
            # The same drain with the duplicate check each batch did before (every id of the lookback
            # read again and rebuilt into a dict), into a lake of its own by a group of its own.
            import rtml.ingest.batches as batches_module

            before = Settings(storage="local", home=tmp / "kafka", lake_uri=str(tmp / "lake_kafka_rebuild"),
                              kafka_port=settings.kafka_port, kafka_partitions=1)
            real = batches_module.CommittedIds
            batches_module.CommittedIds = _Rebuild  # type: ignore[misc]
            try:
                t0, c0 = time.perf_counter(), time.process_time()
                out = ingest_kafka(spec, "events", settings=before, topic=topic, max_batches=10**6, group="bench-rebuild")
                r_total, r_cpu = time.perf_counter() - t0, time.process_time() - c0
            finally:
                batches_module.CommittedIds = real  # type: ignore[misc]
            assert out["accepted"] == rows, out["message"]
            print(f"kafka ingest : (before: duplicate check rebuilt per batch) {len(out['batch_ids'])} batches "
                  f"end-to-end {r_total:6.2f}s  {rows / r_total:>10,.0f} records/s per worker  (cpu {r_cpu:.2f}s: "
                  f"{rows / r_cpu:,.0f} records per cpu-second)")
        t0, c0 = time.perf_counter(), time.process_time()
        out = ingest_kafka(spec, "events", settings=settings, topic=topic, max_batches=10**6)
        k_total, k_cpu = time.perf_counter() - t0, time.process_time() - c0
        assert out["accepted"] == rows and out["records_in"] == rows, out["message"]
        assert _committed(settings, topic, f"rtml-ingest.{topic}") == rows  # every offset committed
        print(f"kafka ingest : topic -> lake, {len(out['batch_ids'])} batches, offsets committed "
              f"end-to-end {k_total:6.2f}s  {rows / k_total:>10,.0f} records/s per worker  (cpu {k_cpu:.2f}s: "
              f"{rows / k_cpu:,.0f} records per cpu-second; aim >= 100,000/s: "
              f"{'met' if rows / k_total >= 100_000 else 'met per cpu-second' if rows / k_cpu >= 100_000 else 'NOT met'})")
        print(f"ratio        : kafka / landing end-to-end = {k_total / landing_total:.2f}x time, "
              f"{k_cpu / landing_cpu:.2f}x cpu; kafka ingest / plain consume = {k_total / plain:.2f}x time")
    except Exception as err:  # noqa: BLE001 - a machine without Java/Maven: say so, keep the other figures
        print(f"kafka        : not measured ({type(err).__name__}: {str(err)[:300]})")
    finally:
        stack.down()


class _Rebuild:
    """The duplicate check as each batch did it before the drain's index: every id of the lookback
    read from the lake again and rebuilt into a dict (``committed_ids``)."""

    def __init__(self, lake, spec, kind: str) -> None:
        self.lake, self.spec, self.kind = lake, spec, kind

    def lookup(self, before: str) -> dict:  # rtml.ingest.batches.committed_ids as it was
        import json

        import pyarrow as pa
        import pyarrow.compute  # noqa: F401 - pa.compute

        from rtml.ingest.batches import DEDUPE_LOOKBACK_DAYS, _batch_time

        lake, spec, kind = self.lake, self.spec, self.kind
        eid = spec.event_id
        t0 = _batch_time(before)
        horizon = t0 - timedelta(days=DEDUPE_LOOKBACK_DAYS) if t0 else None
        out: dict = {}
        cols = [eid] if kind == "events" else [eid, spec.target.name]

        def take(bid: str, table) -> None:
            ids = table.column(eid).to_pylist()
            if kind == "events":
                out.update(dict.fromkeys(ids, bid))
            else:
                for i, y in zip(ids, table.column(spec.target.name).to_pylist(), strict=True):
                    out[i] = (bid, y)

        in_table: list[str] = []
        parts: list = []
        for mkey in sorted(lake.store.list(f"{spec.dataset.name}/_manifests/{kind}")):
            bid = mkey.rsplit("/", 1)[-1].removesuffix(".json")
            if not mkey.endswith(".json") or bid >= before:
                continue
            bt = _batch_time(bid)
            if horizon is not None and bt is not None and bt < horizon:
                continue
            m = json.loads(lake.store.get(mkey))
            if m.get("table") and m.get("accepted"):
                in_table.append(bid)
        if in_table:
            rows = lake.tables.read(spec.dataset.name, kind, set(in_table), columns=tuple(cols))
            parts.extend((bid, rows.filter(pa.compute.equal(rows.column("_batch"), bid))) for bid in in_table)
        for bid, table in sorted(parts, key=lambda p: p[0]):
            take(bid, table)
        return out

    def add(self, batch_id: str, table) -> None:
        pass


def _plain_consume(settings: Settings, topic: str, rows: int) -> tuple[float, float]:
    from confluent_kafka import Consumer

    c = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": "bench-plain",
                  "auto.offset.reset": "earliest", "enable.auto.commit": False,
                  "fetch.max.bytes": 64 << 20, "max.partition.fetch.bytes": 16 << 20})
    try:
        c.subscribe([topic])
        while not c.assignment():  # the group join is not what is measured
            c.poll(0.1)
        got = 0
        t0, c0 = time.perf_counter(), time.process_time()
        while got < rows:
            got += sum(1 for m in c.consume(num_messages=10_000, timeout=1.0) if m.error() is None)
        return time.perf_counter() - t0, time.process_time() - c0
    finally:
        c.close()


def _committed(settings: Settings, topic: str, group: str) -> int:
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": group})
    try:
        return c.committed([TopicPartition(topic, 0)], timeout=30)[0].offset
    finally:
        c.close()


def history(sizes: list[int], keep: bool) -> None:
    """Read one day's window of a lake holding ``n`` batches, for each n in ``sizes``."""
    from rtml.lake import Lake
    from rtml.tables import maintain

    spec = load_spec()
    events, labels = prod.build(spec, rows=2_000, start=T0, rate=1.0, seed=0)
    results: list[tuple[int, float, int]] = []
    lakes: list[tuple[int, Path, Settings, int]] = []
    # The window holds the same batches at every size (at most a day of 5-minute batches), so only
    # the history before it grows.
    per_day = min(288, min(sizes))
    for n in sizes:
        tmp = Path(tempfile.mkdtemp(prefix="rtml-bench-history-"))
        settings = Settings(storage="local", home=tmp, lake_uri=str(tmp / "lake"))
        lake = Lake(settings)
        # An Iceberg commit by overwrite scans every manifest for the batch's earlier rows, so
        # building thousands of batches that way takes hours here: every batch is then committed by
        # append (what that overwrite commits for a batch's first attempt: one snapshot, one
        # manifest, one data file per batch), at every size, so the sizes compare alike.
        t = time.perf_counter()
        day = timedelta(days=1)
        contract = {"events": Contract(spec, "events"), "labels": Contract(spec, "labels")}
        maintained, maintenance, last_day = 0, 0.0, None
        for i in range(n):
            # batch i: 20 events (and labels) on its own 5 minutes, the last per_day batches on the window day
            start = (T0 - day * 365 + timedelta(minutes=5 * i) if i < n - per_day
                     else T0 + timedelta(minutes=5 * (i - n + per_day)))
            if last_day is not None and start.date() != last_day:
                # What the daily rtml_maintenance DAG does to a lake in use: yesterday's small files
                # compacted, old snapshots expired (the lake read below is one that is maintained).
                m0 = time.perf_counter()
                maintain(settings, older_than_hours=0, tables=lake.tables)
                maintenance += time.perf_counter() - m0
                maintained += 1
            last_day = start.date()
            if i and i % 1000 == 0:
                print(f"  {i:,} batches in {time.perf_counter() - t:6.1f}s", flush=True)
            for kind, frame in (("events", events), ("labels", labels)):
                part = frame.iloc[(i * 20) % 1980:(i * 20) % 1980 + 20].copy()
                bid = f"{start:%Y%m%dT%H%M%S}-b{i:06d}"
                part[spec.event_id] = [f"{bid}-{j}" for j in range(len(part))]
                if kind == "events":
                    part[spec.event_time] = [start + timedelta(seconds=j) for j in range(len(part))]
                else:  # each label 10 minutes after its event, like the producer's
                    part["label_time"] = [start + timedelta(seconds=600 + j) for j in range(len(part))]
                table = contract[kind].validate(_raw(part)).table
                _commit(lake, spec, kind, bid, table, first=True)
        build = time.perf_counter() - t
        window, _ = Lake(settings).labelled(spec, T0, T0 + day)  # warm-up: imports, caches of the OS
        lakes.append((n, tmp, settings, len(window)))
        how = " (batches by append)"
        if maintained:
            how += f", of which {maintenance:.1f}s in {maintained} daily maintenance runs"
        print(f"lake with {n:>6,} batches ({per_day} in the window): built in {build:6.1f}s{how}",
              flush=True)
    # The sizes are read in turns, each time by a fresh reader (no cached table metadata), and the
    # best of 5 counts: a load that changes while the benchmark runs weighs on every size alike.
    best = {n: float("inf") for n, *_ in lakes}
    paths = _history_paths(spec)
    other = {(name, n): float("inf") for name in paths for n, *_ in lakes}
    for _ in range(5):
        for n, _tmp, settings, _rows in lakes:
            t0 = time.perf_counter()
            Lake(settings).labelled(spec, T0, T0 + timedelta(days=1))
            best[n] = min(best[n], time.perf_counter() - t0)
            for name, run in paths.items():
                t0 = time.perf_counter()
                run(Lake(settings))
                other[name, n] = min(other[name, n], time.perf_counter() - t0)
    for n, tmp, _settings, rows in lakes:
        results.append((n, best[n], rows))
        print(f"lake with {n:>6,} batches: one day's window ({rows:,} rows) read in {best[n]:6.3f}s "
              "(best of 5)")
        if keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    if len(results) > 1:
        (a, ra, _), (b, rb, _) = results[0], results[-1]
        print(f"ratio        : {b:,} vs {a:,} batches = {rb / ra:.2f}x the read time "
              f"(aim <= 1.5: {'met' if rb <= 1.5 * ra else 'NOT met'})")
    for name in paths:
        times = "  ".join(f"{n:,} batches {other[name, n]:6.3f}s" for n, *_ in lakes)
        a, b = lakes[0][0], lakes[-1][0]
        ratio = f" = {other[name, b] / other[name, a]:.2f}x" if len(lakes) > 1 else ""
        print(f"{name:<40}: {times}{ratio} (best of 5)")


def _history_paths(spec) -> dict:
    """The other reads whose cost should not grow with history, each beside what it did before
    (every manifest listed and fetched)."""
    from rtml.ingest.batches import CommittedIds
    from rtml.lake import LABEL_CLOCK_SKEW

    ds = spec.dataset.name
    nxt = f"{T0 + timedelta(days=1):%Y%m%dT%H%M%S}-next"
    asked = [f"{T0:%Y%m%dT%H%M%S}-b{i:06d}-0" for i in range(20)]

    def end_by_listing(lake: Lake) -> None:
        max(pd.Timestamp(m["watermark"]) for m in lake.manifests(ds, "events") if m.get("watermark"))

    return {
        "training window end (day index)": lambda lake: lake.newest_watermark(ds, "events"),
        "training window end (before: listing)": end_by_listing,
        "monitor labels, one day (day index)": lambda lake: lake.latest_labels(spec, since=T0 - LABEL_CLOCK_SKEW),
        "monitor labels (before: every batch)": lambda lake: lake.latest_labels(spec),
        "duplicate check of the next batch": lambda lake: CommittedIds(lake, spec, "events").lookup(nxt).among(asked),
    }


def dedupe(n: int, rows: int, keep: bool) -> None:
    """The duplicate check of each batch of a drain of ``n`` batches, rebuilt per batch vs kept by the drain."""
    from rtml.ingest.batches import CommittedIds

    spec = load_spec()
    tmp = Path(tempfile.mkdtemp(prefix="rtml-bench-dedupe-"))
    settings = Settings(storage="local", home=tmp, lake_uri=str(tmp / "lake"))
    try:
        events, _ = prod.build(spec, rows=rows * n, start=T0, rate=1000.0, seed=0)
        eid = spec.event_id
        contract = Contract(spec, "events")
        lake = Lake(settings)
        raws, bids = [], []
        for i in range(n):
            part = events.iloc[i * rows:(i + 1) * rows].copy()
            if i:  # a few ids of the previous batch come again: duplicates to find
                part.iloc[:10, part.columns.get_loc(eid)] = events[eid].iloc[(i - 1) * rows + 10:(i - 1) * rows + 20].to_numpy()
            raws.append(_raw(part))
            bids.append(f"{T0 + timedelta(minutes=i):%Y%m%dT%H%M%S}-bench")
        drain = CommittedIds(lake, spec, "events")
        old = new = 0.0
        refused = 0
        last: tuple[float, float] = (0.0, 0.0)
        for raw, bid in zip(raws, bids, strict=True):
            t0 = time.process_time()
            a = contract.validate(raw, _Rebuild(lake, spec, "events").lookup(bid))
            t1 = time.process_time()
            b = contract.validate(raw, drain.lookup(bid))
            t2 = time.process_time()
            assert a.reason_counts == b.reason_counts and a.table.equals(b.table), (a.reason_counts, b.reason_counts)
            _commit(lake, spec, "events", bid, b.table)
            t3 = time.process_time()
            drain.add(bid, b.table)  # what the drain does after the commit: part of its cost
            t2 += time.process_time() - t3
            refused += b.reason_counts.get("duplicate event_id", 0)
            old, new, last = old + t1 - t0, new + t2 - t1, (t1 - t0, t2 - t1)
        plain = 0.0
        for raw in raws:  # the contract alone, no earlier batch: what the check adds to it
            t0 = time.process_time()
            contract.validate(raw)
            plain += time.process_time() - t0
        print(f"dedupe       : a drain of {n} batches x {rows:,} events "
              f"({refused} duplicates refused by both)")
        print(f"dedupe       : cpu seconds (this process): validate alone {plain:6.2f}s; with the per-batch rebuild {old:6.2f}s "
              f"(+{old - plain:.2f}s, last batch {last[0]:.3f}s); with the drain's lookup {new:6.2f}s "
              f"(+{new - plain:.2f}s, last batch {last[1]:.3f}s)")
        print(f"ratio        : duplicate check cost, drain lookup / per-batch rebuild = "
              f"{max(new - plain, 0.0) / max(old - plain, 1e-9):.2f}x")
    finally:
        if keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def commit_cost(sizes: list[int], keep: bool) -> None:
    """Time one batch commit to an events table already holding ``n`` batches, for each n in ``sizes``."""
    import statistics

    from rtml.tables import Tables

    spec = load_spec()
    events, _ = prod.build(spec, rows=2_000, start=T0, rate=1.0, seed=0)
    contract = Contract(spec, "events")
    ds, tcol = spec.dataset.name, spec.event_time

    def batch(i: int):  # 20 events on batch i's own 5 minutes
        start = T0 + timedelta(minutes=5 * i)
        part = events.iloc[(i * 20) % 1980:(i * 20) % 1980 + 20].copy()
        bid = f"{start:%Y%m%dT%H%M%S}-{start + timedelta(minutes=5):%Y%m%dT%H%M%S}"
        part[spec.event_id] = [f"{bid}-{j}" for j in range(len(part))]
        part[tcol] = [start + timedelta(seconds=j) for j in range(len(part))]
        return bid, contract.validate(_raw(part)).table

    tables: list[tuple[int, Path, Tables]] = []
    for n in sizes:
        tmp = Path(tempfile.mkdtemp(prefix="rtml-bench-commit-"))
        t = Tables(Settings(storage="local", home=tmp, lake_uri=str(tmp / "lake")))
        t0 = time.perf_counter()
        for i in range(n):
            bid, rows = batch(i)
            t.commit_batch(ds, "events", bid, rows, {"accepted": rows.num_rows}, time_column=tcol)
        build = time.perf_counter() - t0
        table = t.table(ds, "events").refresh()
        print(f"iceberg table with {n:>6,} batches: built by commit_batch in {build:7.1f}s "
              f"({build / n * 1000:.0f} ms a commit on average); now {len(table.metadata.snapshots)} snapshots, "
              f"{len(table.current_snapshot().manifests(table.io))} manifests")
        tables.append((n, tmp, t))
    # Turns: a load that changes while the benchmark runs weighs on every size alike.
    per: dict[int, list[float]] = {n: [] for n, *_ in tables}
    nxt = {n: n for n, *_ in tables}
    for _ in range(5):
        for n, _tmp, t in tables:
            t0 = time.perf_counter()
            for _ in range(10):
                bid, rows = batch(nxt[n])
                nxt[n] += 1
                t.commit_batch(ds, "events", bid, rows, {"accepted": rows.num_rows}, time_column=tcol)
            per[n].append((time.perf_counter() - t0) / 10)
    # A re-run of a batch deep in the history replaces its rows (the overwrite's delete path).
    for n, _tmp, t in tables:
        bid, rows = batch(n // 2)
        t0 = time.perf_counter()
        t.commit_batch(ds, "events", bid, rows, {"accepted": rows.num_rows}, time_column=tcol)
        rerun = time.perf_counter() - t0
        got = t.read(ds, "events", {bid}).num_rows
        print(f"iceberg table with {n:>6,} batches: one commit {statistics.median(per[n]) * 1000:6.0f} ms "
              f"(median of 5 x 10), a re-run of batch {n // 2} {rerun * 1000:6.0f} ms ({got} rows, not doubled)")
    for _n, tmp, _t in tables:
        if keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    if len(tables) > 1:
        a, b = tables[0][0], tables[-1][0]
        ratio = statistics.median(per[b]) / statistics.median(per[a])
        print(f"ratio        : {b:,} vs {a:,} batches = {ratio:.2f}x the commit time "
              f"(aim <= 1.5: {'met' if ratio <= 1.5 else 'NOT met'})")


def _raw(frame: pd.DataFrame):
    from rtml.ingest.contract import Positions, RawBatch

    return RawBatch(frame.reset_index(drop=True), Positions().add_names([f"bench:{i}" for i in range(len(frame))]))


def _commit(lake, spec, kind: str, bid: str, table, first: bool = False) -> None:
    """What ingest_batch commits for a batch, without a source: the rows, then the manifest
    (``first``: by append, see history)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from rtml.tables import BATCH_COLUMN, SUMMARY_PREFIX, _align

    ds = spec.dataset.name
    manifest = {"batch_id": bid, "dataset": ds, "kind": kind, "records_in": table.num_rows,
                "accepted": table.num_rows, "quarantined": 0, "schema_hash": spec.schema_hash()}
    tcol = spec.event_time if kind == "events" else "label_time"
    if tcol:
        span = pc.min_max(table.column(tcol)).as_py()
        manifest.update(min_time=span["min"].isoformat(), watermark=span["max"].isoformat())
    if first:
        t = lake.tables.table(ds, kind, table.schema, tcol)
        rows = table.append_column(pa.field(BATCH_COLUMN, pa.string(), nullable=False),
                                   pa.array([bid] * table.num_rows, pa.string()))
        t.append(_align(rows, t), snapshot_properties={f"{SUMMARY_PREFIX}batch": bid})
        ident = lake.tables.identifier(ds, kind)
        manifest.update({"table": ident, "snapshot_id": t.current_snapshot().snapshot_id})
        # As the writer does after each commit: old snapshots expired past table_snapshot_max, so the
        # metadata each commit copies stays the same size (without it building 10,000 batches is quadratic).
        lake.tables._bound_snapshots(ident, t)
    else:
        manifest.update(lake.tables.commit_batch(ds, kind, bid, table, time_column=tcol))
    lake.write_manifest(ds, kind, bid, manifest)


def _ingest_as_files(spec, settings: Settings, start: datetime, end: datetime) -> int:
    """The manifest-based writer before tables, kept as the baseline of the 1M-row measurement: the
    same landing source, duplicate check and contract as ``ingest_batch``, then Parquet parts at keys
    fixed by the batch id, the quarantine file and the manifest (no table commit). Returns the rows accepted."""
    import pyarrow.compute as pc

    from rtml.ingest.batches import CommittedIds
    from rtml.ingest.contract import quarantine_lines
    from rtml.lake import _date_of

    lake, ds = Lake(settings), spec.dataset.name
    contract = Contract(spec, "events")
    source = LandingSource(landing_store(settings), ds, "events", start, end)
    batch = source.read(contract)
    bid = batch.batch_id
    result = contract.validate(batch.raw, CommittedIds(lake, spec, "events").lookup(bid))
    table, rejects = result.table, result.rejects
    files = []
    for part, lo in enumerate(range(0, table.num_rows, 1_000_000)):  # ROWS_PER_PART as it was
        files.append(f"{ds}/events/date={_date_of(bid)}/batch={bid}/part-{part:05d}.parquet")
        lake.store.put(files[-1], arrow_to_parquet_bytes(table.slice(lo, 1_000_000)))
    qkey = lake.quarantine_key(ds, "events", bid)
    if rejects:
        lake.store.put(qkey, quarantine_lines(rejects))
    span = pc.min_max(table.column(contract.time_column)).as_py()
    lake.write_manifest(ds, "events", bid, {
        "batch_id": bid, "dataset": ds, "kind": "events", "files": files, "quarantine": qkey if rejects else None,
        "records_in": result.records_in, "accepted": table.num_rows, "quarantined": len(rejects),
        "reasons": result.reason_counts, "time_column": contract.time_column, "min_time": span["min"].isoformat(),
        "watermark": span["max"].isoformat(), "schema_hash": spec.schema_hash(), "source": batch.position})
    source.commit(batch)
    return table.num_rows


if __name__ == "__main__":
    main()
