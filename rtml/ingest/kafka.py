"""Kafka as a stream source: a consumer group, offsets committed only after the lake commit.

The broker of the local stack is :mod:`rtml.platform.kafka`; the producer of the replay is
:func:`rtml.ingest.produce.write_kafka`; the batch loop is :func:`rtml.ingest.batches.ingest_kafka`.

**The source** (:class:`KafkaSource`): one topic per dataset and kind (``rtml.<dataset>.<kind>``),
one JSON record per message value. It is a member of a consumer group (``subscribe``, classic
protocol, static membership: a restarted ingest process takes over its partitions at once instead
of waiting for the crashed member's session to expire). The group is ``rtml-ingest.<topic>`` unless
one is given; give each topic its own group (a static member that closed stays in its group until
its session expires, and would hold up a rebalance caused by a member of another topic). A batch is a contiguous offset range of ONE
partition, at most ``max_records`` long, read within ``max_wait`` seconds up to the high watermark
seen when the batch started; its id is ``<UTC time of the first message>-<topic>-p<partition>-
<first offset>-<last offset>``. Offsets are committed synchronously by :meth:`KafkaSource.commit`,
which ingestion calls only after the batch manifest is written: a crash before that leaves the
group's offset where it was, and the next run reads the same records again.

Kafka keeps no delivery count, so the source keeps its own small *attempt record* in the lake
(``<dataset>/_sources/kafka/<kind>/<group>/<topic>.json``), written before a batch is handed out:

* **the plan** of each partition's batch in flight (first/last offset, batch id, dead letters): a
  retry after a crash takes the same plan, so it computes the same batch id and writes the same
  bytes; a plan whose manifest exists is always re-run as it is (it is already in the lake);
* **delivery counts** per offset range. Like the Redis source, the first retry takes a failed batch
  whole, later retries take half as many records per failure, and a record delivered
  ``ingestion.max_deliveries`` times without being committed is quarantined as a ``dead letter``
  (its raw value kept), so a poison record never wedges its partition;
* **gaps**: when retention (or ``delete-records``) removed records past the group's committed
  offset, the count lost (read-but-uncommitted vs never read) is reported through ``on_gap``
  before the group moves past it.

**Event-driven starts**: with ``RTML_SOURCE=kafka`` the ``rtml_ingest`` DAG is also scheduled on
an Asset whose ``AssetWatcher`` runs the Kafka provider's message-queue trigger in the triggerer
(``AwaitMessageTrigger``, which ``KafkaMessageQueueTrigger`` resolves to; its arguments:
:func:`watch_trigger_kwargs`). The trigger consumes the topics with a group of its own
(:data:`rtml.platform.kafka.WATCH_GROUP`, from the Airflow connection ``rtml_kafka``) and fires when
:func:`arrival_signal` says a record is worth a run; it never touches the ingest group, so the run it
starts still reads, commits and acknowledges exactly as a scheduled one does.

Only the standard library is imported at module level; confluent-kafka inside the functions.
"""

from __future__ import annotations

import contextlib
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from rtml.platform.kafka import WATCH_CONN_ID, KafkaError
from rtml.settings import Settings, get_settings

if TYPE_CHECKING:

    from rtml.ingest.contract import Contract, RawBatch
    from rtml.ingest.sources import SourceBatch
    from rtml.storage import ObjectStore

DEFAULT_GROUP = "rtml-ingest"
_TOPIC_CHARS = re.compile(r"[^A-Za-z0-9._-]")


# --- clients -------------------------------------------------------------------------------------
def bootstrap(settings: Settings | None = None) -> str:
    return (settings or get_settings()).kafka_bootstrap


def topic_name(dataset: str, kind: str, prefix: str = "rtml") -> str:
    """``<prefix>.<dataset>.<kind>``; characters Kafka refuses in a topic name become ``_``."""
    return _TOPIC_CHARS.sub("_", f"{prefix}.{dataset}.{kind}")[:249]


def admin(settings: Settings | None = None):
    from confluent_kafka.admin import AdminClient

    return AdminClient({"bootstrap.servers": bootstrap(settings)})


