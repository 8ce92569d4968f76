"""Ingestion with the landing zone and the lake on the REAL S3 server of the stack (SeaweedFS), and
the ``rtml_ingest`` DAG run by the real Airflow of the stack."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from support.lake import lake_state

from rtml.ingest import produce as prod
from rtml.ingest.batches import ingest_interval
from rtml.ingest.sources import landing_key, landing_store
from rtml.lake import Lake
from rtml.settings import Settings
from rtml.spec import load_spec

pytestmark = pytest.mark.integration

SPEC = load_spec()
DS = SPEC.dataset.name
T0 = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
FIVE = timedelta(minutes=5)


@pytest.fixture
def s3_lake(s3_settings: Settings):
    """A fresh prefix of the stack's lake bucket, removed afterwards."""
    settings = s3_settings.model_copy(update={"lake_uri": f"s3://{s3_settings.lake_bucket}/test-{uuid.uuid4().hex[:10]}"})
    yield settings
    store = Lake(settings).store
    for key in store.list(""):
        store.delete(key)


def snapshot(settings: Settings) -> dict[str, bytes]:
    return lake_state(Lake(settings), DS, SPEC.event_id)


def test_children_after_a_name_start_the_listing_there(s3_lake):
    """The S3 listing with StartAfter and a delimiter (what the duplicate check lists its lookback with)."""
    store = Lake(s3_lake).store
    for k in ("m/20260101-a.json", "m/20260102-b.json", "m/20260103-c.json", "m/sub/deeper.json"):
        store.put(k, b"{}")
    assert store.children("m") == ["20260101-a.json", "20260102-b.json", "20260103-c.json", "sub"]
    assert store.children("m", "20260102") == ["20260102-b.json", "20260103-c.json", "sub"]
    assert store.children("m", "20260102-b.json") == ["20260103-c.json", "sub"]


def test_landing_on_s3_conserves_and_is_idempotent(s3_lake):
    settings = s3_lake
    assert settings.lake_uri.startswith("s3://")
    # Two producers, two formats, the same intervals; plus a "parquet" file that is really text.
    prod.produce(SPEC, settings=settings, rows=600, start=T0, seed=1, label_delay=120, bad_fraction=0.02)
    prod.produce(SPEC, settings=settings, fmt="parquet", rows=200, start=T0, rate=0.5, seed=2, label_delay=120)
    landing_store(settings).put(landing_key(DS, "events", T0 + timedelta(seconds=42), "liar", "parquet"), b"id,x\n1,2\n")

    lake = Lake(settings)
    runs = []
    for _ in range(3):
        summaries = []
        for k in range(3):
            for kind in ("events", "labels"):
                summaries.append(ingest_interval(SPEC, kind, T0 + k * FIVE, T0 + (k + 1) * FIVE, settings=settings, lake=lake))
        runs.append((summaries, snapshot(settings)))
    (first, bytes1), (second, bytes2), (third, bytes3) = runs
    assert bytes1 == bytes2 == bytes3  # byte-identical lake output, three times
    assert [(s["records_in"], s["accepted"], s["quarantined"]) for s in first] == [
        (s["records_in"], s["accepted"], s["quarantined"]) for s in third
    ]
    ev = lake.manifests(DS, "events")
    assert len(ev) == 3
    files = [f["key"] for m in ev for f in m["source"]["files"]]
    assert len(files) == len(set(files))  # the ledger: each landing file in one batch
    for m in ev + lake.manifests(DS, "labels"):
        assert m["records_in"] == m["accepted"] + m["quarantined"]
    assert sum(m["records_in"] for m in ev) == 600 + 200 + 1
    assert ev[0]["reasons"]["file refused"] == 1
    refused = [json.loads(x) for x in lake.store.get(ev[0]["quarantine"]).decode().splitlines()]
    assert any("named .parquet but is not a Parquet file" in r["reasons"][0] for r in refused)
    # The manifest lists the landing files (both formats) with their sizes.
    kinds = {f["key"].rsplit(".", 1)[1] for f in ev[0]["source"]["files"]}
    assert kinds == {"jsonl", "parquet"}
    df, lineage = lake.labelled(SPEC, T0, T0 + FIVE)
    assert len(df) == ev[0]["accepted"]
    assert lineage["events"] == [ev[0]["batch_id"]]


