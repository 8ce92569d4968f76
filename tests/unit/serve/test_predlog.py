"""rtml.serve.predlog: the prediction log buffers rows, writes them to a local lake in batches with
manifests, conserves every row, sends rows that cannot be written to a dead letter, keeps rows when
the store fails, and lets only one flush write at a time."""

from __future__ import annotations

import json
import threading
from typing import Any

import numpy as np
import pytest
from support.serving import refusing_puts

from rtml.serve.predlog import PredictionLog


def log_item(n: int, event_ids: list[Any], start: float = 100.0) -> dict[str, Any]:
    from datetime import datetime

    return {
        "request_id": [f"r{i}" for i in range(n)], "row": list(range(n)), "time": datetime(2026, 1, 1),
        "model": "m", "keys": {"event_id": event_ids}, "features": {"Age": [start + i for i in range(n)]},
        "version": ["1"] * n, "score": [0.5] * n, "label": ["good"] * n, "extra": ("version", "score", "label"),
    }


def test_every_row_added_is_written_once_with_a_manifest(local_lake, spec):
    plog = PredictionLog("predictions", spec, local_lake)
    sizes = [1, 4, 2, 7]
    for k, n in enumerate(sizes):
        plog.add(log_item(n, [f"b{k}-{i}" for i in range(n)], 10.0 * k), n)
    assert plog.pending_rows == sum(sizes)
    first = plog.flush()
    assert plog.flush() is None  # nothing left: no empty batch
    plog.add(log_item(3, ["c0", "c1", "c2"]), 3)
    second = plog.flush()
    assert (first["records_in"], first["accepted"], second["accepted"]) == (14, 14, 3)
    assert first["batch_id"] != second["batch_id"] and first["model_versions"] == ["1"]
    assert first["schema_hash"] == spec.schema_hash() and first["kind"] == "predictions"
    rows = local_lake.read_batches(spec.dataset.name, "predictions")
    assert len(rows) == 17 and rows["event_id"].is_unique
    assert rows["row"].dtype == "int32" and rows["Age"].dtype == "float64" and rows["score"].dtype == "float64"
    assert str(rows["time"].dt.tz) == "UTC"
    assert (plog.written_rows, plog.written_batches, plog.pending_rows) == (17, 2, 0)
    assert [m["accepted"] for m in local_lake.manifests(spec.dataset.name, "predictions")] == [14, 3]


def test_without_a_lake_flush_writes_nothing_and_empties_the_buffer(spec):
    plog = PredictionLog("shadow", spec, None, max_rows=3)
    plog.add(log_item(3, ["a", "b", "c"]), 3)
    assert plog.full
    assert plog.flush() is None
    assert plog.pending_rows == 0 and not plog.full and plog.written_rows == 0


def test_a_row_the_log_cannot_write_goes_to_the_dead_letter_and_the_rest_is_written(local_lake, spec):
    lake = local_lake
    dead: list[int] = []
    plog = PredictionLog("predictions", spec, lake, on_dead=dead.append)
    plog.add(log_item(3, ["a", "b", "c"]), 3)
    plog.add(log_item(4, ["d", "bad\ud800", "f", "g"], 200.0), 4)  # bypassing the endpoint's checks
    plog.add(log_item(2, ["h", "i"], 300.0), 2)
    manifest = plog.flush()
    assert manifest["accepted"] == 8 and manifest["quarantined"] == 1 and plog.pending_rows == 0
    assert plog.dead_rows == 1 and dead == [1]
    rows = lake.read_batches(spec.dataset.name, "predictions")
    assert sorted(rows["event_id"]) == ["a", "b", "c", "d", "f", "g", "h", "i"]
    qkey = lake.quarantine_key(spec.dataset.name, "predictions", manifest["batch_id"])
    rejected = [json.loads(line) for line in lake.store.get(qkey).decode("ascii").splitlines()]
    assert len(rejected) == 1 and rejected[0]["event_id"] == "bad\ud800" and rejected[0]["Age"] == 201.0
    assert "surrogate" in rejected[0]["reason"]
    # ... and the log keeps writing afterwards
    plog.add(log_item(2, ["j", "k"]), 2)
    assert plog.flush()["accepted"] == 2


