"""The challenger's shadow answers on live traffic, compared with the champion's, land in its model
card and tags on the real MLflow server (lake on the session's S3 store)."""

from __future__ import annotations

import tempfile
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest
from _serving import register, spec_for, unique_name
from support.lake import commit_frame

from rtml.lake import Lake
from rtml.monitor.shadow import MARK, compare

pytestmark = pytest.mark.integration


def _shadow_rows(name: str, version: str, champion: str) -> pd.DataFrame:
    # 10 requests: the challenger flags 3 applicants the champion accepts ("bad" is the positive label).
    challenger = ["bad", "bad", "bad", "bad", "good", "good", "good", "good", "good", "good"]
    champion_l = ["bad", "good", "good", "good", "good", "good", "good", "good", "good", "good"]
    n = len(challenger)
    return pd.DataFrame({
        "request_id": [f"r{i}" for i in range(n)],
        "time": pd.to_datetime([datetime(2026, 11, 25, 12, 0, i, tzinfo=UTC) for i in range(n)]),
        "model": name,
        "version": version,
        "score": [0.9, 0.6, 0.55, 0.5, 0.2, 0.1, 0.1, 0.2, 0.3, 0.1],
        "label": challenger,
        "champion_version": champion,
        "champion_score": [0.8, 0.3, 0.3, 0.3, 0.2, 0.1, 0.1, 0.2, 0.3, 0.1],
        "champion_label": champion_l,
        "Marital": ["single"] * 5 + ["married"] * 5,
        "Age": [25.0] * 5 + [50.0] * 5,
    })


def test_shadow_comparison_lands_in_the_challengers_card(mlflow_settings):
    from mlflow import MlflowClient

    settings = mlflow_settings
    name = unique_name("shadow")
    spec = spec_for(name)
    client = MlflowClient(tracking_uri=settings.mlflow_tracking_uri)
    champion = register(settings, spec)
    challenger = register(settings, spec, seed=7)
    client.set_registered_model_alias(name, "challenger", challenger)
    run_id = client.get_model_version(name, challenger).run_id
    with tempfile.TemporaryDirectory() as tmp:
        card = Path(tmp) / "model_card.html"
        card.write_text("<html><body><h1>card</h1></body></html>")
        client.log_artifact(run_id, str(card), "evaluation")

    assert compare(spec, settings)["rows"] == 0  # nothing shadow-scored yet: said, not failed

    lake = Lake(settings)
    rows = _shadow_rows(name, challenger, champion)
    batch = f"20261125T120000-{name}"
    commit_frame(lake, spec.dataset.name, "shadow", batch, rows, time_column="time")
    result = compare(spec, settings)
    assert result["version"] == challenger and result["rows"] == 10
    assert result["agreement"] == pytest.approx(0.7)
    assert (result["flipped_to_positive"], result["flipped_to_negative"]) == (3, 0)
    groups = {r["group"]: r for r in result["by_group"]["marital_status"]}
    assert groups["single"]["positive_rate"] == pytest.approx(0.8)
    assert groups["single"]["champion_positive_rate"] == pytest.approx(0.2)

    mv = client.get_model_version(name, challenger)
    assert mv.tags["shadow.rows"] == "10" and mv.tags["shadow.agreement"] == "0.7000"
    compare(spec, settings)  # a refresh replaces the section instead of adding a second one
    with tempfile.TemporaryDirectory() as tmp:
        text = Path(client.download_artifacts(run_id, "evaluation/model_card.html", tmp)).read_text()
    assert text.count(MARK) == 2 and "<h1>card</h1>" in text
    assert "Shadow traffic" in text and "70.0%" in text
