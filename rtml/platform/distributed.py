"""The distributed profile of the local stack: natively, what docker-compose.yml runs.

``rtml stack up --profile distributed`` starts, on loopback and under the same supervisor as the
embedded profile (:mod:`rtml.platform.stack`):

- SeaweedFS (S3), as in the embedded profile (compose runs MinIO: same S3 API);
- a Redis server of its own (not the stream source's), with a password (``requirepass``) and an
  append-only file under ``<home>/redis``: the Celery broker;
- PostgreSQL databases ``<prefix>_airflow`` (Airflow's metadata and the Celery result backend),
  ``<prefix>_mlflow`` (tracking and registry) and ``<prefix>_mlflow_auth`` (MLflow's users), created
  on the server named by ``RTML_POSTGRES_URL`` (the profile does not run PostgreSQL itself);
- MLflow with ``--app-name basic-auth``: anonymous requests are refused, and each service logs in as
  its own least-privilege user (:data:`MLFLOW_USERS`), created through MLflow's auth REST API once
  the server answers: ``rtml-airflow`` (every Airflow component: trains, registers, promotes),
  ``rtml-serve`` (the endpoint: reads only) and ``approver`` (a person: may tag and alias versions);
- Airflow with the CeleryExecutor: api-server, scheduler, dag-processor, triggerer and
  ``celery_workers`` Celery workers (``airflow celery worker``), all sharing one Fernet key and one
  JWT secret;
- ``serve_replicas`` serving processes behind one address: each binds ``serve_port`` with
  SO_REUSEPORT and the kernel spreads connections over them (no proxy hop, no extra process; a
  replica that dies stops getting connections, and the supervisor restarts it).

Least privilege for storage and databases (:mod:`rtml.platform.access`): each service reaches the
object store with its own S3 identity (``rtml-airflow``: the lake; ``rtml-mlflow``: its artifact
prefix; ``rtml-serve``: only its prediction logs' keys in the lake), SeaweedFS runs with those
identities (``-s3.config``) plus ``rtml-admin``, which only the stack itself uses (buckets, checks);
and PostgreSQL with one login role per service (``<prefix>_airflow``, ``<prefix>_mlflow``) owning only
its databases, none a superuser; the ``RTML_POSTGRES_URL`` user only creates them. A person's shell
reaches the store as ``rtml-admin`` (its secret: ``<home>/keys/s3_rtml-admin_secret_key``).

Every secret is generated once into ``<home>/keys`` (mode 0600) and handed to the processes that need
it through their environment (the supervisor's program files are 0600 too). What the profile sets per
service is :meth:`DistributedStack.profile_env`; tests/unit/test_compose.py proves docker-compose.yml
sets the same names and values.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from rtml.platform.access import (
    PG_ROLES,
    S3_ADMIN,
    S3_IDENTITY_OF,
    drop_roles,
    ensure_roles,
    role_url,
    s3_grants,
    seaweed_config,
    spec_datasets,
)
from rtml.platform.health import check_mlflow, check_s3
from rtml.platform.stack import (
    AIRFLOW_COMPONENTS,
    ON_DEMAND,
    Proc,
    Stack,
    StackError,
    _bin,
    _fernet_key,
    _read_secret,
    port_open,
    sqlalchemy_uri,
)
from rtml.settings import Settings

SERVICES = ("s3", "redis", "mlflow", "airflow", "serve", "kafka")
MLFLOW_ADMIN = "admin"
MLFLOW_AIRFLOW_USER = "rtml-airflow"
MLFLOW_SERVE_USER = "rtml-serve"
MLFLOW_APPROVER = "approver"
# MLflow's default permission for any logged-in user is READ (basic_auth.ini below); these grants
# come on top. Creating a run needs EDIT on its experiment; deleting an alias (promotion, rollback)
# needs MANAGE on the model. The approver tags and aliases versions (EDIT), nothing else.
MLFLOW_USERS: dict[str, tuple[tuple[str, str, str], ...]] = {
    MLFLOW_AIRFLOW_USER: (("experiment", "*", "EDIT"), ("registered_model", "*", "MANAGE")),
    MLFLOW_SERVE_USER: (),
    MLFLOW_APPROVER: (("registered_model", "*", "EDIT"),),
}


# How docker-compose.yml hands each user's password to the containers (``python -m
# rtml.platform.distributed mlflow-users`` in its mlflow-init service reads these).
MLFLOW_USER_PASSWORD_ENV = {
    MLFLOW_AIRFLOW_USER: "MLFLOW_AIRFLOW_PASSWORD",
    MLFLOW_SERVE_USER: "MLFLOW_SERVE_PASSWORD",
    MLFLOW_APPROVER: "MLFLOW_APPROVER_PASSWORD",
}


def auth_config_text(database_uri: str) -> str:
    """MLflow's basic-auth settings (``MLFLOW_AUTH_CONFIG_PATH``); compose mounts the same settings
    from docker/mlflow/basic_auth.ini. No password here: MLFLOW_AUTH_ADMIN_PASSWORD holds the admin's."""
    return "\n".join([
        "[mlflow]",
        # Any logged-in user reads; MLFLOW_USERS grants more; anonymous requests are refused.
        "default_permission = READ",
        f"database_uri = {database_uri}",
        f"admin_username = {MLFLOW_ADMIN}",
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth",
        "grant_default_workspace_access = false",
        # Each request's password check costs a PBKDF2 hash (~1 s under load on 2 cores); a
        # password change reaches the other workers within this TTL.
        "auth_cache_ttl_seconds = 30",
        "",
    ])


