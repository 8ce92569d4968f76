"""rtml_ingest: micro-batch ingestion of events and delayed labels into the data lake.

Every few minutes (`RTML_INGEST_INTERVAL_MINUTES`, default 5) each run ingests one batch per kind:

* **landing zone** (`RTML_SOURCE=landing`, default): every file under `landing/<dataset>/<kind>/`
  keyed before the run's `data_interval_end` that no committed batch has ingested yet (a ledger kept
  in the batch manifests; see `rtml.ingest.sources`). Intervals missed while the scheduler was down or the
  DAG paused are swept by the next run, so `catchup=False` skips no file;
* **Redis Streams** (`RTML_SOURCE=redis`): the next entries of `rtml:<dataset>:<kind>` (and the
  entries a crashed attempt left pending), acknowledged only after the batch manifest is written;
  an entry failing `ingestion.max_deliveries` times is quarantined as a dead letter, and entries
  trimmed before they were read are reported as a gap.

Each record is checked against the project spec's contract; accepted rows go to Parquet in the
lake, rejected ones to quarantine with their reasons, and a manifest (counts, watermark, source
position, schema hash) is written last. The task's return value and log show the counts; a batch
with accepted rows updates the Asset `rtml_events` / `rtml_labels` (counts in the event's extra),
which starts `rtml_train`. A batch with nothing accepted ends *skipped* (no Asset update).
Schema drift (fields not in the contract, contract fields missing, a probable rename) is counted in
the manifest and the Asset extra, and logged as `ALERT` lines (as are stream gaps).

Retries and backfills are safe: a batch always rewrites the same lake keys, and a committed batch
re-runs on exactly the files it consumed. A backfill of intervals never run takes only files no
later run has swept already (often none).
Runs are one at a time (`max_active_runs=1`), and each task runs once at a time across scheduled,
triggered and backfill runs alike (`max_active_tis_per_dag=1`: a backfill has its own run limit),
so a stream or the landing zone is never read by two batches at once.

**Event-driven starts (Kafka)**: with `RTML_SOURCE=kafka` (and `RTML_KAFKA_WATCH` not `false`) the
DAG is scheduled on its interval *or* on the Asset `rtml_kafka_arrivals`, whichever comes first
(`AssetOrTimeSchedule`). That Asset has an `AssetWatcher`: the Kafka provider's message-queue
trigger (`AwaitMessageTrigger`, what its `KafkaMessageQueueTrigger` resolves to; built directly, so
parsing needs neither the common-messaging provider nor its providers scan) runs in the triggerer,
reads the dataset's events and labels topics with
a consumer group of its own (`rtml-watch`, Airflow connection `rtml_kafka`, which `rtml stack up`
defines as `AIRFLOW_CONN_RTML_KAFKA`; define it yourself on another Airflow), and fires when a
record arrives that no run is sure to take: sent within the last interval, and after the watcher's
last signal (`rtml.ingest.kafka.arrival_signal`), so a burst starts one run. The trigger only
signals: the run it starts reads and commits with the ingest group like any other, so exactly-once
holds, and as it is this same DAG, `max_active_runs=1` keeps signalled and scheduled runs from
reading the topic at once. Signals that arrive while a run is going on start at most one more run.
With any other source the file builds no watcher and nothing reads Kafka.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from airflow.sdk import Asset, CronDataIntervalTimetable, DeltaDataIntervalTimetable, dag, task

from rtml.assets import EVENTS, LABELS, SPEC
from rtml.settings import get_settings

_settings = get_settings()
_minutes = _settings.ingest_interval_minutes

if 60 % _minutes == 0:
    # Wall-clock aligned intervals (12:00-12:05, ...), matching how landing files are keyed.
    _timetable = CronDataIntervalTimetable(f"*/{_minutes} * * * *", timezone="UTC")
else:
    _timetable = DeltaDataIntervalTimetable(timedelta(minutes=_minutes))

_schedule: Any = _timetable
if _settings.source == "kafka" and _settings.kafka_watch:
    from airflow.providers.apache.kafka.triggers.await_message import AwaitMessageTrigger
    from airflow.sdk import AssetOrTimeSchedule, AssetWatcher

    from rtml.ingest.kafka import watch_trigger_kwargs

    KAFKA_ARRIVALS = Asset(
        name="rtml_kafka_arrivals",
        uri=f"rtml://{SPEC.dataset.name}/kafka-arrivals",
        watchers=[AssetWatcher(name="rtml_kafka_arrivals",
                               trigger=AwaitMessageTrigger(**watch_trigger_kwargs(SPEC.dataset.name, _settings)))],
    )
    _schedule = AssetOrTimeSchedule(timetable=_timetable, assets=KAFKA_ARRIVALS)


def _ingest(kind: str, asset: Asset, **context) -> dict:
    """One batch of ``kind``; publishes the counts on the Asset event, skips when nothing is new."""
    import logging

    from airflow.sdk.exceptions import AirflowSkipException

    from rtml.ingest.batches import ingest_for_run

    run = context.get("dag_run")
    run_type = getattr(run, "run_type", None)
    extra = ingest_for_run(
        kind,
        context.get("data_interval_start"),
        context.get("data_interval_end"),
        run_id=getattr(run, "run_id", None),
        manual=getattr(run_type, "value", run_type) == "manual",  # the SDK's enum prints its name
    )
    message, reasons = extra.pop("message"), extra.pop("reasons")
    print(message)
    for reason, count in sorted(reasons.items()):
        print(f"  quarantined {count:>6}  {reason}")
    for alert in extra["alerts"]:
        logging.getLogger("rtml.ingest.batches").warning("ALERT %s", alert)
    if not extra["accepted"]:
        raise AirflowSkipException(message + " - nothing accepted, no Asset update")
    context["outlet_events"][asset].extra = extra
    return extra


@task(outlets=[EVENTS], retries=2, retry_delay=timedelta(seconds=20), max_active_tis_per_dag=1)
def ingest_events(**context) -> dict:
    """Events of this data interval (or the next stream entries) -> lake, quarantine, manifest."""
    return _ingest("events", EVENTS, **context)


@task(outlets=[LABELS], retries=2, retry_delay=timedelta(seconds=20), max_active_tis_per_dag=1)
def ingest_labels(**context) -> dict:
    """Delayed labels (event id + outcome) -> lake, joined to events by event id at training."""
    return _ingest("labels", LABELS, **context)


@dag(
    dag_id="rtml_ingest",
    schedule=_schedule,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    tags=["rtml", "ingestion"],
    doc_md=__doc__,
)
def rtml_ingest():
    ingest_events()
    ingest_labels()


rtml_ingest()
