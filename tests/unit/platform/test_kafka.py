"""The local Kafka broker's preparation (rtml.platform.kafka) without Java, Maven or a download:
ports, the jar cache's path and pom, ``java`` lookup, the Maven and storage-format command lines (with
``subprocess.run`` faked), the broker's config and command line, and the cluster id."""

from __future__ import annotations

import base64
import json
import subprocess
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path
from types import SimpleNamespace

import pytest

from rtml.platform import kafka
from rtml.platform.kafka import KafkaError
from rtml.settings import Settings


@pytest.fixture
def settings(tmp_path) -> Settings:
    return Settings(home=tmp_path / "home", host="127.0.0.9", kafka_port=30015, kafka_version="4.1.1",
                    kafka_jars_dir=str(tmp_path / "jars"), kafka_partitions=3, kafka_heap_mb=256)


class FakeRun:
    """``subprocess.run`` stand-in: records each command; ``effect(cmd)`` may create files; answers ``result``."""

    def __init__(self, returncode=0, stdout="", stderr="", effect=None):
        self.calls: list[tuple[list[str], dict]] = []
        self.result = SimpleNamespace(returncode=returncode, stdout=stdout, stderr=stderr)
        self.effect = effect

    def __call__(self, cmd, **kw):
        self.calls.append((cmd, kw))
        if self.effect:
            self.effect(cmd)
        return self.result


@pytest.fixture
def fake_run(monkeypatch):
    def install(**kw) -> FakeRun:
        run = FakeRun(**kw)
        monkeypatch.setattr(kafka, "subprocess", SimpleNamespace(run=run, DEVNULL=subprocess.DEVNULL))
        return run

    return install


@pytest.fixture
def java(monkeypatch, tmp_path) -> str:
    """A JAVA_HOME with a bin/java file (never run)."""
    home = tmp_path / "jdk"
    (home / "bin").mkdir(parents=True)
    (home / "bin" / "java").write_text("#!/bin/sh\nexit 1\n")
    monkeypatch.setenv("JAVA_HOME", str(home))
    return str(home / "bin" / "java")


# --- ports, paths, pom -------------------------------------------------------------------------------------
def test_the_controller_listens_on_the_port_after_the_broker(settings):
    assert kafka.kafka_ports(settings) == {"broker": 30015, "controller": 30016}


def test_jar_cache_path_configured_or_per_version_under_the_users_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    assert kafka.jars_dir(Settings(home=tmp_path, kafka_jars_dir="~/jars")) == tmp_path / "user" / "jars"
    assert kafka.jars_dir(Settings(home=tmp_path, kafka_jars_dir="", kafka_version="4.0.0")) == (
        tmp_path / "user" / ".cache" / "rtml" / "kafka-4.0.0")


def test_pom_names_kafka_at_the_version_and_the_log4j_binding():
    ns = {"m": "http://maven.apache.org/POM/4.0.0"}
    root = ET.fromstring(kafka.pom_xml("4.1.1"))
    deps = [tuple(d.find(f"m:{t}", ns).text for t in ("groupId", "artifactId", "version"))
            for d in root.iterfind("m:dependencies/m:dependency", ns)]
    assert deps == [("org.apache.kafka", "kafka_2.13", "4.1.1"), kafka.LOG4J_SLF4J]
    assert root.find("m:packaging", ns).text == "pom"


# --- java --------------------------------------------------------------------------------------------------
def test_java_from_java_home_first(java, monkeypatch):
    monkeypatch.setattr(kafka.shutil, "which", lambda name: "/usr/bin/java-on-path")
    assert kafka.java_bin() == java


def test_java_home_without_java_falls_back_to_path(tmp_path, monkeypatch):
    monkeypatch.setenv("JAVA_HOME", str(tmp_path / "empty-jdk"))
    monkeypatch.setattr(kafka.shutil, "which", lambda name: f"/opt/bin/{name}")
    assert kafka.java_bin() == "/opt/bin/java"


def test_no_java_says_what_to_install(monkeypatch):
    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.setattr(kafka.shutil, "which", lambda name: None)
    with pytest.raises(KafkaError, match=r"Kafka needs Java 17\+: no `java` on PATH and JAVA_HOME is not set"):
        kafka.java_bin()


# --- resolving the jars ------------------------------------------------------------------------------------
def test_a_resolved_cache_is_used_without_maven(settings, fake_run, monkeypatch):
    root = Path(settings.kafka_jars_dir)
    root.mkdir()
    (root / "resolved.ok").write_text("4.1.1\n")
    monkeypatch.setattr(kafka.shutil, "which", lambda name: pytest.fail("looked for mvn"))
    run = fake_run()
    assert kafka.ensure_jars(settings) == root / "libs"
    assert run.calls == []


