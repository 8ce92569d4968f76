"""Micro-batch ingestion into a local-folder lake: conservation, idempotency, bad files, labels."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest
from support.lake import lake_state

from rtml.ingest import produce as prod
from rtml.ingest.batches import ingest_interval, last_interval
from rtml.ingest.sources import landing_key, landing_store
from rtml.lake import Lake
from rtml.settings import Settings
from rtml.spec import load_spec

SPEC = load_spec()
DS = SPEC.dataset.name
T0 = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
FIVE = timedelta(minutes=5)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(storage="local", home=tmp_path, lake_uri=str(tmp_path / "lake"))


def produce(settings: Settings, **kw) -> dict:
    args = dict(rows=600, start=T0, rate=1.0, seed=3, label_delay=300.0, file_seconds=60.0)
    args.update(kw)
    return prod.produce(SPEC, to="landing", settings=settings, **args)


def lake_bytes(settings: Settings) -> dict[str, bytes]:
    return lake_state(Lake(settings), DS, SPEC.event_id)


def test_intervals_conserve_every_record(settings):
    out = produce(settings, bad_fraction=0.03)
    assert out["events"] == 600
    lake = Lake(settings)
    for k in range(2):  # 600 events at 1/s = two 5-minute intervals
        for kind in ("events", "labels"):
            ingest_interval(SPEC, kind, T0 + k * FIVE, T0 + (k + 1) * FIVE, settings=settings, lake=lake)
    manifests = lake.manifests(DS, "events")
    assert [m["batch_id"] for m in manifests] == ["20261125T120000-20261125T120500", "20261125T120500-20261125T121000"]
    for m in manifests + lake.manifests(DS, "labels"):
        assert m["records_in"] == m["accepted"] + m["quarantined"]
        assert m["schema_hash"] == SPEC.schema_hash()
        assert m["source"]["type"] == "landing"
    assert all(m["source"]["files"] for m in manifests)
    assert sum(m["records_in"] for m in manifests) == 600
    quarantined = sum(m["quarantined"] for m in manifests)
    assert 5 <= quarantined <= 40  # the producer broke ~3 %
    events = lake.read_batches(DS, "events")
    assert len(events) == 600 - quarantined
    assert events[SPEC.event_id].is_unique
    # Each batch holds exactly the events of its interval (files are keyed by arrival time).
    first = lake.read_batches(DS, "events", ["20261125T120000-20261125T120500"])
    assert first[SPEC.event_time].max() < pd.Timestamp(T0 + FIVE)
    assert manifests[0]["watermark"] == "2026-11-25T12:04:59+00:00"
    # Quarantine lines carry the reasons.
    q = Lake(settings).store.get(manifests[0]["quarantine"]).decode().splitlines()
    assert len(q) == manifests[0]["quarantined"]
    assert all(json.loads(line)["reasons"] for line in q)


def test_rejects_are_rows_of_the_quarantine_table_once_however_often_the_batch_runs(settings):
    """With tables, each batch's rejects are also rows of ``<dataset>.quarantine`` (kind, batch,
    reasons, the quarantine line): as many as the manifest counts, the same items as its file."""
    from rtml.ingest.batches import QUARANTINE_KIND

    produce(settings, bad_fraction=0.05)
    lake = Lake(settings)
    for _ in range(2):  # a re-run replaces the batch's rows, never doubles them
        for kind in ("events", "labels"):
            ingest_interval(SPEC, kind, T0, T0 + FIVE, settings=settings, lake=lake)
    rows = lake.tables.read(DS, QUARANTINE_KIND).to_pandas()
    m = lake.manifests(DS, "events")[0]
    mine = rows[(rows["kind"] == "events") & (rows["batch"] == m["batch_id"])]
    assert m["quarantined"] > 0 and len(mine) == m["quarantined"]
    assert sorted(mine["item"]) == sorted(lake.store.get(m["quarantine"]).decode().splitlines())
    assert all(list(r) == json.loads(i)["reasons"] and len(r) for r, i in zip(mine["reasons"], mine["item"], strict=True))
    # A record whose own time is readable is filed under its day (the table's partition).
    timed = mine["time"].dropna()
    assert len(timed) and ((timed >= pd.Timestamp(T0) - timedelta(days=1)) & (timed < pd.Timestamp(T0) + timedelta(days=1))).all()
    assert "events" in set(rows["kind"]) <= {"events", "labels"} and not rows.duplicated(["kind", "batch", "item"]).any()


def test_same_batch_three_times_is_byte_identical(settings):
    produce(settings, bad_fraction=0.02)
    lake = Lake(settings)
    results, snapshots = [], []
    for _ in range(3):
        results.append(ingest_interval(SPEC, "events", T0, T0 + FIVE, settings=settings, lake=lake))
        snapshots.append(lake_bytes(settings))
    assert snapshots[0] == snapshots[1] == snapshots[2]
    assert len([k for k in snapshots[0] if k.endswith(".parquet") or k.startswith("table/")]) == 1
    counts = [(r["records_in"], r["accepted"], r["quarantined"]) for r in results]
    assert counts[0] == counts[1] == counts[2] and counts[0][0] == 300


def test_backfill_after_later_batches_gives_the_same_bytes(settings):
    produce(settings)
    lake = Lake(settings)
    ingest_interval(SPEC, "events", T0, T0 + FIVE, settings=settings, lake=lake)
    before = lake_bytes(settings)
    # A later interval that re-delivers an id of the first one: quarantined as a duplicate there...
    first = lake.read_batches(DS, "events").iloc[[0]].copy()
    first[SPEC.event_time] = pd.Timestamp(T0 + FIVE + timedelta(seconds=30))
    key = landing_key(DS, "events", T0 + FIVE + timedelta(seconds=30), "resend", "jsonl")
    landing_store(settings).put(key, first.to_json(orient="records", lines=True, date_format="iso").encode())
    later = ingest_interval(SPEC, "events", T0 + FIVE, T0 + 2 * FIVE, settings=settings, lake=lake)
    assert later["reasons"] == {"duplicate event_id": 1}
    q = lake.store.get(later["quarantine"]).decode()
    assert "already committed in batch 20261125T120000-20261125T120500" in q
    # ...and backfilling the first interval afterwards does not flip it: earlier batches win.
    ingest_interval(SPEC, "events", T0, T0 + FIVE, settings=settings, lake=lake)
    after = lake_bytes(settings)
    assert {k: v for k, v in after.items() if "120000-20261125T120500" in k} == before


def test_empty_interval_writes_a_zero_manifest(settings):
    res = ingest_interval(SPEC, "events", T0, T0 + FIVE, settings=settings)
    assert (res["records_in"], res["accepted"], res["quarantined"]) == (0, 0, 0)
    m = Lake(settings).manifests(DS, "events")[0]
    assert m["accepted"] == 0 and m["quarantine"] is None and m["watermark"] is None


def test_bad_files_are_refused_and_the_batch_goes_on(settings):
    produce(settings, rows=120, file_seconds=60.0)  # 2 good files in the interval
    store = landing_store(settings)
    t = T0 + timedelta(seconds=150)
    store.put(landing_key(DS, "events", t, "fake", "parquet"), b'{"event_id": "x"}\n')
    store.put(landing_key(DS, "events", t, "gz", "jsonl"), b"\x1f\x8b\x08\x00....")
    store.put(landing_key(DS, "events", t, "mixed", "jsonl"), b'{"event_id": \n[1]\n')
    store.put(landing_key(DS, "events", t, "empty", "csv"), b"")
    csv = pd.DataFrame([{**{c: None for c in SPEC.feature_names}, "event_id": "c1"}]).to_csv(index=False)
    store.put(landing_key(DS, "events", t, "csv", "csv"), csv.encode())
    res = ingest_interval(SPEC, "events", T0, T0 + FIVE, settings=settings)
    assert res["accepted"] == 120
    assert res["records_in"] == 120 + 2 + 2 + 1  # 2 refused files, 2 bad lines, 1 bad CSV row
    # Reasons are counted per occurrence: the CSV row lacks 9 required fields.
    assert res["reasons"] == {"file refused": 2, "malformed JSON": 1, "missing field": 9, "not a JSON object": 1}
    m = Lake(settings).manifests(DS, "events")[0]
    assert len(m["source"]["files"]) == 7
    assert m["records_in"] == m["accepted"] + m["quarantined"]


def test_labels_join_and_lineage_lists_only_contributing_batches(settings):
    produce(settings, label_delay=240.0)  # events 12:00-12:10, labels 12:04-12:14
    lake = Lake(settings)
    for k in range(3):
        for kind in ("events", "labels"):
            ingest_interval(SPEC, kind, T0 + k * FIVE, T0 + (k + 1) * FIVE, settings=settings, lake=lake)
    df, lineage = lake.labelled(SPEC, T0, T0 + FIVE)
    assert len(df) == 300 and df[SPEC.target.name].isin(["good", "bad"]).all()
    assert df[SPEC.event_time].is_monotonic_increasing
    assert lineage["events"] == ["20261125T120000-20261125T120500"]
    # Labels of the first 5 minutes arrived between 12:04 and 12:09: two label batches.
    assert lineage["labels"] == ["20261125T120000-20261125T120500", "20261125T120500-20261125T121000"]
    # The (empty) third event batch and the third label batch contributed nothing here.
    df2, lineage2 = lake.labelled(SPEC)
    assert len(df2) == 600 and "20261125T121000-20261125T121500" in lineage2["labels"]
    assert "20261125T121000-20261125T121500" not in lineage2["events"]


def test_crash_after_data_before_manifest_is_invisible_then_repaired(settings, tmp_path):
    produce(settings, rows=100)
    env = {
        **os.environ,
        "RTML_STORAGE": "local",
        "RTML_HOME": str(tmp_path),
        "RTML_LAKE_URI": settings.lake_uri,
        "RTML_TEST_CRASH_AFTER_WRITE": "data",
    }
    cmd = [sys.executable, "-m", "rtml.cli", "ingest", "--kind", "events", "--source", "landing",
           "--start", T0.isoformat(), "--end", (T0 + FIVE).isoformat(), "--json"]
    crashed = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert crashed.returncode == 75, crashed.stderr
    lake = Lake(settings)
    assert lake.manifests(DS, "events") == []  # data written, but not visible without a manifest
    assert lake.read_batches(DS, "events").empty
    env.pop("RTML_TEST_CRASH_AFTER_WRITE")
    ok = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    summary = json.loads(ok.stdout)["events"]
    assert summary["accepted"] == 100
    assert len(lake.read_batches(DS, "events")) == 100


def test_last_interval_is_aligned():
    start, end = last_interval(datetime(2026, 11, 25, 12, 7, 31, tzinfo=UTC), 5)
    assert (start, end) == (datetime(2026, 11, 25, 12, 0, tzinfo=UTC), datetime(2026, 11, 25, 12, 5, tzinfo=UTC))


# --- the landing ledger: no file skipped, none taken twice ------------------------------------------
def _ingested_files(lake: Lake) -> list[str]:
    return [f["key"] for m in lake.manifests(DS, "events") for f in m["source"]["files"]]


def test_missed_intervals_are_swept_by_the_next_run_exactly_once(settings):
    """The scheduler was down for 12:00-12:10: the 12:10 run takes every file keyed before its end."""
    produce(settings, rows=900, bad_fraction=0.02)  # 12:00-12:15, one file a minute
    lake = Lake(settings)
    third = ingest_interval(SPEC, "events", T0 + 2 * FIVE, T0 + 3 * FIVE, settings=settings, lake=lake)
    assert third["records_in"] == 900 and third["source"]["late_files"] == 10
    # Backfilling the missed intervals afterwards finds nothing left: no file is taken twice.
    for k in range(2):
        again = ingest_interval(SPEC, "events", T0 + k * FIVE, T0 + (k + 1) * FIVE, settings=settings, lake=lake)
        assert again["records_in"] == 0
    files = _ingested_files(lake)
    assert len(files) == len(set(files)) == 15
    events = lake.read_batches(DS, "events")
    assert len(events) == third["accepted"] and events[SPEC.event_id].is_unique
    assert sum(m["records_in"] for m in lake.manifests(DS, "events")) == 900


def test_a_file_landing_in_an_ingested_interval_goes_to_the_next_batch(settings):
    produce(settings, rows=300)
    lake = Lake(settings)
    ingest_interval(SPEC, "events", T0, T0 + FIVE, settings=settings, lake=lake)
    before = lake_bytes(settings)
    # A slow upload: keyed inside the first interval, visible only after that interval was ingested.
    late = prod.build(SPEC, rows=20, start=T0 + timedelta(seconds=100), seed=99)[0]
    landing_store(settings).put(landing_key(DS, "events", T0 + timedelta(seconds=120), "slow", "jsonl"),
                                late.to_json(orient="records", lines=True, date_format="iso").encode())
    # A retry of the first interval rewrites the same batch (its file list is fixed once committed)...
    ingest_interval(SPEC, "events", T0, T0 + FIVE, settings=settings, lake=lake)
    assert lake_bytes(settings) == {**before, **{k: v for k, v in lake_bytes(settings).items() if "_ledger" in k}}
    # ...and the next interval takes the late file.
    nxt = ingest_interval(SPEC, "events", T0 + FIVE, T0 + 2 * FIVE, settings=settings, lake=lake)
    assert (nxt["records_in"], nxt["accepted"], nxt["source"]["late_files"]) == (20, 20, 1)
    files = _ingested_files(lake)
    assert len(files) == len(set(files)) == 6
    assert len(lake.read_batches(DS, "events")) == 320


def test_a_manual_run_sweeps_what_is_new_into_a_batch_of_its_own(settings):
    """A manually triggered run of an interval whose batch is committed still takes the new files,
    exactly once, and its own retry (same run id) rewrites the same batch."""
    produce(settings, rows=300)
    lake = Lake(settings)
    ingest_interval(SPEC, "events", T0, T0 + FIVE, settings=settings, lake=lake)
    late = prod.build(SPEC, rows=20, start=T0 + timedelta(seconds=100), seed=98)[0]
    landing_store(settings).put(landing_key(DS, "events", T0 + timedelta(seconds=130), "slow", "jsonl"),
                                late.to_json(orient="records", lines=True, date_format="iso").encode())
    run_id = "manual__2026-11-25T12:07:31.123456+00:00"
    manual = ingest_interval(SPEC, "events", T0, T0 + FIVE, settings=settings, lake=lake, batch_tag=run_id)
    assert manual["batch_id"] == "20261125T120000-20261125T120500-manual_2026_11_25T12_07_31_123456_00_00"
    assert (manual["records_in"], manual["accepted"]) == (20, 20)
    before = lake_bytes(settings)
    again = ingest_interval(SPEC, "events", T0, T0 + FIVE, settings=settings, lake=lake, batch_tag=run_id)
    assert again["records_in"] == 20 and lake_bytes(settings) == before
    other = ingest_interval(SPEC, "events", T0, T0 + FIVE, settings=settings, lake=lake, batch_tag="manual__later")
    assert other["records_in"] == 0
    files = _ingested_files(lake)
    assert len(files) == len(set(files)) == 6
    assert len(lake.read_batches(DS, "events")) == 320


def test_crashed_interval_is_taken_by_a_later_run_and_its_retry_takes_nothing(settings, tmp_path):
    produce(settings, rows=300)
    env = {**os.environ, "RTML_STORAGE": "local", "RTML_HOME": str(tmp_path), "RTML_LAKE_URI": settings.lake_uri,
           "RTML_TEST_CRASH_AFTER_WRITE": "data"}
    cmd = [sys.executable, "-m", "rtml.cli", "ingest", "--kind", "events", "--source", "landing",
           "--start", T0.isoformat(), "--end", (T0 + FIVE).isoformat(), "--json"]
    assert subprocess.run(cmd, env=env, capture_output=True, timeout=120).returncode == 75
    lake = Lake(settings)
    # Retries ran out; the next interval's run ingests the files the crashed one had read.
    nxt = ingest_interval(SPEC, "events", T0 + FIVE, T0 + 2 * FIVE, settings=settings, lake=lake)
    assert nxt["records_in"] == 300
    env.pop("RTML_TEST_CRASH_AFTER_WRITE")
    late = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert late.returncode == 0, late.stderr
    assert json.loads(late.stdout)["events"]["records_in"] == 0
    # The crashed attempt's data files were replaced by an empty batch: nothing is visible twice.
    assert len(lake.read_batches(DS, "events")) == 300
    files = _ingested_files(lake)
    assert len(files) == len(set(files)) == 5


def test_ledger_cache_is_rebuilt_from_the_manifests(settings):
    produce(settings, rows=600)
    lake = Lake(settings)
    ingest_interval(SPEC, "events", T0, T0 + FIVE, settings=settings, lake=lake)
    cache = f"{DS}/_ledger/events/landing.json"
    lake.store.put(cache, b"\xff not json")
    nxt = ingest_interval(SPEC, "events", T0 + FIVE, T0 + 2 * FIVE, settings=settings, lake=lake)
    assert nxt["records_in"] == 300 and nxt["source"]["late_files"] == 0
    # Rebuilt while reading the second batch: it holds the batches committed before it.
    assert list(json.loads(lake.store.get(cache))["batches"]) == ["20261125T120000-20261125T120500"]


def test_an_interval_that_has_not_closed_is_refused(settings, capsys, monkeypatch, tmp_path):
    from rtml.cli import main
    from rtml.ingest.sources import IntervalNotClosed
    from rtml.settings import get_settings

    end = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=1)
    with pytest.raises(IntervalNotClosed, match="has not closed yet"):
        ingest_interval(SPEC, "events", end - FIVE, end, settings=settings)
    assert Lake(settings).manifests(DS, "events") == []
    monkeypatch.setenv("RTML_STORAGE", "local")
    monkeypatch.setenv("RTML_HOME", str(tmp_path))
    monkeypatch.setenv("RTML_LAKE_URI", settings.lake_uri)
    get_settings(refresh=True)
    try:
        code = main(["ingest", "--start", (end - FIVE).isoformat(), "--end", end.isoformat(), "--json"])
        assert code == 2 and "has not closed yet" in capsys.readouterr().out
    finally:
        monkeypatch.undo()
        get_settings(refresh=True)


# --- schema drift ----------------------------------------------------------------------------------------
def _spec_with(**ingestion) -> object:
    from rtml.spec import parse_spec

    data = SPEC.model_dump(mode="json")
    data["ingestion"].update(ingestion)
    return parse_spec(data)


def _renamed_file(settings) -> None:
    ev, _ = prod.build(SPEC, rows=10, start=T0, seed=5)
    text = ev.to_json(orient="records", lines=True, date_format="iso").splitlines()
    rec = json.loads(text[3])
    rec["annual_income"] = rec.pop("Income")  # renamed upstream
    text[3] = json.dumps(rec)
    landing_store(settings).put(landing_key(DS, "events", T0 + timedelta(seconds=20), "drift", "jsonl"),
                                ("\n".join(text) + "\n").encode())


def test_renamed_field_is_counted_and_alerted(settings, monkeypatch, tmp_path, capsys):
    from rtml.cli import main
    from rtml.settings import get_settings

    _renamed_file(settings)
    monkeypatch.setenv("RTML_STORAGE", "local")
    monkeypatch.setenv("RTML_HOME", str(tmp_path))
    monkeypatch.setenv("RTML_LAKE_URI", settings.lake_uri)
    get_settings(refresh=True)
    try:
        assert main(["ingest", "--kind", "events", "--start", T0.isoformat(), "--end", (T0 + FIVE).isoformat(),
                     "--json"]) == 0
        out = json.loads(capsys.readouterr().out)
    finally:
        monkeypatch.undo()
        get_settings(refresh=True)
    ev = out["events"]
    assert (ev["records_in"], ev["accepted"]) == (10, 10)  # Income is nullable: accepted, and reported
    assert ev["unknown_fields"] == {"annual_income": 1}
    assert ev["missing_fields"]["Income"] >= 1 and ev["renamed"] == {"Income": "annual_income"}
    assert out["alerts"] == ["events: schema drift: unknown field 'annual_income' in 1 record(s), accepted, "
                             "field dropped (probably 'Income' renamed: 'Income' is missing in those records)"]
    m = Lake(settings).manifests(DS, "events")[0]
    assert m["unknown_fields"] == {"annual_income": 1} and m["renamed"] == {"Income": "annual_income"}


@pytest.mark.parametrize("policy,accepted,alerts", [("quarantine", 9, 1), ("ignore", 10, 0), ("record", 10, 1)])
def test_unknown_fields_policy(settings, policy, accepted, alerts):
    from rtml.ingest.batches import ingest_batch
    from rtml.ingest.sources import LandingSource

    spec = _spec_with(unknown_fields=policy)
    _renamed_file(settings)
    lake = Lake(settings)
    src = LandingSource(landing_store(settings), DS, "events", T0, T0 + FIVE, lake.store)
    res = ingest_batch(spec, "events", src, lake=lake, settings=settings)
    assert (res["records_in"], res["accepted"], len(res["alerts"])) == (10, accepted, alerts)
    assert res["unknown_fields"] == {"annual_income": 1}  # counted whatever the policy
    if policy == "quarantine":
        item = json.loads(lake.store.get(res["quarantine"]))
        assert item["reasons"] == ["unknown field: annual_income"]


def test_a_dag_run_gets_its_asset_extra_and_only_a_manual_run_is_tagged(settings):
    """What an rtml_ingest task publishes: counts and references, a manual run's batch of its own."""
    from rtml.ingest.batches import ingest_for_run

    produce(settings, rows=300)
    scheduled = ingest_for_run("events", T0, T0 + FIVE, run_id="scheduled__x", manual=False, settings=settings)
    assert scheduled["kind"] == "events" and scheduled["dataset"] == DS and scheduled["source"] == "landing"
    assert scheduled["accepted"] + scheduled["quarantined"] == scheduled["records_in"] > 0
    assert scheduled["batch_ids"] == ["20261125T120000-20261125T120500"]  # the interval's batch, untagged
    assert scheduled["interval"] == [T0.isoformat(), (T0 + FIVE).isoformat()]
    assert len(scheduled["manifests"]) == 1 and scheduled["message"]
    assert sum(scheduled["reasons"].values()) == scheduled["quarantined"]
    again = ingest_for_run("events", T0, T0 + FIVE, run_id="manual__y", manual=True, settings=settings)
    assert again["records_in"] == 0 and again["batch_ids"][0].endswith("-manual_y")  # nothing new: no rows twice


