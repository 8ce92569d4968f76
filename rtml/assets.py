"""The Airflow Assets that chain rtml's DAGs, named from the project spec.

ingestion ──rtml_events / rtml_labels──► training ──rtml_challenger──► promotion
monitoring ──rtml_retrain──► training

One definition, imported by every DAG file, so a producer and its consumers cannot disagree on a
name or URI. Light to import (airflow.sdk, the YAML spec), as DAG files must be.

The DAGs are parsed with the deployment's spec (``RTML_SPEC``), but a training or monitoring run
may be given another spec as a param. Their tasks therefore publish through an ``AssetAlias`` and
add the Asset of the spec the *run* uses (:func:`asset_for`): the deployment's own Asset for its
own model (so ``rtml_promote`` starts), another model's Asset otherwise.
"""

from __future__ import annotations

from airflow.sdk import Asset, AssetAlias

from rtml.settings import get_settings
from rtml.spec import ProjectSpec, load_spec

SPEC_PATH = str(get_settings().spec)
SPEC: ProjectSpec = load_spec(SPEC_PATH)  # the deployment's spec: it names the Assets

EVENTS = Asset(name="rtml_events", uri=f"rtml://{SPEC.dataset.name}/events")
LABELS = Asset(name="rtml_labels", uri=f"rtml://{SPEC.dataset.name}/labels")
CHALLENGER = Asset(name="rtml_challenger", uri=f"rtml://{SPEC.model.registered_name}/challenger")
RETRAIN = Asset(name="rtml_retrain", uri=f"rtml://{SPEC.model.registered_name}/retrain")

# What training and monitoring tasks list as outlets; each run adds the Asset of its own spec.
CHALLENGER_OF_RUN = AssetAlias("rtml_challenger_of_run")
RETRAIN_OF_RUN = AssetAlias("rtml_retrain_of_run")


def asset_for(role: str, spec: ProjectSpec) -> Asset:
    """The Asset of ``role`` (``challenger`` or ``retrain``) for the model of ``spec``."""
    own = {"challenger": CHALLENGER, "retrain": RETRAIN}
    if role not in own:
        raise ValueError(f"role must be one of {sorted(own)}, not {role!r}")
    model = spec.model.registered_name
    if model == SPEC.model.registered_name:
        return own[role]
    return Asset(name=f"rtml_{role}__{model}", uri=f"rtml://{model}/{role}")
