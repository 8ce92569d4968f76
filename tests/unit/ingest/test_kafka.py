"""Pure logic of rtml.ingest.kafka: delivery bookkeeping, batch sizes and ids, broker config, value parsing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rtml.ingest.contract import Contract
from rtml.ingest.kafka import (
    add_delivery,
    arrival_signal,
    batch_id_for_offsets,
    batch_limit,
    count_in,
    dead_offsets,
    deliveries_at,
    drop_below,
    parse_values,
    topic_name,
    watch_trigger_kwargs,
)
from rtml.platform.kafka import WATCH_CONN_ID, jars_dir, pom_xml, server_properties
from rtml.platform.stack import Stack, all_ports
from rtml.settings import Settings
from rtml.spec import load_spec


def test_deliveries_are_counted_per_offset_range():
    seg = add_delivery([], 0, 7)
    assert seg == [[0, 7, 1]]
    seg = add_delivery(seg, 0, 7)
    assert seg == [[0, 7, 2]]
    seg = add_delivery(seg, 0, 3)  # a halved retry
    assert seg == [[0, 3, 3], [4, 7, 2]]
    assert [deliveries_at(seg, o) for o in (0, 3, 4, 7, 8)] == [3, 3, 2, 2, 0]
    seg = add_delivery(seg, 6, 10)  # overlaps the end and goes past it
    assert seg == [[0, 3, 3], [4, 5, 2], [6, 7, 3], [8, 10, 1]]
    assert count_in(seg, 2, 9) == 8 and count_in(seg, 20, 30) == 0
    assert drop_below(seg, 5) == [[5, 5, 2], [6, 7, 3], [8, 10, 1]]
    assert drop_below(seg, 11) == []


def test_add_delivery_fills_holes_between_segments():
    assert add_delivery([[0, 1, 2], [5, 6, 2]], 0, 6) == [[0, 1, 3], [2, 4, 1], [5, 6, 3]]


@pytest.mark.parametrize(("failures", "expected"), [(0, 8), (1, 8), (2, 4), (3, 8), (9, 8)])
def test_batch_limit_halves_from_the_second_failure_until_dead_letters(failures, expected):
    assert batch_limit(failures, 8, 3) == expected


def test_batch_limit_never_below_one():
    assert batch_limit(40, 3, 100) == 1


def test_batch_ids_sort_like_the_log_and_name_topic_partition_offsets():
    a = batch_id_for_offsets("rtml.ds.events", 0, 9, 99, 1_764_072_000_000)
    b = batch_id_for_offsets("rtml.ds.events", 0, 100, 1000, 1_764_072_000_000)
    assert a < b
    assert a == "20251125T120000-rtml.ds.events-p0000-000000000000009-000000000000099"
    # A message without a timestamp (-1) still gets a valid id.
    assert batch_id_for_offsets("t", 1, 0, 0, -1).startswith("19700101T000000-t-p0001-")


def test_topic_names_are_valid_kafka_names():
    assert topic_name("credit applications/v2", "events") == "rtml.credit_applications_v2.events"
    assert len(topic_name("x" * 400, "events")) <= 249


def test_broker_binds_loopback_on_ports_from_settings(tmp_path):
    s = Settings(home=tmp_path, kafka_port=31092, kafka_partitions=3)
    props = dict(line.split("=", 1) for line in server_properties(s).splitlines())
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:31092,CONTROLLER://127.0.0.1:31093"
    assert props["advertised.listeners"] == "PLAINTEXT://127.0.0.1:31092"
    assert props["process.roles"] == "broker,controller"
    assert props["controller.quorum.voters"] == "1@127.0.0.1:31093"
    assert props["log.dirs"] == str(tmp_path / "kafka" / "data")
    assert props["num.partitions"] == "3"
    assert s.kafka_bootstrap == "127.0.0.1:31092"
    assert {31092, 31093} <= set(all_ports(s))


def test_jars_resolved_from_a_pom_naming_the_version(tmp_path, monkeypatch):
    s = Settings(home=tmp_path, kafka_version="4.1.1")
    assert jars_dir(s) == Path.home() / ".cache" / "rtml" / "kafka-4.1.1"
    assert jars_dir(Settings(home=tmp_path, kafka_jars_dir=str(tmp_path / "j"))) == tmp_path / "j"
    pom = pom_xml("4.1.1")
    assert "<artifactId>kafka_2.13</artifactId><version>4.1.1</version>" in pom


def test_kafka_proc_runs_kafka_with_the_cached_jars(tmp_path):
    import shutil

    if not shutil.which("java"):
        pytest.skip("no java on this machine")
    s = Settings(home=tmp_path, kafka_port=31092, kafka_jars_dir=str(tmp_path / "jars"))
    (proc,) = Stack(s).procs("kafka")
    assert proc.port == 31092 and proc.service == "kafka"
    assert proc.cmd[-2:] == ["kafka.Kafka", str(tmp_path / "kafka" / "server.properties")]
    assert f"{tmp_path / 'jars' / 'libs'}/*" in proc.cmd


def test_values_with_line_breaks_are_parsed_one_by_one():
    contract = Contract(load_spec())
    good = (b'{"event_id":"e1","application_id":"a1","event_time":"2026-11-25T12:00:00Z","Seniority":1,"Home":"owner",'
            b'"Time":60,"Age":34,"Marital":"married","Records":"no","Job":"fixed","Expenses":35,"Income":187.0,'
            b'"Assets":0.0,"Debt":0.0,"Amount":500,"Price":1457}')
    raw = parse_values([5, 6, 7], [good.replace(b",", b",\n", 2), b"{\n", b""], "t", 2, contract)
    result = contract.validate(raw, {})
    assert result.records_in == 3 and result.table.num_rows == 1
    assert sorted(r["source"] for r in result.rejects) == ["t[2]@6", "t[2]@7"]


@pytest.mark.parametrize("bad", [b"\r", b"x\ry", b"\n", b""], ids=["cr", "inner-cr", "lf", "empty"])
def test_the_fast_path_is_taken_only_without_line_breaks(bad):
    contract = Contract(load_spec())
    good = (b'{"event_id":"e%d","application_id":"a1","event_time":"2026-11-25T12:00:00Z","Seniority":1,"Home":"owner",'
            b'"Time":60,"Age":34,"Marital":"married","Records":"no","Job":"fixed","Expenses":35,"Income":187.0,'
            b'"Assets":0.0,"Debt":0.0,"Amount":500,"Price":1457}')
    values = [good % 1, bad, good % 2]
    result = contract.validate(parse_values([10, 11, 12], values, "t", 0, contract), {})
    # Whatever the odd value, the records on either side are kept and it is refused alone, by name.
    assert result.records_in == 3 and result.table.num_rows == 2
    assert [r["source"] for r in result.rejects] == ["t[0]@11"]
    assert result.table.column("event_id").to_pylist() == ["e1", "e2"]


def test_dead_offsets_are_found_per_segment():
    seg = [[0, 9, 1], [10, 14, 3], [15, 15, 4], [20, 30, 2]]
    offsets = [8, 9, 10, 12, 14, 15, 16, 21]
    assert dead_offsets(seg, offsets, 3) == [[10, 3], [12, 3], [14, 3], [15, 4]]
    assert dead_offsets(seg, offsets, 5) == []
    # The same as asking each offset on its own.
    assert dead_offsets(seg, offsets, 2) == [[o, deliveries_at(seg, o)] for o in offsets if deliveries_at(seg, o) >= 2]


# --- the AssetWatcher's signal ---------------------------------------------------------------------
class FakeMessage:
    """What confluent-kafka's ``Message`` answers; ``broken`` names a method that raises."""

    def __init__(self, value=b'{"a": 1}', ts=(1, 1_000_000), offset=7, partition=0, topic="rtml.ds.events",
                 error=None, broken=None):
        self._v, self._ts, self._o, self._p, self._t, self._e, self._broken = \
            value, ts, offset, partition, topic, error, broken

    def _get(self, name, value):
        if self._broken == name:
            raise RuntimeError(f"{name} exploded")
        return value

    def value(self):
        return self._get("value", self._v)

    def timestamp(self):
        return self._get("timestamp", self._ts)

    def offset(self):
        return self._get("offset", self._o)

    def partition(self):
        return self._get("partition", self._p)

    def topic(self):
        return self._get("topic", self._t)

    def error(self):
        return self._get("error", self._e)



