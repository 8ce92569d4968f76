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
    """The history, then served predictions and labels, as table commits (as the endpoint's log and
    ingestion write them), read through the Lake API."""
    spec = toy_spec()
    home = tmp_path_factory.mktemp("monitor")
    settings = Settings(home=home, storage="local")
    lake = Lake(settings)
    history = synthetic_frame(spec, 2000, seed=1)
    write_to_lake(lake, spec, history, batches=4)
    model = build_pipeline(spec).fit(history[spec.feature_names], target_vector(history[spec.target.name], spec))
    return spec, settings, lake, history, model


def _serve(world, n: int, seed: int, drift: float = 0.0, scramble: bool = False, tag: str = "a",
           later_hours: float = 0.0, decide=None, live=None):
    """Log ``n`` predictions (as the serving endpoint does) after the history, plus their labels.

    ``later_hours``: start that much later (a window of its own); ``decide(live, scores)``: the
    answered 0/1 decisions (default: score at the spec's threshold); ``live``: the events to serve.
    """
    spec, settings, lake, history, model = world
    start = history[spec.event_time].max().tz_localize(None).to_pydatetime() + timedelta(minutes=1)
    start += timedelta(hours=later_hours)
    if live is None:
        live = synthetic_frame(spec, n, seed=seed, start=start, drift=drift, id_offset=10_000 * seed)
    scores = model.predict_proba(live[spec.feature_names])[:, 1]
    if scramble:  # a model that lost its signal: scores unrelated to the outcome
        scores = np.random.default_rng(seed).permutation(scores)
    decided = (scores >= spec.gates.quality.decision_threshold) if decide is None else decide(live, scores)
    preds = live[[spec.event_id, *spec.feature_names]].copy()
    preds["time"] = live[spec.event_time]
    preds["request_id"] = [f"req-{i}" for i in range(n)]
    preds["version"] = "1"
    preds["score"] = scores
    preds["label"] = np.where(np.asarray(decided, dtype=bool), spec.target.positive, spec.target.negative)
    ds = spec.dataset.name
    batch = f"{start:%Y%m%dT%H%M%S}-{tag}"
    for kind, frame in (("predictions", preds), ("labels", live[[spec.event_id, spec.target.name]])):
        written = _commit(lake, kind, batch, frame.reset_index(drop=True))
        lake.write_manifest(ds, kind, batch, {"batch_id": batch, "kind": kind, **written,
                                              "records_in": n, "accepted": n, "quarantined": 0,
                                              "schema_hash": spec.schema_hash(),
                                              "watermark": live[spec.event_time].max().isoformat()})
    y = target_vector(live[spec.target.name], spec)
    honest = quality_metrics(y, model.predict_proba(live[spec.feature_names])[:, 1], 0.35)["roc_auc"]
    end = pd.Timestamp(live[spec.event_time].max()) + timedelta(minutes=1)
    return end, honest


def _commit(lake, kind: str, batch: str, frame: pd.DataFrame) -> dict:
    """The batch's rows as one table commit."""
    import pyarrow as pa

    ds = toy_spec().dataset.name
    table = pa.Table.from_pandas(frame, preserve_index=False)
    if "time" in table.column_names:
        at = table.schema.get_field_index("time")
        table = table.set_column(at, "time", table.column("time").cast(pa.timestamp("us", tz="UTC")))
    snap = lake.tables.commit_batch(ds, kind, batch, table, time_column="time" if kind == "predictions" else None)
    return snap


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
    # the check is a row of <dataset>.monitoring, queryable beside the data
    from rtml.monitor.live import MONITORING_KIND

    rows = world[2].tables.read(spec.dataset.name, MONITORING_KIND).to_pandas()
    (row,) = rows[rows["checked_at"] == pd.Timestamp(report["checked_at"])].itertuples()
    assert row.retrain and list(row.reasons) == report["reasons"] and row.drift_passed is False
    assert row.drifted_share == report["drift"]["drifted_share"] and row.predictions == report["predictions"]
    assert json.loads(row.report)["window"] == report["window"]
    assert report["table"] == f"{spec.dataset.name}.{MONITORING_KIND}"


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


# --- live fairness ------------------------------------------------------------------------------------
def _blind(world):
    """A decision rule blind to the sensitive columns (every row scored as if in one group): the
    toy model picked up spurious region/age effects, this rule cannot have any."""
    spec, *_, model = world

    def decide(live, scores):
        same = live[spec.feature_names].copy()
        same["region"], same["age"] = "north", 30
        return model.predict_proba(same)[:, 1] >= spec.gates.quality.decision_threshold

    return decide


