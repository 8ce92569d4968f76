"""The Kafka broker of the local stack (``rtml stack up --only kafka``).

Apache Kafka 4.x in KRaft mode, one process that is
both broker and controller, bound to ``settings.host`` only, on ``settings.kafka_port`` (clients)
and ``kafka_port + 1`` (controller). Its jars come from Maven Central: a small pom naming
``org.apache.kafka:kafka_2.13:<kafka_version>`` is written under the jar cache
(``RTML_KAFKA_JARS_DIR``, default ``~/.cache/rtml/kafka-<version>/``) and resolved with
``mvn dependency:copy-dependencies`` the first time; later runs (and other state folders, such as the
test sessions') reuse the cache. The machine's ``java`` (17+) runs it. Before the first start the
storage is formatted (``kafka.tools.StorageTool format``, what ``kafka-storage.sh format`` runs)
with a cluster id kept in ``<home>/kafka/cluster.id``; data stays in ``<home>/kafka/data``.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import uuid
from pathlib import Path

from rtml.settings import Settings, get_settings

SCALA = "2.13"
# The log4j binding for the broker's slf4j 1.7 logging, at the log4j version Kafka 4.1 uses.
LOG4J_SLF4J = ("org.apache.logging.log4j", "log4j-slf4j-impl", "2.24.3")


class KafkaError(RuntimeError):
    """The broker could not be prepared or reached; the message says what to do."""


def kafka_ports(settings: Settings) -> dict[str, int]:
    """Clients connect to ``broker``; the KRaft controller listens on the next port."""
    return {"broker": settings.kafka_port, "controller": settings.kafka_port + 1}


def jars_dir(settings: Settings | None = None) -> Path:
    s = settings or get_settings()
    if s.kafka_jars_dir:
        return Path(s.kafka_jars_dir).expanduser()
    return Path.home() / ".cache" / "rtml" / f"kafka-{s.kafka_version}"


def pom_xml(version: str) -> str:
    g, a, v = LOG4J_SLF4J
    return f"""<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>rtml</groupId>
  <artifactId>kafka-broker-jars</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_{SCALA}</artifactId><version>{version}</version></dependency>
    <dependency><groupId>{g}</groupId><artifactId>{a}</artifactId><version>{v}</version></dependency>
  </dependencies>
</project>
"""


def java_bin() -> str:
    home = os.environ.get("JAVA_HOME")
    if home and (Path(home) / "bin" / "java").exists():
        return str(Path(home) / "bin" / "java")
    found = shutil.which("java")
    if not found:
        raise KafkaError("Kafka needs Java 17+: no `java` on PATH and JAVA_HOME is not set (apt-get install openjdk-17-jre-headless)")
    return found


def ensure_jars(settings: Settings | None = None, timeout: float = 600, log: Path | None = None) -> Path:
    """The broker's jar folder, resolved from Maven Central once per version and machine."""
    import fcntl

    s = settings or get_settings()
    root = jars_dir(s)
    libs = root / "libs"
    done = root / "resolved.ok"
    if done.exists():
        return libs
    root.mkdir(parents=True, exist_ok=True)
    # Two processes (a test session and a user's stack) may both find the cache empty.
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if done.exists():
            return libs
        mvn = shutil.which("mvn")
        if not mvn:
            raise KafkaError("Kafka's jars are resolved with Maven: no `mvn` on PATH (apt-get install maven)")
        (root / "pom.xml").write_text(pom_xml(s.kafka_version))
        tmp = root / "libs.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        cmd = [mvn, "-B", "-q", "-f", str(root / "pom.xml"), "dependency:copy-dependencies",
               f"-DoutputDirectory={tmp}", "-DincludeScope=runtime"]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        if log is not None:
            log.parent.mkdir(parents=True, exist_ok=True)
            log.write_text(out.stdout + out.stderr)
        if out.returncode != 0 or not (tmp / f"kafka_{SCALA}-{s.kafka_version}.jar").exists():
            raise KafkaError(f"resolving Kafka {s.kafka_version} from Maven Central failed:\n{(out.stdout + out.stderr)[-2000:]}")
        shutil.rmtree(libs, ignore_errors=True)
        tmp.rename(libs)
        done.write_text(s.kafka_version + "\n")
    return libs


def broker_dir(settings: Settings) -> Path:
    return settings.home / "kafka"


