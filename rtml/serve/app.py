"""The HTTP app (FastAPI on uvicorn): routes, the bearer-token dependency, and ``run``."""

from __future__ import annotations

import hmac
import json
import logging
import os
import time
import uuid
from typing import TYPE_CHECKING, Any

from rtml.serve.server import ModelServer, ServeConfig
from rtml.serve.source import RegistrySource
from rtml.serve.validation import RequestError, check_content_type, load_json, parse_body, parse_invocation

if TYPE_CHECKING:
    from rtml.settings import Settings

log = logging.getLogger("rtml.serve.app")


_MLFLOW_ERROR_CODES = {400: "BAD_REQUEST", 413: "RESOURCE_LIMIT_EXCEEDED", 415: "BAD_REQUEST",
                       503: "TEMPORARILY_UNAVAILABLE"}


def error_body(err: RequestError, status: int, request_id: str, mlflow_protocol: bool) -> dict[str, Any]:
    """A refused request's answer: rtml's (the field and the problem), or MLflow's error shape."""
    if not mlflow_protocol:
        return {**err.body(), "request_id": request_id}
    body: dict[str, Any] = {"error_code": _MLFLOW_ERROR_CODES.get(status, "BAD_REQUEST"), "message": err.message,
                            "request_id": request_id}
    if err.field is not None:
        body["field"] = err.field
    return body