def ensure_topic(topic: str, partitions: int | None = None, settings: Settings | None = None, timeout: float = 30) -> None:
    """Create ``topic`` unless it exists (``partitions`` default: ``settings.kafka_partitions``)."""
    from confluent_kafka import KafkaError as CKError
    from confluent_kafka.admin import NewTopic

    s = settings or get_settings()
    a = admin(s)
    if topic in a.list_topics(timeout=timeout).topics:
        return
    fut = a.create_topics([NewTopic(topic, num_partitions=partitions or s.kafka_partitions, replication_factor=1)],
                          operation_timeout=timeout)[topic]
    try:
        fut.result(timeout=timeout)
    except Exception as err:  # noqa: BLE001 - created meanwhile by someone else is fine
        code = err.args[0].code() if err.args and hasattr(err.args[0], "code") else None
        if code != CKError.TOPIC_ALREADY_EXISTS:
            raise


# --- delivery bookkeeping (pure) -------------------------------------------------------------------
Segments = list[list[int]]  # sorted, disjoint [first, last, deliveries] (inclusive offsets)


def deliveries_at(segments: Segments, offset: int) -> int:
    for a, b, n in segments:
        if a <= offset <= b:
            return n
    return 0


def add_delivery(segments: Segments, first: int, last: int) -> Segments:
    """Count one more delivery of every offset in ``[first, last]``."""
    points: list[list[int]] = []
    for a, b, n in segments:
        if b < first or a > last:
            points.append([a, b, n])
            continue
        if a < first:
            points.append([a, first - 1, n])
        points.append([max(a, first), min(b, last), n + 1])
        if b > last:
            points.append([last + 1, b, n])
    # Offsets of the range not covered yet: first delivery.
    covered = sorted((max(a, first), min(b, last)) for a, b, _ in segments if not (b < first or a > last))
    cur = first
    for a, b in covered:
        if a > cur:
            points.append([cur, a - 1, 1])
        cur = max(cur, b + 1)
    if cur <= last:
        points.append([cur, last, 1])
    return merge_segments(points)


def merge_segments(segments: Segments) -> Segments:
    out: Segments = []
    for a, b, n in sorted(segments):
        if out and out[-1][1] + 1 == a and out[-1][2] == n:
            out[-1][1] = b
        else:
            out.append([a, b, n])
    return out


def drop_below(segments: Segments, offset: int) -> Segments:
    """Forget offsets before ``offset`` (committed)."""
    return [[max(a, offset), b, n] for a, b, n in segments if b >= offset]


def count_in(segments: Segments, first: int, last: int) -> int:
    """How many offsets of ``[first, last]`` the segments cover."""
    return sum(max(0, min(b, last) - max(a, first) + 1) for a, b, _ in segments)


def dead_offsets(segments: Segments, offsets: list[int], max_deliveries: int) -> list[list[int]]:
    """``[offset, deliveries]`` of the (sorted) ``offsets`` delivered ``max_deliveries`` times or more:
    looked up per segment, not per record (a batch has ~1e5 records, the bookkeeping a few segments)."""
    import bisect

    out: list[list[int]] = []
    for a, b, n in segments:
        if n >= max_deliveries:
            lo, hi = bisect.bisect_left(offsets, a), bisect.bisect_right(offsets, b)
            out.extend([o, n] for o in offsets[lo:hi])
    return sorted(out)


def batch_limit(failures: int, max_records: int, max_deliveries: int) -> int:
    """Records to take when the oldest uncommitted record already failed ``failures`` times: the
    first retry takes the batch whole, later ones half as many per failure (a poison record takes
    few neighbours with it), and once it is a dead letter the full size again."""
    if failures <= 1 or failures >= max_deliveries:
        return max_records
    return max(1, max_records >> min(failures - 1, 30))