def test_the_dead_letter_falls_back_to_local_disk_when_the_lake_refuses_it(local_lake, spec, tmp_path):
    plog = PredictionLog("predictions", spec, local_lake)
    plog.add(log_item(2, ["ok", "bad\udc00"]), 2)
    with refusing_puts(local_lake.store, lambda key: "quarantine" in key, "quarantine area down"):
        assert plog.flush()["accepted"] == 1
    path = tmp_path / "serve-dead-letter" / "predictions.jsonl"
    (row,) = [json.loads(line) for line in path.read_text("ascii").splitlines()]
    assert row["event_id"] == "bad\udc00" and row["kind"] == "predictions"


def test_micro_batches_of_versions_with_other_inputs_are_written_together(local_lake, spec):
    plog = PredictionLog("predictions", spec, local_lake)
    other = log_item(2, ["b1", "b2"], 200.0)
    other["features"] = {"Age": [1.0, 2.0], "Income": [5.0, None]}  # a version with one more input
    plog.add(log_item(2, ["a1", "a2"]), 2)
    plog.add(other, 2)
    plog.add(log_item(1, ["c1"], 300.0), 1)
    manifest = plog.flush()
    assert manifest["accepted"] == 5 and manifest["quarantined"] == 0
    rows = local_lake.read_batches(spec.dataset.name, "predictions").set_index("event_id")
    assert rows.loc["b1", "Income"] == 5.0 and np.isnan(rows.loc["a1", "Income"]) and np.isnan(rows.loc["c1", "Income"])
    assert list(rows["Age"]) == [100.0, 101.0, 1.0, 2.0, 300.0]


def test_the_last_flush_waits_for_one_still_writing(local_lake, spec):
    """At shutdown the periodic flush may still be writing the rows it took: the final flush
    waits for it, so the process never exits with those rows in flight."""
    lake = local_lake
    put = lake.store.put
    writing, release = threading.Event(), threading.Event()

    def slow_put(key, data):
        if "_manifests" not in key:
            writing.set()
            release.wait(5)
        return put(key, data)

    lake.store.put = slow_put
    plog = PredictionLog("predictions", spec, lake)
    plog.add(log_item(3, ["a", "b", "c"]), 3)
    first = threading.Thread(target=plog.flush)
    first.start()
    assert writing.wait(5)
    plog.add(log_item(2, ["d", "e"]), 2)
    lake.store.put = put
    done: list[object] = []
    last = threading.Thread(target=lambda: done.append(plog.flush()))
    last.start()
    last.join(0.3)
    assert last.is_alive() and not done  # it waits while the first one writes
    release.set()
    first.join(5)
    last.join(5)
    rows = lake.read_batches(spec.dataset.name, "predictions")
    assert sorted(rows["event_id"]) == ["a", "b", "c", "d", "e"] and plog.pending_rows == 0


def test_a_failing_store_keeps_rows_and_the_bound_says_full(local_lake, spec):
    lake = local_lake
    plog = PredictionLog("predictions", spec, lake, max_rows=5)
    with refusing_puts(lake.store):
        plog.add(log_item(3, ["a", "b", "c"]), 3)
        with pytest.raises(OSError):
            plog.flush()
        assert plog.pending_rows == 3 and not plog.full and plog.dead_rows == 0 and plog.failed_writes == 1
        plog.add(log_item(2, ["d", "e"]), 2)
        assert plog.full
    assert plog.flush()["accepted"] == 5 and plog.pending_rows == 0
    # the rows kept come first: the order of the log is the order of the answers
    assert list(lake.read_batches(spec.dataset.name, "predictions")["event_id"]) == ["a", "b", "c", "d", "e"]


