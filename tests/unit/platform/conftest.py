"""A tiny HTTP server on 127.0.0.1 (port 0, in a thread) that stands in for the REST services the
platform modules call: routes answer canned responses or call a function; every request is kept."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

import pytest


@dataclass
class Request:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


# A route answers (status, body) or (status, body, headers); body: bytes, str, or JSON-able.
Answer = tuple[int, Any] | tuple[int, Any, dict[str, str]]


@dataclass
class HttpStub:
    url: str = ""
    routes: dict[tuple[str, str], Answer | Callable[[Request], Answer]] = field(default_factory=dict)
    requests: list[Request] = field(default_factory=list)

    def route(self, method: str, path: str, answer: Answer | Callable[[Request], Answer]) -> None:
        self.routes[(method, path)] = answer

    def paths(self, method: str | None = None) -> list[str]:
        return [r.path for r in self.requests if method is None or r.method == method]


def _handler(stub: HttpStub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            parts = urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            req = Request(self.command, parts.path, parts.query, {k.lower(): v for k, v in self.headers.items()},
                          self.rfile.read(length) if length else b"")
            stub.requests.append(req)
            answer = stub.routes.get((self.command, parts.path), (404, {"detail": "no route"}))
            if callable(answer):
                answer = answer(req)
            status, body, *rest = answer
            headers = rest[0] if rest else {}
            if isinstance(body, bytes):
                data = body
            elif isinstance(body, str):
                data = body.encode()
            else:
                data, headers = json.dumps(body).encode(), {"Content-Type": "application/json", **headers}
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PATCH = do_DELETE = _serve

        def log_message(self, *args: Any) -> None:  # keep test output quiet
            pass

    return Handler


@pytest.fixture
def http_stub(monkeypatch) -> Iterator[HttpStub]:
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(var, raising=False)  # loopback must not go through a proxy
    stub = HttpStub()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(stub))
    stub.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield stub
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture
def refused_url() -> Iterator[str]:
    """A loopback URL that refuses connections: the port stays bound (so nobody else takes it) but
    never listens."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{s.getsockname()[1]}"