class DistributedConfig(BaseSettings):
    """Settings only the distributed profile reads (``RTML_*`` variables, like :class:`Settings`)."""

    model_config = SettingsConfigDict(env_prefix="RTML_", extra="ignore")

    # A PostgreSQL server the profile may create databases on (user and host; no database needed).
    postgres_url: str = "postgresql://127.0.0.1:5432"
    postgres_db_prefix: str = Field(default="rtml", pattern=r"^[a-z_][a-z0-9_]{0,40}$")
    celery_redis_port: int = 6380
    celery_workers: int = Field(default=2, ge=1)
    celery_concurrency: int = Field(default=2, ge=1)  # task slots per worker
    serve_replicas: int = Field(default=2, ge=1)

    def database_url(self, name: str) -> str:
        """``postgres_url`` pointing at database ``<prefix>_<name>``."""
        parts = urlsplit(self.postgres_url)
        return urlunsplit((parts.scheme, parts.netloc, f"/{self.postgres_db_prefix}_{name}", parts.query, ""))

    @property
    def databases(self) -> list[str]:
        return [f"{self.postgres_db_prefix}_{n}" for n in ("airflow", "mlflow", "mlflow_auth")]

    def role(self, service: str) -> str:
        """The PostgreSQL role of ``service`` (a key of :data:`rtml.platform.access.PG_ROLES`)."""
        return f"{self.postgres_db_prefix}_{service}"

    def role_url(self, name: str, service: str, password: str | None = None) -> str:
        """Database ``<prefix>_<name>`` as ``service``'s role (no password: PGPASSWORD)."""
        return role_url(self.postgres_url, f"{self.postgres_db_prefix}_{name}", self.role(service), password)


def create_databases(cfg: DistributedConfig, passwords: dict[str, str]) -> list[str]:
    """Create the profile's roles (``passwords``: per :data:`PG_ROLES` key) and the databases each
    owns that do not exist yet; returns the databases created."""
    import psycopg2

    roles = {cfg.role(r): (passwords[r], tuple(f"{cfg.postgres_db_prefix}_{d}" for d in dbs))
             for r, dbs in PG_ROLES.items()}
    try:
        return ensure_roles(cfg.postgres_url, roles)
    except psycopg2.OperationalError as err:
        raise StackError(f"cannot reach PostgreSQL at RTML_POSTGRES_URL={cfg.postgres_url}: {err}") from None


def drop_databases(cfg: DistributedConfig) -> None:
    """Drop the profile's databases (tests; a user's data is never dropped by ``down``)."""
    import psycopg2

    parts = urlsplit(cfg.postgres_url)
    conn = psycopg2.connect(urlunsplit((parts.scheme, parts.netloc, "/postgres", parts.query, "")), connect_timeout=5)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            for name in cfg.databases:
                cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        conn.close()
    drop_roles(cfg.postgres_url, [cfg.role(r) for r in PG_ROLES])