@pytest.mark.parametrize("kind", ["predictions", "shadow"])
def test_each_flush_is_one_commit_to_the_kinds_table(local_lake, spec, kind):
    from datetime import datetime

    from rtml.tables import BATCH_COLUMN

    lake, ds = local_lake, spec.dataset.name
    plog = PredictionLog(kind, spec, lake)
    plog.add(log_item(3, ["a", "b", "c"]), 3)
    later = log_item(2, ["d", "e"], 200.0)
    later["time"] = datetime(2026, 1, 2, 23, 59)
    plog.add(later, 2)
    first = plog.flush()
    plog.add(log_item(1, ["f"]), 1)
    second = plog.flush()
    assert first["table"] == second["table"] == f"{ds}.{kind}" and "files" not in first
    assert (first["min_time"], first["watermark"]) == ("2026-01-01T00:00:00+00:00", "2026-01-02T23:59:00+00:00")
    table = lake.tables.table(ds, kind)
    snaps = [s for s in table.metadata.snapshots if s.summary and s.summary.get("rtml.batch")]
    assert [s.summary["rtml.batch"] for s in snaps] == [first["batch_id"], second["batch_id"]]
    assert [s.snapshot_id for s in snaps] == [first["snapshot_id"], second["snapshot_id"]]
    assert snaps[0].summary["rtml.accepted"] == "5"
    assert "day" in str(table.spec()) and "time" in str(table.spec())
    rows = lake.read_batches(ds, kind)  # the Lake API reads the table batches
    assert list(rows["event_id"]) == ["a", "b", "c", "d", "e", "f"]
    assert rows["row"].dtype == "int32" and rows["score"].dtype == "float64" and str(rows["time"].dt.tz) == "UTC"
    assert lake.tables.read(ds, kind).column(BATCH_COLUMN).to_pylist().count(first["batch_id"]) == 5


def test_a_flush_retried_after_its_commit_is_not_doubled(local_lake, spec):
    """The commit landed but the manifest write failed: the rows are kept and the next flush commits
    them (and the newer ones) under the same batch id, replacing the first commit's rows."""
    lake, ds = local_lake, spec.dataset.name
    plog = PredictionLog("predictions", spec, lake)
    plog.add(log_item(3, ["a", "b", "c"]), 3)
    with refusing_puts(lake.store, lambda key: "_manifests" in key):
        with pytest.raises(OSError):
            plog.flush()
    assert plog.pending_rows == 3 and lake.tables.read(ds, "predictions").num_rows == 3  # committed, no manifest
    assert lake.read_batches(ds, "predictions").empty  # not visible without its manifest
    plog.add(log_item(2, ["d", "e"]), 2)
    manifest = plog.flush()
    assert manifest["accepted"] == 5 and plog.pending_rows == 0
    everything = lake.tables.read(ds, "predictions").to_pandas()  # every row of the table, manifest or not
    assert sorted(everything["event_id"]) == ["a", "b", "c", "d", "e"]
    assert set(everything["_batch"]) == {manifest["batch_id"]}
    plog.add(log_item(1, ["f"]), 1)
    assert plog.flush()["batch_id"] != manifest["batch_id"]  # a successful flush starts a new batch


def test_a_retried_batch_keeps_the_rows_it_dead_lettered_before(local_lake, spec):
    lake = local_lake
    plog = PredictionLog("predictions", spec, lake)
    plog.add(log_item(2, ["ok", "bad\ud800"]), 2)
    with refusing_puts(lake.store, lambda key: "quarantine" not in key), pytest.raises(OSError):
        plog.flush()
    plog.add(log_item(2, ["ok2", "bad2\udc00"]), 2)
    manifest = plog.flush()
    qkey = lake.quarantine_key(spec.dataset.name, "predictions", manifest["batch_id"])
    dead = [json.loads(line)["event_id"] for line in lake.store.get(qkey).decode("ascii").splitlines()]
    assert dead == ["bad\ud800", "bad2\udc00"] and manifest["accepted"] == 2
