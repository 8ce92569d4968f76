"""rtml_ingest's event-driven start: with a Kafka source the DAG is scheduled on its interval OR on
an Asset watched by the Kafka provider's message-queue trigger; with any other source (or with the
watcher turned off) it is the plain interval schedule and nothing reads Kafka.

Parsed in a fresh interpreter per case, as the DAG processor does, with the settings in its environment.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

DAG_FILE = Path(__file__).resolve().parents[2] / "dags" / "rtml_ingest.py"
HEAVY = ("mlflow", "sklearn", "evidently", "pandas", "fairlearn", "scipy", "pyarrow")

_PROBE = r"""
import importlib.util, json, sys, time
import airflow.sdk
from airflow.sdk.definitions._internal.contextmanager import DagContext
before = set(sys.modules)
DagContext.current_autoregister_module_name = "dag_under_test"
t0 = time.perf_counter()
spec = importlib.util.spec_from_file_location("dag_under_test", sys.argv[1])
module = importlib.util.module_from_spec(spec)
sys.modules["dag_under_test"] = module
spec.loader.exec_module(module)
seconds = time.perf_counter() - t0
heavy = sorted({m.split(".")[0] for m in set(sys.modules) - before} & set(sys.argv[2].split(",")))
dag = next(d for d, _ in DagContext.autoregistered_dags if d.dag_id == "rtml_ingest")
# What the DAG processor stores: the serialized DAG and, per watched Asset, the encoded trigger.
from airflow.serialization.serialized_objects import DagSerialization
from airflow.serialization.encoders import encode_trigger
ser = DagSerialization.to_dict(dag)
tt = dag.timetable
cond = getattr(tt, "asset_condition", None)
assets = [] if cond is None else [cond] if hasattr(cond, "watchers") else list(cond.objects)
watchers = [{"asset": a.name, "uri": a.uri, "watcher": w.name, **encode_trigger(w.trigger)}
            for a in assets for w in a.watchers]
back = DagSerialization.from_dict(ser)
print(json.dumps({"seconds": seconds, "heavy": heavy, "timetable": type(tt).__name__,
                  "inner": type(getattr(tt, "timetable", tt)).__name__, "watchers": watchers,
                  "round_trip": type(back.timetable).__name__,
                  "max_active_runs": dag.max_active_runs, "doc": dag.doc_md or ""}, default=str))
"""


def _parse(tmp_path: Path, **env_vars: str) -> dict:
    env = dict(os.environ)
    env.update(AIRFLOW_HOME=str(tmp_path / "airflow"), AIRFLOW__CORE__LOAD_EXAMPLES="False", **env_vars)
    for name in ("RTML_SOURCE", "RTML_KAFKA_WATCH"):
        if name not in env_vars:
            env.pop(name, None)
    out = subprocess.run([sys.executable, "-c", _PROBE, str(DAG_FILE), ",".join(HEAVY)],
                         capture_output=True, text=True, env=env, timeout=180)
    assert out.returncode == 0, out.stderr[-4000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_kafka_source_adds_a_watched_asset_beside_the_interval(tmp_path):
    from rtml.ingest.kafka import ARRIVAL_SIGNAL, topic_name
    from rtml.platform.kafka import WATCH_CONN_ID
    from rtml.spec import load_spec

    info = _parse(tmp_path, RTML_SOURCE="kafka", RTML_INGEST_INTERVAL_MINUTES="10")
    assert info["timetable"] == info["round_trip"] == "AssetOrTimeSchedule"
    assert info["inner"] == "CronDataIntervalTimetable"
    assert not info["heavy"] and info["seconds"] < 1.0, info
    assert info["max_active_runs"] == 1  # signalled and scheduled runs never read the topic at once
    [w] = info["watchers"]
    assert w["asset"] == "rtml_kafka_arrivals"
    # The provider's message-queue trigger resolves to its Kafka trigger; this is what the triggerer runs.
    assert w["classpath"] == "airflow.providers.apache.kafka.triggers.await_message.AwaitMessageTrigger"
    kw = w["kwargs"]
    ds = load_spec().dataset.name
    assert json.dumps(kw).count(topic_name(ds, "events")) == 1 and topic_name(ds, "labels") in json.dumps(kw)
    assert WATCH_CONN_ID in json.dumps(kw) and ARRIVAL_SIGNAL in json.dumps(kw)
    assert "600.0" in json.dumps(kw)  # fresh = within one 10-minute interval
    assert "AssetWatcher" in info["doc"] and "rtml-watch" in info["doc"]


@pytest.mark.parametrize("env", [{}, {"RTML_SOURCE": "redis"}, {"RTML_SOURCE": "kafka", "RTML_KAFKA_WATCH": "false"}],
                         ids=["landing", "redis", "kafka-watch-off"])
def test_without_a_kafka_watch_the_schedule_is_the_interval_alone(tmp_path, env):
    info = _parse(tmp_path, **env)
    assert info["timetable"] == info["round_trip"] == "CronDataIntervalTimetable"
    assert info["watchers"] == []
