"""Pure logic of rtml.ingest.kafka: delivery bookkeeping, batch sizes and ids, broker config, value parsing."""

from __future__ import annotations

from pathlib import Path

import pytest

from rtml.ingest.contract import Contract
from rtml.ingest.kafka import (
    _Msg,
    add_delivery,
    batch_id_for_offsets,
    batch_limit,
    count_in,
    deliveries_at,
    drop_below,
    parse_values,
    topic_name,
)
from rtml.platform.kafka import jars_dir, pom_xml, server_properties
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
    msgs = [_Msg(5, 0, good.replace(b",", b",\n", 2)), _Msg(6, 0, b"{\n"), _Msg(7, 0, b"")]
    raw = parse_values(msgs, "t", 2, contract)
    result = contract.validate(raw, {})
    assert result.records_in == 3 and result.table.num_rows == 1
    assert sorted(r["source"] for r in result.rejects) == ["t[2]@6", "t[2]@7"]