def server_properties(settings: Settings) -> str:
    p = kafka_ports(settings)
    h = settings.host
    data = broker_dir(settings) / "data"
    lines = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.voters": f"1@{h}:{p['controller']}",
        "listeners": f"PLAINTEXT://{h}:{p['broker']},CONTROLLER://{h}:{p['controller']}",
        "advertised.listeners": f"PLAINTEXT://{h}:{p['broker']}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "log.dirs": str(data),
        "num.partitions": str(settings.kafka_partitions),
        # One broker: every internal topic has one replica.
        "offsets.topic.replication.factor": "1",
        "offsets.topic.num.partitions": "3",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        # A group's first member gets its partitions at once (default: wait 3 s for more members).
        "group.initial.rebalance.delay.ms": "0",
        "auto.create.topics.enable": "true",
    }
    return "".join(f"{k}={v}\n" for k, v in lines.items())


LOG4J2 = """status = warn
appender.console.type = Console
appender.console.name = STDOUT
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = warn
rootLogger.appenderRef.stdout.ref = STDOUT
logger.kafka.name = kafka
logger.kafka.level = info
"""


def cluster_id(settings: Settings) -> str:
    """The KRaft cluster id of this state folder (22 characters of URL-safe base64), made once."""
    path = broker_dir(settings) / "cluster.id"
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    cid = "-"
    # Like Kafka's own Uuid.randomUuid: an id starting with "-" reads as an option on a command line.
    while cid.startswith("-"):
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
    path.write_text(cid + "\n")
    return cid


def write_config(settings: Settings) -> Path:
    d = broker_dir(settings)
    d.mkdir(parents=True, exist_ok=True)
    (d / "log4j2.properties").write_text(LOG4J2)
    props = d / "server.properties"
    props.write_text(server_properties(settings))
    return props


def broker_command(settings: Settings) -> list[str]:
    d = broker_dir(settings)
    return [
        java_bin(), "-Xms128m", f"-Xmx{settings.kafka_heap_mb}m", "-XX:+UseG1GC", "-Djava.awt.headless=true",
        # IPv4 sockets: bound to 127.0.0.1 itself, not to its IPv4-mapped IPv6 twin (::ffff:127.0.0.1).
        "-Djava.net.preferIPv4Stack=true",
        f"-Dlog4j2.configurationFile={d / 'log4j2.properties'}",
        "-cp", f"{jars_dir(settings) / 'libs'}/*", "kafka.Kafka", str(d / "server.properties"),
    ]


def prepare_broker(settings: Settings, timeout: float = 600, log: Path | None = None) -> None:
    """Jars resolved, config written, storage formatted once (like ``airflow db migrate``)."""
    libs = ensure_jars(settings, timeout=timeout, log=log)
    props = write_config(settings)
    if (broker_dir(settings) / "data" / "meta.properties").exists():
        return
    cmd = [java_bin(), "-Xmx256m", "-cp", f"{libs}/*", "kafka.tools.StorageTool", "format",
           # One argument with "=": a kept id that starts with "-" is still the option's value.
           f"--cluster-id={cluster_id(settings)}", "-c", str(props), "--ignore-formatted"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    if log is not None:
        with open(log, "a") as fh:
            fh.write(out.stdout + out.stderr)
    if out.returncode != 0:
        raise KafkaError(f"formatting the Kafka storage failed:\n{(out.stdout + out.stderr)[-2000:]}")


# --- the Airflow connection of the ingest DAG's AssetWatcher ---------------------------------------
WATCH_CONN_ID = "rtml_kafka"  # AIRFLOW_CONN_RTML_KAFKA
WATCH_GROUP = "rtml-watch"  # never an ingest group (rtml-ingest.<topic>): the watcher only signals


def airflow_connection(settings: Settings) -> str:
    """``AIRFLOW_CONN_RTML_KAFKA``: the broker, and a consumer group of the watcher's own, so the
    triggerer never reads, moves or commits the offsets of the ingest group. Offsets are committed
    in the background (and on close): a signal costs no synchronous commit per record skimmed."""
    extra = {
        "bootstrap.servers": settings.kafka_bootstrap,
        "group.id": WATCH_GROUP,
        # A first start signals only records sent from then on; the schedule covers older ones.
        "auto.offset.reset": "latest",
        "enable.auto.commit": "true",
        "auto.commit.interval.ms": "1000",
    }
    return json.dumps({"conn_type": "kafka", "extra": extra})
