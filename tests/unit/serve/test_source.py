"""rtml.serve.source: the smoke check a version must pass before it is served, sample rows from the spec,
DataFrame -> JSON records, and the registry source's alias resolution and governance check (a fake client)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from support.serving import good_record

from rtml.serve.model import LoadedModel, SmokeCheckError, scorer_for_estimator
from rtml.serve.source import RegistrySource, frame_to_records, smoke_check, spec_sample_rows
from rtml.serve.validation import RecordValidator

pytestmark = pytest.mark.filterwarnings("ignore:.*Add type hints to the `predict` method")


def _model(spec, score, samples=None) -> LoadedModel:
    return LoadedModel(name="credit_risk", version="7", score=score, validator=RecordValidator(spec),
                       samples=[good_record(spec)] if samples is None else samples)


def test_smoke_check_refuses_a_deciding_model_without_good_labels(fitted, deciding_model, group_decider):
    assert smoke_check(deciding_model("ok", group_decider(fitted))) == 1
    for bad, why in ((False, "no 'label' column"), (2, "0/1"), (0.5, "0/1")):
        with pytest.raises(SmokeCheckError, match=why):
            smoke_check(deciding_model("bad", group_decider(fitted, label=bad)))


def test_smoke_check_passes_a_good_model_and_uses_live_rows_that_fit(spec, fitted):
    model = _model(spec, scorer_for_estimator(fitted, spec.target.positive))
    live = [{**good_record(spec), "Age": 50}, {**good_record(spec), "Age": "x"}, {"other": 1}]
    assert smoke_check(model, live) == 2  # the sample + the one live row this version accepts
    assert model.own_labels is False


@pytest.mark.parametrize(
    ("score", "why"),
    [
        (lambda df: np.full(len(df), np.nan), "not finite"),
        (lambda df: np.full(len(df), 1.5), "not finite in \\[0, 1\\]"),
        (lambda df: np.full(len(df), -0.1), "not finite in \\[0, 1\\]"),
        (lambda df: np.zeros(len(df) + 1), "scores for 1 rows"),
        (lambda df: (_ for _ in ()).throw(MemoryError("boom")), "scoring the sample rows failed"),
    ],
)
def test_smoke_check_refuses_bad_scores(spec, score, why):
    with pytest.raises(SmokeCheckError, match=why) as err:
        smoke_check(_model(spec, score))
    assert "version 7" in str(err.value)


def test_smoke_check_needs_rows_that_fit(spec):
    with pytest.raises(SmokeCheckError, match="no sample rows"):
        smoke_check(_model(spec, lambda df: np.zeros(len(df)), samples=[]))
    with pytest.raises(SmokeCheckError, match="do not fit its inputs"):
        smoke_check(_model(spec, lambda df: np.zeros(len(df)), samples=[{**good_record(spec), "Age": -1}]))


def test_spec_sample_rows_are_accepted_by_the_validator(spec):
    rows = spec_sample_rows(spec, 4)
    assert len(rows) == 4 and len({tuple(sorted(map(str, r.values()))) for r in rows}) == 4
    v = RecordValidator(spec)
    for r in rows:
        v.validate([r], single=True)  # raises if a row breaks the spec's rules
    assert all(float(r["Age"]).is_integer() for r in rows)


def test_frame_to_records_gives_plain_json_values():
    df = pd.DataFrame({"a": np.array([1.5, np.nan]), "b": pd.array([1, None], dtype="Int64"),
                       "c": np.array(["x", None], dtype=object), "d": np.array([3, 4], dtype="int32")})
    rows = frame_to_records(df)
    assert rows == [{"a": 1.5, "b": 1, "c": "x", "d": 3}, {"a": None, "b": None, "c": None, "d": 4}]
    assert all(type(r["d"]) is int for r in rows) and type(rows[0]["b"]) is int
    assert not any(isinstance(v, float) and math.isnan(v) for r in rows for v in r.values())


class FakeClient:
    """The MlflowClient calls RegistrySource makes, in memory."""

    def __init__(self, aliases: dict[str, str], error=None) -> None:
        self.aliases = aliases
        self.error = error

    def get_model_version_by_alias(self, name, alias):
        from mlflow.exceptions import MlflowException
        from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST

        if self.error is not None:
            raise self.error
        if alias not in self.aliases:
            raise MlflowException(f"alias {alias} not found", error_code=RESOURCE_DOES_NOT_EXIST)
        v = self.aliases[alias]
        return SimpleNamespace(version=int(v), aliases=[a for a, x in self.aliases.items() if x == v])

    def get_model_version(self, name, version):
        return SimpleNamespace(version=version, run_id="run-1", tags={"rtml.gate.quality": "passed"},
                               aliases=[a for a, x in self.aliases.items() if x == str(version)])


def _source(spec, client) -> RegistrySource:
    from rtml.settings import Settings

    src = RegistrySource("credit_risk", spec, Settings(storage="local"))
    src._client = client
    return src


def test_resolve_follows_the_alias_and_lists_its_aliases(spec):
    src = _source(spec, FakeClient({"champion": "3", "previous_champion": "3", "challenger": "4"}))
    assert src.resolve("champion") == ("3", ["champion", "previous_champion"])
    assert src.resolve("challenger") == ("4", ["challenger"])
    assert src.resolve("nobody") is None


def test_resolve_raises_when_the_registry_fails(spec):
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INTERNAL_ERROR

    src = _source(spec, FakeClient({}, MlflowException("server down", error_code=INTERNAL_ERROR)))
    with pytest.raises(MlflowException, match="server down"):
        src.resolve("champion")  # not "no champion": the server keeps what it serves


def test_vet_passes_the_versions_tags_to_the_governance_check(spec, monkeypatch):
    import rtml.registry.signing as signing

    calls = []
    monkeypatch.setattr(signing, "check_servable", lambda *a: calls.append(a))
    src = _source(spec, FakeClient({"champion": "3"}))
    src.vet("3", "champion")
    (name, version, run_id, tags, alias, settings), = calls
    assert (name, version, run_id, alias) == ("credit_risk", "3", "run-1", "champion")
    assert tags == {"rtml.gate.quality": "passed"} and settings is src.settings

    def refuse(*a):
        raise signing.NotServable("3", "approval", "nobody approved version 3")

    monkeypatch.setattr(signing, "check_servable", refuse)
    with pytest.raises(signing.NotServable, match="nobody approved"):
        src.vet("3", "champion")


def test_record_never_raises_when_the_decision_log_is_down(spec, monkeypatch):
    import rtml.registry.audit as audit

    def down(*a, **kw):
        raise OSError("lake unreachable")

    monkeypatch.setattr(audit, "record", down)
    _source(spec, FakeClient({})).record("reload", "3", from_version="2")  # logged, not raised
    seen = []
    monkeypatch.setattr(audit, "record", lambda *a, **kw: seen.append((a, kw)))
    _source(spec, FakeClient({})).record("reload", "3", from_version="2")
    assert seen[0][0] == ("reload", "credit_risk", "3") and seen[0][1]["from_version"] == "2"



def test_load_fetches_the_version_through_its_own_client_not_the_process_registry(spec, fitted, tmp_path,
                                                                                   monkeypatch):
    """``MLFLOW_REGISTRY_URI`` inherited from a parent process may name another server: the files come
    from where this source's client says the version lives."""
    import mlflow

    import rtml.registry.signing as signing
    from rtml.train import _skops_trusted

    model_dir = tmp_path / "model"
    mlflow.sklearn.save_model(fitted, str(model_dir), serialization_format="skops",
                              skops_trusted_types=_skops_trusted(fitted))
    asked: list[tuple[str, str]] = []

    class Client(FakeClient):
        def get_model_version_download_uri(self, name, version):
            asked.append((name, str(version)))
            return str(model_dir)

    monkeypatch.setenv("MLFLOW_REGISTRY_URI", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setattr(signing, "verify_files", lambda *a, **k: None)
    loaded = _source(spec, Client({"champion": "3"})).load("3")
    assert asked == [("credit_risk", "3")]
    assert loaded.version == "3" and loaded.flavor == "sklearn"
    assert np.allclose(loaded.score(pd.DataFrame([good_record(spec)])),
                       scorer_for_estimator(fitted, spec.target.positive)(pd.DataFrame([good_record(spec)])))