def batch_id_for_offsets(topic: str, partition: int, first: int, last: int, first_ms: int) -> str:
    """``<UTC time of the first message>-<topic>-p<partition>-<first>-<last>``, offsets zero-padded
    so the batches of a partition sort like its log."""
    t = datetime.fromtimestamp(max(first_ms, 0) / 1000, tz=UTC)
    return f"{t:%Y%m%dT%H%M%S}-{_TOPIC_CHARS.sub('_', topic)}-p{partition:04d}-{first:015d}-{last:015d}"


def state_key(dataset: str, kind: str, group: str, topic: str) -> str:
    safe = _TOPIC_CHARS.sub("_", group)
    return f"{dataset}/_sources/kafka/{kind}/{safe}/{_TOPIC_CHARS.sub('_', topic)}.json"


# --- the source ----------------------------------------------------------------------------------
@dataclass
class _Fetched:
    """Messages of one partition, column-wise (a Python object per message costs as much as the
    parsing): their offsets, values (a null value as ``b""``) and the first one's timestamp."""

    offsets: list[int] = field(default_factory=list)
    values: list[bytes] = field(default_factory=list)
    first_ms: int = 0


@dataclass
class _Plan:
    partition: int
    first: int
    last: int
    batch_id: str
    # [offset, deliveries before this plan]: fixed with the plan, so a re-run writes the same bytes.
    dead: list[list[int]] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {"first": self.first, "last": self.last, "batch_id": self.batch_id, "dead": self.dead}


