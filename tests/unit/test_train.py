"""rtml.train without an MLflow server: the sliding window read from a local-folder lake (slides with
the data, honours ``end``, empty ingestion intervals need no full read, too little data is a clean
NotEnoughData), the out-of-time split, reproducible fits and out-of-fold scores, the small helpers
(tag joining, manifests with rows, code version, requirements, skops trust) and ``new_data_status``
against a fake registry client."""

from __future__ import annotations

import subprocess
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from support.synthetic import synthetic_frame, toy_spec, write_to_lake

from rtml import train as train_mod
from rtml.evaluate.quality import quality_metrics
from rtml.features import target_vector, to_frame
from rtml.lake import Lake
from rtml.storage import LocalStore
from rtml.train import (
    TAG_MAX,
    NotEnoughData,
    _has_rows,
    _join,
    code_version,
    fit_pipeline,
    load_window,
    model_requirements,
    new_data_status,
    oof_scores,
    split_holdout,
)


@pytest.fixture(scope="module")
def spec():
    return toy_spec()


@pytest.fixture
def lake(tmp_path):
    return Lake(store=LocalStore(tmp_path / "lake"))


# --- the window ------------------------------------------------------------------------------------------
def test_same_seed_same_window_same_metrics(spec, lake):
    write_to_lake(lake, spec, synthetic_frame(spec, 1200, seed=4), batches=4)

    def run(seed):
        df, lineage = load_window(spec, lake, window_days=30)
        train, hold = split_holdout(df, spec)
        model = fit_pipeline(spec, train, seed)
        s = model.predict_proba(to_frame(hold, spec))[:, 1]
        return quality_metrics(target_vector(hold[spec.target.name], spec), s, 0.35), lineage, hold

    m1, lin1, hold1 = run(7)
    m2, lin2, hold2 = run(7)
    assert m1 == m2
    pd.testing.assert_frame_equal(hold1, hold2)
    assert lin1["events_batches"] == lin2["events_batches"] and len(lin1["events_batches"]) == 4
    assert len(lin1["manifests"]) == 8 and all(k.endswith(".json") for k in lin1["manifests"])
    # out of time: every holdout row is newer than every training row
    df, _ = load_window(spec, lake)
    train, hold = split_holdout(df, spec)
    assert train[spec.event_time].max() <= hold[spec.event_time].min()
    assert len(hold) == int(np.ceil(len(df) * spec.training.holdout_fraction))


def test_window_slides_with_end(spec, lake):
    # 1200 events one hour apart = 50 days
    write_to_lake(lake, spec, synthetic_frame(spec, 1200, seed=4, step_seconds=3600), batches=5)
    df, lin = load_window(spec, lake, window_days=10)
    ts = df[spec.event_time]
    assert (ts.max() - ts.min()) <= pd.Timedelta(days=10) and len(df) == 240
    assert len(lin["events_batches"]) == 1  # only the newest batch holds the last 10 days
    early, _ = load_window(spec, lake, end="2026-01-11T00:00:00Z", window_days=10)
    assert len(early) == 240 and early[spec.event_time].max() < pd.Timestamp("2026-01-11", tz="UTC")


def test_lineage_names_the_window_and_the_contract(spec, lake):
    write_to_lake(lake, spec, synthetic_frame(spec, 300, seed=4), batches=3)
    df, lin = load_window(spec, lake, end="2026-01-01T02:00:00", window_days=1)  # naive: read as UTC
    assert lin["window_end"] == "2026-01-01T02:00:00+00:00" and lin["window_start"] == "2025-12-31T02:00:00+00:00"
    assert lin["rows"] == len(df) == 120 and lin["schema_hash"] == spec.schema_hash()
    assert lin["events_batches"] == lin["labels_batches"] == ["20260101T000000-0000", "20260101T014000-0001"]
    assert lin["lake_uri"] == lake.uri and lin["dataset"] == spec.dataset.name


class _CountingLake(Lake):
    full_reads = 0

    def labelled(self, spec, start=None, end=None, **kw):
        if start is None and end is None:
            type(self).full_reads += 1
        return super().labelled(spec, start, end, **kw)