def test_dag_run_in_the_stack_ingests_new_files_once(airflow_api, airflow_settings: Settings):
    """Trigger rtml_ingest through the REST API after files landed: they are ingested exactly once
    (by the triggered run, which sweeps every landing file no batch consumed yet, or by a scheduled
    run that swept them first), and the Asset event of the batch that took them carries its counts.
    The files are keyed in a past interval of their own, so nothing here depends on the clock."""
    from rtml.cli.demo import wait_idle

    settings = airflow_settings
    seed = int(uuid.uuid4().int % 100_000)
    start = datetime(2026, 2, 20, tzinfo=UTC) + timedelta(minutes=10 * (seed % 1000))
    out = prod.produce(SPEC, settings=settings, rows=60, start=start, rate=1.0, seed=seed, label_delay=30.0)
    assert out["events"] == 60
    try:
        run_id = airflow_api.trigger("rtml_ingest")
        state = airflow_api.wait("rtml_ingest", run_id, timeout=240)
        assert state == "success", airflow_api.explain("rtml_ingest", run_id)
        tis = {ti["task_id"]: ti["state"] for ti in airflow_api.task_instances("rtml_ingest", run_id)}
        assert set(tis.values()) <= {"success", "skipped"}, tis
        wait_idle(airflow_api, "rtml_ingest", timeout=240)
    finally:
        airflow_api.pause("rtml_ingest")

    lake = Lake(settings)
    ours = lake.read_batches(DS, "events")
    assert ours[SPEC.event_id].str.contains(f"-{seed}-").sum() == 60
    mine = [m for m in lake.manifests(DS, "events")
            if any(f"-s{seed}-" in f["key"] for f in m["source"].get("files", []))]
    assert len(mine) == 1, [m["batch_id"] for m in mine]  # every file of ours in one batch
    m = mine[0]
    assert m["records_in"] == m["accepted"] + m["quarantined"] and m["accepted"] >= 60

    r = airflow_api.get("/api/v2/assets/events", params={"source_dag_id": "rtml_ingest", "limit": 1000,
                                                         "order_by": "-timestamp"})
    r.raise_for_status()
    extras = [e["extra"] for e in r.json()["asset_events"]]
    assert any(x.get("kind") == "events" and x.get("accepted") == m["accepted"]
               and m["batch_id"] in x.get("batch_ids", []) for x in extras), extras
    assert any(x.get("kind") == "labels" and x.get("accepted", 0) >= 60 for x in extras), extras


def test_backfill_of_past_intervals(airflow_api, airflow_settings: Settings):
    """A backfill (REST, as the UI does it) of past data intervals: with the ledger, the files of
    those intervals are ingested exactly once, by the backfill or by a run that swept them first."""
    import time

    settings = airflow_settings
    past = datetime(2026, 3, 2, 9, 0, tzinfo=UTC) + timedelta(minutes=5 * (uuid.uuid4().int % 100))
    seed = int(uuid.uuid4().int % 100_000)
    prod.produce(SPEC, settings=settings, rows=600, start=past, rate=1.0, seed=seed, label_delay=60.0)
    airflow_api.wait_dag("rtml_ingest")
    airflow_api.unpause("rtml_ingest")
    r = airflow_api.post("/api/v2/backfills", json={
        "dag_id": "rtml_ingest",
        "from_date": past.isoformat(),
        "to_date": (past + FIVE).isoformat(),
        "max_active_runs": 1,
        "reprocess_behavior": "completed",
    })
    assert r.status_code < 300, r.text
    wanted = {past, past + FIVE}
    deadline = time.monotonic() + 300
    while True:
        runs = airflow_api.get("/api/v2/dags/rtml_ingest/dagRuns", params={"run_type": "backfill", "limit": 100})
        runs.raise_for_status()
        ours = {datetime.fromisoformat(x["data_interval_start"].replace("Z", "+00:00")): x
                for x in runs.json()["dag_runs"] if x.get("data_interval_start")}
        ours = {k: v for k, v in ours.items() if k in wanted}
        if len(ours) == 2 and all(v["state"] in ("success", "failed") for v in ours.values()):
            break
        assert time.monotonic() < deadline, f"backfill runs not finished: {ours}"
        time.sleep(3)
    for run in ours.values():
        assert run["state"] == "success", airflow_api.explain("rtml_ingest", run["dag_run_id"])
    lake = Lake(settings)
    manifests = lake.manifests(DS, "events")
    ours = [f["key"] for m in manifests for f in m["source"].get("files", []) if f"-s{seed}-" in f["key"]]
    assert len(ours) == len(set(ours)) == 10  # ten one-minute files, each in exactly one batch
    events = lake.read_batches(DS, "events")
    assert events[SPEC.event_id].str.contains(f"-{seed}-").sum() == 600