class KafkaSource:
    """A consumer-group reader of one topic; offsets are committed only by :meth:`commit`."""

    def __init__(
        self,
        topic: str,
        store: ObjectStore,
        state: str,
        group: str = DEFAULT_GROUP,
        settings: Settings | None = None,
        max_records: int = 100_000,
        max_wait: float = 10.0,
        kind: str = "events",
        max_deliveries: int = 3,
        on_gap: Callable[[dict[str, Any]], None] | None = None,
        is_committed: Callable[[str], bool] | None = None,
        instance_id: str | None = None,
        assign_timeout: float = 60.0,
    ) -> None:
        self.settings = settings or get_settings()
        self.topic, self.group, self.kind = topic, group, kind
        self.store, self.state_key = store, state
        self.max_records, self.max_wait = max_records, max_wait
        self.max_deliveries = max_deliveries
        self.on_gap = on_gap
        # Whether a batch id has a manifest: such a plan is re-run as it is.
        self.is_committed = is_committed or (lambda _bid: False)
        # Static membership: one id per ingest role, so a restart after a crash takes the
        # partitions over at once; a second concurrent ingest of the same role fences the first.
        self.instance_id = instance_id or f"{group}.{topic}"
        self.assign_timeout = assign_timeout
        self._consumer = None
        self._turn = 0
        self._state: dict[str, Any] | None = None

    # --- consumer --------------------------------------------------------------------------------
    def _connect(self):
        if self._consumer is not None:
            return self._consumer
        from confluent_kafka import Consumer

        ensure_topic(self.topic, settings=self.settings)
        c = Consumer({
            "bootstrap.servers": self.settings.kafka_bootstrap,
            "group.id": self.group,
            "group.instance.id": self.instance_id,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            "enable.partition.eof": True,
            "session.timeout.ms": 30_000,
            "fetch.max.bytes": 64 << 20,
            "max.partition.fetch.bytes": 16 << 20,
        })
        c.subscribe([self.topic])
        deadline = time.monotonic() + self.assign_timeout
        while not c.assignment():
            c.poll(0.1)  # the group join happens inside poll
            if time.monotonic() > deadline:
                c.close()
                raise KafkaError(f"no partition of {self.topic} assigned to group {self.group} within "
                                 f"{self.assign_timeout:.0f}s (another member holds them?)")
        self._consumer = c
        return c

    def close(self) -> None:
        if self._consumer is not None:
            with contextlib.suppress(Exception):
                self._consumer.close()
            self._consumer = None

    def partitions(self) -> list[int]:
        return sorted(tp.partition for tp in self._connect().assignment())

    def _committed(self, partition: int) -> int | None:
        from confluent_kafka import TopicPartition

        consumer = self._connect()
        tp = until_coordinated(lambda: consumer.committed([TopicPartition(self.topic, partition)], timeout=30))[0]
        return tp.offset if tp.offset >= 0 else None

    def _watermarks(self, partition: int) -> tuple[int, int]:
        from confluent_kafka import TopicPartition

        return self._connect().get_watermark_offsets(TopicPartition(self.topic, partition), timeout=30, cached=False)

    # --- attempt record --------------------------------------------------------------------------
    def _load_state(self) -> dict[str, Any]:
        if self._state is None:
            try:
                self._state = json.loads(self.store.get(self.state_key))
            except Exception:  # noqa: BLE001 - none yet (or unreadable: counts restart, nothing is lost)
                self._state = {}
            self._state.setdefault("partitions", {})
        return self._state

    def _save_state(self) -> None:
        st = self._load_state()
        st["partitions"] = {k: v for k, v in st["partitions"].items() if v.get("segments") or v.get("plan")}
        if st["partitions"]:
            self.store.put(self.state_key, json.dumps({"topic": self.topic, "group": self.group, **st},
                                                      sort_keys=True, indent=1).encode())
        elif self.store.exists(self.state_key):
            self.store.delete(self.state_key)

    # --- reading ---------------------------------------------------------------------------------
    # Messages taken per consume() call: large enough that the call overhead vanishes, small
    # enough that a batch never holds much more than it needs in librdkafka's queue and here.
    consume_batch = 50_000

    def _fetch(self, partition: int, first: int, last: int, deadline: float) -> _Fetched:
        """Messages of ``partition`` with offsets in ``[first, last]``, until ``last``, the end of
        the partition or the deadline."""
        from confluent_kafka import KafkaError as CKError
        from confluent_kafka import TopicPartition

        c = self._connect()
        tps = c.assignment()
        c.pause([tp for tp in tps if tp.partition != partition])
        target = TopicPartition(self.topic, partition, first)
        c.resume([target])
        # Where the previous batch of this partition stopped is where this one starts: then the
        # consumer is already there, and a seek would throw away what librdkafka has prefetched.
        if c.position([TopicPartition(self.topic, partition)])[0].offset != first:
            while True:
                try:
                    c.seek(target)
                    break
                except Exception:  # noqa: BLE001 - not fetchable yet right after the assignment
                    if time.monotonic() > deadline:
                        raise
                    c.poll(0.05)
        out = _Fetched()
        offsets, values = out.offsets, out.values
        nxt = first  # the next offset wanted
        eof = CKError._PARTITION_EOF
        while time.monotonic() < deadline:
            # Never more than the batch still needs: the consumer's position stays at its end.
            msgs = c.consume(num_messages=max(1, min(self.consume_batch, last - nxt + 1)),
                             timeout=min(0.5, max(0.01, deadline - time.monotonic())))
            end = False
            for m in msgs:
                err = m.error()
                if err is not None:
                    if m.partition() == partition:
                        if err.code() == eof:
                            end = m.offset() >= nxt  # nothing past what was read so far
                            continue
                        raise KafkaError(f"reading {self.topic}[{partition}]: {err}")
                    continue
                off = m.offset()
                if off < nxt or off > last or m.partition() != partition:
                    continue
                if not offsets:
                    out.first_ms = m.timestamp()[1]
                v = m.value()
                offsets.append(off)
                values.append(b"" if v is None else v)
                nxt = off + 1
            if end or nxt > last:
                break
        return out

    def read(self, contract: Contract) -> SourceBatch | None:
        """The next batch of the next partition (in turn) that has one; None when all are read."""
        parts = self.partitions()
        for k in range(len(parts)):
            p = parts[(self._turn + k) % len(parts)]
            batch = self._read_partition(p, contract)
            if batch is not None:
                self._turn = (self._turn + k + 1) % len(parts)
                return batch
        return None

    def _read_partition(self, p: int, contract: Contract) -> SourceBatch | None:
        st = self._load_state()["partitions"].setdefault(str(p), {"segments": [], "plan": None})
        committed = self._committed(p)
        lo, hi = self._watermarks(p)
        start = committed if committed is not None else lo
        gap = None
        if start < lo:
            # Retention (or delete-records) removed records the group never committed.
            lost_pending = count_in(st["segments"], start, lo - 1)
            gap = {"topic": self.topic, "group": self.group, "partition": p, "after_offset": start - 1,
                   "before_offset": lo, "lost_unread": (lo - start) - lost_pending, "lost_pending": lost_pending}
            if self.on_gap is not None:
                self.on_gap(gap)  # recorded before the group moves past it
            start = lo
        st["segments"] = drop_below(st["segments"], start)
        plan = _Plan(p, **st["plan"]) if st.get("plan") else None
        if plan is not None and plan.first != start:
            plan = None  # a plan of offsets already committed (or lost)
        if start >= hi:
            st["plan"] = None
            if gap is not None:
                self._commit_offset(p, start)
                self._save_state()
            return None
        failures = deliveries_at(st["segments"], start)
        reuse = plan is not None and (failures <= 1 or self.is_committed(plan.batch_id))
        deadline = time.monotonic() + self.max_wait
        if reuse and plan is not None:
            got = self._fetch(p, plan.first, plan.last, deadline)
            if not got.offsets or got.offsets[-1] < plan.last and plan.last < hi:
                # The same records must come back whole, or the batch would differ from the first try.
                raise KafkaError(f"re-reading batch {plan.batch_id} of {self.topic}[{p}] timed out "
                                 f"after {self.max_wait:.0f}s (got up to offset "
                                 f"{got.offsets[-1] if got.offsets else None})")
        else:
            limit = batch_limit(failures, self.max_records, self.max_deliveries)
            got = self._fetch(p, start, min(start + limit, hi) - 1, deadline)
            if not got.offsets:
                return None
            first, last = got.offsets[0], got.offsets[-1]
            plan = _Plan(p, first, last, batch_id_for_offsets(self.topic, p, first, last, got.first_ms),
                         dead_offsets(st["segments"], got.offsets, self.max_deliveries))
        prior = {o: n for o, n in plan.dead}
        dead = set(prior)
        # Counted (and planned) in the lake before the records are handed out: an unreachable lake
        # fails here, before any delivery counts against a record.
        st["segments"] = add_delivery(st["segments"], plan.first, plan.last)
        st["plan"] = plan.as_json()
        self._save_state()
        return self._batch(plan, got, dead, prior, contract, redelivered=failures > 0, gap=gap)

    def _batch(self, plan: _Plan, got: _Fetched, dead: set[int], prior: dict[int, int], contract: Contract,
               redelivered: bool, gap: dict[str, Any] | None) -> SourceBatch:
        from rtml.ingest.contract import RawBatch, refused
        from rtml.ingest.sources import SourceBatch

        offsets, values = got.offsets, got.values
        if dead:
            keep = [i for i, o in enumerate(offsets) if o not in dead]
            live_offsets, live_values = [offsets[i] for i in keep], [values[i] for i in keep]
        else:
            live_offsets, live_values = offsets, values
        parts = [parse_values(live_offsets, live_values, self.topic, plan.partition, contract)] if live_offsets else []
        if dead:
            import numpy as np
            import pandas as pd

            from rtml.ingest.contract import Positions

            rejects = [refused(_where(self.topic, plan.partition, o),
                               f"dead letter: delivered {prior[o]} times without "
                               f"being committed (ingestion.max_deliveries={self.max_deliveries})", v)
                       for o, v in zip(offsets, values, strict=True) if o in dead]
            parts.append(RawBatch(pd.DataFrame(), Positions(), np.zeros(0, dtype=np.int64), rejects))
        raw = RawBatch.concat(parts) if len(parts) > 1 else parts[0]
        position = {
            "type": "kafka",
            "topic": self.topic,
            "group": self.group,
            "partition": plan.partition,
            "first_offset": plan.first,
            "last_offset": plan.last,
            "count": len(offsets),
            "dead_offsets": sorted(dead),
        }
        info = {"redelivered": redelivered, "dead_letters": len(dead), "gap": gap}
        return SourceBatch(plan.batch_id, raw, position, info, ack_ids=[f"{plan.partition}:{plan.last + 1}"])

    # --- committing ------------------------------------------------------------------------------
    def _commit_offset(self, partition: int, offset: int) -> None:
        from confluent_kafka import TopicPartition

        res = self._connect().commit(offsets=[TopicPartition(self.topic, partition, offset)], asynchronous=False)
        for tp in res or []:
            if tp.error is not None:
                raise KafkaError(f"committing offset {offset} of {self.topic}[{partition}] failed: {tp.error}")

    def commit(self, batch: SourceBatch) -> None:
        """Commit the offset after the batch (synchronously); called after its manifest is written."""
        p, nxt = (int(x) for x in batch.ack_ids[0].split(":"))
        self._commit_offset(p, nxt)
        st = self._load_state()["partitions"].setdefault(str(p), {"segments": [], "plan": None})
        st["segments"] = drop_below(st["segments"], nxt)
        st["plan"] = None
        self._save_state()


