"""One settings object for the whole platform.

Every value comes from an environment variable with the ``RTML_`` prefix (``RTML_HOME``,
``RTML_MLFLOW_PORT``, ...) and has a default that works on a laptop with nothing configured.
Credentials are read from the environment only (``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY``
for S3, ``RTML_SERVE_TOKEN`` for the serving endpoint) and are never written to the repository.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

EXAMPLE_SPEC = Path(__file__).parent / "examples" / "credit_risk.yaml"


class Settings(BaseSettings):
    """Platform settings; see ``docs`` in README.md for the full table."""

    model_config = SettingsConfigDict(env_prefix="RTML_", extra="ignore", validate_default=True)

    # Where the local stack keeps its state: logs, pid files, databases, object-store data.
    home: Path = Field(default_factory=lambda: Path.home() / ".rtml")
    # The project spec used when a command or DAG is not given one.
    spec: Path = EXAMPLE_SPEC
    host: str = "127.0.0.1"

    # Object store / data lake. "s3" uses an S3-compatible server (SeaweedFS locally, MinIO in
    # compose, AWS in the cloud); "local" keeps the lake in a plain folder.
    storage: Literal["s3", "local"] = "s3"
    lake_uri: str = ""  # default: s3://<lake_bucket> or <home>/lake
    lake_bucket: str = "rtml-lake"
    mlflow_bucket: str = "rtml-mlflow"
    s3_endpoint_url: str = ""  # default: http://<host>:<s3_port> for the embedded SeaweedFS
    s3_port: int = 8333
    s3_region: str = "us-east-1"
    # How batches are stored: one Apache Iceberg table per dataset and kind (rtml.tables), the manifests
    # the ledger. The one value left; "files" (Parquet per batch, the lakes before tables) is refused
    # with what to do: `rtml lake migrate` moves such a lake into tables.
    lake_format: Literal["iceberg"] = "iceberg"
    # Iceberg SQL catalog; default (resolved_catalog_uri): SQLite under <home>/catalog, one per lake.
    catalog_uri: str = ""
    # Table maintenance (rtml.tables.maintain, the rtml_maintenance DAG): snapshots older than this are
    # expired, except the newest table_snapshot_retain_last; a model version trained on an expired
    # snapshot is read back from the current table (its lineage check tells whether rows changed).
    table_snapshot_retention_days: float = Field(default=30.0, ge=0, allow_inf_nan=False)
    table_snapshot_retain_last: int = Field(default=10, ge=1)
    # Every commit copies the table's metadata (all its snapshots) several times: a writer expires the
    # oldest snapshots past this many (tags, e.g. the lineage of trained versions, are kept), so that a
    # commit costs the same after 100 or 10,000 batches.
    table_snapshot_max: int = Field(default=50, ge=1)

    # MLflow tracking server and registry.
    mlflow_port: int = 5000
    mlflow_tracking_uri: str = ""  # default: http://<host>:<mlflow_port>
    mlflow_backend_store_uri: str = ""  # default: sqlite:///<home>/mlflow/mlflow.db
    mlflow_experiment: str = "rtml"
    # The MLflow URL a browser uses (links in the Airflow UI); empty means mlflow_tracking_uri.
    mlflow_ui_url: str = ""

    # Airflow.
    airflow_port: int = 8080
    airflow_url: str = ""  # default: http://<host>:<airflow_port>
    airflow_db_uri: str = ""  # default: sqlite:///<home>/airflow/airflow.db
    airflow_executor: str = "LocalExecutor"
    airflow_username: str = "admin"
    # Folders Airflow loads; empty means the repository's dags/ and plugins/ next to the package.
    dags_folder: str = ""
    plugins_folder: str = ""
    mlflow_workers: int = Field(default=2, ge=1)

    # Streams.
    redis_url: str = "redis://127.0.0.1:6379/0"
    source: Literal["landing", "redis", "kafka"] = "landing"
    # Kafka (rtml.ingest.kafka): the stack's KRaft broker listens on kafka_port, its controller on +1.
    kafka_port: int = 9092
    kafka_bootstrap: str = ""  # default: <host>:<kafka_port>; any broker list for an external cluster
    kafka_version: str = "4.1.1"  # org.apache.kafka:kafka_2.13 resolved from Maven Central
    kafka_jars_dir: str = ""  # jar cache; default ~/.cache/rtml/kafka-<version> (kept between runs)
    kafka_partitions: int = Field(default=1, ge=1)  # partitions of topics rtml creates
    kafka_heap_mb: int = Field(default=512, ge=128)
    # With source "kafka": rtml_ingest also starts on new records (an AssetWatcher in the triggerer).
    kafka_watch: bool = True
    ingest_interval_minutes: int = Field(default=5, ge=1)

    # Serving endpoint.
    serve_host: str = "127.0.0.1"
    serve_port: int = 8000
    serve_url: str = ""  # default: http://<serve_host>:<serve_port>
    serve_token: str = ""  # bearer token; empty means "generate one into <home>/serve_token"
    # Bind with SO_REUSEPORT so several replicas share serve_port (the distributed stack profile).
    serve_reuse_port: bool = False
    # MLflow's /invocations without the bearer token (as `mlflow models serve`, which has no auth), for
    # clients that cannot send a header; only behind a network boundary you trust. Other routes keep it.
    serve_open_invocations: bool = False
    # MLflow signs each registry webhook delivery (rtml.registry.webhooks) with this secret; empty means
    # "generate one into <home>/keys/webhook_secret" (the stack registers it, the Airflow plugin checks it).
    webhook_secret: str = ""
    # Where the webhook receiver tells a waiting rtml_promote "look now" (rtml.registry.signals): a Redis
    # URL; empty means redis_url; "off" means none (the approval wait then only polls MLflow).
    approval_signal_url: str = ""

    # Governance (rtml.registry.signing, rtml.registry.audit). Gate results are signed with an Ed25519 key that only
    # the evaluator holds; promotion and serving verify with the public key. Empty paths mean
    # <home>/keys/gate_signing.key (generated once by the evaluator) and <home>/keys/gate_signing.pub.
    gate_signing_key_file: str = ""
    gate_public_key_file: str = ""
    gate_public_key: str = ""  # the public key itself (PEM, or base64 of its 32 raw bytes)
    # Who decisions are recorded as when MLflow auth is off (default: the OS user).
    actor: str = ""
    # Bounds of the endpoint: over them a request gets 503 with Retry-After instead of waiting.
    serve_max_queue_rows: int = Field(default=4096, ge=1)  # rows waiting for a model call
    serve_max_log_rows: int = Field(default=200_000, ge=1)  # prediction-log rows not yet in the lake
    serve_model_timeout_seconds: float = Field(default=10.0, gt=0)  # a model call longer than this fails

    @field_validator("lake_format", mode="before")
    @classmethod
    def _no_file_lakes(cls, value: object) -> object:
        if isinstance(value, str) and value.strip().lower() == "files":
            raise ValueError("'files' (Parquet per batch, the lakes before tables) is no longer written or read: "
                             "unset RTML_LAKE_FORMAT, and move an existing lake into tables once with "
                             "`rtml lake migrate --lake <lake uri>`")
        return value

    @model_validator(mode="after")
    def _derive_defaults(self) -> Settings:
        self.home = Path(self.home).expanduser().resolve()
        if not self.lake_uri:
            self.lake_uri = f"s3://{self.lake_bucket}" if self.storage == "s3" else str(self.home / "lake")
        if not self.s3_endpoint_url:
            self.s3_endpoint_url = f"http://{self.host}:{self.s3_port}"
        if not self.mlflow_tracking_uri:
            self.mlflow_tracking_uri = f"http://{self.host}:{self.mlflow_port}"
        if not self.mlflow_backend_store_uri:
            self.mlflow_backend_store_uri = f"sqlite:///{self.home / 'mlflow' / 'mlflow.db'}"
        if not self.airflow_url:
            self.airflow_url = f"http://{self.host}:{self.airflow_port}"
        if not self.airflow_db_uri:
            self.airflow_db_uri = f"sqlite:///{self.home / 'airflow' / 'airflow.db'}"
        if not self.kafka_bootstrap:
            self.kafka_bootstrap = f"{self.host}:{self.kafka_port}"
        if not self.serve_url:
            self.serve_url = f"http://{self.serve_host}:{self.serve_port}"
        return self

    # Credentials: the standard AWS variables, so boto3, MLflow and Airflow all see the same ones.
    # The embedded SeaweedFS accepts any key; these defaults are not secrets.
    @property
    def s3_access_key(self) -> str:
        return os.environ.get("AWS_ACCESS_KEY_ID", "rtml-local")

    @property
    def s3_secret_key(self) -> str:
        return os.environ.get("AWS_SECRET_ACCESS_KEY", "rtml-local-secret")

    @property
    def mlflow_artifacts_uri(self) -> str:
        if self.storage == "s3":
            return f"s3://{self.mlflow_bucket}/artifacts"
        return str(self.home / "mlflow" / "artifacts")

    def s3_env(self) -> dict[str, str]:
        """Environment a child process (MLflow server, Airflow task) needs to reach the store."""
        return {
            "AWS_ACCESS_KEY_ID": self.s3_access_key,
            "AWS_SECRET_ACCESS_KEY": self.s3_secret_key,
            "AWS_DEFAULT_REGION": self.s3_region,
            "MLFLOW_S3_ENDPOINT_URL": self.s3_endpoint_url,
            "AWS_ENDPOINT_URL_S3": self.s3_endpoint_url,
        }

    def resolved_serve_token(self) -> str:
        """The serving token: from RTML_SERVE_TOKEN, else generated once under the state folder."""
        if self.serve_token:
            return self.serve_token
        # Serving replicas start at once: each must end up with the one token in the file.
        return _secret_once(self.home / "serve_token", 24)

    def resolved_webhook_secret(self) -> str:
        """The webhook secret: from RTML_WEBHOOK_SECRET, else generated once under <home>/keys (0600)."""
        if self.webhook_secret:
            return self.webhook_secret
        return _secret_once(self.home / "keys" / "webhook_secret", 32)

    def resolved_catalog_uri(self) -> str:
        """``catalog_uri``, else a SQLite catalog under ``<home>/catalog`` for this lake: ``catalog.db``
        for the home's default lake, ``catalog-<digest of lake_uri>.db`` for any other. Resolved when
        asked (not at validation), so a copy with another ``lake_uri`` (``rtml ingest --lake``) never
        registers its tables in another lake's catalog."""
        if self.catalog_uri:
            return self.catalog_uri
        default_lake = f"s3://{self.lake_bucket}" if self.storage == "s3" else str(self.home / "lake")
        name = "catalog.db"
        if self.lake_uri.rstrip("/") != default_lake:
            import hashlib

            name = f"catalog-{hashlib.sha256(self.lake_uri.rstrip('/').encode()).hexdigest()[:12]}.db"
        return f"sqlite:///{self.home / 'catalog' / name}"

    def env(self) -> dict[str, str]:
        """This settings object as RTML_* variables, for child processes (Airflow tasks, servers)."""
        out = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            out[f"RTML_{name.upper()}"] = str(value)
        return out


def _secret_once(path: Path, nbytes: int) -> str:
    """The secret in ``path``, generated (0600) by the first of the processes asking for it at once."""
    if not path.exists():
        import secrets

        path.parent.mkdir(parents=True, exist_ok=True)
        try:  # O_EXCL: two processes starting at once must not each write their own secret
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        else:
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_urlsafe(nbytes))
    for _ in range(50):  # the other process may still be writing it
        value = path.read_text().strip()
        if value:
            return value
        import time

        time.sleep(0.02)
    raise RuntimeError(f"the secret file {path} is empty: delete it to generate a new one")


@lru_cache(maxsize=1)
def _cached() -> Settings:
    return Settings()


def get_settings(refresh: bool = False) -> Settings:
    """The process-wide settings; ``refresh=True`` re-reads the environment."""
    if refresh:
        _cached.cache_clear()
    return _cached()


@contextlib.contextmanager
def temporary_env(**values: str) -> Iterator[None]:
    """Set environment variables for a block, then put back exactly what was there (unset stays unset).

    For libraries that read credentials from the environment at call time (MLflow's client)."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
