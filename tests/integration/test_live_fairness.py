"""Live fairness on the real MLflow server (lake on the session's S3 store): monitoring finds the
champion, judges its labelled live decisions with the fairness gate's metrics, asks to retrain on a
breach, and attaches the result to the champion: a "live fairness" section of its model card and
the ``live_fairness`` tag, which the serving endpoint's registry source reads at its next poll."""

from __future__ import annotations

import json
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from _serving import register, spec_for, unique_name
from support.lake import commit_frame
from support.webhooks import webhook_paused

from rtml.lake import Lake
from rtml.monitor.live import monitor
from rtml.names import LIVE_FAIRNESS_TAG
from rtml.reports import LIVE_FAIRNESS_MARK

pytestmark = pytest.mark.integration

START = datetime(2031, 3, 1, tzinfo=UTC)


def _log(lake: Lake, spec, name: str, version: str, n: int = 400) -> None:
    """Predictions (as the endpoint logs them) and their labels: "single" applicants are flagged
    ("bad") twice as often as "married" ones with the same outcomes."""
    rng = np.random.default_rng(0)
    marital = np.where(np.arange(n) % 2 == 0, "single", "married")
    flagged = rng.random(n) < np.where(marital == "single", 0.5, 0.2)
    ids = [f"{name}-{i}" for i in range(n)]
    preds = pd.DataFrame({
        spec.event_id: ids, "request_id": ids, "row": 0, "model": name, "version": version,
        "time": pd.to_datetime([START + timedelta(seconds=10 * i) for i in range(n)]),
        "score": np.where(flagged, 0.8, 0.2), "label": np.where(flagged, "bad", "good"),
        "Marital": marital, "Age": 25.0 + (np.arange(n) % 40),
    })
    labels = pd.DataFrame({spec.event_id: ids, spec.target.name: np.where(rng.random(n) < 0.3, "bad", "good")})
    ds = spec.dataset.name
    batch = f"{START:%Y%m%dT%H%M%S}-{name}"
    for kind, frame in (("predictions", preds), ("labels", labels)):
        commit_frame(lake, ds, kind, batch, frame, time_column="time" if kind == "predictions" else None,
                     schema_hash=spec.schema_hash(), watermark=preds["time"].max().isoformat())


def test_a_live_fairness_breach_reaches_the_champions_card_and_tag(mlflow_settings):
    from mlflow import MlflowClient

    from rtml.serve.source import RegistrySource

    settings = mlflow_settings
    name = unique_name("livefair")
    spec = spec_for(name)  # and a dataset of its own: nothing else in the session's lake sees these rows
    spec = spec.model_copy(update={"dataset": spec.dataset.model_copy(update={"name": name})})
    client = MlflowClient(tracking_uri=settings.mlflow_tracking_uri)
    version = register(settings, spec)
    run_id = client.get_model_version(name, version).run_id
    with tempfile.TemporaryDirectory() as tmp:
        card = Path(tmp) / "model_card.html"
        card.write_text("<html><body><h1>card</h1></body></html>")
        client.log_artifact(run_id, str(card), "evaluation")
    _log(Lake(settings), spec, name, version)

    with webhook_paused(settings):  # an unapproved champion set by hand: the webhook would undo it
        client.set_registered_model_alias(name, "champion", version)
        report = monitor(spec, settings, window_hours=2, now=START + timedelta(hours=2))
        source = RegistrySource(name, spec, settings)
        assert source.resolve("champion")[0] == version
        tag = json.loads(source.tags["champion"][LIVE_FAIRNESS_TAG])

    fair = report["live_fairness"]
    assert fair["version"] == version and fair["rows"] == 400 and fair["published"] == "ok"
    assert report["retrain"] is True
    assert any(r.startswith("live fairness: marital_status: disparate impact") and "'married'" in r
               for r in report["reasons"]), report["reasons"]
    di = tag["checks"]["marital_status"]["demographic_parity_ratio"]
    assert di[1] == 0 and di[0] == pytest.approx(fair["attributes"]["marital_status"]["demographic_parity_ratio"],
                                                abs=1e-4)
    with tempfile.TemporaryDirectory() as tmp:
        text = Path(client.download_artifacts(run_id, "evaluation/model_card.html", tmp)).read_text()
        saved = json.loads(Path(client.download_artifacts(run_id, "evaluation/live_fairness.json", tmp)).read_text())
    assert text.count(LIVE_FAIRNESS_MARK) == 2 and "<h1>card</h1>" in text and "Live fairness" in text
    assert saved["rows"] == 400 and saved["passed"] is False
