"""Least privilege for the distributed profile's storage and databases (used by
:mod:`rtml.platform.distributed` natively and by docker-compose.yml's init services).

**Object store.** One S3 identity per service instead of the store's root keys:

- ``rtml-admin``: the store's administrator; the stack uses it only to create the buckets and to
  check the store (a person's shell may use it too, like MLflow's admin). No service gets it.
- ``rtml-airflow`` (every Airflow component and worker): reads, writes and lists the lake (its
  bucket, or its prefix when ``lake_uri`` has one), nothing of MLflow's bucket: models and other
  artifacts go through the MLflow server (``--serve-artifacts``), never to the store directly.
- ``rtml-mlflow`` (the MLflow server): reads, writes and lists its artifact prefix only
  (``s3://<mlflow_bucket>/artifacts/``), nothing of the lake.
- ``rtml-serve`` (the serving replicas): models come through MLflow, so it reads nothing else; it
  writes only its own logs' keys in the lake (:func:`serve_log_prefixes`: kinds ``predictions`` and
  ``shadow`` of the spec's datasets: data, quarantine, manifests, day index) and appends its
  reloads to the decision log, so it can neither read, overwrite nor delete the events and labels
  the models learn from.

SeaweedFS (natively) takes them as ``weed -s3.config`` identities whose actions are scoped
``Action:bucket`` or ``Action:bucket/prefix*`` (checked against SeaweedFS 4.48's source and by
tests/integration/test_stack_distributed.py); MinIO (compose) as users with the equivalent policy
documents, written by ``python -m rtml.platform.access minio-policies DIR`` (compose's
``s3-policies`` service) and attached by ``minio-init``. Both come from :func:`s3_grants`.

**PostgreSQL.** One login role per service, owning only its databases, none a superuser or able to
create databases or roles; ``CONNECT`` on each database is revoked from ``PUBLIC``, so a role cannot
even connect to another service's database: :data:`PG_ROLES`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote, urlsplit, urlunsplit

from rtml.registry.audit import PREFIX as AUDIT_PREFIX
from rtml.settings import Settings
from rtml.tables import table_prefix

# --- object store ------------------------------------------------------------------------------------
S3_ADMIN = "rtml-admin"
S3_AIRFLOW = "rtml-airflow"
S3_MLFLOW = "rtml-mlflow"
S3_SERVE = "rtml-serve"
# The identity each kind of process uses (the access key id is the identity's name: not a secret).
S3_IDENTITY_OF = {"airflow": S3_AIRFLOW, "mlflow": S3_MLFLOW, "serve": S3_SERVE}
# How docker-compose.yml hands each identity's secret key to MinIO (minio-init) and to its service.
S3_SECRET_ENV = {S3_AIRFLOW: "S3_AIRFLOW_SECRET_KEY", S3_MLFLOW: "S3_MLFLOW_SECRET_KEY",
                 S3_SERVE: "S3_SERVE_SECRET_KEY"}
SERVE_LOG_KINDS = ("predictions", "shadow")  # what the endpoint writes (rtml.serve.predlog)

Action = Literal["Read", "Write", "List"]


@dataclass(frozen=True)
class Grant:
    """``action`` on the keys of ``bucket`` under ``prefix`` (``""``: the whole bucket)."""

    action: Action
    bucket: str
    prefix: str = ""  # ends with "/" when set


def split_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix`` -> ``("bucket", "some/prefix/")``; no prefix -> ``""``."""
    if not uri.startswith("s3://"):
        raise ValueError(f"not an S3 URI: {uri!r}")
    bucket, _, prefix = uri[5:].partition("/")
    if not bucket:
        raise ValueError(f"invalid S3 URI {uri!r}: no bucket")
    prefix = prefix.strip("/")
    return bucket, f"{prefix}/" if prefix else ""


def serve_log_prefixes(dataset: str) -> list[str]:
    """The lake keys the endpoint writes for ``dataset``: its log kinds' Iceberg tables (data and
    metadata; the SQL catalog's row is the catalog database's), manifests, day index and dead letter."""
    out = []
    for kind in SERVE_LOG_KINDS:
        out += [table_prefix(dataset, kind), f"{dataset}/_manifests/{kind}/", f"_index/{dataset}/{kind}/",
                f"{dataset}/quarantine/{kind}/"]
    return out


