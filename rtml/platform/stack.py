"""The embedded local stack: SeaweedFS (S3), an MLflow server and Airflow 3, all on loopback, no Docker.

Every process runs under the state folder's supervisor (:mod:`rtml.supervisor`): in its own process
group, logging to ``<home>/logs/<name>.log``, restarted with backoff when it dies (``status`` shows
each restart and the last exit's reason). ``down`` stops only what this state folder's supervisor
runs, whole process groups and orphans included. Data stays on disk under ``<home>``
(``seaweedfs/``, ``mlflow/``, ``airflow/``), so ``up`` after ``down`` finds the lake, the runs and
the registry as they were.

Every port is derived from the settings (``s3_port``, ``mlflow_port``, ``airflow_port``), including
the ones SeaweedFS and Airflow open for themselves (master, volume, filer, log servers), so two
stacks with different base ports (a user's and the test suite's) never clash.

Once MLflow and Airflow are both up, ``up`` registers rtml's registry webhook in MLflow
(:mod:`rtml.registry.webhooks`, delivered to the Airflow plugin); a failure is reported in the result
and in ``status`` (the MLflow line), not raised: without it the DAGs still poll.

``Stack(settings)`` is the reusable piece (the test fixtures use it); ``add_commands`` wires
``rtml stack up|down|status``. Only the standard library is imported at module level. Health
checks live in :mod:`rtml.platform.health`, the Airflow REST client in :mod:`rtml.platform.airflow`.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rtml.platform import supervisor
from rtml.platform.health import airflow_health, check_kafka, check_mlflow, check_s3, check_serve
from rtml.settings import Settings, get_settings

SERVICES = ("s3", "mlflow", "airflow", "serve", "kafka")
# Started only when asked for (``--only kafka``) or when the configured source is Kafka.
ON_DEMAND = ("kafka",)
AIRFLOW_COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer")
REPO_ROOT = Path(__file__).resolve().parents[2]


class StackError(RuntimeError):
    """A service that could not be started or checked; the message points at its log file."""


# --- ports ---------------------------------------------------------------------------------------
def seaweed_ports(settings: Settings) -> dict[str, int]:
    """Every port ``weed mini`` listens on, as offsets of the S3 port (defaults open 9333, 8888,
    a volume server on 9340, admin on 23646, ...: left alone they clash between two stacks)."""
    p = settings.s3_port
    return {
        "s3": p,
        "master": p + 1,
        "master.grpc": p + 2,
        "volume": p + 3,
        "volume.grpc": p + 4,
        "filer": p + 5,
        "filer.grpc": p + 6,
        "s3.grpc": p + 7,
        "admin": p + 8,
        "admin.grpc": p + 9,
    }


def airflow_ports(settings: Settings) -> dict[str, int]:
    """The api-server port and the log servers of the scheduler (LocalExecutor) and triggerer."""
    p = settings.airflow_port
    return {"api": p, "worker_log_server": p + 1, "trigger_log_server": p + 2}


def all_ports(settings: Settings, services: Iterable[str] = SERVICES) -> list[int]:
    out: list[int] = []
    services = set(services)
    if "s3" in services and settings.storage == "s3":
        out += seaweed_ports(settings).values()
    if "mlflow" in services:
        out.append(settings.mlflow_port)
    if "airflow" in services:
        out += airflow_ports(settings).values()
    if "serve" in services:
        out.append(settings.serve_port)
    if "kafka" in services:
        out += [settings.kafka_port, settings.kafka_port + 1]
    return out


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


# How long a SQLite connection of Airflow waits for another writer's lock before "database is locked".
# sqlite3's default, 5 s, is shorter than a busy 2-core machine can hold the lock: the api-server then
# answers a trigger with a 500 "Database error" that hides the cause. Below the REST client's 30 s.
SQLITE_BUSY_TIMEOUT_S = 20


def sqlalchemy_uri(uri: str) -> str:
    """``postgresql://`` with an explicit driver: SQLAlchemy 2.1 would pick psycopg 3, which is not
    installed; psycopg2 is (Airflow derives its async URL, ``postgresql+asyncpg``, from the scheme).
    ``sqlite://`` with a busy timeout (``SQLITE_BUSY_TIMEOUT_S``) unless the URI states one: SQLAlchemy
    passes it to ``sqlite3.connect`` (and aiosqlite) for every Airflow component."""
    for prefix in ("postgresql://", "postgres://"):
        if uri.startswith(prefix):
            return "postgresql+psycopg2://" + uri[len(prefix) :]
    if uri.startswith("sqlite") and "timeout=" not in uri.partition("?")[2]:
        return f"{uri}{'&' if '?' in uri else '?'}timeout={SQLITE_BUSY_TIMEOUT_S}"
    return uri


# --- processes -----------------------------------------------------------------------------------
def _bin(name: str) -> str:
    """An executable of this environment (next to the running Python), else from PATH."""
    # Not resolved: the venv's python is a symlink and its bin/ is what we want.
    candidate = Path(sys.executable).parent / name
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    if not found:
        raise StackError(f"cannot find the {name!r} executable (is the rtml environment installed?)")
    return found


@dataclass
class Proc:
    """One long-running process of the stack."""

    name: str
    service: str
    cmd: list[str]
    port: int | None  # the port that must answer for the process to count as up
    env: dict[str, str] = field(default_factory=dict)
    # A process-specific readiness check beyond the port answering (e.g. a /health URL).
    ready: Callable[[], bool] | None = None
    # Replicas bind the same port (SO_REUSEPORT): a sibling answering there is not a stranger.
    shared_port: bool = False


def process_family(pids: Iterable[int]) -> list[Any]:
    """The live processes ``pids`` and all their descendants (psutil.Process objects)."""
    import psutil

    family: list[Any] = []
    for pid in pids:
        try:
            root = psutil.Process(pid)
            family += [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            pass
    return family


def _read_secret(path: Path, nbytes: int = 32, make: Callable[[], str] | None = None) -> str:
    """A secret generated once and kept under the state folder, readable only by its owner."""
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    value = make() if make else secrets.token_urlsafe(nbytes)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(value)
    return value


def _fernet_key() -> str:
    """A key in the form MLflow's webhook secret encryption takes (Fernet: url-safe base64 of 32 bytes)."""
    import base64

    return base64.urlsafe_b64encode(os.urandom(32)).decode()


