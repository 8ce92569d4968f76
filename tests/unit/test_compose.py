"""docker-compose.yml checked statically (no Docker engine here): structure, pins, health, env names."""

from __future__ import annotations

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
    "mlflow",
    "airflow-init",
    "airflow-apiserver",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-triggerer",
    "airflow-worker",
    "rtml-serve",
}
ONE_SHOT = {"minio-init", "airflow-init"}
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
        assert env["AIRFLOW__CELERY__BROKER_URL"].startswith("redis://redis:"), name
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
    init = Path(ROOT / "docker/postgres/init-databases.sql").read_text()
    assert "CREATE DATABASE airflow" in init and "CREATE DATABASE mlflow" in init


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
    assert {"POSTGRES_PASSWORD", "MLFLOW_AUTH_ADMIN_PASSWORD", "AWS_SECRET_ACCESS_KEY"} <= required
    for key in required:  # a required secret: listed, but never with a value in the repository
        assert example[key] == "", f".env.example must not hold a value for secret {key}"
    assert not (ROOT / ".env").exists() or ".env" in (ROOT / ".gitignore").read_text().split()
