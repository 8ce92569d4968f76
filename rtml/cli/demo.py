"""``rtml demo``: the whole loop on the local stack, driven the way a user drives it.

1. starts the stack (``rtml stack up``) unless it runs already;
2. replays the demo dataset into the landing zone (events, and labels that arrive a minute later),
   from a fixed start (``REPLAY_START``, or ``--start``): the same arguments give the same events,
   files and batches whenever the demo runs, so the model and its gate decisions are the same too.
   With ``RTML_SOURCE=kafka`` (the distributed profile's stream) the replay goes to the Kafka topics
   instead and ``rtml_ingest`` reads them to their end (:func:`ingest_from_kafka`), in place of 3.;
3. unpauses the ingestion DAG and ingests the whole replay as one batch per kind
   (:func:`sweep_landing`: one triggered run, which sweeps every landing file not ingested yet, as
   the scheduler's own run does), then backfills the ingestion DAG over the replay's intervals
   through Airflow's REST API (as the UI's *Backfill* does), which finds every file taken already.
   A backfill only covers intervals the scheduler never schedules itself (``rtml_ingest`` has
   ``catchup=False``: it only creates runs from the latest complete interval on), so the two never
   create the same run (:func:`backfill_range`);
4. trains once all of it is in: ``rtml_train`` stays paused during the backfill (a paused DAG
   queues no Asset-triggered run), then is unpaused and triggered, so training never sees a half
   ingested replay;
5. waits for the gate decision; a version that passed every gate is the ``challenger`` and
   ``rtml_promote`` waits for a person: the demo prints the clicks to approve it in the MLflow UI,
   or, with ``--approve``, sets the same tag itself, then waits until the endpoint serves it;
6. leaves the whole loop live (every rtml DAG unpaused, monitoring included) and says what now
   runs on its own and where to watch it.
"""

from __future__ import annotations

import argparse
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from rtml.settings import Settings, get_settings
from rtml.spec import ProjectSpec, load_spec


def _say(msg: str) -> None:
    print(f"[rtml demo] {msg}", flush=True)


# The replay's first event time: a fixed instant, so every run of the demo (and of the tests that
# drive it) ingests the same batches and trains the same model. It is the ingestion DAG's
# start_date, long before any interval the scheduler creates itself (catchup=False).
REPLAY_START = datetime(2026, 1, 1, tzinfo=UTC)
REPLAY_RATE = 10.0  # events per second of event time: the table spans a few ingestion intervals
LABEL_DELAY = 60.0  # seconds from an event to its label