def test_empty_ingestion_intervals_do_not_force_a_full_read(spec, tmp_path):
    lake = _CountingLake(store=LocalStore(tmp_path / "lake"))
    df = synthetic_frame(spec, 600, seed=4)
    write_to_lake(lake, spec, df, batches=3)
    # an empty interval, as ingestion writes it: no files, nothing accepted, watermark null
    lake.write_manifest(
        spec.dataset.name,
        "events",
        "29990101T000000-9999",
        {
            "batch_id": "29990101T000000-9999",
            "kind": "events",
            "files": [],
            "records_in": 0,
            "accepted": 0,
            "quarantined": 0,
            "watermark": None,
            "schema_hash": spec.schema_hash(),
        },
    )
    _CountingLake.full_reads = 0
    window, lineage = load_window(spec, lake)
    assert _CountingLake.full_reads == 0
    assert len(window) == 600
    assert pd.Timestamp(lineage["window_end"]) == df[spec.event_time].max() + pd.Timedelta(microseconds=1)


def test_a_manifest_without_a_watermark_falls_back_to_one_full_read(spec, tmp_path):
    lake = _CountingLake(store=LocalStore(tmp_path / "lake"))
    df = synthetic_frame(spec, 300, seed=4)
    write_to_lake(lake, spec, df, batches=2)
    m = lake.manifests(spec.dataset.name, "events")[-1]
    lake.write_manifest(spec.dataset.name, "events", m["batch_id"], {**m, "watermark": None})
    _CountingLake.full_reads = 0
    window, lineage = load_window(spec, lake)
    assert _CountingLake.full_reads == 1 and len(window) == 300
    assert pd.Timestamp(lineage["window_end"]) == df[spec.event_time].max() + pd.Timedelta(microseconds=1)


def test_too_little_data_is_a_clean_not_enough_data(spec, lake):
    with pytest.raises(NotEnoughData):
        load_window(spec, lake)
    write_to_lake(lake, spec, synthetic_frame(spec, 50, seed=4), batches=1)
    df, _ = load_window(spec, lake)
    assert len(df) == 50
    from rtml.train import train

    with pytest.raises(NotEnoughData, match="training.min_rows"):  # refused before MLflow is contacted
        train(spec, lake=lake)


def test_a_window_before_the_data_is_not_enough_data_naming_it(spec, lake):
    write_to_lake(lake, spec, synthetic_frame(spec, 50, seed=4), batches=1)
    with pytest.raises(NotEnoughData, match=r"toy_applications.*between 2025-11-21T00:00:00\+00:00 and 2025-12-01"):
        load_window(spec, lake, end="2025-12-01T00:00:00Z", window_days=10)


def test_has_rows_reads_counts_then_files_then_watermark():
    assert _has_rows({"accepted": 3}) and not _has_rows({"accepted": 0, "files": ["x"]})
    assert not _has_rows({"records_in": 0}) and _has_rows({"records_in": 2})
    assert _has_rows({"files": ["x"]}) and _has_rows({"watermark": "2026-01-01"})
    assert not _has_rows({"files": [], "watermark": None})


# --- the split and the fit -----------------------------------------------------------------------------
def _frame(spec, times, ids):
    base = synthetic_frame(spec, len(times), seed=0)
    return base.assign(
        **{spec.event_time: pd.to_datetime(times, utc=True), spec.event_id: ids}
    )


def test_split_holdout_is_out_of_time_with_event_id_breaking_ties(spec):
    times = ["2026-01-03", "2026-01-01", "2026-01-02", "2026-01-03"]
    df = _frame(spec, times, ["e4", "e1", "e2", "e3"])
    train, hold = split_holdout(df, spec, fraction=0.5)
    assert list(train[spec.event_id]) == ["e1", "e2"] and list(hold[spec.event_id]) == ["e3", "e4"]
    assert list(train.index) == [0, 1] and list(hold.index) == [0, 1]
    # a tiny fraction still holds out one row (the newest); the spec's fraction by default
    assert list(split_holdout(df, spec, fraction=0.01)[1][spec.event_id]) == ["e4"]
    assert len(split_holdout(df, spec)[1]) == int(np.ceil(4 * spec.training.holdout_fraction))