def _count_batch_reads(lake: Lake) -> list[str]:
    """The batch ids ``lake`` reads from its tables from now on (each time it reads them)."""
    read: list[str] = []
    real = lake.tables.read

    def counted(dataset, kind, batch_ids=None, *args, **kw):
        read.extend(sorted(batch_ids or ()))
        return real(dataset, kind, batch_ids, *args, **kw)

    lake.tables.read = counted  # type: ignore[method-assign]
    return read


def test_a_drain_reads_the_lookback_once_and_still_sees_batches_committed_meanwhile(settings):
    from rtml.ingest.batches import CommittedIds, committed_ids

    produce(settings, rows=900)  # three 5-minute intervals of events
    lake = Lake(settings)
    for k in range(2):
        ingest_interval(SPEC, "events", T0 + k * FIVE, T0 + (k + 1) * FIVE, settings=settings, lake=lake)
    eid = SPEC.event_id
    ids = lake.read_batches(DS, "events")[eid].tolist()
    reader = Lake(settings)
    read = _count_batch_reads(reader)
    committed = CommittedIds(reader, SPEC, "events")
    third, fourth = "20261125T121000-20261125T121500", "20261125T121500-20261125T122000"
    asked = ids[::7] + ["never-seen"]
    full = committed_ids(lake, SPEC, "events", before=third)
    assert len(full) == len(ids)
    # The lookup answers for the asked ids exactly what the full rebuild holds for them.
    assert committed.lookup(third).among(asked) == {i: full[i] for i in asked if i in full}
    first_two = sorted(m["batch_id"] for m in lake.manifests(DS, "events"))
    assert read == first_two
    assert committed.lookup(third).among(ids[:5]) == {i: full[i] for i in ids[:5]}
    assert read == first_two  # read once for the drain, not once per batch
    # Another process commits the third interval: the drain's next batch counts it, reading only it.
    ingest_interval(SPEC, "events", T0 + 2 * FIVE, T0 + 3 * FIVE, settings=settings, lake=Lake(settings))
    new = lake.read_batches(DS, "events", [third])[eid].tolist()[:3]
    assert committed.lookup(fourth).among(new + ids[:1]) == {**dict.fromkeys(new, third), ids[0]: full[ids[0]]}
    assert read == [*first_two, third]
    assert committed.lookup(third).among(new) == {}  # only earlier batches count
    # Past the lookback nothing counts, as in the full rebuild.
    later = "20261128T120000-20261128T120500"
    assert committed.lookup(later).among(ids) == {} == committed_ids(lake, SPEC, "events", before=later)


