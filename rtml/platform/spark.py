"""Spark on the lake's Iceberg tables: the jars, the catalog configuration and a local session.

Spark reads the same SQL catalog that rtml writes (``lake_format: iceberg``, :mod:`rtml.tables`)
through Iceberg's JDBC catalog, named ``rtml`` like pyiceberg's (the catalog rows carry that name),
so ``SELECT ... FROM rtml.<dataset>.events`` sees every batch rtml committed. The jars, all from
Maven Central: ``org.apache.iceberg:iceberg-spark-runtime-<spark line>_2.13`` matching the pinned
PySpark, the catalog database's JDBC driver (SQLite or PostgreSQL), and for an S3 lake
``iceberg-aws-bundle`` (Iceberg's S3FileIO). They are resolved once with ``mvn dependency:copy``
into a cache folder (default ``~/.cache/rtml/spark-jars``) that later runs reuse.

    from rtml.platform.spark import spark_session
    spark = spark_session()            # the lake of RTML_* settings
    spark.sql("SELECT count(*) FROM rtml.credit_applications.events").show()
    stop_spark(spark)                  # the session and its JVM
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

from rtml.settings import Settings, get_settings
from rtml.tables import warehouse_uri

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

SPARK_LINE = "4.1"  # the PySpark pinned in requirements.txt (4.1.x): the runtime must match its line
SCALA = "2.13"
ICEBERG = "1.12.0"
CATALOG = "rtml"  # pyiceberg's catalog name (rtml.tables.open_catalog): JdbcCatalog filters rows by it
SQLITE_JDBC = ("org.xerial", "sqlite-jdbc", "3.54.1.0")
POSTGRES_JDBC = ("org.postgresql", "postgresql", "42.7.14")


class SparkSetupError(RuntimeError):
    """The jars could not be resolved or the catalog cannot be read by Spark; the message says why."""


def jars_cache() -> Path:
    return Path.home() / ".cache" / "rtml" / "spark-jars"


def _is_s3(settings: Settings) -> bool:
    return settings.lake_uri.startswith("s3://")


def artifacts(settings: Settings) -> list[tuple[str, str, str]]:
    """(group, artifact, version) of each jar Spark needs for this lake's catalog."""
    out = [("org.apache.iceberg", f"iceberg-spark-runtime-{SPARK_LINE}_{SCALA}", ICEBERG)]
    scheme = settings.resolved_catalog_uri().split(":", 1)[0].split("+", 1)[0]
    if scheme == "sqlite":
        out.append(SQLITE_JDBC)
    elif scheme in ("postgresql", "postgres"):
        out.append(POSTGRES_JDBC)
    else:
        raise SparkSetupError(f"catalog_uri: Spark reads a SQLite or PostgreSQL catalog, not {scheme!r}")
    if _is_s3(settings):
        out.append(("org.apache.iceberg", "iceberg-aws-bundle", ICEBERG))
    return out


def spark_jars(settings: Settings | None = None, cache: Path | None = None, timeout: float = 600) -> list[Path]:
    """The jar files for :func:`spark_conf`, resolved into ``cache`` the first time (``mvn`` on PATH)."""
    s = settings or get_settings()
    root = cache or jars_cache()
    root.mkdir(parents=True, exist_ok=True)
    jars = []
    for group, artifact, version in artifacts(s):
        jar = root / f"{artifact}-{version}.jar"
        if not jar.exists():
            _resolve(group, artifact, version, root, timeout)
        jars.append(jar)
    return jars


def _resolve(group: str, artifact: str, version: str, root: Path, timeout: float) -> None:
    import fcntl

    jar = root / f"{artifact}-{version}.jar"
    # Two processes may find the cache empty at once; the jar appears whole (renamed into place).
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if jar.exists():
            return
        mvn = shutil.which("mvn")
        if not mvn:
            raise SparkSetupError("Spark's jars are resolved with Maven: no `mvn` on PATH (apt-get install maven)")
        tmp = root / ".partial"
        shutil.rmtree(tmp, ignore_errors=True)
        cmd = [mvn, "-B", "-q", "dependency:copy", f"-Dartifact={group}:{artifact}:{version}:jar",
               f"-DoutputDirectory={tmp}"]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        got = tmp / jar.name
        if out.returncode != 0 or not got.exists():
            raise SparkSetupError(f"resolving {group}:{artifact}:{version} from Maven Central failed:\n"
                                  f"{(out.stdout + out.stderr)[-2000:]}")
        got.rename(jar)
        shutil.rmtree(tmp, ignore_errors=True)


