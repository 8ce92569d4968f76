"""rtml's Airflow UI plugin: links to the MLflow UI and a small page of the registered model versions.

- Nav links (``external_views``): "MLflow models" opens the MLflow UI's models page (a new tab: MLflow
  refuses to be framed by another origin); "rtml models" shows the page below inside the Airflow UI.
- ``/rtml/`` (a FastAPI app served by the Airflow api-server): every registered model version with
  its aliases, gate tags (``gate.quality``, ``gate.fairness``, ``gate.drift``, ``gate.decision``,
  ``gate.reasons``), the ``approval`` tag and links to its MLflow page and run (where the reports are).
  ``/rtml/api/models`` gives the same as JSON. It reads MLflow's REST API with httpx: no mlflow import.
  The page also shows the newest entries of the decision log (``rtml.registry.audit``); ``/rtml/api/decisions``
  gives them as JSON with the result of the chain check.
- Every route but one needs an Airflow login: Airflow's own FastAPI dependency (``get_user`` of
  ``airflow.api_fastapi.core_api.security``, what the core routes use) accepts the UI's session
  cookie or an ``Authorization: Bearer`` token from ``POST /auth/token``; anything else gets 401/403.
- ``POST /rtml/hooks/mlflow`` receives MLflow's registry webhooks (``rtml.registry.webhooks``). MLflow
  cannot log in to Airflow: the route is authenticated by the delivery's HMAC signature instead
  (the webhook secret, ``RTML_WEBHOOK_SECRET`` or ``<home>/keys/webhook_secret``); unsigned, wrongly
  signed or stale deliveries get 401, malformed ones 400. The event is handled in a background
  thread: the answer (202) does not wait for the registry and the decision log.

Airflow imports plugins in every component, so only light modules are imported here.
"""

from __future__ import annotations

import html
import os
from typing import Any

from airflow.plugins_manager import AirflowPlugin
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

URL_PREFIX = "/rtml"
GATE_TAGS = ("gate.quality", "gate.fairness", "gate.drift", "gate.decision")


def _settings():
    from rtml.settings import get_settings

    return get_settings()


def mlflow_ui_url() -> str:
    s = _settings()
    return (s.mlflow_ui_url or s.mlflow_tracking_uri).rstrip("/")


def _mlflow_get(path: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
    import httpx

    s = _settings()
    auth = None
    # Compose runs MLflow with basic auth; the same variables the MLflow client reads.
    if os.environ.get("MLFLOW_TRACKING_USERNAME"):
        auth = (os.environ["MLFLOW_TRACKING_USERNAME"], os.environ.get("MLFLOW_TRACKING_PASSWORD", ""))
    r = httpx.get(
        f"{s.mlflow_tracking_uri.rstrip('/')}/api/2.0/mlflow/{path}", params=params, auth=auth, timeout=10
    )
    r.raise_for_status()
    return r.json()


def model_versions(max_models: int = 50) -> list[dict[str, Any]]:
    """Registered model versions, newest first, with aliases, gate/approval tags and MLflow links."""
    ui = mlflow_ui_url()
    out: list[dict[str, Any]] = []
    models = _mlflow_get("registered-models/search", {"max_results": max_models}).get("registered_models", [])
    for model in models:
        name = model["name"]
        aliases: dict[str, list[str]] = {}
        for a in model.get("aliases", []):
            aliases.setdefault(str(a["version"]), []).append(a["alias"])
        versions = _mlflow_get("model-versions/search", {"filter": f"name='{name}'", "max_results": 100}).get(
            "model_versions", []
        )
        for v in sorted(versions, key=lambda v: int(v["version"]), reverse=True):
            tags = {t["key"]: t.get("value", "") for t in v.get("tags", [])}
            run_id = v.get("run_id") or ""
            out.append(
                {
                    "name": name,
                    "version": v["version"],
                    "aliases": aliases.get(str(v["version"]), []),
                    "status": v.get("status", ""),
                    "gates": {k: tags.get(k, "") for k in GATE_TAGS},
                    "reasons": tags.get("gate.reasons", ""),
                    "approval": tags.get("approval", ""),
                    "tags": tags,
                    "run_id": run_id,
                    "version_url": f"{ui}/#/models/{name}/versions/{v['version']}",
                    "run_url": f"{ui}/#/runs/{run_id}" if run_id else "",
                }
            )
    return out


def decisions(limit: int = 50) -> dict[str, Any]:
    """The newest decision-log entries and whether the whole chain verifies."""
    from rtml.registry import audit

    store = audit.open_log_store(_settings())
    check = audit.verify(store)
    return {"ok": check["ok"], "problems": check["problems"], "entries": audit.entries(store)[-limit:][::-1]}


def render_decisions(log: dict[str, Any] | None, error: str = "") -> str:
    if error:
        return f'<h3>Decision log</h3><p style="color:#cf222e">not readable: {html.escape(error)}</p>'
    if not log:
        return ""
    state = ('<span style="color:#1a7f37">chain intact</span>' if log["ok"] else
             '<span style="color:#cf222e">BROKEN: ' + html.escape("; ".join(log["problems"][:5])) + "</span>")
    rows = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(e.get(k) if e.get(k) is not None else '-'))}</td>"
                         for k in ("seq", "at", "action", "model", "version", "from_version", "actor", "on_behalf_of"))
        + f"<td>{html.escape(str(e.get('reason') or '')[:200])}</td></tr>"
        for e in log["entries"]
    )
    head = "".join(f"<th>{h}</th>" for h in ("#", "when", "what", "model", "version", "from", "who", "for", "why"))
    return f"<h3>Decision log (newest first; {state})</h3><table><tr>{head}</tr>{rows}</table>"