def test_no_maven_says_what_to_install(settings, monkeypatch):
    monkeypatch.setattr(kafka.shutil, "which", lambda name: None)
    with pytest.raises(KafkaError, match=r"no `mvn` on PATH \(apt-get install maven\)"):
        kafka.ensure_jars(settings)
    assert not (Path(settings.kafka_jars_dir) / "resolved.ok").exists()


def _mvn_writes_jars(names):
    def effect(cmd):
        out = Path(next(a for a in cmd if a.startswith("-DoutputDirectory=")).split("=", 1)[1])
        out.mkdir(parents=True)
        for n in names:
            (out / n).write_text("jar")

    return effect


def test_maven_copies_the_dependencies_into_the_cache_once(settings, fake_run, monkeypatch, tmp_path):
    monkeypatch.setattr(kafka.shutil, "which", lambda name: "/usr/bin/mvn")
    run = fake_run(stdout="resolved\n", effect=_mvn_writes_jars(["kafka_2.13-4.1.1.jar", "kafka-clients-4.1.1.jar"]))
    root = Path(settings.kafka_jars_dir)
    log = tmp_path / "logs" / "mvn.log"
    libs = kafka.ensure_jars(settings, timeout=42, log=log)
    assert libs == root / "libs" and sorted(p.name for p in libs.iterdir()) == ["kafka-clients-4.1.1.jar",
                                                                             "kafka_2.13-4.1.1.jar"]
    assert not (root / "libs.tmp").exists()
    assert (root / "resolved.ok").read_text() == "4.1.1\n"
    assert kafka.pom_xml("4.1.1") == (root / "pom.xml").read_text()
    assert log.read_text() == "resolved\n"
    [(cmd, kw)] = run.calls
    assert cmd == ["/usr/bin/mvn", "-B", "-q", "-f", str(root / "pom.xml"), "dependency:copy-dependencies",
                   f"-DoutputDirectory={root / 'libs.tmp'}", "-DincludeScope=runtime"]
    assert kw["timeout"] == 42 and kw["stdin"] == subprocess.DEVNULL
    kafka.ensure_jars(settings)
    assert len(run.calls) == 1  # the second call finds the cache resolved


@pytest.mark.parametrize(("returncode", "jars"), [(1, ["kafka_2.13-4.1.1.jar"]), (0, ["kafka-clients-4.1.1.jar"])])
def test_a_failed_resolution_quotes_maven_and_leaves_no_marker(settings, fake_run, monkeypatch, returncode, jars):
    monkeypatch.setattr(kafka.shutil, "which", lambda name: "/usr/bin/mvn")
    fake_run(returncode=returncode, stdout="x" * 3000, stderr="Could not resolve org.apache.kafka:kafka_2.13",
             effect=_mvn_writes_jars(jars))
    with pytest.raises(KafkaError, match=r"resolving Kafka 4\.1\.1 from Maven Central failed:\n.*Could not resolve") as e:
        kafka.ensure_jars(settings)
    assert len(str(e.value).split("\n", 1)[1]) == 2000  # the tail of the output
    root = Path(settings.kafka_jars_dir)
    assert not (root / "resolved.ok").exists() and not (root / "libs").exists()


# --- broker config and command -------------------------------------------------------------------------------
def _props(text: str) -> dict[str, str]:
    lines = text.splitlines()
    assert all(line.count("=") >= 1 for line in lines)
    return dict(line.split("=", 1) for line in lines)


def test_server_properties_bind_the_configured_host_and_ports_only(settings):
    p = _props(kafka.server_properties(settings))
    assert p["listeners"] == "PLAINTEXT://127.0.0.9:30015,CONTROLLER://127.0.0.9:30016"
    assert p["advertised.listeners"] == "PLAINTEXT://127.0.0.9:30015"
    assert p["controller.quorum.voters"] == "1@127.0.0.9:30016"
    assert p["log.dirs"] == str(settings.home / "kafka" / "data")
    assert p["num.partitions"] == "3"
    assert p["process.roles"] == "broker,controller"
    # One broker: no internal topic may ask for more replicas than there are brokers.
    assert all(v == "1" for k, v in p.items() if k.endswith("replication.factor") or k.endswith("min.isr"))


def test_write_config_writes_the_properties_and_the_log_config(settings):
    props = kafka.write_config(settings)
    assert props == settings.home / "kafka" / "server.properties"
    assert props.read_text() == kafka.server_properties(settings)
    assert (settings.home / "kafka" / "log4j2.properties").read_text() == kafka.LOG4J2