def ensure_mlflow_users(base_url: str, admin: tuple[str, str], users: dict[str, str],
                        grants: dict[str, tuple[tuple[str, str, str], ...]] = MLFLOW_USERS) -> dict[str, str]:
    """Create (or re-password) each MLflow user and grant its permissions, as the admin, through
    MLflow's auth REST API; returns ``{user: "created" | "updated"}``."""
    import httpx

    out = {}
    with httpx.Client(base_url=base_url.rstrip("/"), auth=admin, timeout=30) as http:
        for user, password in users.items():
            r = http.post("/api/2.0/mlflow/users/create", json={"username": user, "password": password})
            if r.status_code == 200:
                out[user] = "created"
            elif "RESOURCE_ALREADY_EXISTS" in r.text:
                # The secret under <home>/keys is the truth: a restored database follows it.
                r = http.patch("/api/2.0/mlflow/users/update-password", json={"username": user, "password": password})
                r.raise_for_status()
                out[user] = "updated"
            else:
                raise StackError(f"MLflow refused to create user {user!r}: {r.status_code} {r.text[:300]}")
            for resource_type, resource_id, permission in grants.get(user, ()):
                r = http.post("/api/3.0/mlflow/users/permissions/grant", json={
                    "username": user, "resource_type": resource_type, "resource_id": resource_id,
                    "permission": permission})
                if r.status_code != 200 and "RESOURCE_ALREADY_EXISTS" not in r.text:
                    raise StackError(f"MLflow refused to grant {permission} on {resource_type} {resource_id} "
                                     f"to {user!r}: {r.status_code} {r.text[:300]}")
    return out


def celery_workers(broker_url: str, timeout: float = 2.0) -> list[str]:
    """Names of the Celery workers answering a ping on ``broker_url`` (sorted)."""
    from celery import Celery

    app = Celery(broker=broker_url)
    try:
        replies = app.control.ping(timeout=timeout) or []
    finally:
        app.close()
    return sorted(name for reply in replies for name in reply)