def test_split_holdout_refuses_to_leave_no_training_rows(spec):
    df = _frame(spec, ["2026-01-01", "2026-01-02"], ["a", "b"])
    with pytest.raises(ValueError, match="training.holdout_fraction 0.9 leaves no training rows out of 2"):
        split_holdout(df, spec, fraction=0.9)


def test_fit_pipeline_refuses_a_single_class_and_is_seeded(spec):
    df = synthetic_frame(spec, 200, seed=3)
    one = df.assign(**{spec.target.name: spec.target.positive})
    with pytest.raises(ValueError, match="target 'default': the training window has a single class"):
        fit_pipeline(spec, one)
    X = to_frame(df.head(20), spec)
    a = fit_pipeline(spec, df, 5).predict_proba(X)
    np.testing.assert_array_equal(a, fit_pipeline(spec, df, 5).predict_proba(X))


def test_oof_scores_are_seeded_out_of_fold_and_refuse_too_few_of_a_class(spec):
    df = synthetic_frame(spec, 200, seed=3)
    a = oof_scores(spec, df, 1)
    assert a.shape == (200,) and ((a >= 0) & (a <= 1)).all()
    np.testing.assert_array_equal(a, oof_scores(spec, df, 1))
    # out of fold: not the in-sample scores of a model fitted on every row
    in_sample = fit_pipeline(spec, df, 1).predict_proba(to_frame(df, spec))[:, 1]
    assert not np.allclose(a, in_sample)
    one_positive = df.assign(**{spec.target.name: [spec.target.positive] + [spec.target.negative] * 199})
    with pytest.raises(ValueError, match="too few positives or negatives"):
        oof_scores(spec, one_positive, 1)


# --- small helpers ---------------------------------------------------------------------------------------
def test_join_keeps_tags_under_mlflows_limit():
    assert _join(["a", "b"]) == "a,b"
    ids = [f"20260101T000000-{i:04d}" for i in range(400)]
    text = _join(ids)
    assert len(text) <= TAG_MAX and text.endswith(",...(+400)") and text.startswith(ids[0])


def test_code_version_reads_the_checkout_and_survives_without_git(monkeypatch):
    from rtml import __version__

    v = code_version()
    assert v["rtml_version"] == __version__
    head = subprocess.run(["git", "-C", train_mod.__file__.rsplit("/", 2)[0], "rev-parse", "HEAD"],
                          capture_output=True, text=True).stdout.strip()
    assert v["git_sha"].removesuffix("+dirty") == head

    def no_git(*a, **kw):
        raise FileNotFoundError("git")

    monkeypatch.setattr(subprocess, "run", no_git)
    assert code_version() == {"rtml_version": __version__, "git_sha": ""}


def test_model_requirements_pin_the_installed_versions():
    from importlib.metadata import version

    reqs = model_requirements()
    assert f"scikit-learn=={version('scikit-learn')}" in reqs
    assert [r.split("==")[0] for r in reqs] == ["mlflow", "scikit-learn", "skops", "numpy", "pandas", "scipy"]


def test_skops_trusts_only_numpy_and_sklearn_types(spec, monkeypatch):
    import skops.io as sio

    pipe = fit_pipeline(spec, synthetic_frame(spec, 200, seed=3))
    trusted = train_mod._skops_trusted(pipe)
    assert all(t.startswith(("numpy.", "sklearn.")) for t in trusted)
    monkeypatch.setattr(sio, "get_untrusted_types", lambda data: ["numpy.dtype", "evil.Payload"])
    with pytest.raises(ValueError, match=r"refusing to serialize untrusted types \['evil.Payload'\]"):
        train_mod._skops_trusted(pipe)


# --- is there new data? (fake registry client) ------------------------------------------------------
class _FakeClient:
    def __init__(self, versions=(), error=None):
        self.versions, self.error, self.filters = list(versions), error, []

    def search_model_versions(self, filter_string):
        self.filters.append(filter_string)
        if self.error:
            raise self.error
        return self.versions


def _status(spec, lake, monkeypatch, client, **kw):
    monkeypatch.setattr(train_mod, "setup_mlflow", lambda settings=None: client)
    return new_data_status(spec, lake=lake, **kw)


