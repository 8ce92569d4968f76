"""Least-privilege definitions (rtml.platform.access): grants per service, their SeaweedFS and MinIO
renderings, the endpoint's prefixes against the lake's real layout, PostgreSQL role statements and URLs.
The grants are enforced for real in tests/integration/test_stack_distributed.py."""

from __future__ import annotations

import json

import pytest

from rtml.lake import INDEX_COMPLETE, Lake
from rtml.platform.access import (
    S3_AIRFLOW,
    S3_MLFLOW,
    S3_SERVE,
    SERVE_LOG_KINDS,
    Grant,
    compose_init_sql,
    main,
    minio_policy,
    role_sql,
    role_url,
    s3_grants,
    seaweed_actions,
    serve_log_prefixes,
    split_s3_uri,
)
from rtml.settings import Settings
from rtml.storage import LocalStore
from rtml.tables import table_prefix


def test_split_s3_uri():
    assert split_s3_uri("s3://lake") == ("lake", "")
    assert split_s3_uri("s3://lake/a/b/") == ("lake", "a/b/")
    for bad in ("/tmp/lake", "s3:///x"):
        with pytest.raises(ValueError):
            split_s3_uri(bad)


def test_the_endpoint_may_write_every_key_its_log_writes_and_no_event_or_label_key(tmp_path):
    lake = Lake(Settings(home=tmp_path, storage="local"), LocalStore(tmp_path))
    prefixes = serve_log_prefixes("ds")

    def allowed(key: str) -> bool:
        return any(key.startswith(p) for p in prefixes)

    bid = "20261126T010203000000-1-00001-abcdef"
    for kind in SERVE_LOG_KINDS:
        for key in (f"{table_prefix('ds', kind)}data/x.parquet", lake.quarantine_key("ds", kind, bid),
                    lake.manifest_key("ds", kind, bid), lake.index_key("ds", kind, "2026-11-26", bid),
                    f"_index/ds/{kind}/{INDEX_COMPLETE}"):
            assert allowed(key), key
    for kind in ("events", "labels"):
        for key in (f"{table_prefix('ds', kind)}data/x.parquet", lake.quarantine_key("ds", kind, bid),
                    lake.manifest_key("ds", kind, bid), lake.index_key("ds", kind, "2026-11-26", bid)):
            assert not allowed(key), key
    assert not allowed(f"{table_prefix('other', 'predictions')}data/x.parquet")  # another dataset's log
    assert not allowed(f"ds/{SERVE_LOG_KINDS[0]}/date=2026-11-26/batch={bid}/part-00000.parquet")  # no file lake


def test_the_endpoint_may_write_its_log_tables_and_no_file_of_the_events_table(tmp_path):
    """Every file a commit writes (data, manifests, metadata) is under the grant for the log kinds'
    tables, and none of the events table's is."""
    import pyarrow as pa

    from rtml.tables import Tables

    lake_dir = tmp_path / "lake"
    settings = Settings(home=tmp_path / "home", storage="local", lake_uri=str(lake_dir))
    tables = Tables(settings)
    rows = pa.table({"time": pa.array([1_790_000_000_000_000], pa.timestamp("us", tz="UTC")), "x": [1.0]})
    files = {}
    for kind in ("predictions", "events"):
        before = set(lake_dir.rglob("*"))
        tables.commit_batch("ds", kind, "b1", rows, time_column="time")
        files[kind] = [p.relative_to(lake_dir).as_posix() for p in set(lake_dir.rglob("*")) - before if p.is_file()]
        assert files[kind], kind
    prefixes = serve_log_prefixes("ds")
    assert all(any(f.startswith(p) for p in prefixes) for f in files["predictions"]), files["predictions"]
    assert not any(f.startswith(p) for f in files["events"] for p in prefixes), files["events"]


def test_grants_follow_the_lake_and_artifact_locations(tmp_path):
    s = Settings(home=tmp_path, lake_uri="s3://data/rtml", mlflow_bucket="models")
    grants = s3_grants(s, ["ds", "ds"])
    assert grants[S3_AIRFLOW] == [Grant(a, "data", "rtml/") for a in ("Read", "Write", "List")]
    assert grants[S3_MLFLOW] == [Grant(a, "models", "artifacts/") for a in ("Read", "Write", "List")]
    serve = grants[S3_SERVE]
    assert {g.bucket for g in serve} == {"data"}
    assert {g.prefix for g in serve} == {"rtml/" + p for p in serve_log_prefixes("ds")} | {"rtml/_audit/decisions/"}
    assert len(serve) == 3 * (len(serve_log_prefixes("ds")) + 1)  # the dataset listed twice: once


def test_seaweed_actions_scope_by_bucket_or_prefix():
    assert seaweed_actions([Grant("Read", "lake"), Grant("Write", "lake", "ds/predictions/")]) == [
        "Read:lake", "Write:lake/ds/predictions/*"]


def test_minio_policy_scopes_objects_and_listings():
    policy = minio_policy([Grant("Read", "lake", "p/"), Grant("Write", "lake", "p/"), Grant("List", "lake", "p/"),
                           Grant("List", "all")], list_buckets=True)
    st = policy["Statement"]
    assert st[0] == {"Effect": "Allow", "Action": ["s3:GetObject"], "Resource": ["arn:aws:s3:::lake/p/*"]}
    assert "s3:DeleteObject" in st[1]["Action"] and st[1]["Resource"] == ["arn:aws:s3:::lake/p/*"]
    assert st[2]["Resource"] == ["arn:aws:s3:::lake"]
    assert st[2]["Condition"] == {"StringLike": {"s3:prefix": ["p/*"]}}
    assert "Condition" not in st[3]  # the whole bucket
    assert st[4]["Action"] == ["s3:ListAllMyBuckets"]
    assert "ListAllMyBuckets" not in json.dumps(minio_policy([Grant("Read", "lake")]))


def test_minio_policies_command(tmp_path, monkeypatch, capsys):
    assert main(["minio-policies"]) == 2
    monkeypatch.setenv("RTML_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("RTML_LAKE_BUCKET", "the-lake")
    assert main(["minio-policies", str(tmp_path / "out")]) == 0
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert written == [f"{S3_AIRFLOW}.json", f"{S3_MLFLOW}.json", f"{S3_SERVE}.json"]
    serve = json.loads((tmp_path / "out" / f"{S3_SERVE}.json").read_text())
    assert all(r.startswith("arn:aws:s3:::the-lake") for st in serve["Statement"] for r in st["Resource"])


def test_role_statements_and_urls():
    sql = role_sql("r1", ["d1", "d2"], ":'pw'")
    assert sql[0] == 'CREATE ROLE "r1" WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS PASSWORD :\'pw\''
    assert sql[1:] == ['CREATE DATABASE "d1" OWNER "r1"', 'REVOKE ALL ON DATABASE "d1" FROM PUBLIC',
                       'CREATE DATABASE "d2" OWNER "r1"', 'REVOKE ALL ON DATABASE "d2" FROM PUBLIC']
    assert compose_init_sql({"a": ("a",)}).count(";") == 3
    assert role_url("postgresql://root:x@db:5433/postgres?sslmode=require", "d1", "r1", "p/w@") == (
        "postgresql://r1:p%2Fw%40@db:5433/d1?sslmode=require")
    assert role_url("postgresql://root@127.0.0.1", "d1", "r1") == "postgresql://r1@127.0.0.1/d1"
    assert role_url("postgresql://[::1]:5432", "d1", "r1") == "postgresql://r1@[::1]:5432/d1"
