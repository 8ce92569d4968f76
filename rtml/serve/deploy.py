"""Deploying an approved version: which version a promotion run decides on, the live check after
the swap, and the rollback when a step after the approval failed.

What ``rtml_promote`` calls, one function per task, so that its decisions (which version, whether
to roll back) are plain Python that the CLI and the tests reach without Airflow.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from rtml.names import CHAMPION

if TYPE_CHECKING:
    from rtml.spec import ProjectSpec


class DeploymentError(RuntimeError):
    """A deployment step failed; the message says which and why."""


def decision_target(params: Mapping[str, Any], event_extras: Iterable[Mapping[str, Any] | None],
                    default_name: str) -> dict[str, str]:
    """The version a promotion run decides on: ``params`` ``name``/``version`` (a manual run), else
    the newest ``rtml_challenger`` event's extra; the model defaults to the spec's."""
    name, version = str(params.get("name") or ""), str(params.get("version") or "")
    if not version:
        extras = list(event_extras)
        if not extras:
            raise ValueError("params.version: give 'name' and 'version', or run from an rtml_challenger event")
        extra = extras[-1] or {}
        name, version = str(extra.get("name") or name), str(extra.get("version") or "")
        if not version:
            raise ValueError(f"rtml_challenger event without 'version' in its extra: {dict(extra)}")
    return {"name": name or default_name, "version": version}


def reload_and_wait(version: str, timeout: float = 120.0) -> dict[str, Any]:
    """Ask the endpoint to load the champion now and wait until it answers with ``version``: every
    replica of it, when several share one address (``rtml.serve.replicas``), so that the smoke check
    that follows cannot meet a replica still on the old version."""
    from rtml.serve.client import request_reload, wait_for_version

    request_reload()
    info = wait_for_version(str(version), timeout=timeout)
    return {"version": str(version), **({"replicas": info["replicas"]} if "replicas" in info else {})}


def smoke_check(spec: ProjectSpec, name: str, version: str, n: int = 50) -> dict[str, Any]:
    """The live endpoint's answers on the version's own holdout sample equal its offline predictions."""
    from rtml.serve.client import live_smoke_check, version_holdout_rows

    rows = version_holdout_rows(spec, name, version, n=n)
    return live_smoke_check(name, version, rows, spec=spec)


def roll_back_failed(name: str, version: str, failures: Iterable[str | None], client: Any = None) -> dict[str, Any]:
    """After a failed promotion, reload or smoke check: if ``version`` had become champion, put
    the previous champion back (``rtml.registry.promotion.rollback``: only to a version that passed,
    is approved and was never rejected) and tell the endpoint.

    Returns ``rolled_back`` False when the version never became champion (nothing to undo).
    """
    from rtml.registry.client import alias_version, mlflow_client
    from rtml.registry.promotion import rollback

    client = client or mlflow_client()
    why = [w for w in failures if w]
    if alias_version(client, name, CHAMPION) != str(version):
        return {"rolled_back": False, "reason": "; ".join(why),
                "message": f"{name} version {version} was not deployed (see the failed task); no rollback needed"}
    reason = f"deploying version {version} failed: " + ("; ".join(why) or "see the failed task's log")
    done = rollback(name, by="rtml_promote", reason=reason, client=client)
    notified = True
    try:
        from rtml.serve.client import request_reload

        request_reload()
    except Exception:  # noqa: BLE001 - the endpoint's poller follows the alias anyway
        notified = False
    return {**done, "rolled_back": True, "reason": reason, "endpoint_notified": notified,
            "message": f"deployment of {name} version {version} failed ({reason}); {done['message']}"}