def test_new_data_counts_label_batches_after_the_newest_versions_tag(spec, lake, monkeypatch):
    write_to_lake(lake, spec, synthetic_frame(spec, 600, seed=4), batches=3)  # 200 labels per batch
    batches = [m["batch_id"] for m in lake.manifests(spec.dataset.name, "labels")]
    client = _FakeClient([
        SimpleNamespace(version="2", tags={"rtml.labels_last_batch": batches[1]}),
        SimpleNamespace(version="10", tags={"rtml.labels_last_batch": batches[0]}),  # newest: 10, not "2"
        SimpleNamespace(version="9", tags=None),
    ])
    res = _status(spec, lake, monkeypatch, client)
    assert client.filters == ["name='toy_risk'"]
    assert res["last_trained_labels_batch"] == batches[0]
    assert (res["labelled_rows"], res["new_labelled_rows"], res["needed_new_rows"]) == (600, 400, 200)
    assert res["ready"] is True and f"since batch {batches[0]}" in res["message"]
    assert _status(spec, lake, monkeypatch, client, min_new_rows=401)["ready"] is False


def test_no_registered_model_means_everything_is_new(spec, lake, monkeypatch):
    from mlflow.exceptions import MlflowException

    write_to_lake(lake, spec, synthetic_frame(spec, 100, seed=4), batches=1)
    missing = MlflowException("RESOURCE_DOES_NOT_EXIST: model toy_risk")
    res = _status(spec, lake, monkeypatch, _FakeClient(error=missing))
    assert res["new_labelled_rows"] == 100 and res["last_trained_labels_batch"] == ""
    assert res["ready"] is False and "(none)" in res["message"]  # 100 < training.min_rows
    with pytest.raises(MlflowException, match="connection refused"):  # an outage is not "no model"
        _status(spec, lake, monkeypatch, _FakeClient(error=MlflowException("connection refused")))


# --- lineage read back ------------------------------------------------------------------------------------
def test_a_versions_window_reads_back_with_its_digest_and_a_changed_lake_is_reported(spec, lake, tmp_path,
                                                                                     monkeypatch):
    """rtml lineage: the run's lineage.json (from MLflow, faked here) read back at the snapshots it
    names; once those are gone (expired), a batch re-written since is reported, not hidden."""
    import json

    import mlflow

    from rtml.settings import Settings
    from rtml.train import version_lineage

    lake = Lake(Settings(home=tmp_path / "home", storage="local", lake_uri=str(tmp_path / "lake")))
    write_to_lake(lake, spec, synthetic_frame(spec, 300, seed=4), batches=3)
    df, lin = load_window(spec, lake, end="2026-01-01T02:00:00", window_days=1)
    assert lin["rows_digest"].startswith("sha256:") and set(lin["tables"]) == {"events", "labels"}
    (tmp_path / "lineage.json").write_text(json.dumps(lin))
    client = SimpleNamespace(get_model_version=lambda name, version: SimpleNamespace(run_id="run-7"))
    monkeypatch.setattr("rtml.registry.client.mlflow_client", lambda settings=None: client)
    asked = []
    monkeypatch.setattr(mlflow.artifacts, "download_artifacts",
                        lambda uri, dst_path, tracking_uri: asked.append(uri) or str(tmp_path / "lineage.json"))
    s = lake.settings
    out = version_lineage(spec, "toy", "3", settings=s, lake=lake)
    assert asked == ["runs:/run-7/lineage.json"]
    assert out["matches"] is True and out["rows"] == len(df) == 120 and out["digest"] == lin["rows_digest"]
    assert "read back: the same rows as at training time" in out["message"]
    # The window's batches re-written with other rows: its snapshots still read what was trained on...
    write_to_lake(lake, spec, synthetic_frame(spec, 300, seed=5), batches=3)
    assert version_lineage(spec, "toy", "3", settings=s, lake=lake)["matches"] is True
    # ...and once they are gone (expired), the current rows are read and the change is reported.
    for t in lin["tables"].values():
        t["snapshot_id"] = 1  # no such snapshot
    (tmp_path / "lineage.json").write_text(json.dumps(lin))
    changed = version_lineage(spec, "toy", "3", settings=s, lake=lake)
    assert changed["matches"] is False and "NOT the rows trained on" in changed["message"]