# What a group's coordinator answers while the broker elects or loads it (a group never used yet, a
# broker just started): not an answer, ask again.
COORDINATOR_PENDING = ("NOT_COORDINATOR", "COORDINATOR_LOAD_IN_PROGRESS", "COORDINATOR_NOT_AVAILABLE")


def until_coordinated(call: Callable[[], Any], timeout: float = 30, pause: float = 0.5) -> Any:
    """``call()`` (a group offsets request), asked again while the group's coordinator is pending,
    for up to ``timeout`` seconds; any other error, or a coordinator still pending then, is raised."""
    from confluent_kafka import KafkaError as BrokerError
    from confluent_kafka import KafkaException

    pending = {getattr(BrokerError, name) for name in COORDINATOR_PENDING}
    deadline = time.monotonic() + timeout
    while True:
        try:
            return call()
        except KafkaException as exc:
            err = exc.args[0] if exc.args else None
            if not isinstance(err, BrokerError) or err.code() not in pending or time.monotonic() >= deadline:
                raise
        time.sleep(pause)


def group_lag(topic: str, group: str | None = None, settings: Settings | None = None, timeout: float = 30) -> int:
    """Records of ``topic`` past ``group``'s committed offsets (default: the ingest group of the
    topic, as :func:`rtml.ingest.batches.ingest_kafka` names it): 0 once ingestion took everything.
    Reads offsets only; it never joins the group, so it cannot rebalance the ingest member away."""
    from confluent_kafka import Consumer, TopicPartition

    s = settings or get_settings()
    group = group or f"{DEFAULT_GROUP}.{topic}"
    ensure_topic(topic, settings=s, timeout=timeout)
    c = Consumer({"bootstrap.servers": s.kafka_bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        parts = sorted(c.list_topics(topic, timeout=timeout).topics[topic].partitions)
        committed = until_coordinated(lambda: c.committed([TopicPartition(topic, p) for p in parts], timeout=timeout),
                                      timeout=timeout)
        lag = 0
        for tp in committed:
            lo, hi = c.get_watermark_offsets(TopicPartition(topic, tp.partition), timeout=timeout, cached=False)
            lag += hi - max(tp.offset if tp.offset >= 0 else lo, lo)
        return lag
    finally:
        c.close()


def _where(topic: str, partition: int, offset: int) -> str:
    return f"{topic}[{partition}]@{offset}"


def parse_values(offsets: list[int], values: list[bytes], topic: str, partition: int, contract: Contract) -> RawBatch:
    """Message values -> RawBatch, one record each, named ``topic[partition]@offset``. Values are
    joined as JSON lines when none contains a line break (the fast path); otherwise each is parsed
    on its own, its line breaks turned into spaces (JSON allows them only between tokens)."""
    from rtml.ingest.contract import RawBatch
    from rtml.ingest.sources import parse_jsonl

    prefix = f"{topic}[{partition}]@"  # what _where() writes, built without a Python call per record
    names = list(map(prefix.__add__, map(str, offsets)))
    data = b"\n".join([*values, b""])
    if data.count(b"\n") == len(values) and b"\r" not in data:  # no value holds a line break
        return parse_jsonl(data, topic, contract, names=names)
    parts = [parse_jsonl(v.replace(b"\r", b" ").replace(b"\n", b" ") + b"\n", topic, contract, names=[n])
             for n, v in zip(names, values, strict=True)]
    return RawBatch.concat(parts)


# --- event-driven starts (the AssetWatcher of rtml_ingest) ----------------------------------------
ARRIVAL_SIGNAL = "rtml.ingest.kafka.arrival_signal"  # imported by the triggerer by this path
# Topic -> clock time of the last signal this process gave for it (the triggerer's trigger runner
# is long-lived and restarts the trigger after each event; a new process starts empty, which
# only costs one more signal).
_SIGNALLED: dict[str, float] = {}


def arrival_signal(message: Any, max_age_seconds: float = 300.0, now: float | None = None,
                   signalled: dict[str, float] | None = None) -> dict[str, Any] | None:
    """The ``apply_function`` of the watcher: the payload of an Asset event for a record worth a run,
    else None (the trigger then reads on). Never raises: it runs inside the triggerer, where an
    exception would fail the watcher, and the value is never parsed (any value, garbage or a
    tombstone included, is a record the ingest run must take, if only into quarantine).

    A record is worth a run unless its Kafka timestamp shows a run will take it anyway:

    * sent more than ``max_age_seconds`` ago: it was there when an earlier run, scheduled or
      signalled, started (this also lets a watcher that fell behind skim its backlog);
    * sent before this process's last signal on the topic: the run that signal starts reads the
      topic to its end, this record included (so a burst of records starts one run, not one per
      record). This assumes the producers' clocks agree with the triggerer's; one running behind
      only delays its records to the next signal or scheduled run.

    A record with no usable timestamp is always signalled. The payload names the record's position,
    never its content (Asset events are kept in Airflow's database).
    """
    try:
        if message is None or message.error() is not None:
            return None
        ts_type, ts_ms = message.timestamp()
        ts = int(ts_ms) if ts_type and isinstance(ts_ms, int) and ts_ms >= 0 else None
        clock = time.time() if now is None else float(now)
        topic = str(message.topic())
        memo = _SIGNALLED if signalled is None else signalled
        if ts is not None:
            if clock * 1000 - ts > float(max_age_seconds) * 1000:
                return None
            last = memo.get(topic)
            if last is not None and ts < last * 1000:
                return None
        value = message.value()
        payload = {
            "topic": topic,
            "partition": int(message.partition()),
            "offset": int(message.offset()),
            "timestamp_ms": ts,
            "bytes": len(value) if isinstance(value, bytes | bytearray) else 0,
        }
        memo[topic] = clock
        return payload
    except Exception:  # noqa: BLE001 - not a Kafka message we can read: no signal, the watcher goes on
        return None


def watch_trigger_kwargs(dataset: str, settings: Settings | None = None,
                         kinds: tuple[str, ...] = ("events", "labels")) -> dict[str, Any]:
    """Arguments of the ``AwaitMessageTrigger`` that watches the topics of ``dataset``.

    Fresh means younger than one schedule interval (``ingest_interval_minutes``): an older record
    was there when the last scheduled run started. ``commit_offset=False`` with the connection's
    ``enable.auto.commit``: the watcher group's offsets move in the background and on close, not
    with a synchronous commit per record skimmed; a lost commit only repeats a signal.
    ``poll_interval=0``: after a record not worth a run the next is read at once (the poll itself
    waits up to ``poll_timeout`` when the topics are idle).
    """
    s = settings or get_settings()
    return {
        "topics": [topic_name(dataset, k) for k in kinds],
        "kafka_config_id": WATCH_CONN_ID,
        "apply_function": ARRIVAL_SIGNAL,
        "apply_function_kwargs": {"max_age_seconds": float(s.ingest_interval_minutes * 60)},
        "poll_timeout": 1.0,
        "poll_interval": 0.0,
        "commit_offset": False,
    }