def s3_grants(settings: Settings, datasets: Iterable[str]) -> dict[str, list[Grant]]:
    """What each service identity may do (the admin is not listed: it may do anything)."""
    lake_bucket, lake_prefix = split_s3_uri(settings.lake_uri)
    mlflow_bucket, mlflow_prefix = split_s3_uri(settings.mlflow_artifacts_uri)
    rw: tuple[Action, ...] = ("Read", "Write", "List")
    serve = [Grant(a, lake_bucket, lake_prefix + p) for ds in sorted(set(datasets)) for p in serve_log_prefixes(ds)
             for a in rw]
    # The endpoint appends its reloads and refusals to the decision log (hash-chained, each entry
    # created only if its key is new): it reads the chain's head and adds entries, nothing else.
    serve += [Grant(a, lake_bucket, f"{lake_prefix}{AUDIT_PREFIX}/") for a in rw]
    return {
        S3_AIRFLOW: [Grant(a, lake_bucket, lake_prefix) for a in rw],
        S3_MLFLOW: [Grant(a, mlflow_bucket, mlflow_prefix) for a in rw],
        S3_SERVE: serve,
    }


def seaweed_actions(grants: Iterable[Grant]) -> list[str]:
    """SeaweedFS identity actions: ``Action:bucket`` (any key), ``Action:bucket/prefix*``."""
    return [f"{g.action}:{g.bucket}/{g.prefix}*" if g.prefix else f"{g.action}:{g.bucket}" for g in grants]


