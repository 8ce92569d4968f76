"""Health checks of the platform's services, as plain functions (``rtml stack status`` and the
``rtml_healthcheck`` DAG call them). Each answers a dict with ``ok`` and, when not ok, ``error``."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from rtml.settings import Settings, get_settings


def check_s3(settings: Settings | None = None, buckets: Iterable[str] | None = None,
             auth: tuple[str, str] | None = None) -> dict[str, Any]:
    """List the buckets of the configured S3 endpoint; ``ok`` if it answers and ``buckets`` exist.
    ``auth``: (access key, secret key) instead of the environment's. A bucket these keys may not
    list (a least-privilege identity, rtml.platform.access) counts when it answers "forbidden"."""
    s = settings or get_settings()
    if s.storage != "s3":
        root = Path(s.lake_uri)
        return {"ok": root.is_dir() or not root.exists(), "storage": "local", "lake_uri": s.lake_uri}
    import boto3
    from botocore.config import Config

    key, secret = auth or (s.s3_access_key, s.s3_secret_key)
    client = boto3.client(
        "s3",
        endpoint_url=s.s3_endpoint_url,
        aws_access_key_id=key,
        aws_secret_access_key=secret,
        region_name=s.s3_region,
        config=Config(
            s3={"addressing_style": "path"}, connect_timeout=2, read_timeout=5, retries={"max_attempts": 1}
        ),
    )
    try:
        names = sorted(b["Name"] for b in client.list_buckets().get("Buckets", []))
    except Exception as err:  # any failure means "not healthy"; the message says why
        return {"ok": False, "endpoint": s.s3_endpoint_url, "error": f"{type(err).__name__}: {err}"}
    wanted = list(buckets) if buckets is not None else [s.lake_bucket, s.mlflow_bucket]
    missing = [b for b in wanted if b not in names and not _unlisted_but_there(client, b)]
    out: dict[str, Any] = {"ok": not missing, "endpoint": s.s3_endpoint_url, "buckets": names}
    if missing:
        out["error"] = f"missing bucket(s): {', '.join(missing)}"
    return out


def _unlisted_but_there(client: Any, bucket: str) -> bool:
    """Whether ``bucket`` answers HEAD, or answers it "forbidden" (these keys may not touch it, so
    they cannot tell it from a missing one: the check leaves that to a key that may)."""
    from botocore.exceptions import ClientError

    try:
        client.head_bucket(Bucket=bucket)
        return True
    except ClientError as err:
        return str(err.response.get("Error", {}).get("Code")) in ("403", "AccessDenied", "Forbidden")
    except Exception:  # noqa: BLE001 - unreachable: not there as far as the check can tell
        return False


def check_mlflow(settings: Settings | None = None, auth: tuple[str, str] | None = None) -> dict[str, Any]:
    """GET /health on the tracking server, then one registry-backed API call (as ``auth``, else as
    the MLFLOW_TRACKING_USERNAME/PASSWORD of this process when set: a server with basic auth)."""
    import os

    import httpx

    s = settings or get_settings()
    base = s.mlflow_tracking_uri.rstrip("/")
    if auth is None and os.environ.get("MLFLOW_TRACKING_USERNAME"):
        auth = (os.environ["MLFLOW_TRACKING_USERNAME"], os.environ.get("MLFLOW_TRACKING_PASSWORD", ""))
    try:
        r = httpx.get(f"{base}/health", timeout=5)
        if r.status_code != 200:
            return {"ok": False, "url": base, "error": f"/health answered {r.status_code}"}
        r = httpx.get(
            f"{base}/api/2.0/mlflow/registered-models/search", params={"max_results": 1}, timeout=10, auth=auth
        )
        if r.status_code != 200:
            return {
                "ok": False,
                "url": base,
                "error": f"registry search answered {r.status_code}: {r.text[:200]}",
            }
    except httpx.HTTPError as err:
        return {"ok": False, "url": base, "error": f"{type(err).__name__}: {err}"}
    return {"ok": True, "url": base}


def check_serve(settings: Settings | None = None) -> dict[str, Any]:
    """The serving endpoint's liveness (/health) and whether a model is loaded (/ready)."""
    import httpx

    s = settings or get_settings()
    try:
        health = httpx.get(f"{s.serve_url}/health", timeout=3)
        ready = httpx.get(f"{s.serve_url}/ready", timeout=3)
    except httpx.HTTPError as err:
        return {"ok": False, "error": f"{type(err).__name__}: {err}"}
    detail = "model loaded" if ready.status_code == 200 else "no champion loaded yet (approve a version)"
    return {"ok": health.status_code == 200, "ready": ready.status_code == 200, "detail": detail}


def check_kafka(settings: Settings | None = None, timeout: float = 3.0) -> dict[str, Any]:
    """Cluster metadata from ``kafka_bootstrap``: ``ok`` when it answers and names a broker."""
    s = settings or get_settings()
    try:
        from confluent_kafka.admin import AdminClient

        md = AdminClient({"bootstrap.servers": s.kafka_bootstrap}).list_topics(timeout=timeout)
    except Exception as err:  # any failure means "not healthy"; the message says why
        return {"ok": False, "bootstrap": s.kafka_bootstrap, "error": f"{type(err).__name__}: {err}"}
    topics = [t for t in md.topics if not t.startswith("__")]
    return {"ok": bool(md.brokers), "bootstrap": s.kafka_bootstrap, "brokers": len(md.brokers), "topics": len(topics)}


def airflow_health(settings: Settings | None = None) -> dict[str, Any]:
    """Airflow's own view: ``/api/v2/monitor/health`` (metadatabase, scheduler, triggerer, dag processor)."""
    import httpx

    s = settings or get_settings()
    base = s.airflow_url.rstrip("/")
    try:
        r = httpx.get(f"{base}/api/v2/monitor/health", timeout=5)
        r.raise_for_status()
        data = r.json()
    except (httpx.HTTPError, ValueError) as err:
        return {"ok": False, "url": base, "error": f"{type(err).__name__}: {err}"}
    parts = {k: (v or {}).get("status") for k, v in data.items() if isinstance(v, dict)}
    return {"ok": all(v == "healthy" for v in parts.values()), "url": base, "components": parts}
