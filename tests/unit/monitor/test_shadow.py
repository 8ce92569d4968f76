"""rtml.monitor.shadow: the challenger's shadow answers summarised against the champion's (agreement,
flips, score shift, rates by group), the model card section (escaped, replaced on refresh), and
``compare`` with a fake MLflow client and a local lake."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

from rtml.monitor import shadow
from rtml.reports import replace_section
from rtml.spec import load_spec

SPEC = load_spec()


def rows() -> pd.DataFrame:
    """Six shadow rows: the challenger flips row 1 to positive and row 4 to negative."""
    return pd.DataFrame({
        "time": pd.to_datetime(["2026-01-01T00:00:00", "2026-01-01T00:01:00", "2026-01-01T00:02:00",
                                "2026-01-01T00:03:00", "2026-01-01T00:04:00", "2026-01-01T00:05:00"], utc=True),
        "model": "credit_risk",
        "version": "2",
        "champion_version": ["1", "1", "1", "1", "3", "3"],
        "label": ["bad", "bad", "good", "good", "good", "bad"],
        "champion_label": ["bad", "good", "good", "good", "bad", "bad"],
        "score": [0.9, 0.6, 0.1, 0.2, 0.4, 0.8],
        "champion_score": [0.8, 0.4, 0.1, 0.3, 0.6, 0.8],
        "Marital": ["single", "single", "married", None, "married", "single"],
        "Age": [20.0, 35.0, 50.0, 25.0, 120.0, 44.0],
    })


def test_summarize_counts_agreement_flips_and_groups():
    s = shadow.summarize(rows(), SPEC)
    assert s["rows"] == 6 and s["champion_versions"] == ["1", "3"]
    assert s["agreement"] == pytest.approx(4 / 6)
    assert (s["flipped_to_positive"], s["flipped_to_negative"]) == (1, 1)
    assert s["positive_rate"] == pytest.approx(3 / 6) and s["champion_positive_rate"] == pytest.approx(3 / 6)
    assert s["mean_abs_score_diff"] == pytest.approx((0.1 + 0.2 + 0 + 0.1 + 0.2 + 0) / 6)
    assert s["first"].startswith("2026-01-01 00:00:00") and s["last"].startswith("2026-01-01 00:05:00")
    marital = {g["group"]: g for g in s["by_group"]["marital_status"]}
    assert set(marital) == {"single", "married", "missing"}
    assert marital["single"]["rows"] == 3 and marital["single"]["positive_rate"] == 1.0
    assert marital["single"]["champion_positive_rate"] == pytest.approx(2 / 3)
    ages = {g["group"]: g["rows"] for g in s["by_group"]["age_group"]}
    assert ages == {"18-29": 2, "30-44": 2, "45+": 1, "out of range": 1}
    json.dumps(s)  # logged as evaluation/shadow.json


def test_render_escapes_text_and_sections_are_replaced_not_stacked():
    s = shadow.summarize(rows(), SPEC)
    s["champion_versions"] = ["<script>"]
    html = shadow.render(s, "2&3")
    assert "<script>" not in html and "&lt;script&gt;" in html and "2&amp;3" in html
    assert html.startswith(shadow.MARK) and html.endswith(shadow.MARK) and "66.7%" in html
    card = "<html><body><h1>card</h1></body></html>"
    once = replace_section(card, html, shadow.MARK)
    assert once.index(html) < once.index("</body>")
    twice = replace_section(once, shadow.render(shadow.summarize(rows().head(2), SPEC), "2"), shadow.MARK)
    assert twice.count(shadow.MARK) == 2 and "<p>2 requests" in twice and "<p>6 requests" not in twice
    assert replace_section("no body", "S", shadow.MARK) == "no bodyS"


class FakeClient:
    """The MlflowClient calls ``compare`` makes, recorded."""

    def __init__(self, tmp: Path, challenger: str | None = "2", card: str | None = "<body></body>") -> None:
        self.tmp, self.challenger, self.card = tmp, challenger, card
        self.artifacts: dict[str, str] = {}
        self.tags: dict[str, str] = {}

    def get_model_version_by_alias(self, name, alias):
        from mlflow.exceptions import MlflowException

        if self.challenger is None:
            raise MlflowException("no alias")
        return SimpleNamespace(version=self.challenger)

    def get_model_version(self, name, version):
        return SimpleNamespace(run_id="run-9")

    def log_artifact(self, run_id, path, artifact_path):
        self.artifacts[f"{artifact_path}/{Path(path).name}"] = Path(path).read_text()

    def download_artifacts(self, run_id, path, dst):
        from mlflow.exceptions import MlflowException

        if self.card is None:
            raise MlflowException("no card")
        out = Path(dst) / Path(path).name
        out.write_text(self.card)
        return str(out)

    def set_model_version_tag(self, name, version, key, value):
        self.tags[key] = value


@pytest.fixture
def lake_with_shadow(tmp_path):
    """The shadow rows as the serving endpoint's prediction log writes them: a commit to the table
    ``<dataset>.shadow``."""
    import pyarrow as pa

    from rtml.lake import Lake
    from rtml.settings import Settings

    settings = Settings(storage="local", home=tmp_path, lake_uri=str(tmp_path / "lake"))
    other = rows().head(2).assign(version="7")  # another version's shadow rows: not counted
    lake, ds = Lake(settings), SPEC.dataset.name
    frame = pd.concat([rows(), other], ignore_index=True)
    table = pa.Table.from_pandas(frame, preserve_index=False)
    table = table.set_column(0, "time", table.column("time").cast(pa.timestamp("us", tz="UTC")))
    written = lake.tables.commit_batch(ds, "shadow", "b1", table, time_column="time")
    lake.write_manifest(ds, "shadow", "b1", {"batch_id": "b1", "kind": "shadow", **written, "accepted": 8})
    return settings


def _patch_client(monkeypatch, client):
    import rtml.registry.client

    monkeypatch.setattr(rtml.registry.client, "mlflow_client", lambda settings=None: client)


def test_compare_attaches_the_summary_to_the_challenger(tmp_path, monkeypatch, lake_with_shadow):
    client = FakeClient(tmp_path)
    _patch_client(monkeypatch, client)
    out = shadow.compare(SPEC, lake_with_shadow)
    assert out["ok"] is True and out["version"] == "2" and out["rows"] == 6
    assert "66.7% decisions agree" in out["message"]
    assert client.tags == {"shadow.rows": "6", "shadow.agreement": "0.6667"}
    assert json.loads(client.artifacts["evaluation/shadow.json"])["rows"] == 6
    card = client.artifacts[f"evaluation/{Path(shadow.CARD).name}"]
    assert card.count(shadow.MARK) == 2 and card.endswith("</body>")


def test_compare_without_challenger_card_or_rows(tmp_path, monkeypatch, lake_with_shadow):
    _patch_client(monkeypatch, FakeClient(tmp_path, challenger=None))
    out = shadow.compare(SPEC, lake_with_shadow)
    assert out["ok"] is True and out["version"] is None and "no challenger" in out["message"]
    _patch_client(monkeypatch, FakeClient(tmp_path))
    out = shadow.compare(SPEC, lake_with_shadow, version="5")
    assert (out["rows"], out["version"]) == (0, "5") and "no shadow traffic" in out["message"]
    client = FakeClient(tmp_path, card=None)  # evaluated before model cards existed
    _patch_client(monkeypatch, client)
    assert shadow.compare(SPEC, lake_with_shadow, version=2)["rows"] == 6
    assert list(client.artifacts) == ["evaluation/shadow.json"] and client.tags["shadow.rows"] == "6"