def seaweed_config(admin_secret: str, secrets: dict[str, str], grants: dict[str, list[Grant]]) -> dict[str, Any]:
    """The ``weed -s3.config`` document: the admin, then one identity per service (no anonymous one:
    an unsigned request is refused)."""
    identities = [{"name": S3_ADMIN, "credentials": [{"accessKey": S3_ADMIN, "secretKey": admin_secret}],
                   "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]
    for name, gs in grants.items():
        identities.append({"name": name, "credentials": [{"accessKey": name, "secretKey": secrets[name]}],
                           "actions": seaweed_actions(gs)})
    return {"identities": identities}


# MinIO (AWS policy language) actions for each of ours.
_OBJECT_ACTIONS = {
    "Read": ["s3:GetObject"],
    "Write": ["s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload", "s3:ListMultipartUploadParts"],
}


def minio_policy(grants: Iterable[Grant], list_buckets: bool = False) -> dict[str, Any]:
    """A MinIO policy document granting exactly ``grants`` (``list_buckets``: may list the bucket
    names too, which the health check of the lake does)."""
    statements: list[dict[str, Any]] = []
    for g in grants:
        bucket_arn = f"arn:aws:s3:::{g.bucket}"
        if g.action == "List":
            st: dict[str, Any] = {"Effect": "Allow", "Action": ["s3:ListBucket", "s3:GetBucketLocation"],
                                  "Resource": [bucket_arn]}
            if g.prefix:
                st["Condition"] = {"StringLike": {"s3:prefix": [f"{g.prefix}*"]}}
            statements.append(st)
        else:
            statements.append({"Effect": "Allow", "Action": _OBJECT_ACTIONS[g.action],
                               "Resource": [f"{bucket_arn}/{g.prefix}*"]})
    if list_buckets:
        statements.append({"Effect": "Allow", "Action": ["s3:ListAllMyBuckets"], "Resource": ["arn:aws:s3:::*"]})
    return {"Version": "2012-10-17", "Statement": statements}


def spec_datasets(settings: Settings) -> list[str]:
    """The datasets the endpoint logs for: the spec's (``RTML_SPEC``)."""
    from rtml.spec import load_spec

    return [load_spec(settings.spec).dataset.name]


def write_minio_policies(folder: Path, settings: Settings, datasets: Iterable[str]) -> list[Path]:
    """One ``<identity>.json`` policy per service identity in ``folder`` (compose's s3-policies)."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for name, gs in s3_grants(settings, datasets).items():
        path = folder / f"{name}.json"
        path.write_text(json.dumps(minio_policy(gs, list_buckets=name == S3_AIRFLOW), indent=2) + "\n")
        out.append(path)
    return out


# --- PostgreSQL --------------------------------------------------------------------------------------
# Role (suffix) -> the databases (suffixes) it owns: Airflow's metadata db also holds the Celery results;
# MLflow's tracking/registry db and, natively, its users db (compose keeps that one in a SQLite file).
PG_ROLES: dict[str, tuple[str, ...]] = {"airflow": ("airflow",), "mlflow": ("mlflow", "mlflow_auth")}
# Compose also keeps the lake's Iceberg SQL catalog in PostgreSQL (natively: SQLite under RTML_HOME,
# which every process of the one machine shares): its role is the tables' writers' (Airflow's workers
# and the endpoint, whose prediction logs are tables too); what each may write is its S3 grant.
COMPOSE_PG_ROLES: dict[str, tuple[str, ...]] = {**PG_ROLES, "catalog": ("catalog",)}
# How docker-compose.yml hands each role's password to PostgreSQL's init script and to its service.
PG_PASSWORD_ENV = {"airflow": "AIRFLOW_DB_PASSWORD", "mlflow": "MLFLOW_DB_PASSWORD", "catalog": "CATALOG_DB_PASSWORD"}
ROLE_OPTIONS = "LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS"


def role_sql(role: str, databases: Iterable[str], password: str) -> list[str]:
    """Statements creating ``role`` (``password``: an SQL expression) owning ``databases``, which no
    other role may connect to. Names are quoted identifiers (callers pass checked names)."""
    out = [f'CREATE ROLE "{role}" WITH {ROLE_OPTIONS} PASSWORD {password}']
    for db in databases:
        out += [f'CREATE DATABASE "{db}" OWNER "{role}"', f'REVOKE ALL ON DATABASE "{db}" FROM PUBLIC']
    return out


def compose_init_sql(roles: dict[str, tuple[str, ...]]) -> str:
    """The SQL docker/postgres/init-roles.sh feeds psql (passwords: psql variables ``<role>_password``)."""
    return "\n".join(s + ";" for role, dbs in roles.items() for s in role_sql(role, dbs, f":'{role}_password'"))


def role_url(admin_url: str, database: str, role: str, password: str | None = None) -> str:
    """``admin_url`` (a server) as ``role`` on ``database``; without ``password`` the client takes
    PGPASSWORD from its environment (a command line is visible to every user of the machine)."""
    parts = urlsplit(admin_url)
    host = parts.hostname or ""
    if ":" in host:  # IPv6
        host = f"[{host}]"
    netloc = quote(role, safe="") + (f":{quote(password, safe='')}" if password else "") + f"@{host}"
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, f"/{database}", parts.query, ""))


def _admin_connect(admin_url: str) -> Any:
    import psycopg2

    parts = urlsplit(admin_url)
    return psycopg2.connect(urlunsplit((parts.scheme, parts.netloc, "/postgres", parts.query, "")), connect_timeout=5)


def ensure_roles(admin_url: str, roles: dict[str, tuple[str, tuple[str, ...]]]) -> list[str]:
    """Create (or re-password) each role ``{role: (password, databases)}`` and its databases, as the
    admin of ``admin_url``; returns the databases created. A database that exists but is owned by
    another role is refused (it was made before per-service roles: its owner would keep its tables)."""
    from psycopg2 import sql

    from rtml.platform.stack import StackError

    conn = _admin_connect(admin_url)
    conn.autocommit = True
    created = []
    try:
        with conn.cursor() as cur:
            for role, (password, databases) in roles.items():
                cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,))
                verb = "ALTER" if cur.fetchone() else "CREATE"
                # The key file is the truth: a role that exists gets its password and options again.
                cur.execute(sql.SQL(f"{verb} ROLE {{}} WITH {ROLE_OPTIONS} PASSWORD %s").format(sql.Identifier(role)),
                            (password,))
                for db in databases:
                    cur.execute("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = %s", (db,))
                    row = cur.fetchone()
                    if row is None:
                        cur.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(db), sql.Identifier(role)))
                        created.append(db)
                    elif row[0] != role:
                        raise StackError(f"database {db!r} exists but is owned by {row[0]!r}, not by the service's "
                                         f"role {role!r}: `ALTER DATABASE \"{db}\" OWNER TO \"{role}\"` and give it "
                                         f"the tables too, or use another RTML_POSTGRES_DB_PREFIX")
                    cur.execute(sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(sql.Identifier(db)))
    finally:
        conn.close()
    return created


def drop_roles(admin_url: str, roles: Iterable[str]) -> None:
    """Drop the roles (tests; their databases first)."""
    from psycopg2 import sql

    conn = _admin_connect(admin_url)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            for role in roles:
                cur.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))
    finally:
        conn.close()


def main(argv: list[str] | None = None) -> int:
    """``python -m rtml.platform.access minio-policies DIR``: the service identities' MinIO policies
    for the settings in this environment and the spec's datasets (compose's s3-policies service)."""
    import sys

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2 or args[0] != "minio-policies":
        print("usage: python -m rtml.platform.access minio-policies DIR", file=sys.stderr)
        return 2
    settings = Settings()
    for path in write_minio_policies(Path(args[1]), settings, spec_datasets(settings)):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
