"""A registered version whose live answers differ from its offline ones (training/serving skew).

``SkewedModel`` scores like its pipeline, except in a process where ``RTML_TEST_SKEW=1`` (the
test's serving endpoint): there it answers ``1 - score``. Pickled by value, so the endpoint
process can load it without this test folder on its path.
"""

from __future__ import annotations

import os
import sys

import mlflow


class SkewedModel(mlflow.pyfunc.PythonModel):
    def __init__(self, pipe) -> None:
        self.pipe = pipe

    def predict(self, context, model_input, params=None):
        import pandas as pd

        p = self.pipe.predict_proba(model_input)[:, 1]
        if os.environ.get("RTML_TEST_SKEW") == "1":
            p = 1.0 - p
        return pd.DataFrame({"score": p})


def register_skewed(settings, spec, pipe, X) -> str:
    """Log and register a SkewedModel version of ``spec``'s model (no gate tags yet)."""
    import cloudpickle
    from mlflow.models import infer_signature

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    mlflow.set_experiment(settings.mlflow_experiment)
    model = SkewedModel(pipe)
    with mlflow.start_run():
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=model,
            signature=infer_signature(X.head(20), model.predict(None, X.head(20))),
            input_example=X.head(5),
            registered_model_name=spec.model.registered_name,
            pip_requirements=["mlflow", "scikit-learn", "pandas"],  # no requirement inference (slow)
        )
    return str(info.registered_model_version)
