"""docker-compose.yml checked statically (no Docker engine here): structure, pins, health, env names."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import yaml

from rtml.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
DOCKERFILE = ROOT / "Dockerfile"

EXPECTED_SERVICES = {
    "postgres",
    "redis",
    "minio",
    "minio-init",
    "s3-policies",
    "mlflow",
    "mlflow-init",
    "airflow-init",
    "airflow-apiserver",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-triggerer",
    "airflow-worker",
    "rtml-serve",
}
ONE_SHOT = {"minio-init", "s3-policies", "mlflow-init", "airflow-init"}
# ${VAR}, ${VAR:-default}, ${VAR:?error}; "$${...}" is an escaped shell variable, not compose's.
INTERPOLATION = re.compile(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|JWT|_KEY\b|SECRET_KEY", re.I)


@pytest.fixture(scope="module")
def text() -> str:
    return COMPOSE.read_text()


@pytest.fixture(scope="module")
def compose(text) -> dict:
    data = yaml.safe_load(text)
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def services(compose) -> dict:
    return compose["services"]


def _env(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {k: str(v) for k, v in env.items()}


def test_expected_services(services):
    assert EXPECTED_SERVICES <= set(services)


def test_images_are_pinned(services):
    for name, svc in services.items():
        if "build" in svc:
            assert svc["build"]["dockerfile"] == "Dockerfile", name
            assert svc["image"].startswith("rtml:"), name
            continue
        image = svc["image"]
        assert ":" in image, f"{name}: image {image} has no tag"
        tag = image.rsplit(":", 1)[1]
        assert tag != "latest" and re.search(r"\d", tag), f"{name}: image {image} is not pinned"


def test_dockerfile_base_is_pinned_and_installs_the_lock():
    text = DOCKERFILE.read_text()
    base = re.search(r"^FROM\s+(\S+)", text, re.M).group(1)
    assert base.startswith("python:3.11") and base != "python:latest"
    assert "requirements.txt" in text and "pip install" in text


def test_long_running_services_have_healthchecks(services):
    for name, svc in services.items():
        if name in ONE_SHOT:
            assert svc.get("restart") == "no", name
            continue
        check = svc.get("healthcheck")
        assert check and check.get("test"), f"{name} has no healthcheck"


def test_depends_on_uses_conditions(services):
    allowed = {"service_healthy", "service_completed_successfully", "service_started"}
    for name, svc in services.items():
        deps = svc.get("depends_on") or {}
        assert isinstance(deps, dict), f"{name}: depends_on must use conditions"
        for dep, spec in deps.items():
            assert dep in services, f"{name} depends on unknown {dep}"
            assert dep != name
            assert spec["condition"] in allowed, f"{name} -> {dep}"
            if dep in ONE_SHOT:
                assert spec["condition"] == "service_completed_successfully"
            elif "healthcheck" in services[dep]:
                assert spec["condition"] == "service_healthy", f"{name} -> {dep}"


def test_topology(services):
    airflow = [n for n in services if n.startswith("airflow-") and n != "airflow-init"]
    for name in airflow:
        env = _env(services[name])
        assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor", name
        assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql"), name
        assert env["AIRFLOW__CELERY__BROKER_URL"].startswith("redis://:${REDIS_PASSWORD:?"), name
        assert env["AIRFLOW__CELERY__BROKER_URL"].endswith("@redis:6379/0"), name
        assert env["AIRFLOW__CORE__DAGS_FOLDER"] == "/opt/rtml/dags"
        assert env["AIRFLOW__CORE__PLUGINS_FOLDER"] == "/opt/rtml/plugins"
        assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://airflow-apiserver:8080/execution/"
        assert "${AIRFLOW__API_AUTH__JWT_SECRET" in env["AIRFLOW__API_AUTH__JWT_SECRET"]
        for dep in ("postgres", "redis", "airflow-init"):
            assert dep in services[name]["depends_on"], f"{name} should wait for {dep}"
    mlflow = services["mlflow"]
    command = " ".join(mlflow["command"]) if isinstance(mlflow["command"], list) else mlflow["command"]
    assert "--app-name basic-auth" in command
    assert "postgresql" in command and "--artifacts-destination" in command and "s3://" in command
    assert "MLFLOW_AUTH_ADMIN_PASSWORD" in _env(mlflow)
    assert "mc mb" in " ".join(services["minio-init"]["command"])
    assert services["rtml-serve"]["command"] == ["rtml", "serve"]
    init = Path(ROOT / "docker/postgres/init-roles.sh").read_text()
    assert 'CREATE DATABASE "airflow"' in init and 'CREATE DATABASE "mlflow"' in init


def test_rtml_variables_are_settings_fields(text, services):
    fields = {f"RTML_{name.upper()}" for name in Settings.model_fields}
    used = set(re.findall(r"\bRTML_[A-Z0-9_]+\b", text)) - {"RTML_IMAGE_TAG"}
    for svc in services.values():
        used |= {k for k in _env(svc) if k.startswith("RTML_")}
    unknown = sorted(used - fields)
    assert not unknown, f"RTML_* names that are not Settings fields: {unknown}"
    assert {"RTML_MLFLOW_TRACKING_URI", "RTML_S3_ENDPOINT_URL", "RTML_LAKE_BUCKET"} <= used


def test_no_secret_literals(services):
    for name, svc in services.items():
        for key, value in _env(svc).items():
            if SECRET_NAME.search(key) and not key.endswith(("_FILE", "_PATH")):
                assert INTERPOLATION.fullmatch(value), (
                    f"{name}.{key} must come from the environment, not {value!r}"
                )
                assert INTERPOLATION.fullmatch(value).group(2) == ":?", f"{name}.{key} must be required (:?)"
            for m in re.finditer(r"://[^:/@\s]+:([^@\s]+)@", value):
                assert m.group(1).startswith("${") or m.group(1).startswith("$$"), (
                    f"{name}.{key} embeds a password"
                )


def test_env_example_covers_every_variable(text):
    example = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            example[key.strip()] = value.strip()
    code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    matches = list(INTERPOLATION.finditer(code))
    referenced = {m.group(1) for m in matches}
    required = {m.group(1) for m in matches if m.group(2) == ":?"}
    missing = sorted(referenced - set(example))
    assert not missing, f".env.example lacks {missing}"
    assert {"POSTGRES_PASSWORD", "MLFLOW_AUTH_ADMIN_PASSWORD", "MINIO_ROOT_PASSWORD", "S3_SERVE_SECRET_KEY",
            "AIRFLOW_DB_PASSWORD"} <= required
    for key in required:  # a required secret: listed, but never with a value in the repository
        assert example[key] == "", f".env.example must not hold a value for secret {key}"
    assert not (ROOT / ".env").exists() or ".env" in (ROOT / ".gitignore").read_text().split()


# --- no drift: compose sets what `rtml stack up --profile distributed` sets ------------------------
# The profile's environment is built twice (different homes, hosts, ports, folders, buckets, secrets):
# a value equal in both is a constant compose must repeat; one that differs (a path, a URL, a secret)
# compose must set too, to its own value. Compose services that run each profile process:
PROFILE_TO_COMPOSE = {
    "airflow": ["airflow-init", "airflow-apiserver", "airflow-scheduler", "airflow-dag-processor",
                "airflow-triggerer", "airflow-worker"],
    "mlflow": ["mlflow"],
    "serve": ["rtml-serve"],
}
# Differences on purpose, each with its reason.
SAME_NAME_OTHER_VALUE = {
    # Natively its port would clash between two stacks on one machine; compose's healthcheck uses it.
    "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK",
}
NATIVE_ONLY_OPTIONS = {
    # Workers share one machine natively and need distinct names; containers have distinct hostnames,
    # so Celery's default name (celery@<hostname>) already is.
    "--celery-hostname",
}


def _profile_stack(tmp_path, n: int):
    from rtml.platform.distributed import DistributedConfig, DistributedStack

    settings = Settings(
        home=tmp_path / f"home{n}", host=f"127.0.0.{n}", s3_port=30000 + 100 * n, mlflow_port=30010 + 100 * n,
        airflow_port=30011 + 100 * n, serve_port=30014 + 100 * n, kafka_port=30015 + 100 * n,
        dags_folder=f"/dags{n}", plugins_folder=f"/plugins{n}", mlflow_bucket=f"bucket{n}",
    )
    config = DistributedConfig(postgres_url=f"postgresql://user{n}@db{n}:5432", postgres_db_prefix=f"p{n}",
                               celery_redis_port=30017 + 100 * n)
    return DistributedStack(settings, config)


def _profile_envs(stack) -> dict[str, dict[str, str]]:
    return {
        "airflow": stack.airflow_env(),
        "mlflow": stack.procs("mlflow")[0].env,
        "serve": stack.procs("serve")[0].env,
    }


@pytest.fixture(scope="module")
def profiles(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    # Only what the profile sets: not this shell's variables (base_env starts from os.environ).
    for key in list(os.environ):
        if key not in ("PATH", "HOME"):
            mp.delenv(key)
    tmp = tmp_path_factory.mktemp("profiles")
    try:
        stacks, envs = [], []
        for n in (1, 2):
            # The caller's S3 keys: no service of the profile may get them (each has its own identity).
            mp.setenv("AWS_ACCESS_KEY_ID", f"key-{n}")
            mp.setenv("AWS_SECRET_ACCESS_KEY", f"secret-{n}")
            stacks.append(_profile_stack(tmp, n))
            envs.append(_profile_envs(stacks[-1]))
        yield stacks, envs
    finally:
        mp.undo()


def _dockerfile_env() -> dict[str, str]:
    out: dict[str, str] = {}
    for m in re.finditer(r"^ENV\s+((?:.*\\\n)*.*)$", DOCKERFILE.read_text(), re.M):
        out.update(dict(re.findall(r"(\w+)=(\S+)", m.group(1))))
    return out


def _resolve(value: str) -> str | None:
    """A compose value with ${VAR:-default} replaced by the default; None if it needs a variable."""
    if re.search(r"(?<!\$)\$\{\w+(?::?\?[^}]*)?\}", value):
        return None
    return INTERPOLATION.sub(lambda m: m.group(3) or "", value)


def _compared(env: dict[str, str]) -> set[str]:
    # RTML_* are Settings fields (test_rtml_variables_are_settings_fields); PATH/HOME are the machine's.
    return {k for k in env if not k.startswith("RTML_") and k not in ("PATH", "HOME")}


def test_every_profile_variable_is_set_by_compose_with_the_same_constant(profiles, services):
    _, (one, two) = profiles
    image_env = _dockerfile_env()
    problems = []
    for kind, names in PROFILE_TO_COMPOSE.items():
        for name in names:
            env = {**(image_env if "build" in services[name] else {}), **_env(services[name])}
            for key in sorted(_compared(one[kind])):
                if key not in env:
                    problems.append(f"{name}: {key} is set by the profile, not by compose")
                    continue
                if one[kind][key] == two[kind].get(key) and key not in SAME_NAME_OTHER_VALUE:
                    got = _resolve(env[key])
                    if got != one[kind][key]:
                        problems.append(f"{name}: {key}={env[key]!r}, the profile sets {one[kind][key]!r}")
    assert not problems, "\n".join(problems)
    assert set(_compared(one["airflow"])) >= {"AIRFLOW__CORE__FERNET_KEY", "AIRFLOW__CELERY__BROKER_URL",
                                              "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"}


def test_each_service_logs_in_to_mlflow_as_its_own_user(profiles, services):
    from rtml.platform.distributed import MLFLOW_USER_PASSWORD_ENV, MLFLOW_USERS

    _, (env, _) = profiles
    for kind, names in PROFILE_TO_COMPOSE.items():
        user = env[kind].get("MLFLOW_TRACKING_USERNAME")
        for name in names:
            got = _env(services[name])
            if user is None:  # the MLflow server: no client login
                assert "MLFLOW_TRACKING_USERNAME" not in got, name
                continue
            assert user in MLFLOW_USERS and got["MLFLOW_TRACKING_USERNAME"] == user, name
            assert got["MLFLOW_TRACKING_PASSWORD"].startswith("${" + MLFLOW_USER_PASSWORD_ENV[user] + ":?"), name
    # mlflow-init creates exactly the profile's users, from these variables.
    init = services["mlflow-init"]
    assert init["command"][:4] == ["python", "-m", "rtml.platform.distributed", "mlflow-users"]
    assert set(_env(init)) == {"MLFLOW_AUTH_ADMIN_PASSWORD", *MLFLOW_USER_PASSWORD_ENV.values()}
    assert set(MLFLOW_USER_PASSWORD_ENV) == set(MLFLOW_USERS)


def _options(cmd: list[str]) -> tuple[list[str], dict[str, str | bool]]:
    """A command as (program and subcommands, {option: value or True})."""
    head, opts, i = [], {}, 0
    while i < len(cmd) and not cmd[i].startswith("--"):
        head.append(Path(cmd[i]).name if i == 0 else cmd[i])
        i += 1
    while i < len(cmd):
        if i + 1 < len(cmd) and not cmd[i + 1].startswith("--"):
            opts[cmd[i]], i = cmd[i + 1], i + 2
        else:
            opts[cmd[i]], i = True, i + 1
    return head, opts


def _compose_command(service: dict) -> list[str]:
    import shlex

    cmd = service["command"]
    if cmd[:2] == ["/bin/sh", "-c"]:
        cmd = shlex.split(cmd[2])
        cmd = cmd[1:] if cmd[0] == "exec" else cmd
    return [str(c) for c in cmd]


def test_every_command_matches_the_profile(profiles, services):
    (s1, s2), _ = profiles
    pairs = [(p1, p2) for service in ("mlflow", "airflow", "serve")
             for p1, p2 in zip(s1.procs(service), s2.procs(service), strict=True)]
    compose_for = {"mlflow": "mlflow", "airflow-api-server": "airflow-apiserver", "airflow-scheduler": "airflow-scheduler",
                   "airflow-dag-processor": "airflow-dag-processor", "airflow-triggerer": "airflow-triggerer",
                   "airflow-worker-1": "airflow-worker", "airflow-worker-2": "airflow-worker",
                   "rtml-serve-1": "rtml-serve", "rtml-serve-2": "rtml-serve"}
    assert {p.name for p, _ in pairs} == set(compose_for)
    for p1, p2 in pairs:
        head, opts = _options(p1.cmd)
        _, other = _options(p2.cmd)
        c_head, c_opts = _options(_compose_command(services[compose_for[p1.name]]))
        assert c_head == head, (p1.name, c_head, head)
        for opt, value in opts.items():
            if opt in NATIVE_ONLY_OPTIONS:
                continue
            assert opt in c_opts, f"{p1.name}: compose lacks {opt}"
            if value == other.get(opt):  # a constant, not a host/port/path
                assert c_opts[opt] == value, f"{p1.name}: {opt} {c_opts[opt]!r} in compose, {value!r} natively"


def test_redis_and_mlflow_auth_settings_match_the_profile(profiles, services):
    import configparser

    from rtml.platform.distributed import DistributedConfig, auth_config_text

    (stack, _), _ = profiles
    stack._write_redis_config()
    directives = dict(line.split(" ", 1) for line in stack.redis_config.read_text().splitlines() if line)
    command = " ".join(_compose_command(services["redis"]))
    for key in ("requirepass", "appendonly", "appendfsync", "save"):
        assert f"--{key} " in command, f"compose's redis lacks --{key}"
        if key != "requirepass":
            assert f"--{key} {directives[key]}" in command, key
    assert "--requirepass $$REDIS_PASSWORD " in command  # compose's $$: the container's variable
    assert "REDISCLI_AUTH" in services["redis"]["healthcheck"]["test"][1]

    def ini(text: str) -> dict[str, str]:
        parser = configparser.ConfigParser()
        parser.read_string(text)
        return {k: v for k, v in parser["mlflow"].items() if k != "database_uri"}

    assert ini((ROOT / "docker/mlflow/basic_auth.ini").read_text()) == ini(auth_config_text("x"))
    assert services["airflow-worker"]["deploy"]["replicas"] == DistributedConfig().celery_workers


# --- least privilege: each service its own S3 identity and PostgreSQL role, natively and in compose ---
def _grants_of_policy(policy: dict) -> set[tuple[str, str, str]]:
    """A MinIO policy read back as (action, bucket, prefix) triples (rtml.platform.access.Grant)."""
    from rtml.platform.access import _OBJECT_ACTIONS

    out = set()
    for st in policy["Statement"]:
        assert st["Effect"] == "Allow"
        if st["Action"] == ["s3:ListAllMyBuckets"]:
            continue
        (resource,) = st["Resource"]
        path = resource.removeprefix("arn:aws:s3:::")
        if "s3:ListBucket" in st["Action"]:
            prefixes = st.get("Condition", {}).get("StringLike", {}).get("s3:prefix", ["*"])
            out |= {("List", path, p.removesuffix("*")) for p in prefixes}
        else:
            action = next(a for a, acts in _OBJECT_ACTIONS.items() if acts == st["Action"])
            bucket, _, prefix = path.partition("/")
            out.add((action, bucket, prefix.removesuffix("*")))
    return out


def _grants_of_seaweed(actions: list[str]) -> set[tuple[str, str, str]]:
    out = set()
    for a in actions:
        action, _, target = a.partition(":")
        bucket, _, prefix = target.partition("/")
        out.add((action, bucket, prefix.removesuffix("*")))
    return out


def test_each_service_reaches_the_store_as_its_own_identity(profiles, services, tmp_path, monkeypatch):
    import json

    from rtml.platform.access import S3_ADMIN, S3_IDENTITY_OF, S3_SECRET_ENV, main

    (stack, _), (env, _) = profiles
    for kind, names in PROFILE_TO_COMPOSE.items():
        identity = S3_IDENTITY_OF[kind]
        assert env[kind]["AWS_ACCESS_KEY_ID"] == identity  # natively: not the caller's key-1
        for name in names:
            got = _env(services[name])
            assert got["AWS_ACCESS_KEY_ID"] == identity, name
            assert got["AWS_SECRET_ACCESS_KEY"].startswith("${" + S3_SECRET_ENV[identity] + ":?"), name
    # MinIO's root user: only MinIO and its init service know it; no rtml process gets the admin.
    for name, svc in services.items():
        uses_root = {"MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD"} & set(_env(svc))
        assert bool(uses_root) == (name in ("minio", "minio-init")), name
    # minio-init makes exactly the profile's identities, each from its variable, with s3-policies' document.
    init = services["minio-init"]
    command = init["command"][0]
    assert set(_env(init)) >= set(S3_SECRET_ENV.values())
    for identity, var in S3_SECRET_ENV.items():
        assert f'user {identity} "$${var}"' in command
    for step in ('mc admin user add rtml "$$1" "$$2"', 'mc admin policy create rtml "$$1" "/policies/$$1.json"',
                 'mc admin policy attach rtml "$$1" --user "$$1"'):
        assert step in command
    policies = services["s3-policies"]
    assert policies["command"] == ["python", "-m", "rtml.platform.access", "minio-policies", "/policies"]
    assert "minio-policies:/policies" in policies["volumes"] and "minio-policies:/policies:ro" in init["volumes"]
    assert init["depends_on"]["s3-policies"]["condition"] == "service_completed_successfully"
    # The policies s3-policies writes grant what the native identities get (same settings, same spec).
    for key, value in _env(policies).items():
        monkeypatch.setenv(key, _resolve(value))
    monkeypatch.setenv("RTML_LAKE_BUCKET", stack.settings.lake_bucket)
    monkeypatch.setenv("RTML_MLFLOW_BUCKET", stack.settings.mlflow_bucket)
    assert main(["minio-policies", str(tmp_path)]) == 0
    stack._write_s3_config()
    native = {i["name"]: i["actions"] for i in json.loads(stack.s3_config.read_text())["identities"]}
    assert set(native) == {S3_ADMIN, *S3_SECRET_ENV}
    for identity in S3_SECRET_ENV:
        written = json.loads((tmp_path / f"{identity}.json").read_text())
        assert _grants_of_policy(written) == _grants_of_seaweed(native[identity]), identity


def _url_user(url: str) -> tuple[str | None, str | None, str]:
    from urllib.parse import urlsplit

    parts = urlsplit(url.removeprefix("db+"))
    return parts.username, parts.password, parts.path.lstrip("/")


def test_each_service_uses_its_own_database_role(profiles, services):
    from rtml.platform.access import COMPOSE_PG_ROLES, PG_PASSWORD_ENV, compose_init_sql

    (stack, _), (env, _) = profiles
    cfg = stack.config
    # Natively: Airflow as its role (password in its environment), MLflow as its (PGPASSWORD).
    for key in ("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "AIRFLOW__CELERY__RESULT_BACKEND"):
        assert _url_user(env["airflow"][key]) == (cfg.role("airflow"), stack.pg_password("airflow"), "p1_airflow")
    (mlflow,) = stack.procs("mlflow")
    backend = mlflow.cmd[mlflow.cmd.index("--backend-store-uri") + 1]
    assert _url_user(backend) == (cfg.role("mlflow"), None, "p1_mlflow")
    assert env["mlflow"]["PGPASSWORD"] == stack.pg_password("mlflow")
    stack._write_mlflow_auth_config()
    assert f"//{cfg.role('mlflow')}@db1:5432/p1_mlflow_auth" in stack.mlflow_auth_config.read_text()
    assert "user1" not in backend + env["airflow"]["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]  # not the admin
    # In compose: the same roles, each with its password variable; the superuser only in postgres.
    for name in PROFILE_TO_COMPOSE["airflow"]:
        got = _env(services[name])
        for key in ("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "AIRFLOW__CELERY__RESULT_BACKEND"):
            # ${VAR:?message} holds characters a URL parser would take for a query: matched as text.
            m = re.fullmatch(r"(?:db\+)?postgresql\+psycopg2://(\w+):(\$\{[^}]*\})@postgres:5432/(\w+)", got[key])
            assert m and (m[1], m[3]) == ("airflow", "airflow"), (name, got[key])
            assert m[2].startswith("${AIRFLOW_DB_PASSWORD:?"), name
    user, password, db = _url_user(_options(_compose_command(services["mlflow"]))[1]["--backend-store-uri"])
    assert (user, password, db) == ("mlflow", None, "mlflow")
    assert _env(services["mlflow"])["PGPASSWORD"].startswith("${" + PG_PASSWORD_ENV["mlflow"] + ":?")
    for name, svc in services.items():
        assert ("POSTGRES_PASSWORD" in _env(svc)) == (name == "postgres"), name
        assert "rtml:" not in " ".join(_env(svc).values()), f"{name} connects as the superuser"
    postgres = _env(services["postgres"])
    assert {PG_PASSWORD_ENV[r] for r in COMPOSE_PG_ROLES} <= set(postgres)
    script = (ROOT / "docker/postgres/init-roles.sh").read_text()
    sql = script.split("<<'SQL'\n", 1)[1].split("\nSQL\n", 1)[0]
    # Compose keeps MLflow's users in SQLite (docker/mlflow/basic_auth.ini): no mlflow_auth database.
    assert sql == compose_init_sql({r: tuple(d for d in dbs if d != "mlflow_auth")
                                    for r, dbs in COMPOSE_PG_ROLES.items()})
    for role in COMPOSE_PG_ROLES:
        assert f'-v {role}_password="${PG_PASSWORD_ENV[role]}"' in script
    assert "./docker/postgres/init-roles.sh:/docker-entrypoint-initdb.d/10-roles.sh:ro" in services["postgres"]["volumes"]
    # The lake's Iceberg catalog: every writer of tables (Airflow, the endpoint's logs) as the catalog's role.
    for name in [*PROFILE_TO_COMPOSE["airflow"], "rtml-serve"]:
        m = re.fullmatch(r"postgresql\+psycopg2://(\w+):(\$\{[^}]*\})@postgres:5432/(\w+)",
                         _env(services[name])["RTML_CATALOG_URI"])
        assert m and (m[1], m[3]) == ("catalog", "catalog") and m[2].startswith("${CATALOG_DB_PASSWORD:?"), name
        assert "postgres" in services[name]["depends_on"], name