def test_fair_stream_does_not_breach(world):
    """Decisions blind to the sensitive columns (which do not move the outcome either): every live
    check passes, and the numbers are fairlearn's on the answered decisions."""
    from fairlearn.metrics import demographic_parity_ratio

    from rtml.features import sensitive_groups

    end, honest = _serve(world, 2000, seed=5, tag="fair", later_hours=48, decide=_blind(world))
    spec, settings, lake, *_ = world
    report = monitor(spec, settings, window_hours=34, now=end.to_pydatetime(), reference_metric=honest)
    live = report["live_fairness"]
    assert report["predictions"] == 2000 and live["rows"] == 2000
    assert live["passed"] is True and live["reasons"] == []
    assert not [r for r in report["reasons"] if "fairness" in r]
    assert set(live["attributes"]) == {s.name for s in spec.sensitive}
    region = live["attributes"]["region_group"]
    assert len(region["gating_groups"]) >= 2 and region["checks"]
    assert all(c["passed"] for c in region["checks"])
    # the same number fairlearn gives on the logged decisions and the labels that arrived
    preds = lake.read_batches(spec.dataset.name, "predictions")
    preds = preds[preds["request_id"].notna() & preds[spec.event_id].str.startswith("evt-0005")]
    labels = lake.latest_labels(spec)
    joined = preds.merge(labels[[spec.event_id, spec.target.name]], on=spec.event_id)
    groups = sensitive_groups(joined, spec.sensitive[0])
    keep = groups.isin(region["gating_groups"]).to_numpy()
    y = target_vector(joined[spec.target.name], spec)[keep]
    p = (joined["label"].astype(str) == spec.target.positive).to_numpy(dtype=int)[keep]
    expected = demographic_parity_ratio(y, p, sensitive_features=groups[keep])
    assert region["demographic_parity_ratio"] == pytest.approx(expected, abs=1e-9)


def test_biased_stream_breaches_naming_attribute_metric_and_group(world):
    """The served decisions turn down most of one region: disparate impact breaks, monitoring asks
    to retrain, and the reason names the attribute, the metric and the group."""
    spec = world[0]
    rng = np.random.default_rng(6)

    def biased(live, scores):
        base = _blind(world)(live, scores)
        return base & ~((live["region"].to_numpy() == "south") & (rng.random(len(live)) < 0.8))

    end, honest = _serve(world, 800, seed=6, tag="biased", later_hours=96, decide=biased)
    spec, settings, *_ = world
    report = monitor(spec, settings, window_hours=14, now=end.to_pydatetime(), reference_metric=honest)
    live = report["live_fairness"]
    assert live["passed"] is False and report["retrain"] is True
    di = [r for r in report["reasons"] if r.startswith("live fairness: region_group: disparate impact")]
    assert di, report["reasons"]
    assert "'south'" in di[0] and "selection_rate" in di[0]
    check = next(c for c in live["attributes"]["region_group"]["checks"] if c["metric"] == "demographic_parity_ratio")
    assert check["passed"] is False and "south" in check["groups"]
    assert check["value"] < spec.gates.fairness.disparate_impact_min


def test_a_tiny_group_is_insufficient_data_and_decides_nothing(world):
    """A group below min_group_size, however unfair its decisions, does not breach."""
    spec = world[0]
    start = world[3][spec.event_time].max().tz_localize(None).to_pydatetime() + timedelta(hours=144, minutes=1)
    events = synthetic_frame(spec, 800, seed=7, start=start, id_offset=70_000)
    others = events["region"].to_numpy() != "east"
    tiny = np.flatnonzero(~others)[:10]  # keep 10 "east" rows: fewer than min_group_size (50)
    events = events.iloc[np.sort(np.concatenate([np.flatnonzero(others), tiny]))].reset_index(drop=True)

    def against_east(live, scores):
        return _blind(world)(live, scores) & (live["region"].to_numpy() != "east")

    end, honest = _serve(world, len(events), seed=7, tag="tiny", decide=against_east, live=events)
    spec, settings, *_ = world
    report = monitor(spec, settings, window_hours=15, now=end.to_pydatetime(), reference_metric=honest)
    region = report["live_fairness"]["attributes"]["region_group"]
    east = next(g for g in region["groups"] if g["group"] == "east")
    assert east["count"] == 10 and east["selection_rate"] == 0.0
    assert "fewer than 50 rows" in east["insufficient_data"] and "east" in region["small_groups"]
    assert region["passed"] is True
    assert not [r for r in report["reasons"] if "region_group" in r]


def test_live_fairness_of_the_champion_only_and_nothing_without_labels(world):
    spec, *_ = world
    joined = pd.DataFrame({"version": ["1", "2", "2"], "model": [spec.model.registered_name] * 2 + ["other"],
                           "score": [0.9, 0.1, 0.2], "label": ["yes", "no", "no"],
                           spec.target.name: ["yes", "no", "no"], "region": ["north", "south", "east"],
                           "age": [30, 50, 60]})
    from rtml.monitor.live import live_fairness

    assert live_fairness(joined, spec, "3")["skipped"].startswith("no labelled predictions of version 3")
    one = live_fairness(joined, spec, "2")  # another model's version 2 in the same lake is not this one
    assert one["rows"] == 1 and one["passed"] is True  # one row: every group insufficient, no verdict