def test_labels_lookup_keeps_the_latest_label_of_an_event(settings):
    from rtml.ingest.batches import CommittedIds, committed_ids

    produce(settings, rows=600, label_delay=60.0)
    lake = Lake(settings)
    for k in range(2):
        ingest_interval(SPEC, "labels", T0 + k * FIVE, T0 + (k + 1) * FIVE, settings=settings, lake=lake)
    eid, y = SPEC.event_id, SPEC.target.name
    first = lake.manifests(DS, "labels")[0]["batch_id"]
    labels = lake.read_batches(DS, "labels", [first])
    # A third batch that corrects two labels of the first and repeats one: a later label wins.
    fixed = labels.iloc[:3].copy()
    fixed[y] = [_flip(v) for v in fixed[y].iloc[:2]] + [fixed[y].iloc[2]]
    key = landing_key(DS, "labels", T0 + 2 * FIVE + timedelta(seconds=5), "fix", "jsonl")
    landing_store(settings).put(key, fixed.to_json(orient="records", lines=True, date_format="iso").encode())
    third = ingest_interval(SPEC, "labels", T0 + 2 * FIVE, T0 + 3 * FIVE, settings=settings, lake=lake)
    assert third["reasons"] == {"duplicate event_id": 1}  # the repeated label; the corrections are accepted
    later = "20261125T121500-20261125T122000"
    asked = labels[eid].tolist()
    full = committed_ids(lake, SPEC, "labels", before=later)
    got = CommittedIds(lake, SPEC, "labels").lookup(later).among(asked)
    assert got == {i: full[i] for i in asked if i in full}
    assert got[asked[0]] == (third["batch_id"], _flip(labels[y].iloc[0]))


def _flip(v):
    t = SPEC.target
    return t.negative if v == t.positive else t.positive