def signal(message, **kw):
    """arrival_signal with a memory of its own (the module's belongs to the triggerer process)."""
    kw.setdefault("signalled", {})
    return arrival_signal(message, **kw)

def test_a_fresh_record_is_signalled_by_its_position_only():
    now = 1_000_000 / 1000 + 30  # 30 s after the record was sent
    out = signal(FakeMessage(value=b'{"secret": "x"}'), max_age_seconds=60, now=now)
    assert out == {"topic": "rtml.ds.events", "partition": 0, "offset": 7, "timestamp_ms": 1_000_000, "bytes": 15}
    assert "secret" not in json.dumps(out)  # Asset events live in Airflow's database: no record content
    assert signal(FakeMessage(), max_age_seconds=20, now=now) is None  # older than the window


@pytest.mark.parametrize("ts", [(0, 0), (0, -1), (1, -5), (1, None), (1, "soon"), None, (2, 10**20)],
                         ids=["not-available", "none-type", "negative", "null", "text", "missing", "far-future"])
def test_a_record_without_a_usable_timestamp_is_fresh(ts):
    # An unknown age cannot prove the record was already there for an earlier run: signal it.
    out = signal(FakeMessage(ts=ts), max_age_seconds=1, now=10**9)
    if ts is None:  # not even a pair: not a message we can read
        assert out is None
    else:
        assert out is not None and out["offset"] == 7