def create_app(server: ModelServer, token: str, open_invocations: bool = False):
    """A Starlette app around ``server``; the token guards predict, model info and admin routes.

    ``open_invocations`` (setting ``serve_open_invocations``) lets MLflow's ``/invocations`` answer
    without the token, as ``mlflow models serve`` does, for clients that cannot send a header; the
    other routes still require it."""
    import orjson
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    expected = f"Bearer {token}".encode()
    m = server.metrics
    max_bytes = server.config.max_body_bytes

    def jr(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
        try:
            content = orjson.dumps(body)
        except TypeError:  # text orjson refuses (a lone surrogate): ASCII JSON escapes it
            content = json.dumps(body, default=str).encode("ascii")
        return Response(content, status, headers=headers, media_type="application/json")

    def authorized(request: Request) -> bool:
        got = request.headers.get("authorization", "").encode()
        return hmac.compare_digest(got, expected)

    def unauthorized() -> Response:
        return jr({"error": "missing or wrong bearer token (header 'Authorization: Bearer <token>')"}, 401,
                  {"WWW-Authenticate": "Bearer"})

    def refuse(request: Request, version: str) -> Response | None:
        """The auth check of the scoring routes: a 401 (counted against ``version``) or None."""
        if authorized(request):
            return None
        m.requests.labels(version, "401").inc()
        m.errors.labels(version, "auth").inc()
        return unauthorized()

    async def read_body(request: Request) -> bytes:
        cl = request.headers.get("content-length")
        if cl is not None:
            try:
                if int(cl) > max_bytes:
                    raise RequestError(413, f"request body of {cl} bytes is over the limit of {max_bytes}", "body")
            except ValueError:
                raise RequestError(400, "invalid Content-Length header", "content-length") from None
        chunks = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_bytes:
                raise RequestError(413, f"request body is over the limit of {max_bytes} bytes", "body")
            chunks.append(chunk)
        return b"".join(chunks)

    def request_id_of(request: Request) -> str:
        rid = request.headers.get("x-request-id")
        # a client's id is echoed and logged: printable, short, or we make our own
        return rid if rid and len(rid) <= 128 and rid.isprintable() and rid.isascii() else uuid.uuid4().hex

    async def score(request: Request, mlflow_protocol: bool) -> Response:
        """One scoring request: rtml's ``/v1/predict``, or MLflow's ``/invocations`` answered like
        ``mlflow models serve`` (``{"predictions": [...]}``, errors as ``{"error_code", "message"}``)."""
        t0 = time.perf_counter()
        cur = server.current
        version = cur.version if cur else "none"
        if not (mlflow_protocol and open_invocations) and (refused := refuse(request, version)) is not None:
            return refused
        request_id = request_id_of(request)
        try:
            check_content_type(request.headers.get("content-type"))
            body = await read_body(request)
            if mlflow_protocol:
                records, where = parse_invocation(load_json(body))
                out = await server.predict(records, False, request_id, native=True, prefix=where)
            else:
                records, single = parse_body(body)
                out = await server.predict(records, single, request_id)
        except RequestError as err:
            # MLflow answers every bad input with 400
            status = 400 if mlflow_protocol and err.status == 422 else err.status
            m.requests.labels(version, str(status)).inc()
            m.errors.labels(version, "unavailable" if status == 503 else "validation").inc()
            return jr(error_body(err, status, request_id, mlflow_protocol), status, err.headers())
        except Exception as err:  # noqa: BLE001 - a real server fault: 500, logged, counted
            log.exception("%s failed", "invocations" if mlflow_protocol else "predict")
            m.requests.labels(version, "500").inc()
            m.errors.labels(version, "internal").inc()
            message = f"internal error: {type(err).__name__}"
            return jr({"error_code": "INTERNAL_ERROR", "message": message, "request_id": request_id}
                      if mlflow_protocol else {"error": message, "request_id": request_id}, 500)
        version = out["version"]
        m.requests.labels(version, "200").inc()
        m.latency.labels(version).observe(time.perf_counter() - t0)
        return jr({"predictions": out["predictions"]} if mlflow_protocol else out,
                  headers={"x-request-id": request_id, "x-model-version": version})

    async def predict(request: Request) -> Response:
        return await score(request, mlflow_protocol=False)

    async def invocations(request: Request) -> Response:
        """MLflow's scoring protocol (``dataframe_split``, ``dataframe_records``, ``instances``)."""
        return await score(request, mlflow_protocol=True)

    async def ping(request: Request) -> Response:
        # as mlflow models serve: 200 once a model is loaded, else 404 (its clients wait on this)
        return Response("\n", 200 if server.current is not None else 404, media_type="application/json")

    async def mlflow_version(request: Request) -> Response:
        from importlib.metadata import version

        return Response(version("mlflow"), 200, media_type="application/json")

    async def health(request: Request) -> Response:
        # the pid tells replicas apart when several share one address (rtml.platform.distributed)
        return jr({"status": "ok", "pid": os.getpid()})

    async def ready(request: Request) -> Response:
        current = server.current
        if server.ready and current is not None:
            return jr({"ready": True, "version": current.version, **server.refusal()})
        return jr(server.not_ready_reason(), 503)

    async def model(request: Request) -> Response:
        if not authorized(request):
            return unauthorized()
        return jr(server.model_info())

    async def reload(request: Request) -> Response:
        if not authorized(request):
            return unauthorized()
        result = await server.sync(force=True)
        return jr(result)

    async def metrics(request: Request) -> Response:
        return Response(generate_latest(m.registry), media_type=CONTENT_TYPE_LATEST)

    async def not_found(request: Request, exc: Exception) -> Response:
        return JSONResponse({"error": f"no route {request.method} {request.url.path}"}, 404)

    async def method_not_allowed(request: Request, exc: Exception) -> Response:
        return JSONResponse({"error": f"method {request.method} not allowed on {request.url.path}"}, 405)

    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def lifespan(app: Any):
        await server.start()
        try:
            yield
        finally:
            await server.stop()

    routes = [
        Route("/v1/predict", predict, methods=["POST"]),
        Route("/invocations", invocations, methods=["POST"]),
        Route("/health", health, methods=["GET"]),
        Route("/ping", ping, methods=["GET"]),
        Route("/version", mlflow_version, methods=["GET"]),
        Route("/ready", ready, methods=["GET"]),
        Route("/v1/model", model, methods=["GET"]),
        Route("/admin/reload", reload, methods=["POST"]),
        Route("/metrics", metrics, methods=["GET"]),
    ]
    return Starlette(routes=routes, lifespan=lifespan, exception_handlers={404: not_found, 405: method_not_allowed})


def build_server(
    settings: Settings | None = None,
    spec_path: str | None = None,
    model_name: str | None = None,
    config: ServeConfig | None = None,
) -> ModelServer:
    from rtml.lake import Lake
    from rtml.settings import get_settings
    from rtml.spec import load_spec

    settings = settings or get_settings()
    spec = load_spec(spec_path or settings.spec)
    name = model_name or spec.model.registered_name
    config = config or ServeConfig.from_settings(settings)
    return ModelServer(spec, RegistrySource(name, spec, settings), config, lake=Lake(settings), name=name)


def run(
    host: str | None = None,
    port: int | None = None,
    spec_path: str | None = None,
    model_name: str | None = None,
    config: ServeConfig | None = None,
) -> None:
    import uvicorn

    from rtml.settings import get_settings

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # no progress bars in the log
    settings = get_settings()
    server = build_server(settings, spec_path, model_name, config)
    app = create_app(server, settings.resolved_serve_token(), settings.serve_open_invocations)
    uv = uvicorn.Config(
        app,
        host=host or settings.serve_host,
        port=port or settings.serve_port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_level="warning",
        timeout_graceful_shutdown=15,
        backlog=2048,
    )
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not settings.serve_reuse_port:
        uvicorn.Server(uv).run()
        return
    # Replicas share one address: each binds the port with SO_REUSEPORT and the kernel spreads new
    # connections over them (uvicorn has no option for it, so the socket is made here).
    import socket

    sock = socket.socket(socket.AF_INET6 if ":" in uv.host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((uv.host, uv.port))
    sock.set_inheritable(True)
    # A request to the shared port reaches one replica: a private loopback port per replica, listed
    # in the replica registry, lets a reload reach each of them (rtml.serve.replicas).
    from rtml.serve.replicas import bind_admin_socket, register, replica_dir, unregister

    admin = bind_admin_socket()
    entry = register(replica_dir(settings.home), uv.port, f"http://127.0.0.1:{admin.getsockname()[1]}")
    try:
        uvicorn.Server(uv).run(sockets=[sock, admin])
    finally:
        unregister(entry)