def _floor(t: datetime, minutes: int) -> datetime:
    step = minutes * 60
    return datetime.fromtimestamp(int(t.timestamp()) // step * step, tz=UTC)


def _ceil(t: datetime, minutes: int) -> datetime:
    floor = _floor(t, minutes)
    return floor if floor == t else floor + timedelta(minutes=minutes)


def replay_interval(start: datetime, rows: int, minutes: int) -> tuple[datetime, datetime]:
    """The whole ingestion intervals that hold a replay of ``rows`` events (and their labels)."""
    last = start + timedelta(seconds=(rows - 1) / REPLAY_RATE + LABEL_DELAY)
    return _floor(start, minutes), _ceil(last + timedelta(microseconds=1), minutes)


def replay(
    spec: ProjectSpec, settings: Settings, rows: int | None = None, seed: int = 0, start: datetime | None = None,
    to: str = "landing",
) -> dict[str, Any]:
    """Produce the dataset into the landing zone (or the Kafka topics) from ``start`` (default
    ``REPLAY_START``)."""
    from rtml.ingest.produce import load_base, produce

    start = (start or REPLAY_START).astimezone(UTC)
    n = rows or len(load_base(spec))
    out = produce(spec, to=to, settings=settings, rows=n, start=start, rate=REPLAY_RATE, seed=seed,
                  label_delay=LABEL_DELAY)
    first, end = replay_interval(start, n, settings.ingest_interval_minutes)
    out["interval"] = [first.isoformat(), end.isoformat()]
    return out


def backfill_range(start: datetime, end: datetime, now: datetime, minutes: int) -> tuple[datetime, datetime]:
    """The part of [start, end) that a backfill may cover: intervals before the latest complete one.

    With ``catchup=False`` the scheduler creates the run of the latest complete interval (and of
    every later one) itself; a backfill creating the same run at the same moment collides with it
    (``UNIQUE constraint failed: dag_run.dag_id, dag_run.logical_date``, which kills the
    scheduler). Earlier intervals are never scheduled, so they are the backfill's alone."""
    horizon = _floor(now, minutes) - timedelta(minutes=minutes)
    start, end = _floor(start, minutes), min(_ceil(end, minutes), horizon)
    if end <= start:
        raise ValueError(
            f"nothing to backfill: [{start:%Y-%m-%d %H:%M}, {end:%H:%M}) is not before the latest complete "
            f"interval ({horizon:%Y-%m-%d %H:%M} UTC), which the scheduler runs itself; wait for it or "
            "replay from an earlier --start"
        )
    return start, end


def backfill_ingest(client: Any, start: datetime, end: datetime, minutes: int, timeout: float = 900) -> list[dict]:
    """Backfill ``rtml_ingest`` over [start, end) and wait for every run; returns the runs.

    Only intervals the scheduler never schedules itself are covered (:func:`backfill_range`)."""
    start, end = backfill_range(start, end, datetime.now(UTC), minutes)
    first, last = start, end - timedelta(minutes=minutes)
    r = client.post("/api/v2/backfills", json={
        "dag_id": "rtml_ingest", "from_date": first.isoformat(), "to_date": last.isoformat(),
        "max_active_runs": 1, "reprocess_behavior": "completed",
    })
    if r.status_code >= 300:
        raise RuntimeError(f"backfill refused: {r.status_code} {r.text[:300]}")
    wanted = int((end - start).total_seconds() // (minutes * 60))
    deadline = time.monotonic() + timeout
    while True:
        runs = client.get("/api/v2/dags/rtml_ingest/dagRuns",
                          params={"run_type": "backfill", "limit": 200}).json()["dag_runs"]
        ours = [x for x in runs if x.get("data_interval_start")
                and start <= datetime.fromisoformat(x["data_interval_start"].replace("Z", "+00:00")) < end]
        done = [x for x in ours if x["state"] in ("success", "failed")]
        if len(done) >= wanted:
            return ours
        if time.monotonic() > deadline:
            raise TimeoutError(f"ingestion backfill: {len(done)}/{wanted} runs finished after {timeout:.0f}s")
        time.sleep(3)


def wait_idle(af: Any, dag_id: str, timeout: float = 600) -> None:
    """Wait until ``dag_id`` has no queued or running run (e.g. the scheduler's own ingestion run)."""
    deadline = time.monotonic() + timeout
    while True:
        r = af.get(f"/api/v2/dags/{dag_id}/dagRuns", params={"state": ["queued", "running"], "limit": 1})
        r.raise_for_status()
        if r.json()["total_entries"] == 0:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{dag_id} still has active runs after {timeout:.0f}s")
        time.sleep(2)


def wait_scheduled(af: Any, dag_id: str, timeout: float = 600) -> None:
    """Wait until ``dag_id`` has a run the scheduler created itself and no queued or running run.

    Any scheduled run counts, an earlier one too: only for a DAG that never ran before does this
    mean its run of the latest interval is over (the stack benchmarks' new stacks)."""
    deadline = time.monotonic() + timeout
    while True:
        r = af.get(f"/api/v2/dags/{dag_id}/dagRuns", params={"run_type": ["scheduled"], "limit": 1})
        r.raise_for_status()
        if r.json()["total_entries"] > 0:
            return wait_idle(af, dag_id, timeout=max(1.0, deadline - time.monotonic()))
        if time.monotonic() > deadline:
            raise TimeoutError(f"the scheduler created no run of {dag_id} within {timeout:.0f}s (is it unpaused?)")
        time.sleep(2)


def sweep_landing(af: Any, end: datetime, minutes: int, now: datetime | None = None, timeout: float = 900) -> str:
    """Ingest every landing file keyed before ``end`` (the replay) with one triggered run of
    ``rtml_ingest``, then wait until no run of it is active; returns the run id.

    A triggered run takes every file keyed before the end of the latest complete interval that no
    batch has taken, and so does the scheduler's own run, created when the DAG is unpaused (or
    already done in this interval, before the replay landed). Runs are one at a time
    (``max_active_runs=1``), so whichever goes first takes the whole replay as one batch per kind
    and the other finds nothing: the batches (the newest one is what the drift gate reads) never
    depend on the clock or on which run the scheduler started first."""
    closed = _floor(now or datetime.now(UTC), minutes)
    if end > closed:
        raise ValueError(
            f"the replay ends at {end:%Y-%m-%d %H:%M} UTC, after the latest complete ingestion interval "
            f"(ending {closed:%Y-%m-%d %H:%M} UTC): no run may take it whole yet; wait for it or replay "
            "from an earlier --start"
        )
    run_id = af.trigger("rtml_ingest", {})
    state = af.wait("rtml_ingest", run_id, timeout=timeout)
    if state != "success":
        raise RuntimeError(f"rtml_ingest run {run_id} ended {state}:\n{af.explain('rtml_ingest', run_id)}")
    wait_idle(af, "rtml_ingest", timeout=timeout)
    return run_id


def _training_active(af: Any) -> bool:
    r = af.get("/api/v2/dags/rtml_train/dagRuns", params={"state": ["queued", "running"], "limit": 1})
    r.raise_for_status()
    return r.json()["total_entries"] > 0


def wait_for_decision(spec: ProjectSpec, settings: Settings, after: set[str], af: Any, timeout: float = 900) -> Any:
    """The new model version the gates decided on: one that passed (the challenger) if training
    produced one, else, once no training run is active, the newest version with a decision."""
    from rtml.registry.client import mlflow_client

    client = mlflow_client(settings)
    name = spec.model.registered_name
    deadline = time.monotonic() + timeout
    while True:
        versions: list[Any]
        try:
            versions = list(client.search_model_versions(f"name='{name}'"))
        except Exception:  # the registered model does not exist yet
            versions = []
        decided = sorted((mv for mv in versions if mv.version not in after and mv.tags.get("gate.decision")),
                         key=lambda v: int(v.version))
        passed = [mv for mv in decided if mv.tags["gate.decision"] == "passed"]
        if passed:
            return passed[-1]
        if decided and not _training_active(af):
            return decided[-1]
        if time.monotonic() > deadline:
            raise TimeoutError(f"no gated version of {name} after {timeout:.0f}s (see the rtml_train runs)")
        time.sleep(5)


def wait_for_serving(settings: Settings, version: str, timeout: float = 300) -> dict[str, Any]:
    import httpx

    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            r = httpx.get(f"{settings.serve_url}/v1/model", timeout=5,
                          headers={"Authorization": f"Bearer {settings.resolved_serve_token()}"})
            last = r.json() if r.status_code == 200 else r.text
            if r.status_code == 200 and str(last.get("version")) == str(version):
                return last
        except httpx.HTTPError as err:
            last = str(err)
        time.sleep(2)
    raise TimeoutError(f"the endpoint did not serve version {version} within {timeout:.0f}s: {last}")


LOOP_DAGS = ("rtml_ingest", "rtml_train", "rtml_promote", "rtml_monitor")


def ingest_from_kafka(
    af: Any, spec: ProjectSpec, settings: Settings, rows: int | None = None, start: datetime | None = None,
    max_runs: int = 10,
) -> tuple[dict[str, Any], int]:
    """With ``RTML_SOURCE=kafka``: replay into the topics and let ``rtml_ingest`` take all of it;
    returns the replay's summary and the number of ``rtml_ingest`` runs it triggered.

    The replay is produced while ``rtml_ingest`` is paused: its watcher would start a run on the
    first records, which would take part of the replay, and the batches (the newest one is what the
    drift gate reads) would depend on timing. Unpaused, the scheduler's run of the latest interval
    and triggered runs read both topics from the ingest groups' offsets, one run at a time, until
    the groups lag no more (a replay larger than one run's batches takes several). The scheduler's
    own run (created at unpause) reads them the same way: which of them goes first changes no batch."""
    from rtml.ingest.kafka import group_lag

    af.pause("rtml_ingest")
    produced = replay(spec, settings, rows=rows, start=start, to="kafka")
    _say(produced["message"])
    for dag_id in ("rtml_promote", "rtml_ingest", "rtml_monitor"):
        af.unpause(dag_id)
    _say("rtml_ingest reads the topics (Airflow UI: Dags > rtml_ingest) ...")
    topics = [t for t in (produced.get("event_topic"), produced.get("label_topic")) if t]
    runs = 0
    while lag := sum(group_lag(t, settings=settings) for t in topics):
        if runs >= max_runs:
            raise RuntimeError(f"{lag} record(s) of {', '.join(topics)} still not ingested after {runs} rtml_ingest runs")
        run_id = af.trigger("rtml_ingest", {})
        state = af.wait("rtml_ingest", run_id, timeout=600)
        if state != "success":
            raise RuntimeError(f"rtml_ingest run {run_id} ended {state}:\n{af.explain('rtml_ingest', run_id)}")
        runs += 1
    wait_idle(af, "rtml_ingest")
    return produced, runs


def run_demo(
    settings: Settings | None = None,
    spec: ProjectSpec | None = None,
    approve: bool = False,
    rows: int | None = None,
    start_stack: bool = True,
    start: datetime | None = None,
) -> dict[str, Any]:
    from rtml.platform.airflow import AirflowClient
    from rtml.platform.stack import Stack
    from rtml.registry.client import mlflow_client

    settings = settings or get_settings()
    spec = spec or load_spec(settings.spec)
    stack = Stack(settings)
    if start_stack:
        _say("starting the local stack (S3, MLflow, Airflow, serving) ...")
        stack.up()
    mlflow = mlflow_client(settings)
    name = spec.model.registered_name
    try:
        before = {mv.version for mv in mlflow.search_model_versions(f"name='{name}'")}
    except Exception:
        before = set()

    kafka = settings.source == "kafka"
    if not kafka:
        produced = replay(spec, settings, rows=rows, start=start)
        _say(produced["message"])

    with AirflowClient(settings) as af:
        for dag_id in LOOP_DAGS:
            af.wait_dag(dag_id)
        # Training waits for the whole replay: paused, it queues no run on the Asset updates.
        af.pause("rtml_train")
        if kafka:
            produced, n_runs = ingest_from_kafka(af, spec, settings, rows=rows, start=start)
            first, end = (datetime.fromisoformat(x) for x in produced["interval"])
        else:
            first, end = (datetime.fromisoformat(x) for x in produced["interval"])
            for dag_id in ("rtml_promote", "rtml_ingest", "rtml_monitor"):
                af.unpause(dag_id)
            _say("rtml_ingest sweeps the replay (Airflow UI: Dags > rtml_ingest) ...")
            sweep_landing(af, end, settings.ingest_interval_minutes)
            _say(f"backfilling rtml_ingest over {first:%Y-%m-%d %H:%M}..{end:%H:%M} UTC: its runs find "
                 "every file ingested already, and take none twice ...")
            runs = backfill_ingest(af, first, end, settings.ingest_interval_minutes)
            failed = [r["dag_run_id"] for r in runs if r["state"] != "success"]
            if failed:
                raise RuntimeError(f"ingestion runs failed: {failed}")
            wait_idle(af, "rtml_ingest")
            n_runs = 1 + len(runs)
        _say(f"the replay is in the lake ({n_runs} rtml_ingest runs triggered); training on all of it (rtml_train) ...")
        # The window ends with the replay, whatever newer data the lake holds (a user's, other runs').
        run_id = af.trigger("rtml_train", {"force": True, "window_end": end.isoformat()})
        state = af.wait("rtml_train", run_id, timeout=1200)
        if state != "success":
            raise RuntimeError(f"rtml_train run {run_id} ended {state}:\n{af.explain('rtml_train', run_id)}")
        mv = wait_for_decision(spec, settings, before, af)

    result: dict[str, Any] = {
        "ok": True,
        "airflow_ui": settings.airflow_url,
        "mlflow_ui": settings.mlflow_tracking_uri,
        "model": name,
        "version": mv.version,
        "gate_decision": mv.tags.get("gate.decision"),
        "gate_reasons": mv.tags.get("gate.reasons", ""),
        "serving": settings.serve_url,
    }
    version_url = f"{settings.mlflow_tracking_uri}/#/models/{name}/versions/{mv.version}"
    _say(f"version {mv.version}: gates {mv.tags.get('gate.decision')} ({version_url})")
    if mv.tags.get("gate.decision") == "passed":
        if approve:
            _say(f"approving version {mv.version} (tag approval=approved, as in the MLflow UI) ...")
            mlflow.set_model_version_tag(name, mv.version, "approval", "approved")
            served = wait_for_serving(settings, mv.version)
            result["served"] = served
            _say(f"the endpoint now serves version {served.get('version')}")
        else:
            _say(
                "rtml_promote waits for your decision. In the MLflow UI open "
                f"{version_url}, under Tags add key 'approval' value 'approved' (or 'rejected'), save; "
                "within seconds the version becomes 'champion' and the endpoint serves it."
            )
    minutes = settings.ingest_interval_minutes
    result["live"] = list(LOOP_DAGS)
    result["message"] = "\n".join([
        "rtml is running:",
        f"  Airflow UI   {settings.airflow_url}  (login: `rtml stack status` shows it)",
        f"  MLflow UI    {settings.mlflow_tracking_uri}  (model {name}, version {mv.version}: "
        "model card, fairness and drift reports under the run's artifacts)",
        f"  Serving      {settings.serve_url}/v1/predict  (token: {settings.home}/serve_token)",
        "From now on, on its own (every rtml DAG is unpaused):",
        (f"  rtml_ingest   every {minutes} min and on new records: the Kafka topics rtml.{spec.dataset.name}.* "
         "(add some with `rtml produce --to kafka`)" if kafka else
         f"  rtml_ingest   every {minutes} min: new files under landing/{spec.dataset.name}/ "
         "(add some with `rtml produce`)"),
        "  rtml_train    when ingestion brings enough new labels: train, gate, mark the challenger",
        "  rtml_promote  when a challenger appears: waits for your approval in MLflow, then serves it",
        "  rtml_monitor  hourly: live drift and quality of the served model; asks for retraining",
        "Watch it in the Airflow UI (Dags, filter tag 'rtml'), `rtml stack status` for the processes.",
        "Stop everything with: rtml stack down",
    ])
    return result


def _cmd_demo(args: argparse.Namespace) -> dict[str, Any]:
    from rtml.cli import parse_time

    start = parse_time(args.start, "--start")
    return run_demo(approve=args.approve, rows=args.rows, start_stack=not args.no_stack, start=start)


def add_commands(sub: argparse._SubParsersAction) -> None:
    from rtml.cli import command

    p = command(sub, "demo", _cmd_demo, "run the whole loop on the local stack (produce, ingest, train, gates)")
    p.add_argument("--approve", action="store_true",
                   help="approve a passing version yourself (sets the tag a person sets in the MLflow UI)")
    p.add_argument("--rows", type=int, default=None, help="events to replay (default: the whole table)")
    p.add_argument("--no-stack", action="store_true", help="use the running stack, do not start it")
    p.add_argument("--start", help=f"first event time of the replay (ISO 8601; default {REPLAY_START.isoformat()})")