def jdbc_catalog(catalog_uri: str) -> dict[str, str]:
    """The JDBC ``uri`` (and user/password) for a SQLAlchemy catalog URI: the same database pyiceberg uses."""
    parts = urlsplit(catalog_uri)
    scheme = parts.scheme.split("+", 1)[0]
    if scheme == "sqlite":
        path = catalog_uri.split(":///", 1)[1] if ":///" in catalog_uri else ""
        if not path or path == ":memory:":
            raise SparkSetupError(f"catalog_uri: Spark needs a SQLite catalog file, not {catalog_uri!r}")
        return {"uri": f"jdbc:sqlite:{path}"}
    if scheme in ("postgresql", "postgres"):
        host = parts.hostname or "localhost"
        port = f":{parts.port}" if parts.port else ""
        out = {"uri": f"jdbc:postgresql://{host}{port}{parts.path}"}
        if parts.username:
            out["jdbc.user"] = unquote(parts.username)
        if parts.password:
            out["jdbc.password"] = unquote(parts.password)
        return out
    raise SparkSetupError(f"catalog_uri: Spark reads a SQLite or PostgreSQL catalog, not {scheme!r}")


def spark_conf(settings: Settings, jars: list[Path]) -> dict[str, str]:
    """Spark properties for a small local session with the lake's catalog as ``rtml``."""
    cat = f"spark.sql.catalog.{CATALOG}"
    conf = {
        "spark.master": "local[1]",
        "spark.app.name": "rtml",
        "spark.jars": ",".join(str(j) for j in jars),
        "spark.driver.memory": "512m",
        "spark.sql.shuffle.partitions": "2",
        "spark.ui.enabled": "false",
        "spark.driver.host": "127.0.0.1",  # loopback only: nothing listens on other interfaces
        "spark.driver.bindAddress": "127.0.0.1",
        "spark.sql.session.timeZone": "UTC",
        "spark.sql.extensions": "org.apache.iceberg.spark.extensions.IcebergSparkSessionExtensions",
        cat: "org.apache.iceberg.spark.SparkCatalog",
        f"{cat}.type": "jdbc",
        f"{cat}.warehouse": warehouse_uri(settings),
    }
    conf.update({f"{cat}.{k}": v for k, v in jdbc_catalog(settings.resolved_catalog_uri()).items()})
    if _is_s3(settings):
        # Iceberg's S3FileIO on the lake's store (path-style: SeaweedFS or MinIO on one host).
        conf.update({
            f"{cat}.io-impl": "org.apache.iceberg.aws.s3.S3FileIO",
            f"{cat}.s3.endpoint": settings.s3_endpoint_url,
            f"{cat}.s3.path-style-access": "true",
            f"{cat}.s3.access-key-id": settings.s3_access_key,
            f"{cat}.s3.secret-access-key": settings.s3_secret_key,
            f"{cat}.client.region": settings.s3_region,
        })
    return conf


def spark_session(settings: Settings | None = None, cache: Path | None = None) -> SparkSession:
    """A local SparkSession reading the lake's tables as ``rtml.<dataset>.<kind>`` (PySpark, Java 17+)."""
    from pyspark.sql import SparkSession

    s = settings or get_settings()
    builder = SparkSession.builder
    for key, value in spark_conf(s, spark_jars(s, cache)).items():
        builder = builder.config(key, value)
    return builder.getOrCreate()


def stop_spark(session: SparkSession) -> None:
    """Stop ``session`` and the JVM PySpark launched for it: nothing outlives the caller, and a later
    :func:`spark_session` (other jars, another catalog) starts a fresh JVM."""
    from pyspark import SparkContext

    session.stop()
    gateway = SparkContext._gateway
    if gateway is None:
        return
    gateway.shutdown()
    proc = getattr(gateway, "proc", None)  # the java child PySpark started (absent when attached)
    if proc is not None:
        proc.terminate()
        proc.wait(30)
    SparkContext._gateway = None
    SparkContext._jvm = None
