"""Monitoring on a folder lake: healthy traffic passes, drifted traffic or degraded live quality
asks for retraining, and the report lands in the lake."""

from __future__ import annotations

import json
from datetime import timedelta

import numpy as np
import pandas as pd
import pytest
from support.synthetic import START, synthetic_frame, toy_spec, write_to_lake

from rtml.evaluate.quality import quality_metrics
from rtml.features import build_pipeline, target_vector
from rtml.lake import Lake
from rtml.monitor.live import monitor
from rtml.settings import Settings


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    spec = toy_spec()
    home = tmp_path_factory.mktemp("monitor")
    settings = Settings(home=home, storage="local")
    lake = Lake(settings)
    history = synthetic_frame(spec, 2000, seed=1)
    write_to_lake(lake, spec, history, batches=4)
    model = build_pipeline(spec).fit(history[spec.feature_names], target_vector(history[spec.target.name], spec))
    return spec, settings, lake, history, model


def _serve(world, n: int, seed: int, drift: float = 0.0, scramble: bool = False, tag: str = "a"):
    """Log ``n`` predictions (as the serving endpoint does) after the history, plus their labels."""
    spec, settings, lake, history, model = world
    start = history[spec.event_time].max().tz_localize(None).to_pydatetime() + timedelta(minutes=1)
    live = synthetic_frame(spec, n, seed=seed, start=start, drift=drift, id_offset=10_000 * seed)
    scores = model.predict_proba(live[spec.feature_names])[:, 1]
    if scramble:  # a model that lost its signal: scores unrelated to the outcome
        scores = np.random.default_rng(seed).permutation(scores)
    preds = live[[spec.event_id, *spec.feature_names]].copy()
    preds["time"] = live[spec.event_time]
    preds["request_id"] = [f"req-{i}" for i in range(n)]
    preds["version"] = "1"
    preds["score"] = scores
    ds = spec.dataset.name
    batch = f"{start:%Y%m%dT%H%M%S}-{tag}"
    for kind, frame in (("predictions", preds), ("labels", live[[spec.event_id, spec.target.name]])):
        key = lake.data_key(ds, kind, batch)
        lake.write_table(key, frame.reset_index(drop=True))
        lake.write_manifest(ds, kind, batch, {"batch_id": batch, "kind": kind, "files": [key],
                                              "records_in": n, "accepted": n, "quarantined": 0,
                                              "schema_hash": spec.schema_hash(),
                                              "watermark": live[spec.event_time].max().isoformat()})
    y = target_vector(live[spec.target.name], spec)
    honest = quality_metrics(y, model.predict_proba(live[spec.feature_names])[:, 1], 0.35)["roc_auc"]
    end = pd.Timestamp(live[spec.event_time].max()) + timedelta(minutes=1)
    return end, honest


def test_healthy_traffic_does_not_ask_for_retraining(world):
    end, honest = _serve(world, 600, seed=2, tag="healthy")
    spec, settings, lake, *_ = world
    report = monitor(spec, settings, window_hours=12, now=end.to_pydatetime(), reference_metric=honest)
    assert report["predictions"] == 600
    assert report["labelled_predictions"] == 600
    assert report["drift"]["passed"] is True
    assert report["retrain"] is False, report["reasons"]
    saved = json.loads(lake.store.get(report["report"].split(str(lake.store.uri) + "/", 1)[1]))
    assert saved["predictions"] == 600 and saved["retrain"] is False


def test_drifted_traffic_asks_for_retraining(world):
    end, honest = _serve(world, 600, seed=3, drift=0.35, tag="drift")
    spec, settings, *_ = world
    report = monitor(spec, settings, window_hours=10, now=end.to_pydatetime(), reference_metric=honest)
    assert report["retrain"] is True
    assert report["drift"]["passed"] is False
    assert any(r.startswith("drift: live") for r in report["reasons"])
    numeric = set(spec.numeric_features)
    assert numeric & set(report["drift"]["drifted_features"])


def test_degraded_live_quality_asks_for_retraining(world):
    end, honest = _serve(world, 600, seed=4, scramble=True, tag="scrambled")
    spec, settings, *_ = world
    report = monitor(spec, settings, window_hours=10, now=end.to_pydatetime(), reference_metric=honest)
    assert report["retrain"] is True
    assert any(r.startswith("performance: live roc_auc") for r in report["reasons"]), report["reasons"]
    assert report["quality_drop"] > spec.gates.quality.tolerance


def test_no_predictions_is_reported_not_failed(world):
    spec, settings, *_ = world
    report = monitor(spec, settings, window_hours=1, now=START, reference_metric=0.8)
    assert report["predictions"] == 0 and report["retrain"] is False
    assert "no predictions" in report["message"]
