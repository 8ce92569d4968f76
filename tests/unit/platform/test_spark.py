"""rtml.platform.spark without a JVM: which jars a lake's catalog needs, the JDBC catalog derived from
the SQLAlchemy catalog URI, the Spark properties built for a folder or S3 lake, jar resolution into
the cache with a stand-in ``mvn`` (once, then reused; clear errors), and the session builder."""

from __future__ import annotations

import os
import stat
import sys
import types
from pathlib import Path

import pytest

from rtml.platform import spark as sp
from rtml.settings import Settings

RUNTIME = f"iceberg-spark-runtime-{sp.SPARK_LINE}_{sp.SCALA}"


def local(tmp_path: Path, **kw) -> Settings:
    return Settings(storage="local", home=tmp_path / "home", lake_uri=str(tmp_path / "lake"), lake_format="iceberg", **kw)


def s3(tmp_path: Path, **kw) -> Settings:
    return Settings(storage="s3", home=tmp_path / "home", lake_bucket="lb", s3_endpoint_url="http://127.0.0.1:9",
                    lake_format="iceberg", **kw)


def test_artifacts_follow_the_catalog_database_and_the_store(tmp_path):
    names = [a for _, a, _ in sp.artifacts(local(tmp_path))]
    assert names == [RUNTIME, "sqlite-jdbc"]
    pg = s3(tmp_path, catalog_uri="postgresql+psycopg2://u@db:5432/cat")
    assert [a for _, a, _ in sp.artifacts(pg)] == [RUNTIME, "postgresql", "iceberg-aws-bundle"]
    assert all(v == sp.ICEBERG for g, _, v in sp.artifacts(pg) if g == "org.apache.iceberg")
    with pytest.raises(sp.SparkSetupError, match="catalog_uri.*'mysql'"):
        sp.artifacts(local(tmp_path, catalog_uri="mysql+pymysql://u@db/cat"))


def test_jdbc_catalog_is_the_same_database(tmp_path):
    db = tmp_path / "c d" / "catalog.db"
    assert sp.jdbc_catalog(f"sqlite:///{db}") == {"uri": f"jdbc:sqlite:{db}"}
    assert sp.jdbc_catalog("postgresql+psycopg2://rt%40ml:p%3Aw%2F@db.local:5433/cat") == {
        "uri": "jdbc:postgresql://db.local:5433/cat", "jdbc.user": "rt@ml", "jdbc.password": "p:w/"}
    assert sp.jdbc_catalog("postgresql://root@127.0.0.1/test") == {
        "uri": "jdbc:postgresql://127.0.0.1/test", "jdbc.user": "root"}
    for bad in ("sqlite://", "sqlite:///:memory:"):
        with pytest.raises(sp.SparkSetupError, match="SQLite catalog file"):
            sp.jdbc_catalog(bad)
    with pytest.raises(sp.SparkSetupError, match="'oracle'"):
        sp.jdbc_catalog("oracle://u@h/x")


def test_conf_for_a_folder_lake(tmp_path):
    s = local(tmp_path)
    jars = [tmp_path / "a.jar", tmp_path / "b.jar"]
    conf = sp.spark_conf(s, jars)
    cat = "spark.sql.catalog.rtml"
    assert conf[cat] == "org.apache.iceberg.spark.SparkCatalog" and conf[f"{cat}.type"] == "jdbc"
    assert conf[f"{cat}.uri"] == "jdbc:sqlite:" + s.resolved_catalog_uri().removeprefix("sqlite:///")
    assert conf[f"{cat}.uri"].startswith(f"jdbc:sqlite:{tmp_path / 'home' / 'catalog'}/catalog-")
    assert conf[f"{cat}.warehouse"] == f"file://{tmp_path / 'lake'}/_iceberg"
    assert conf["spark.jars"] == f"{jars[0]},{jars[1]}"
    assert conf["spark.driver.memory"] == "512m" and conf["spark.sql.shuffle.partitions"] == "2"
    assert conf["spark.master"].startswith("local[")
    assert conf["spark.driver.host"] == conf["spark.driver.bindAddress"] == "127.0.0.1"
    assert not any(k.startswith(f"{cat}.s3.") or k == f"{cat}.io-impl" for k in conf)


def test_conf_for_an_s3_lake_with_a_postgres_catalog(tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "key-id")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "sec ret")
    s = s3(tmp_path, catalog_uri="postgresql+psycopg2://root:pw@127.0.0.1:5432/cat")
    conf = sp.spark_conf(s, [])
    cat = "spark.sql.catalog.rtml"
    assert conf[f"{cat}.warehouse"] == "s3://lb/_iceberg"
    assert conf[f"{cat}.uri"] == "jdbc:postgresql://127.0.0.1:5432/cat"
    assert conf[f"{cat}.jdbc.user"] == "root" and conf[f"{cat}.jdbc.password"] == "pw"
    assert conf[f"{cat}.io-impl"] == "org.apache.iceberg.aws.s3.S3FileIO"
    assert conf[f"{cat}.s3.endpoint"] == "http://127.0.0.1:9" and conf[f"{cat}.s3.path-style-access"] == "true"
    assert conf[f"{cat}.s3.access-key-id"] == s.s3_access_key and conf[f"{cat}.s3.secret-access-key"] == s.s3_secret_key
    assert conf[f"{cat}.client.region"] == s.s3_region