def test_cluster_id_is_made_once_and_kept(settings):
    cid = kafka.cluster_id(settings)
    assert len(cid) == 22 and len(base64.urlsafe_b64decode(cid + "==")) == 16
    assert kafka.cluster_id(settings) == cid
    assert (settings.home / "kafka" / "cluster.id").read_text() == cid + "\n"
    other = Settings(home=settings.home.parent / "other")
    assert kafka.cluster_id(other) != cid  # one per state folder


def test_a_cluster_id_never_starts_with_a_dash(settings, monkeypatch):
    # 0xF8 encodes to "-" first: the storage tool read such an id as an option and refused to format.
    draws = iter([uuid.UUID(bytes=b"\xf8" + bytes(15)), uuid.UUID(bytes=b"\x10" + bytes(15))])
    monkeypatch.setattr(kafka.uuid, "uuid4", lambda: next(draws))
    assert base64.urlsafe_b64encode(b"\xf8" + bytes(15)).startswith(b"-")
    assert kafka.cluster_id(settings) == base64.urlsafe_b64encode(b"\x10" + bytes(15)).decode().rstrip("=")


def test_broker_command_line(settings, java):
    cmd = kafka.broker_command(settings)
    d = settings.home / "kafka"
    assert cmd[0] == java and "-Xmx256m" in cmd and "-Djava.net.preferIPv4Stack=true" in cmd
    assert f"-Dlog4j2.configurationFile={d / 'log4j2.properties'}" in cmd
    assert cmd[cmd.index("-cp") + 1] == f"{Path(settings.kafka_jars_dir) / 'libs'}/*"
    assert cmd[-2:] == ["kafka.Kafka", str(d / "server.properties")]


# --- formatting the storage ------------------------------------------------------------------------------------
@pytest.fixture
def resolved(settings) -> Path:
    root = Path(settings.kafka_jars_dir)
    (root / "libs").mkdir(parents=True)
    (root / "resolved.ok").write_text("4.1.1\n")
    return root / "libs"


def test_prepare_formats_the_storage_with_the_cluster_id(settings, resolved, java, fake_run, tmp_path):
    run = fake_run(stdout="Formatting metadata directory\n")
    log = tmp_path / "kafka.log"
    log.write_text("earlier\n")
    kafka.prepare_broker(settings, log=log)
    [(cmd, kw)] = run.calls
    props = settings.home / "kafka" / "server.properties"
    assert cmd == [java, "-Xmx256m", "-cp", f"{resolved}/*", "kafka.tools.StorageTool", "format",
                   f"--cluster-id={kafka.cluster_id(settings)}", "-c", str(props), "--ignore-formatted"]
    assert kw["stdin"] == subprocess.DEVNULL and props.exists()
    assert log.read_text() == "earlier\nFormatting metadata directory\n"  # appended, not replaced


def test_prepare_does_not_format_twice_but_rewrites_the_config(settings, resolved, java, fake_run):
    data = settings.home / "kafka" / "data"
    data.mkdir(parents=True)
    (data / "meta.properties").write_text("cluster.id=x\n")
    run = fake_run()
    kafka.prepare_broker(settings)
    assert run.calls == [] and (settings.home / "kafka" / "server.properties").exists()


def test_a_failed_format_quotes_the_tool(settings, resolved, java, fake_run):
    fake_run(returncode=1, stderr="Invalid cluster.id")
    with pytest.raises(KafkaError, match="formatting the Kafka storage failed:\nInvalid cluster.id"):
        kafka.prepare_broker(settings)


def test_the_watchers_airflow_connection_has_its_own_group(settings, tmp_path):
    from rtml.ingest.kafka import DEFAULT_GROUP
    from rtml.platform.stack import Stack

    env = Stack(Settings(home=tmp_path / "h2", kafka_bootstrap="b1:9092,b2:9092")).airflow_env()
    conn = json.loads(env[f"AIRFLOW_CONN_{kafka.WATCH_CONN_ID.upper()}"])
    assert conn["conn_type"] == "kafka"
    extra = conn["extra"]
    assert extra["bootstrap.servers"] == "b1:9092,b2:9092"
    # Never an ingest group (rtml-ingest.<topic>): the watcher must not move the ingest offsets.
    assert extra["group.id"] == kafka.WATCH_GROUP and not extra["group.id"].startswith(DEFAULT_GROUP)
    assert extra["enable.auto.commit"] == "true"
    assert json.loads(kafka.airflow_connection(settings))["extra"]["bootstrap.servers"] == settings.kafka_bootstrap
