"""
### rtml_maintenance: compaction and snapshot expiry of the lake's Iceberg tables

Once a day, **maintain** runs `rtml.tables.maintain` on every table of the catalog:

1. **Compaction** - a day partition with many small data files (one per micro-batch) is rewritten
   into one file, in one commit: readers see the old files or the new one, never a mix, and every
   row keeps its batch id.
2. **Snapshot expiry** - snapshots older than `older_than_hours` (default: the settings'
   `table_snapshot_retention_days`) are removed, except the `retain_last` newest, the current one and
   tagged ones (training tags the snapshots it read, `rtml-lineage-<id>`); then the files only they
   referenced are deleted. (Writers also expire past `table_snapshot_max` snapshots, so that a commit's
   cost stays flat between runs.) A model version trained on an expired snapshot is read back from the
   current table (`rtml lineage` says whether its rows still match).

The task log prints data files, snapshots and rows before/after per table (also its return value).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import Param, dag, task


@dag(
    dag_id="rtml_maintenance",
    description="Compact small files and expire old snapshots of the lake's Iceberg tables",
    doc_md=__doc__,
    schedule=timedelta(days=1),
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    tags=["rtml", "maintenance"],
    params={
        "older_than_hours": Param(None, type=["null", "number"], minimum=0,
                                  description="expire snapshots older than this (empty: the settings' retention)"),
        "retain_last": Param(None, type=["null", "integer"], minimum=1,
                             description="always keep this many newest snapshots (empty: the settings')"),
    },
)
def rtml_maintenance():
    @task
    def maintain(params: dict | None = None) -> dict:
        from rtml.settings import get_settings
        from rtml.tables import maintain

        settings = get_settings(refresh=True)
        params = params or {}
        hours, last = params.get("older_than_hours"), params.get("retain_last")
        result = maintain(settings, older_than_hours=None if hours is None else float(hours),
                          retain_last=None if last is None else int(last))
        print(result["message"])
        return result

    maintain()


rtml_maintenance()