def is_private_url(url: str) -> bool:
    """Whether ``url``'s host is loopback, private or link-local (MLflow refuses to post there unless
    MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS is set: its protection against server-side request forgery)."""
    import ipaddress
    from urllib.parse import urlsplit

    host = urlsplit(url).hostname or ""
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        addrs = {ipaddress.ip_address(host)}
    except ValueError:
        try:
            addrs = {ipaddress.ip_address(str(a[4][0]).split("%")[0]) for a in socket.getaddrinfo(host, None)}
        except (OSError, ValueError):
            return False
    return bool(addrs) and all(a.is_private or a.is_loopback or a.is_link_local for a in addrs)


class Stack:
    """The local stack of one state folder (``settings.home``): the embedded profile.

    :class:`rtml.platform.distributed.DistributedStack` is the production-like profile; it overrides
    the hooks below (``service_names``, ``procs``, ``_before_service``, ``_after_service``...).
    """

    profile = "embedded"
    service_names: tuple[str, ...] = SERVICES

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or get_settings()
        self.home = self.settings.home
        self.logs = self.home / "logs"
        self.airflow_home = self.home / "airflow"

    # --- layout ----------------------------------------------------------------------------------
    @property
    def dags_folder(self) -> Path:
        return (
            Path(self.settings.dags_folder).expanduser() if self.settings.dags_folder else REPO_ROOT / "dags"
        )

    @property
    def plugins_folder(self) -> Path:
        if self.settings.plugins_folder:
            return Path(self.settings.plugins_folder).expanduser()
        return REPO_ROOT / "plugins"

    @property
    def airflow_password_file(self) -> Path:
        return self.airflow_home / "simple_auth_manager_passwords.json.generated"

    def airflow_password(self) -> str | None:
        """The password Airflow generated for ``settings.airflow_username`` (None before first start)."""
        try:
            data = json.loads(self.airflow_password_file.read_text())
        except (OSError, ValueError):
            return None
        return data.get(self.settings.airflow_username)

    def services(self, wanted: Iterable[str] | None = None) -> list[str]:
        """Requested services plus what they need, in start order (``storage=local`` drops s3)."""
        if wanted is None:
            wanted = {s for s in self.service_names if s not in ON_DEMAND or self.settings.source == s}
        wanted = set(wanted)
        unknown = wanted - set(self.service_names)
        if unknown:
            raise StackError(
                f"unknown service(s) {sorted(unknown)}; choose from {', '.join(self.service_names)}"
            )
        # MLflow keeps its artifacts in the store; Airflow's tasks and the endpoint use both.
        if "airflow" in wanted or "serve" in wanted:
            wanted |= {"mlflow"}
        if "mlflow" in wanted:
            wanted |= {"s3"}
        if self.settings.storage != "s3":
            wanted.discard("s3")
        wanted |= self._needs(wanted)
        return [s for s in self.service_names if s in wanted]

    def _needs(self, wanted: set[str]) -> set[str]:
        """Services the profile adds for ``wanted`` (the distributed profile: Redis for Airflow)."""
        return set()

    # --- environment -----------------------------------------------------------------------------
    def base_env(self) -> dict[str, str]:
        """What every child gets: this environment + RTML_* settings + S3 credentials + MLflow URI."""
        env = dict(os.environ)
        env.update(self.settings.env())
        env.update(self.settings.s3_env())
        env["MLFLOW_TRACKING_URI"] = self.settings.mlflow_tracking_uri
        # mlflow.set_registry_uri() exports MLFLOW_REGISTRY_URI for subprocesses: one inherited from
        # the caller would send this stack's `models:/` lookups to another server.
        env["MLFLOW_REGISTRY_URI"] = self.settings.mlflow_tracking_uri
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def airflow_env(self) -> dict[str, str]:
        s = self.settings
        ports = airflow_ports(s)
        env = self.base_env()
        env.update(
            {
                "AIRFLOW_HOME": str(self.airflow_home),
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": sqlalchemy_uri(s.airflow_db_uri),
                "AIRFLOW__CORE__EXECUTOR": s.airflow_executor,
                "AIRFLOW__CORE__DAGS_FOLDER": str(self.dags_folder),
                "AIRFLOW__CORE__PLUGINS_FOLDER": str(self.plugins_folder),
                "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                # Two CPUs on a laptop-sized box: a few task slots, one api worker.
                "AIRFLOW__CORE__PARALLELISM": env.get("AIRFLOW__CORE__PARALLELISM", "4"),
                "AIRFLOW__API__WORKERS": env.get("AIRFLOW__API__WORKERS", "1"),
                "AIRFLOW__API__HOST": s.host,
                "AIRFLOW__API__PORT": str(s.airflow_port),
                "AIRFLOW__API__BASE_URL": s.airflow_url,
                "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{s.airflow_url.rstrip('/')}/execution/",
                # The components run as separate processes: they must share these secrets.
                "AIRFLOW__API_AUTH__JWT_SECRET": _read_secret(self.airflow_home / "jwt_secret"),
                "AIRFLOW__API__SECRET_KEY": _read_secret(self.airflow_home / "api_secret_key"),
                "AIRFLOW__CORE__AUTH_MANAGER": (
                    "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
                ),
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{s.airflow_username}:admin",
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(self.airflow_password_file),
                # New DAG files show up within seconds locally (default: 5 minutes).
                "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "10",
                "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "15",
                "AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES": "1",
                "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(ports["worker_log_server"]),
                "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(ports["trigger_log_server"]),
                "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",
            }
        )
        # The Kafka connection of rtml_ingest's AssetWatcher (used only with RTML_SOURCE=kafka).
        from rtml.platform.kafka import WATCH_CONN_ID, airflow_connection

        env.setdefault(f"AIRFLOW_CONN_{WATCH_CONN_ID.upper()}", airflow_connection(s))
        return env

    def mlflow_webhook_env(self, env: dict[str, str]) -> dict[str, str]:
        """What the MLflow server needs to deliver rtml's registry webhook (rtml.registry.webhooks);
        a value already in ``env`` (the user's) is kept."""
        from rtml.registry.webhooks import hook_url

        out = {
            # Webhook secrets are stored encrypted; without a fixed key each worker (and each restart)
            # makes its own and cannot read the secrets the others wrote.
            "MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY": _read_secret(self.home / "keys" / "mlflow_webhook.key",
                                                                 make=_fernet_key),
            # Each worker caches the webhook list (default 60 s): a hook registered by `up` must work at once.
            "MLFLOW_WEBHOOK_CACHE_TTL": "2",
        }
        url = hook_url(self.settings)
        if is_private_url(url):  # the local stack: the receiver is on loopback, served over plain http
            out["MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS"] = "true"
            if url.startswith("http://"):  # MLflow posts only to https unless told otherwise
                out["MLFLOW_WEBHOOK_ALLOWED_SCHEMES"] = "http,https"
        return {k: v for k, v in out.items() if not env.get(k)}

    @property
    def webhook_state_file(self) -> Path:
        return self.home / "webhook.json"

    def register_webhook(self) -> dict[str, Any]:
        """Register (or update) rtml's webhook in MLflow; a failure is reported, not raised."""
        from rtml.registry.webhooks import hook_url

        url = hook_url(self.settings)
        try:
            from rtml.registry.client import mlflow_client
            from rtml.registry.webhooks import register

            out = {"ok": True, **register(mlflow_client(self.settings), url, self.settings.resolved_webhook_secret())}
        except Exception as err:  # noqa: BLE001 - the stack works without it (the DAGs still poll)
            out = {"ok": False, "url": url, "error": f"{type(err).__name__}: {err}"[:500]}
        out["at"] = time.time()
        try:
            self.webhook_state_file.write_text(json.dumps(out))
        except OSError:
            pass
        return out

    def webhook_status(self) -> dict[str, Any] | None:
        """The last registration's outcome (``up`` records it), or None when it never ran."""
        try:
            return json.loads(self.webhook_state_file.read_text())
        except (OSError, ValueError):
            return None

    # --- the processes ---------------------------------------------------------------------------
    def procs(self, service: str) -> list[Proc]:
        s = self.settings
        if service == "s3":
            ports = seaweed_ports(s)
            data = self.home / "seaweedfs"
            cmd = [
                _bin("weed"),
                "mini",
                f"-dir={data}",
                f"-ip={s.host}",
                f"-ip.bind={s.host}",
                f"-s3.port={ports['s3']}",
                f"-master.port={ports['master']}",
                f"-master.port.grpc={ports['master.grpc']}",
                f"-volume.port={ports['volume']}",
                f"-volume.port.grpc={ports['volume.grpc']}",
                f"-filer.port={ports['filer']}",
                f"-filer.port.grpc={ports['filer.grpc']}",
                f"-s3.port.grpc={ports['s3.grpc']}",
                f"-admin.port={ports['admin']}",
                f"-admin.port.grpc={ports['admin.grpc']}",
                # Not needed by rtml: off, so they open no port.
                "-s3.port.iceberg=0",
                "-s3.port.lance=0",
                "-webdav=false",
                "-admin.ui=false",
            ]
            # With AWS_ACCESS_KEY_ID/SECRET in its environment weed mini creates that identity and
            # then refuses unsigned or wrongly signed requests, as a real S3 does.
            return [Proc("seaweedfs", "s3", cmd, ports["s3"], self.base_env(), lambda: check_s3(s, [])["ok"])]
        if service == "mlflow":
            (self.home / "mlflow").mkdir(parents=True, exist_ok=True)
            cmd = [
                _bin("mlflow"),
                "server",
                "--backend-store-uri",
                sqlalchemy_uri(s.mlflow_backend_store_uri),
                "--artifacts-destination",
                s.mlflow_artifacts_uri,
                "--serve-artifacts",
                "--host",
                s.host,
                "--port",
                str(s.mlflow_port),
                "--workers",
                str(s.mlflow_workers),
            ]
            env = self.base_env()
            # MLflow's job runner (huey consumers for GenAI judges and trace rollups) is not used by
            # rtml and costs ~8 processes on a 2-core box; a user can still turn it on.
            env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
            env.update(self.mlflow_webhook_env(env))
            return [Proc("mlflow", "mlflow", cmd, s.mlflow_port, env, lambda: check_mlflow(s)["ok"])]
        if service == "airflow":
            env = self.airflow_env()
            airflow = _bin("airflow")
            out = [
                Proc(
                    "airflow-api-server",
                    "airflow",
                    [airflow, "api-server", "--host", s.host, "--port", str(s.airflow_port)],
                    s.airflow_port,
                    env,
                    self._airflow_api_ready,
                )
            ]
            for comp in AIRFLOW_COMPONENTS[1:]:
                cmd = [airflow, comp]
                if comp in ("scheduler", "triggerer"):
                    # Their log servers bind every interface (no host setting); all components share
                    # this machine's log folder, so the api-server reads task logs from disk instead.
                    cmd.append("--skip-serve-logs")
                out.append(Proc(f"airflow-{comp}", "airflow", cmd, None, env, None))
            return out
        if service == "serve":
            # The scoring endpoint: it answers /health at once and becomes ready when a champion exists.
            cmd = [_bin("rtml"), "serve"]
            return [Proc("rtml-serve", "serve", cmd, s.serve_port, self.base_env(), lambda: check_serve(s)["ok"])]
        if service == "kafka":
            # One KRaft process (broker + controller) on loopback; jars and storage: _kafka_prepare.
            from rtml.platform.kafka import KafkaError, broker_command

            try:
                cmd = broker_command(s)
            except KafkaError as err:
                raise StackError(str(err)) from None
            return [Proc("kafka", "kafka", cmd, s.kafka_port, self.base_env(), lambda: check_kafka(s)["ok"])]
        raise StackError(f"unknown service {service!r}")

    def _airflow_api_ready(self) -> bool:
        import httpx

        try:
            return (
                httpx.get(f"{self.settings.airflow_url.rstrip('/')}/api/v2/version", timeout=5).status_code
                == 200
            )
        except httpx.HTTPError:
            return False

    # --- what the supervisor runs ----------------------------------------------------------------
    def programs(self) -> dict[str, dict[str, Any]]:
        """The supervisor's view of each program (pid, state, restarts, last exit); {} when none runs."""
        return supervisor.read_state(self.home).get("programs", {})

    def running_pid(self, name: str) -> int | None:
        """The pid of ``name`` if this state folder's supervisor runs it now."""
        pid = self.programs().get(name, {}).get("pid")
        return int(pid) if pid else None

    def _recorded(self, name: str) -> bool:
        return (supervisor.programs_dir(self.home) / f"{name}.json").exists()

    # --- start -----------------------------------------------------------------------------------
    def _spawn(self, proc: Proc) -> None:
        self.logs.mkdir(parents=True, exist_ok=True)
        supervisor.start_supervisor(self.home, env=self.base_env())
        supervisor.write_program(self.home, proc.name, proc.cmd, proc.env, self.logs / f"{proc.name}.log", self.home)

    def _wait(self, proc: Proc, deadline: float, since: float) -> None:
        while True:
            info = self.programs().get(proc.name, {})
            last = info.get("last_exit")
            if last and last["at"] >= since:
                # It died while starting: stop the supervisor's retries and say why.
                supervisor.remove_program(self.home, proc.name)
                raise StackError(
                    f"{proc.name} {last['reason']} while starting; see its log:\n" + self.log_tail(proc.name)
                )
            answered = info.get("pid") and (proc.port is None or port_open(self.settings.host, proc.port))
            if answered and (proc.ready is None or proc.ready()):
                return
            if time.monotonic() > deadline:
                raise StackError(
                    f"{proc.name} did not become healthy in time; see its log:\n" + self.log_tail(proc.name)
                )
            time.sleep(0.5)

    def log_tail(self, name: str, lines: int = 30) -> str:
        path = self.logs / f"{name}.log"
        try:
            text = path.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            return f"(no log at {path})"
        return f"--- {path} (last {len(text)} lines)\n" + "\n".join(text)

    def _start(self, proc: Proc) -> str:
        """Start ``proc`` unless it already runs; returns 'started' or 'running'."""
        if self.running_pid(proc.name) is not None:
            return "running"
        if proc.port is not None and not proc.shared_port and port_open(self.settings.host, proc.port):
            raise StackError(
                f"port {proc.port} on {self.settings.host} is taken by a process this stack did not start "
                f"(needed by {proc.name}); stop it or choose another port in the RTML_* settings"
            )
        self._spawn(proc)
        return "started"

    def _airflow_migrate(self, env: dict[str, str], timeout: float) -> None:
        self.airflow_home.mkdir(parents=True, exist_ok=True)
        if self.settings.airflow_db_uri.startswith("sqlite:///"):
            Path(self.settings.airflow_db_uri.removeprefix("sqlite:///")).parent.mkdir(
                parents=True, exist_ok=True
            )
        self.logs.mkdir(parents=True, exist_ok=True)
        with open(self.logs / "airflow-db-migrate.log", "ab") as log:
            result = subprocess.run(
                [_bin("airflow"), "db", "migrate"],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=str(self.home),
                timeout=timeout,
            )
        if result.returncode != 0:
            raise StackError(
                "airflow db migrate failed; see its log:\n" + self.log_tail("airflow-db-migrate")
            )

    def _kafka_prepare(self, timeout: float) -> None:
        """Jars from Maven Central (cached per machine), config, storage format before the first start."""
        from rtml.platform.kafka import KafkaError, prepare_broker

        self.logs.mkdir(parents=True, exist_ok=True)
        try:
            prepare_broker(self.settings, timeout=timeout, log=self.logs / "kafka-prepare.log")
        except (KafkaError, subprocess.TimeoutExpired) as err:
            raise StackError(f"{err}\n(see {self.logs / 'kafka-prepare.log'})") from None

    def up(self, services: Iterable[str] | None = None, timeout: float = 240) -> dict[str, Any]:
        """Start the services (and what they need) unless running; wait until each is healthy."""
        deadline = time.monotonic() + timeout
        self.home.mkdir(parents=True, exist_ok=True)
        self._claim_profile()
        actions: dict[str, str] = {}
        for service in self.services(services):
            self._before_service(service, deadline)
            procs = self.procs(service)
            if service == "airflow" and any(self.running_pid(p.name) is None for p in procs):
                self._airflow_migrate(procs[0].env, timeout=max(30.0, deadline - time.monotonic()))
            if service == "kafka" and self.running_pid("kafka") is None:
                self._kafka_prepare(timeout=max(60.0, deadline - time.monotonic()))
            since = time.time()
            for proc in procs:
                actions[proc.name] = self._start(proc)
            for proc in procs:
                self._wait(proc, deadline, since)
            if service == "s3":
                self._ensure_buckets()
                self._wait_s3_rw(deadline)
            if service == "airflow":
                self._wait_airflow_components(deadline)
            self._after_service(service, deadline)
        result: dict[str, Any] = {"ok": True, "actions": actions}
        if {"mlflow", "airflow"} <= set(self.services(services)):
            # Both healthy now: MLflow can deliver registry events to the plugin's receiver.
            result["webhook"] = self.register_webhook()
        result["services"] = self.status()["services"]
        return result

    # --- profile hooks -----------------------------------------------------------------------------
    @property
    def profile_file(self) -> Path:
        return self.home / "profile"

    def recorded_profile(self) -> str | None:
        """The profile this state folder was started with (None before the first ``up``)."""
        try:
            return self.profile_file.read_text().strip() or None
        except OSError:
            return None

    def _claim_profile(self) -> None:
        """One state folder, one profile: its databases and secrets differ between the two."""
        recorded = self.recorded_profile()
        if recorded is not None and recorded != self.profile:
            raise StackError(
                f"{self.home} holds a {recorded!r} stack; use `--profile {recorded}` or another RTML_HOME"
            )
        if recorded is None:
            self.profile_file.write_text(self.profile + "\n")

    def _before_service(self, service: str, deadline: float) -> None:
        """Called before ``service``'s processes start (the distributed profile creates databases)."""

    def _after_service(self, service: str, deadline: float) -> None:
        """Called once ``service`` is healthy (the distributed profile creates MLflow users)."""

    def _mlflow_auth(self) -> tuple[str, str] | None:
        """Credentials ``status`` checks MLflow with (the embedded MLflow has no auth)."""
        return None

    def _s3_auth(self) -> tuple[str, str] | None:
        """Keys the stack itself creates buckets and checks the store with (None: the environment's,
        which the embedded store is started with)."""
        return None

    def _ensure_buckets(self) -> None:
        from rtml.storage import ensure_bucket

        for bucket in (self.settings.lake_bucket, self.settings.mlflow_bucket):
            ensure_bucket(bucket, self.settings, auth=self._s3_auth())

    def _wait_s3_rw(self, deadline: float) -> None:
        """Wait until an object can be written and read back: S3 answers listings before the volume
        server has registered with the master, and reads of existing data fail until it has."""
        from rtml.storage import s3_client

        client = s3_client(self.settings, auth=self._s3_auth())
        key = "_rtml/stack-probe"
        while True:
            try:
                client.put_object(Bucket=self.settings.lake_bucket, Key=key, Body=b"ok")
                if client.get_object(Bucket=self.settings.lake_bucket, Key=key)["Body"].read() == b"ok":
                    client.delete_object(Bucket=self.settings.lake_bucket, Key=key)
                    return
            except Exception as err:  # retried until the deadline; the last error is reported
                last = err
                if time.monotonic() > deadline:
                    raise StackError(f"S3 store does not read/write objects yet: {last}") from None
            time.sleep(0.5)

    def _wait_airflow_components(self, deadline: float) -> None:
        while True:
            health = airflow_health(self.settings)
            if health["ok"] and health.get("components"):
                return
            if time.monotonic() > deadline:
                raise StackError(f"Airflow components not healthy in time: {health}")
            time.sleep(1)

    # --- stop ------------------------------------------------------------------------------------
    @staticmethod
    def _kill_family(family: list[Any], grace: float) -> None:
        """What outlived the supervisor's stop (it should be nothing): SIGTERM, then SIGKILL."""
        import psutil

        for p in family:
            try:
                p.terminate()
            except psutil.NoSuchProcess:
                pass
        _, alive = psutil.wait_procs(family, timeout=grace)
        for p in alive:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(alive, timeout=5)

    def down(self, services: Iterable[str] | None = None, grace: float = 10) -> dict[str, Any]:
        """Stop what this state folder's supervisor runs (whole process groups; SIGKILL after ``grace`` s)."""
        wanted = set(services or self.service_names)
        stopped: dict[str, str] = {}
        running = self.programs()
        for service in [s for s in reversed(self.service_names) if s in wanted]:
            for proc in reversed(self._proc_names(service)):
                if not self._recorded(proc.name) and proc.name not in running:
                    continue
                stopped[proc.name] = "stopped" if running.get(proc.name, {}).get("pid") else "was not running"
                supervisor.remove_program(self.home, proc.name)
        if list(supervisor.programs_dir(self.home).glob("*.json")):
            # Other services keep running: the supervisor stops these (their groups, then SIGKILL).
            deadline = time.monotonic() + grace + 10
            while any(self.running_pid(n) for n in stopped) and time.monotonic() < deadline:
                time.sleep(0.2)
        else:
            sup = supervisor.supervisor_pid(self.home)
            family = process_family([sup] if sup else [])
            supervisor.stop_supervisor(self.home, timeout=grace + 20)
            self._kill_family([p for p in family if p.is_running()], grace=2)
        return {"ok": True, "stopped": stopped}

    def _proc_names(self, service: str) -> list[Proc]:
        # Names only (no secrets generated, no binaries required) for status/down.
        if service == "s3":
            return [Proc("seaweedfs", "s3", [], self.settings.s3_port)]
        if service == "mlflow":
            return [Proc("mlflow", "mlflow", [], self.settings.mlflow_port)]
        if service == "serve":
            return [Proc("rtml-serve", "serve", [], self.settings.serve_port)]
        if service == "kafka":
            return [Proc("kafka", "kafka", [], self.settings.kafka_port)]
        return [
            Proc(f"airflow-{c}", "airflow", [], self.settings.airflow_port if c == "api-server" else None)
            for c in AIRFLOW_COMPONENTS
        ]

    # --- status ----------------------------------------------------------------------------------
    def pids_started(self) -> dict[str, int]:
        """Live processes started by this stack (name -> pid), the supervisor included."""
        out = {}
        sup = supervisor.supervisor_pid(self.home)
        if sup:
            out["supervisor"] = sup
        for service in self.service_names:
            for proc in self._proc_names(service):
                pid = self.running_pid(proc.name)
                if pid is not None:
                    out[proc.name] = pid
        return out

    def status(self) -> dict[str, Any]:
        s = self.settings
        programs = self.programs()
        result: dict[str, Any] = {
            "profile": self.profile,
            "home": str(self.home),
            "logs": str(self.logs),
            "supervisor": supervisor.supervisor_pid(self.home),
            "services": {},
            # Per process: pid, state, restarts, last exit (reason, time) as the supervisor saw them.
            "processes": {
                name: {k: info.get(k) for k in ("pid", "state", "restarts", "last_exit")}
                for name, info in programs.items()
            },
        }
        services = result["services"]
        if s.storage == "s3":
            health = check_s3(s, auth=self._s3_auth())
            services["s3"] = {
                "url": s.s3_endpoint_url,
                "pid": self.running_pid("seaweedfs"),
                "healthy": health["ok"],
                "detail": health.get("error") or f"buckets: {', '.join(health.get('buckets', []))}",
            }
        else:
            services["s3"] = {
                "url": s.lake_uri,
                "pid": None,
                "healthy": True,
                "detail": "storage=local (folder)",
            }
        auth = self._mlflow_auth()
        health = check_mlflow(s) if auth is None else check_mlflow(s, auth=auth)
        hook = self.webhook_status()
        hook_note = "" if hook is None else (
            f"webhook {hook.get('action', 'registered')}: {hook.get('url')}" if hook.get("ok")
            else f"webhook NOT registered ({hook.get('url')}): {hook.get('error')}")
        services["mlflow"] = {
            "url": s.mlflow_tracking_uri,
            "ui": f"{s.mlflow_tracking_uri.rstrip('/')}/#/models",
            "pid": self.running_pid("mlflow"),
            "healthy": health["ok"],
            "detail": health.get("error") or hook_note,
            "webhook": hook,
        }
        health = airflow_health(s)
        comps = health.get("components", {})
        services["airflow"] = {
            "url": s.airflow_url,
            "pid": {p.name: self.running_pid(p.name) for p in self._proc_names("airflow")},
            "healthy": health["ok"],
            "detail": health.get("error") or ", ".join(f"{k}={v}" for k, v in comps.items()),
            "username": s.airflow_username,
            "password": self.airflow_password(),
        }
        health = check_serve(s)
        services["serve"] = {
            "url": s.serve_url,
            "pid": self.running_pid("rtml-serve"),
            "healthy": health["ok"],
            "detail": health.get("error") or health.get("detail", ""),
        }
        kafka_pid = self.running_pid("kafka")
        health = check_kafka(s, timeout=1.0) if kafka_pid or s.source == "kafka" else {"ok": False, "error": "not started"}
        services["kafka"] = {
            "url": s.kafka_bootstrap,
            "pid": kafka_pid,
            "healthy": health["ok"],
            "detail": health.get("error") or f"{health.get('topics', 0)} topic(s)",
        }
        for name, info in services.items():
            procs = [p.name for p in self._proc_names(name)]
            info["restarts"] = sum(programs.get(p, {}).get("restarts", 0) for p in procs)
            exits = [(programs[p]["last_exit"], p) for p in procs if programs.get(p, {}).get("last_exit")]
            last = max(exits, key=lambda e: e[0]["at"]) if exits else None
            info["last_exit"] = f"{last[1]} {last[0]['reason']} at {_clock(last[0]['at'])}" if last else None
        # The endpoint counts only once started: `up --only s3,mlflow,airflow` is a healthy stack.
        # So does Kafka, unless it is the configured source.
        def counts(k: str, v: dict[str, Any]) -> bool:
            return k not in ("serve", *ON_DEMAND) or bool(v["pid"]) or s.source == k

        result["ok"] = all(v["healthy"] for k, v in services.items() if counts(k, v))
        return result


def _clock(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


# --- helpers for tests, scripts and benchmarks ---------------------------------------------------
def _ephemeral_range() -> tuple[int, int]:
    """The ports the kernel hands to outgoing connections (Linux), or the IANA range elsewhere."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 49152, 65535


def free_port_block(size: int, host: str = "127.0.0.1", start: int = 20000, end: int = 60000) -> int:
    """A base port such that ``base .. base+size-1`` are all free right now on ``host``.

    Chosen outside the kernel's ephemeral range where possible: a port free now but in that range
    can be taken by any outgoing connection (to PostgreSQL, MLflow...) before the service binds it.
    """
    import random

    low, high = _ephemeral_range()
    ranges = [(a, b) for a, b in ((start, min(end, low)), (max(start, high + 1), end)) if b - a > size]
    if not ranges:
        ranges = [(start, end)]  # the whole range is ephemeral here: the best we can do
    rng = random.Random(os.getpid() ^ time.time_ns())
    for _ in range(200):
        a, b = rng.choice(ranges)
        base = rng.randrange(a, b - size)
        socks = []
        try:
            for port in range(base, base + size):
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                socks.append(s)
                s.bind((host, port))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise StackError(f"no block of {size} free ports found on {host}")