def _cell(value: str) -> str:
    colour = {"passed": "#1a7f37", "failed": "#cf222e", "approved": "#1a7f37", "rejected": "#cf222e"}.get(
        value
    )
    text = html.escape(value or "-")
    return f'<td style="color:{colour};font-weight:600">{text}</td>' if colour else f"<td>{text}</td>"


def render_page(rows: list[dict[str, Any]], error: str = "", log_html: str = "") -> str:
    head = "".join(
        f"<th>{h}</th>"
        for h in (
            "model",
            "version",
            "aliases",
            "quality",
            "fairness",
            "drift",
            "decision",
            "approval",
            "reasons",
            "links",
        )
    )
    body = []
    for r in rows:
        links = f'<a href="{html.escape(r["version_url"])}" target="_blank">version</a>'
        if r["run_url"]:
            links += f' · <a href="{html.escape(r["run_url"])}" target="_blank">run &amp; reports</a>'
        for key, value in r["tags"].items():
            if value.startswith(("http://", "https://")):
                links += f' · <a href="{html.escape(value)}" target="_blank">{html.escape(key)}</a>'
        body.append(
            "<tr>"
            f"<td>{html.escape(r['name'])}</td><td>{html.escape(str(r['version']))}</td>"
            f"<td>{html.escape(', '.join(r['aliases']) or '-')}</td>"
            + "".join(_cell(r["gates"][k]) for k in GATE_TAGS)
            + _cell(r["approval"])
            + f"<td>{html.escape(r['reasons'][:300])}</td><td>{links}</td></tr>"
        )
    ui = html.escape(mlflow_ui_url())
    note = f'<p style="color:#cf222e">MLflow did not answer: {html.escape(error)}</p>' if error else ""
    empty = "" if rows else "<p>No registered model version yet: run the training DAG (rtml_train).</p>"
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>rtml models</title>
<style>body{{font-family:system-ui,sans-serif;margin:1.5rem}}table{{border-collapse:collapse}}
td,th{{border:1px solid #d0d7de;padding:.3rem .6rem;text-align:left;font-size:.9rem}}</style></head>
<body><h2>rtml: registered model versions</h2>
<p>Gate results are model-version tags written by the training DAG. Approve a challenger in the
<a href="{ui}/#/models" target="_blank">MLflow UI</a> by setting its tag <code>approval</code> = <code>approved</code>.</p>
{note}{empty}<table><tr>{head}</tr>{"".join(body)}</table>{log_html}</body></html>"""


_bearer = HTTPBearer(auto_error=False)


async def require_login(
    request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(_bearer)
) -> Any:
    """Airflow's own authentication for FastAPI routes (the UI's cookie or a bearer token).

    Imported on the first request: plugins load in every Airflow component, the API's security
    module only belongs in the api-server.
    """
    from airflow.api_fastapi.core_api.security import get_user

    return await get_user(request, None, credentials)


_dispatcher: Any = None


def dispatcher() -> Any:
    """The process's one background worker for webhook events (created on the first delivery)."""
    global _dispatcher
    if _dispatcher is None:
        from rtml.registry.webhooks import Dispatcher, handle

        def work(payload: dict[str, Any]) -> dict[str, Any]:
            from rtml.registry.client import mlflow_client

            s = _settings()
            return handle(payload, mlflow_client(s), s)

        _dispatcher = Dispatcher(work)
    return _dispatcher


async def mlflow_hook(request: Request) -> JSONResponse:
    """MLflow's registry webhook: the signature is the authentication (no Airflow login)."""
    from rtml.registry import webhooks

    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > webhooks.MAX_BODY_BYTES:
        return JSONResponse({"detail": "body too large"}, status_code=413)
    body = await request.body()
    try:
        payload = webhooks.verify_delivery(_settings().resolved_webhook_secret(), request.headers, body)
    except webhooks.WebhookError as err:
        return JSONResponse({"detail": str(err)}, status_code=err.status)
    queued = dispatcher().submit(payload, request.headers.get(webhooks.DELIVERY_HEADER, ""))
    return JSONResponse({"accepted": True, "queued": queued}, status_code=202)


def create_app() -> FastAPI:
    app = FastAPI(title="rtml", description="rtml model overview")
    # The login applies to this router's routes only: the webhook receiver below authenticates itself.
    app_routes = APIRouter(dependencies=[Depends(require_login)])

    @app_routes.get("/", response_class=HTMLResponse)
    def page() -> str:
        try:
            log_html = render_decisions(decisions())
        except Exception as err:  # noqa: BLE001 - the lake may be down: say so, show the rest
            log_html = render_decisions(None, f"{type(err).__name__}: {err}")
        try:
            return render_page(model_versions(), log_html=log_html)
        except Exception as err:  # the page must still render when MLflow is down
            return render_page([], error=f"{type(err).__name__}: {err}", log_html=log_html)

    @app_routes.get("/api/models")
    def models() -> dict[str, Any]:
        return {"model_versions": model_versions()}

    @app_routes.get("/api/decisions")
    def decision_log(limit: int = 50) -> dict[str, Any]:
        return decisions(max(1, min(limit, 1000)))

    app.include_router(app_routes)
    app.add_api_route("/hooks/mlflow", mlflow_hook, methods=["POST"], include_in_schema=False)
    return app


class RtmlPlugin(AirflowPlugin):
    name = "rtml"
    fastapi_apps = [{"app": create_app(), "url_prefix": URL_PREFIX, "name": "rtml models"}]
    external_views = [
        {
            "name": "MLflow models",
            "href": f"{mlflow_ui_url()}/#/models",
            "destination": "nav",
            "category": "browse",
        },
        {
            "name": "rtml models",
            "href": f"{URL_PREFIX}/",
            "destination": "nav",
            "category": "browse",
            "url_route": "rtml",
        },
    ]
