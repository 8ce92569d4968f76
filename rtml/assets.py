"""The Airflow Assets that chain rtml's DAGs, named from the project spec.

ingestion ──rtml_events / rtml_labels──► training ──rtml_challenger──► promotion
monitoring ──rtml_retrain──► training

One definition, imported by every DAG file, so a producer and its consumers cannot disagree on a
name or URI. Light to import (airflow.sdk, the YAML spec), as DAG files must be.
"""

from __future__ import annotations

from airflow.sdk import Asset

from rtml.settings import get_settings
from rtml.spec import ProjectSpec, load_spec

SPEC_PATH = str(get_settings().spec)
SPEC: ProjectSpec = load_spec(SPEC_PATH)  # the deployment's spec: it names the Assets (see spec_for_run)

EVENTS = Asset(name="rtml_events", uri=f"rtml://{SPEC.dataset.name}/events")
LABELS = Asset(name="rtml_labels", uri=f"rtml://{SPEC.dataset.name}/labels")
CHALLENGER = Asset(name="rtml_challenger", uri=f"rtml://{SPEC.model.registered_name}/challenger")
RETRAIN = Asset(name="rtml_retrain", uri=f"rtml://{SPEC.model.registered_name}/retrain")