class _Registry:
    """The few MLflow client calls publishing makes, in memory: one version with a model card."""

    def __init__(self, tmp) -> None:
        self.tmp = tmp
        self.tags: dict[tuple[str, str], dict[str, str]] = {}
        self.artifacts: dict[str, str] = {"evaluation/model_card.html": "<html><body><h1>card</h1></body></html>"}

    def get_model_version(self, name, version):
        from types import SimpleNamespace

        return SimpleNamespace(name=name, version=version, run_id="run-1")

    def download_artifacts(self, run_id, path, dst):
        from pathlib import Path

        out = Path(dst) / path
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(self.artifacts[path])
        return str(out)

    def log_artifact(self, run_id, local, artifact_path):
        from pathlib import Path

        self.artifacts[f"{artifact_path}/{Path(local).name}"] = Path(local).read_text()

    def set_model_version_tag(self, name, version, key, value):
        self.tags.setdefault((name, version), {})[key] = value


def test_a_breach_is_attached_to_the_champion_card_and_tag(world, monkeypatch, tmp_path):
    """With a champion in the registry: its card gets one "live fairness" section (replaced, not
    stacked, on the next run), evaluation/live_fairness.json, and the tag the endpoint reads."""
    import rtml.monitor.live as live_mod
    import rtml.registry.client as registry_client

    spec = world[0]
    rng = np.random.default_rng(8)

    def biased(live, scores):
        return _blind(world)(live, scores) & ~((live["age"].to_numpy() >= 40) & (rng.random(len(live)) < 0.7))

    end, honest = _serve(world, 800, seed=8, tag="card", later_hours=192, decide=biased)
    spec, settings, *_ = world
    registry = _Registry(tmp_path)
    monkeypatch.setattr(registry_client, "mlflow_client", lambda s: registry)
    monkeypatch.setattr(live_mod, "_champion_metric", lambda spec, settings, metric: ("1", honest))
    for _ in range(2):
        report = monitor(spec, settings, window_hours=14, now=end.to_pydatetime())
    fair = report["live_fairness"]
    assert fair["published"] == "ok" and fair["version"] == "1" and fair["passed"] is False
    card = registry.artifacts["evaluation/model_card.html"]
    assert card.count("<section id='live-fairness'>") == 1 and "<h1>card</h1>" in card
    assert "live fairness: age_group: disparate impact" in card
    assert json.loads(registry.artifacts["evaluation/live_fairness.json"])["rows"] == 800
    tag = json.loads(registry.tags[(spec.model.registered_name, "1")]["live_fairness"])
    di = tag["checks"]["age_group"]["demographic_parity_ratio"]
    assert di[1] == 0 and di[0] == pytest.approx(fair["attributes"]["age_group"]["demographic_parity_ratio"], abs=1e-4)
    assert tag["passed"] is False and tag["rows"] == 800


def test_the_tag_keeps_to_the_limit_with_many_attributes():
    from rtml.monitor.live import TAG_LIMIT, fairness_tag

    check = {"metric": "demographic_parity_ratio", "value": 0.5, "passed": False}
    ok = {"metric": "equal_opportunity_difference", "value": 0.01, "passed": True}
    fair = {"rows": 10, "passed": False,
            "attributes": {f"attribute_{i:03d}": {"checks": [check, ok]} for i in range(200)}}
    text = fairness_tag(fair, "2026-01-01T00:00:00")
    body = json.loads(text)
    assert len(text) <= TAG_LIMIT and body["truncated"] is True and body["passed"] is False


def test_live_fairness_judges_the_specs_intersections_too():
    """Decisions unfair only to crossed groups (region XOR age): live monitoring names the
    intersection, as the gate does; the 10-row crossed cell is insufficient data."""
    from support.synthetic import TOY_SPEC

    from rtml.monitor.live import live_fairness

    gate = {"min_group_size": 50, "intersections": [["region_group", "age_group"]]}
    spec = toy_spec(gates={**TOY_SPEC["gates"], "fairness": gate})
    rng = np.random.default_rng(3)
    parts = []
    for region, age, rate, n in (("north", 25, 0.3, 300), ("north", 50, 0.6, 300), ("south", 25, 0.6, 300),
                                 ("south", 50, 0.3, 300), ("east", 25, 0.0, 10)):
        chosen = np.zeros(n, dtype=bool)
        chosen[rng.permutation(n)[: round(rate * n)]] = True
        parts.append(pd.DataFrame({"region": region, "age": age, "version": "1", "score": 0.5,
                                   "label": np.where(chosen, "yes", "no"),
                                   spec.target.name: np.where(rng.random(n) < 0.5, "yes", "no")}))
    fair = live_fairness(pd.concat(parts, ignore_index=True), spec, "1")
    assert fair["attributes"]["region_group"]["passed"] and fair["attributes"]["age_group"]["passed"]
    crossed = fair["attributes"]["region_group x age_group"]
    assert crossed["passed"] is False and "east & 18-39" in crossed["small_groups"]
    assert any(r.startswith("live fairness: region_group x age_group: disparate impact") for r in fair["reasons"])