@pytest.mark.parametrize("value", [b"", None, b"\xff\xfe\x00garbage", b"\n" * 3, b"{" * 100_000, bytearray(b"x")])
def test_hostile_values_are_signalled_not_parsed(value):
    # Garbage and tombstones are records the ingest run must take (into quarantine): they signal too.
    out = signal(FakeMessage(value=value), max_age_seconds=60, now=1_000_000 / 1000)
    assert out is not None
    assert out["bytes"] == (len(value) if value is not None else 0)
    json.dumps(out)


@pytest.mark.parametrize("broken", ["value", "timestamp", "offset", "partition", "topic", "error"])
def test_a_message_that_cannot_be_read_gives_no_signal_and_never_raises(broken):
    assert signal(FakeMessage(broken=broken), max_age_seconds=60, now=1_000_000 / 1000) is None


def test_errors_and_non_messages_give_no_signal():
    assert signal(FakeMessage(error="broker down"), now=1_000) is None
    assert signal(None) is None
    assert signal(b"raw bytes, not a message") is None
    assert signal(FakeMessage(offset="seven"), now=1_000) is None


def test_watch_trigger_reads_the_spec_topics_with_its_own_connection(tmp_path):
    s = Settings(home=tmp_path, storage="local", ingest_interval_minutes=7)
    kw = watch_trigger_kwargs("credit apps", s)
    assert kw["topics"] == [topic_name("credit apps", "events"), topic_name("credit apps", "labels")]
    assert kw["kafka_config_id"] == WATCH_CONN_ID
    assert kw["apply_function_kwargs"] == {"max_age_seconds": 420.0}
    # The path the triggerer imports resolves to the function tested above.
    from airflow.providers.common.compat.module_loading import import_string

    assert import_string(kw["apply_function"]) is arrival_signal
    assert kw["commit_offset"] is False  # the connection's background commits, not one per record


def test_a_burst_starts_one_run_and_a_later_record_another():
    memo: dict[str, float] = {}
    sent = 1_000_000  # ms: the burst's records were all sent then
    first = signal(FakeMessage(ts=(1, sent), offset=0), max_age_seconds=60, now=1_001.0, signalled=memo)
    assert first is not None and memo == {"rtml.ds.events": 1_001.0}
    # The rest of the burst was in the topic when that signal fired: its run reads them.
    assert signal(FakeMessage(ts=(1, sent), offset=1), max_age_seconds=60, now=1_004.0, signalled=memo) is None
    assert signal(FakeMessage(ts=(1, 1_000_999), offset=2), max_age_seconds=60, now=1_006.0, signalled=memo) is None
    # Sent after the signal: a run may have read the topic before it arrived, so it signals.
    later = signal(FakeMessage(ts=(1, 1_001_000), offset=3), max_age_seconds=60, now=1_007.0, signalled=memo)
    assert later is not None and later["offset"] == 3 and memo["rtml.ds.events"] == 1_007.0
    # Another topic (the labels) has its own memory; a record with no timestamp always signals.
    assert signal(FakeMessage(ts=(1, sent), topic="rtml.ds.labels"), max_age_seconds=60, now=1_008.0, signalled=memo)
    assert signal(FakeMessage(ts=(0, -1), offset=9), max_age_seconds=60, now=1_009.0, signalled=memo)["offset"] == 9


def _failing_then(codes: list[int], result="offsets"):
    from confluent_kafka import KafkaError, KafkaException

    calls: list[int] = []

    def call():
        calls.append(1)
        if len(calls) <= len(codes):
            raise KafkaException(KafkaError(codes[len(calls) - 1]))
        return result

    return call, calls


def test_group_offsets_are_asked_again_while_the_groups_coordinator_is_pending():
    """A group never used yet: the broker answers NOT_COORDINATOR / loading until it has elected one."""
    from confluent_kafka import KafkaError

    from rtml.ingest.kafka import until_coordinated

    call, calls = _failing_then([KafkaError.NOT_COORDINATOR, KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
                                 KafkaError.COORDINATOR_NOT_AVAILABLE])
    assert until_coordinated(call, timeout=30, pause=0) == "offsets" and len(calls) == 4


def test_other_broker_errors_and_a_coordinator_never_elected_are_raised():
    from confluent_kafka import KafkaError, KafkaException

    from rtml.ingest.kafka import until_coordinated

    call, calls = _failing_then([KafkaError.GROUP_AUTHORIZATION_FAILED])
    with pytest.raises(KafkaException, match="GROUP_AUTHORIZATION_FAILED"):
        until_coordinated(call, timeout=30, pause=0)
    assert len(calls) == 1
    call, calls = _failing_then([KafkaError.NOT_COORDINATOR] * 1000)
    with pytest.raises(KafkaException, match="NOT_COORDINATOR"):
        until_coordinated(call, timeout=0, pause=0)
    assert len(calls) == 1
