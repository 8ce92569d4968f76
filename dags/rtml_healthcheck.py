"""rtml_healthcheck: checks, from inside Airflow, that the stack around it answers.

Run it after `rtml stack up` (or in compose) to see that Airflow's workers reach the lake store
(S3 endpoint with the lake and MLflow buckets, or the local lake folder) and the MLflow tracking
server with its registry. Each task fails with the reason if its service does not answer.
The integration test of the stack triggers it through the REST API.
"""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import dag, task


@task
def check_lake() -> dict:
    """The lake store answers and its buckets exist."""
    from rtml.platform.health import check_s3
    from rtml.settings import get_settings

    result = check_s3(get_settings(refresh=True))
    if not result["ok"]:
        raise RuntimeError(f"lake store not healthy: {result}")
    return result


@task
def check_mlflow() -> dict:
    """The MLflow tracking server and its model registry answer."""
    from rtml.platform.health import check_mlflow as _check
    from rtml.settings import get_settings

    result = _check(get_settings(refresh=True))
    if not result["ok"]:
        raise RuntimeError(f"MLflow not healthy: {result}")
    return result


@task
def report(lake: dict, mlflow: dict) -> str:
    """One line for the task log and XCom."""
    return f"lake ok ({lake.get('endpoint') or lake.get('lake_uri')}), mlflow ok ({mlflow['url']})"


@dag(
    dag_id="rtml_healthcheck",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    tags=["rtml", "foundation"],
    doc_md=__doc__,
)
def rtml_healthcheck():
    report(check_lake(), check_mlflow())


rtml_healthcheck()