class DistributedStack(Stack):
    """The distributed profile of one state folder (see the module's docstring)."""

    profile = "distributed"
    service_names = SERVICES

    def __init__(self, settings: Settings | None = None, config: DistributedConfig | None = None) -> None:
        super().__init__(settings)
        self.config = config or DistributedConfig()
        self.keys = self.home / "keys"

    # --- secrets (generated once, 0600) ------------------------------------------------------------
    def secret(self, name: str) -> str:
        return _read_secret(self.keys / name, make=_fernet_key if name == "airflow_fernet_key" else None)

    def mlflow_password(self, user: str) -> str:
        return self.secret(f"mlflow_{user}_password")

    @property
    def broker_url(self) -> str:
        return f"redis://:{self.secret('redis_password')}@{self.settings.host}:{self.config.celery_redis_port}/0"

    @property
    def mlflow_admin(self) -> tuple[str, str]:
        return MLFLOW_ADMIN, self.mlflow_password(MLFLOW_ADMIN)

    def _needs(self, wanted: set[str]) -> set[str]:
        return {"redis"} if "airflow" in wanted else set()

    # --- what the profile sets on top of the embedded environment -----------------------------------
    def profile_env(self, kind: str) -> dict[str, str]:
        """The variables this profile sets for ``kind`` (``mlflow``, ``airflow``, ``airflow-worker``,
        ``serve``) on top of the embedded profile's; docker-compose.yml must set the same names."""
        cfg = self.config
        if kind == "mlflow":
            return {
                "MLFLOW_AUTH_CONFIG_PATH": str(self.mlflow_auth_config),
                "MLFLOW_AUTH_ADMIN_PASSWORD": self.mlflow_password(MLFLOW_ADMIN),
                # CSRF tokens of the UI's forms: one key for every worker (and every restart).
                "MLFLOW_FLASK_SERVER_SECRET_KEY": self.secret("mlflow_flask_secret_key"),
                **self.access_env("mlflow"),
            }
        if kind in ("airflow", "airflow-worker"):
            backend = sqlalchemy_uri(cfg.role_url("airflow", "airflow", self.pg_password("airflow")))
            return {
                "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": backend,
                "AIRFLOW__CELERY__BROKER_URL": self.broker_url,
                "AIRFLOW__CELERY__RESULT_BACKEND": f"db+{backend}",
                "AIRFLOW__CELERY__WORKER_CONCURRENCY": str(cfg.celery_concurrency),
                # One key for every component: the triggerer decrypts what the api-server encrypted.
                "AIRFLOW__CORE__FERNET_KEY": self.secret("airflow_fernet_key"),
                "MLFLOW_TRACKING_USERNAME": MLFLOW_AIRFLOW_USER,
                "MLFLOW_TRACKING_PASSWORD": self.mlflow_password(MLFLOW_AIRFLOW_USER),
                **self.access_env("airflow"),
            }
        if kind == "serve":
            return {
                "RTML_SERVE_REUSE_PORT": "True",
                "MLFLOW_TRACKING_USERNAME": MLFLOW_SERVE_USER,
                "MLFLOW_TRACKING_PASSWORD": self.mlflow_password(MLFLOW_SERVE_USER),
                **self.access_env("serve"),
            }
        raise StackError(f"no profile environment for {kind!r}")

    def airflow_env(self) -> dict[str, str]:
        env = super().airflow_env()
        env.update(self.profile_env("airflow"))
        return env

    @property
    def mlflow_auth_config(self) -> Path:
        return self.home / "mlflow" / "basic_auth.ini"

    def _write_mlflow_auth_config(self) -> None:
        # 0600: the database URL may hold a password.
        text = auth_config_text(sqlalchemy_uri(self.config.role_url("mlflow_auth", "mlflow")))
        path = self.mlflow_auth_config
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.write_text(text)

    @property
    def redis_config(self) -> Path:
        return self.home / "redis" / "redis.conf"

    def _write_redis_config(self) -> None:
        data = self.home / "redis"
        data.mkdir(parents=True, exist_ok=True)
        text = "\n".join([
            f"bind {self.settings.host}",
            f"port {self.config.celery_redis_port}",
            "protected-mode yes",
            f"requirepass {self.secret('redis_password')}",
            f"dir {data}",
            # Queued tasks survive a restart: append-only file, fsync every second, plus snapshots.
            "appendonly yes",
            "appendfsync everysec",
            "save 60 1",
            "daemonize no",
            "",
        ])
        self.redis_config.touch(mode=0o600)
        self.redis_config.write_text(text)

    def _redis_ready(self) -> bool:
        import redis

        try:
            return bool(redis.Redis.from_url(self.broker_url, socket_timeout=2).ping())
        except redis.RedisError:
            return False

    # --- processes ---------------------------------------------------------------------------------
    def procs(self, service: str) -> list[Proc]:
        s, cfg = self.settings, self.config
        if service == "s3":
            return self._s3_procs()
        if service == "redis":
            return [Proc("redis", "redis", [_bin("redis-server"), str(self.redis_config)], cfg.celery_redis_port,
                         self.base_env(), self._redis_ready)]
        if service == "mlflow":
            (proc,) = super().procs("mlflow")
            cmd = list(proc.cmd)
            cmd[cmd.index("--backend-store-uri") + 1] = sqlalchemy_uri(cfg.role_url("mlflow", "mlflow"))
            cmd += ["--app-name", "basic-auth"]
            env = {**proc.env, **self.profile_env("mlflow")}
            for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_URI",
                        "MLFLOW_REGISTRY_URI"):
                env.pop(key, None)  # the server itself is no client
            return [Proc("mlflow", "mlflow", cmd, proc.port, env,
                         lambda: check_mlflow(s, auth=self.mlflow_admin)["ok"])]
        if service == "airflow":
            out = super().procs("airflow")
            airflow = _bin("airflow")
            for i in range(1, cfg.celery_workers + 1):
                # Task slots per worker: AIRFLOW__CELERY__WORKER_CONCURRENCY (profile_env).
                cmd = [airflow, "celery", "worker", "--celery-hostname", f"rtml-worker-{i}@%h",
                       # All workers share this machine's log folder (the api-server reads it), and
                       # their log servers would all want the same port.
                       "--skip-serve-logs"]
                out.append(Proc(f"airflow-worker-{i}", "airflow", cmd, None, out[0].env, None))
            return out
        if service == "serve":
            (proc,) = super().procs("serve")
            env = {**proc.env, **self.profile_env("serve")}
            return [Proc(name, "serve", proc.cmd, proc.port, env, self._replica_ready(name), shared_port=i > 1)
                    for i, name in enumerate(self.replica_names(), start=1)]
        return super().procs(service)

    def replica_names(self) -> list[str]:
        return [f"rtml-serve-{i}" for i in range(1, self.config.serve_replicas + 1)]

    def _replica_ready(self, name: str) -> Any:
        """Ready once a /health answer at the shared address comes from this replica's process (new
        connections land on any replica, so a few are tried)."""
        import httpx

        def ready() -> bool:
            pid = self.running_pid(name)
            for _ in range(8):
                try:  # a fresh connection each time: the kernel picks a replica per connection
                    with httpx.Client(timeout=3) as http:
                        if http.get(f"{self.settings.serve_url}/health").json().get("pid") == pid:
                            return True
                except (httpx.HTTPError, ValueError):
                    return False
            return False

        return ready

    def _proc_names(self, service: str) -> list[Proc]:
        cfg = self.config
        if service == "redis":
            return [Proc("redis", "redis", [], cfg.celery_redis_port)]
        if service == "serve":
            return [Proc(name, "serve", [], self.settings.serve_port) for name in self.replica_names()]
        if service == "airflow":
            return super()._proc_names("airflow") + [
                Proc(f"airflow-worker-{i}", "airflow", [], None) for i in range(1, cfg.celery_workers + 1)]
        return super()._proc_names(service)

    def _start(self, proc: Proc) -> str:
        if proc.name == "redis" and self.running_pid("redis") is None and port_open(self.settings.host, proc.port or 0):
            raise StackError(f"port {proc.port} is taken: the profile's Redis needs its own (RTML_CELERY_REDIS_PORT)")
        return super()._start(proc)

    # --- least privilege: one S3 identity and one PostgreSQL role per service (rtml.platform.access) ---
    def s3_secret(self, identity: str) -> str:
        return self.secret(f"s3_{identity}_secret_key")

    @property
    def s3_admin(self) -> tuple[str, str]:
        return S3_ADMIN, self.s3_secret(S3_ADMIN)

    def _s3_auth(self) -> tuple[str, str] | None:
        return self.s3_admin

    def pg_password(self, service: str) -> str:
        return self.secret(f"pg_{service}_password")

    def access_env(self, kind: str) -> dict[str, str]:
        """``kind``'s own S3 keys (and, for MLflow, its database password: it is no part of the
        command line, which every user of the machine can read)."""
        identity = S3_IDENTITY_OF[kind]
        env = {"AWS_ACCESS_KEY_ID": identity, "AWS_SECRET_ACCESS_KEY": self.s3_secret(identity)}
        if kind == "mlflow":
            env["PGPASSWORD"] = self.pg_password("mlflow")
        return env

    def base_env(self) -> dict[str, str]:
        # No process gets the caller's S3 keys (access_env gives each its own) nor the PostgreSQL
        # admin's URL or password (each service has its role).
        env = super().base_env()
        for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "RTML_POSTGRES_URL",
                    "PGPASSWORD"):
            env.pop(key, None)
        return env

    @property
    def s3_config(self) -> Path:
        return self.keys / "s3_identities.json"

    def _write_s3_config(self) -> None:
        """The store's identities (0600: it holds their secrets), for the spec's datasets; a changed
        spec dataset needs the store restarted (``weed`` reads the file at start)."""
        import json
        import os

        try:
            datasets = spec_datasets(self.settings)
        except Exception as err:  # noqa: BLE001 - reported with the setting to fix
            raise StackError(f"cannot read the spec (RTML_SPEC={self.settings.spec}) to scope the endpoint's "
                             f"S3 identity: {err}") from None
        identities = [S3_ADMIN, *s3_grants(self.settings, datasets)]
        secrets = {name: self.s3_secret(name) for name in identities}
        doc = seaweed_config(secrets[S3_ADMIN], secrets, s3_grants(self.settings, datasets))
        self.keys.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.s3_config, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(doc, fh, indent=2)

    def _s3_procs(self) -> list[Proc]:
        (proc,) = super().procs("s3")
        s = self.settings
        return [Proc(proc.name, proc.service, [*proc.cmd, f"-s3.config={self.s3_config}"], proc.port, proc.env,
                     lambda: check_s3(s, [], auth=self.s3_admin)["ok"])]

    def _create_databases(self) -> list[str]:
        return create_databases(self.config, {r: self.pg_password(r) for r in PG_ROLES})

    # --- hooks around each service -----------------------------------------------------------------
    def _before_service(self, service: str, deadline: float) -> None:
        if service == "s3":
            self._write_s3_config()
        elif service == "redis":
            self._write_redis_config()
        elif service == "mlflow":
            self._create_databases()
            self._write_mlflow_auth_config()
        elif service == "airflow":
            self._create_databases()

    def _after_service(self, service: str, deadline: float) -> None:
        if service != "mlflow":
            return
        users = {u: self.mlflow_password(u) for u in MLFLOW_USERS}
        while True:  # the first requests can race the auth database's migration in a second worker
            try:
                ensure_mlflow_users(self.settings.mlflow_tracking_uri, self.mlflow_admin, users)
                return
            except Exception as err:
                if time.monotonic() > deadline:
                    raise StackError(f"could not create the MLflow users: {err}") from None
                time.sleep(1)

    def register_webhook(self) -> dict[str, Any]:
        # Webhooks are an admin's business in MLflow's auth; the client reads these at request time.
        from rtml.settings import temporary_env

        user, password = self.mlflow_admin
        with temporary_env(MLFLOW_TRACKING_USERNAME=user, MLFLOW_TRACKING_PASSWORD=password):
            return super().register_webhook()

    def _mlflow_auth(self) -> tuple[str, str] | None:
        return self.mlflow_admin if (self.keys / f"mlflow_{MLFLOW_ADMIN}_password").exists() else None

    # --- status ------------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        result = super().status()
        services, cfg = result["services"], self.config
        redis_pid = self.running_pid("redis")
        ready = bool(redis_pid) and (self.keys / "redis_password").exists() and self._redis_ready()
        services["redis"] = {
            "url": f"redis://{self.settings.host}:{cfg.celery_redis_port}/0 (password in {self.keys / 'redis_password'})",
            "pid": redis_pid, "healthy": ready, "detail": "" if ready else "not answering",
            "restarts": self.programs().get("redis", {}).get("restarts", 0), "last_exit": None,
        }
        workers: list[str] = []
        if ready:
            try:
                workers = celery_workers(self.broker_url)
            except Exception as err:  # noqa: BLE001 - reported, not raised
                services["airflow"]["detail"] += f"; celery ping failed: {err}"
        airflow = services["airflow"]
        airflow["celery_workers"] = workers
        airflow["detail"] = f"{airflow['detail']}; celery workers: {len(workers)}/{cfg.celery_workers}"
        if any(airflow["pid"].values()):
            airflow["healthy"] = airflow["healthy"] and len(workers) >= cfg.celery_workers
        serve = services["serve"]
        serve["pid"] = {p.name: self.running_pid(p.name) for p in self._proc_names("serve")}
        serve["replicas"] = cfg.serve_replicas
        mlflow = services["mlflow"]
        mlflow["users"] = {u: str(self.keys / f"mlflow_{u}_password") for u in (MLFLOW_ADMIN, *MLFLOW_USERS)}
        services["s3"]["identities"] = {i: str(self.keys / f"s3_{i}_secret_key")
                                        for i in (S3_ADMIN, *S3_IDENTITY_OF.values())}

        def counts(k: str, v: dict[str, Any]) -> bool:
            pid = v["pid"]
            started = any(pid.values()) if isinstance(pid, dict) else bool(pid)
            return k not in ("serve", *ON_DEMAND) or started or self.settings.source == k

        result["ok"] = all(v["healthy"] for k, v in services.items() if counts(k, v))
        return result