def fake_mvn(tmp_path: Path, monkeypatch, fail: bool = False) -> Path:
    """An ``mvn`` on PATH that 'downloads' the artifact as a small file and logs each call."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    calls = tmp_path / "mvn-calls"
    script = bindir / "mvn"
    script.write_text(f"""#!{sys.executable}
import sys, pathlib
args = sys.argv[1:]
with open({str(calls)!r}, "a") as f:
    f.write(" ".join(args) + "\\n")
if {fail!r}:
    print("Could not resolve dependencies: not found")
    sys.exit(1)
art = next(a for a in args if a.startswith("-Dartifact=")).split("=", 1)[1].split(":")
out = pathlib.Path(next(a for a in args if a.startswith("-DoutputDirectory=")).split("=", 1)[1])
out.mkdir(parents=True, exist_ok=True)
(out / f"{{art[1]}}-{{art[2]}}.jar").write_bytes(b"PK jar " + art[1].encode())
""")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}")
    return calls


def test_jars_are_resolved_once_into_the_cache(tmp_path, monkeypatch):
    calls = fake_mvn(tmp_path, monkeypatch)
    cache = tmp_path / "cache"
    s = local(tmp_path)
    jars = sp.spark_jars(s, cache)
    assert [j.name for j in jars] == [f"{RUNTIME}-{sp.ICEBERG}.jar", f"sqlite-jdbc-{sp.SQLITE_JDBC[2]}.jar"]
    assert all(j.parent == cache and j.read_bytes().startswith(b"PK jar") for j in jars)
    assert len(calls.read_text().splitlines()) == 2
    assert f"-Dartifact=org.apache.iceberg:{RUNTIME}:{sp.ICEBERG}:jar" in calls.read_text()
    assert not (cache / ".partial").exists()
    assert sp.spark_jars(s, cache) == jars  # cached: Maven is not asked again
    assert len(calls.read_text().splitlines()) == 2


def test_a_failed_resolution_names_the_artifact_and_keeps_nothing(tmp_path, monkeypatch):
    fake_mvn(tmp_path, monkeypatch, fail=True)
    cache = tmp_path / "cache"
    with pytest.raises(sp.SparkSetupError, match=f"org.apache.iceberg:{RUNTIME}.*failed(.|\n)*not found"):
        sp.spark_jars(local(tmp_path), cache)
    assert not list(cache.glob("*.jar"))


def test_no_maven_is_a_clear_error_unless_the_jars_are_cached(tmp_path, monkeypatch):
    monkeypatch.setattr(sp.shutil, "which", lambda name: None)
    cache = tmp_path / "cache"
    with pytest.raises(sp.SparkSetupError, match="no `mvn` on PATH"):
        sp.spark_jars(local(tmp_path), cache)
    for _, artifact, version in sp.artifacts(local(tmp_path)):
        (cache / f"{artifact}-{version}.jar").write_bytes(b"PK")
    assert len(sp.spark_jars(local(tmp_path), cache)) == 2


def test_session_builder_gets_every_property(tmp_path, monkeypatch):
    """spark_session hands the whole conf to SparkSession.builder (a stand-in pyspark: no JVM)."""
    seen: dict[str, str] = {}

    class Builder:
        def config(self, key, value):
            seen[key] = value
            return self

        def getOrCreate(self):
            return ("session", dict(seen))

    sql = types.ModuleType("pyspark.sql")
    sql.SparkSession = types.SimpleNamespace(builder=Builder())
    monkeypatch.setitem(sys.modules, "pyspark", types.ModuleType("pyspark"))
    monkeypatch.setitem(sys.modules, "pyspark.sql", sql)
    cache = tmp_path / "cache"
    s = local(tmp_path)
    for _, artifact, version in sp.artifacts(s):
        (cache / f"{artifact}-{version}.jar").parent.mkdir(exist_ok=True)
        (cache / f"{artifact}-{version}.jar").write_bytes(b"PK")
    kind, conf = sp.spark_session(s, cache)
    assert kind == "session" and conf == sp.spark_conf(s, sp.spark_jars(s, cache))


def test_stop_spark_stops_the_session_and_its_jvm(monkeypatch):
    """The JVM PySpark launched is shut down and forgotten, so a later session starts a fresh one."""
    events: list[str] = []

    class Proc:
        def terminate(self):
            events.append("terminate")

        def wait(self, timeout):
            events.append(f"wait {timeout}")

    class Gateway:
        proc = Proc()

        def shutdown(self):
            events.append("shutdown")

    class SparkContext:
        _gateway = Gateway()
        _jvm = object()

    fake = types.ModuleType("pyspark")
    fake.SparkContext = SparkContext
    monkeypatch.setitem(sys.modules, "pyspark", fake)
    session = types.SimpleNamespace(stop=lambda: events.append("stop"))
    sp.stop_spark(session)
    assert events == ["stop", "shutdown", "terminate", "wait 30"]
    assert SparkContext._gateway is None and SparkContext._jvm is None
    sp.stop_spark(session)  # no JVM left: only the session is stopped again
    assert events[-1] == "stop"