def stack_for(profile: str | None, settings: Settings) -> Stack:
    """The stack of ``profile``; without one, the profile the state folder was started with."""
    profile = profile or Stack(settings).recorded_profile() or "embedded"
    if profile == "embedded":
        return Stack(settings)
    if profile == "distributed":
        return DistributedStack(settings)
    raise StackError(f"unknown profile {profile!r}; choose embedded or distributed")


def main(argv: list[str] | None = None) -> int:
    """``python -m rtml.platform.distributed mlflow-users URL``: create the MLflow users of
    :data:`MLFLOW_USERS` with the passwords in :data:`MLFLOW_USER_PASSWORD_ENV` (compose's mlflow-init)."""
    import os
    import sys

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2 or args[0] != "mlflow-users":
        print("usage: python -m rtml.platform.distributed mlflow-users MLFLOW_URL", file=sys.stderr)
        return 2
    missing = [v for v in ("MLFLOW_AUTH_ADMIN_PASSWORD", *MLFLOW_USER_PASSWORD_ENV.values()) if not os.environ.get(v)]
    if missing:
        print(f"set {', '.join(missing)}", file=sys.stderr)
        return 2
    users = {u: os.environ[v] for u, v in MLFLOW_USER_PASSWORD_ENV.items()}
    done = ensure_mlflow_users(args[1], (MLFLOW_ADMIN, os.environ["MLFLOW_AUTH_ADMIN_PASSWORD"]), users)
    print(", ".join(f"{u}: {a}" for u, a in done.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


__all__ = ["AIRFLOW_COMPONENTS", "DistributedConfig", "DistributedStack", "MLFLOW_USERS", "stack_for"]
