"""What the stand-in servers share: a real HTTP server (http.server in a thread on 127.0.0.1), a request log, and
failures switched on per path prefix (a status with the service's own error body and headers, e.g. 429 with
Retry-After), so the connectors' retries and error messages meet real HTTP."""

import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from urllib.parse import parse_qs, urlsplit

from tests.http_server import LocalHttpServer


@dataclass
class Failure:
    path: str  # prefix of the request path
    status: int
    body: dict
    headers: dict
    times: int | None  # None: every matching request
    skip: int = 0  # let this many matching requests through first
    method: str | None = None


@dataclass
class Reply:
    status: int
    body: object = None  # dict/list: JSON; bytes: as is
    headers: dict = field(default_factory=dict)
    content_type: str = "application/json"


@dataclass
class Request:
    method: str
    path: str
    query: dict  # first value of each parameter
    headers: dict
    body: bytes
    status: int | None = None
    at: float = 0.0

    def form(self) -> dict:
        return {k: v[0] for k, v in parse_qs(self.body.decode()).items()}


class StandinServer(LocalHttpServer):
    """Subclasses implement ``route(request) -> Reply``."""

    thread_name = "standin"

    def __init__(self):
        self.lock = threading.RLock()
        self.failures: list[Failure] = []
        self.log: list[Request] = []
        self._bind(self._handler())

    # --- test controls --------------------------------------------------------------------------------------

    def fail(self, path: str, status: int, body: dict, *, headers=None, times=None, skip=0, method=None):
        with self.lock:
            self.failures.append(Failure(path, status, body, headers or {}, times, skip, method))

    def requests_to(self, prefix: str, method: str | None = None) -> list[Request]:
        with self.lock:
            return [r for r in self.log if r.path.startswith(prefix) and (method is None or r.method == method)]

    def _take_failure(self, request: Request) -> Failure | None:
        with self.lock:
            for failure in self.failures:
                if request.path.startswith(failure.path) and failure.method in (None, request.method):
                    if failure.skip:
                        failure.skip -= 1
                        return None
                    if failure.times is not None:
                        failure.times -= 1
                        if failure.times <= 0:
                            self.failures.remove(failure)
                    return failure
        return None

    def route(self, request: Request) -> Reply:
        raise NotImplementedError

    # --- plumbing -------------------------------------------------------------------------------------------

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _serve(self):
                import time

                parts = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                request = Request(self.command, parts.path, {k: v[0] for k, v in parse_qs(parts.query).items()},
                                  {k.lower(): v for k, v in self.headers.items()},
                                  self.rfile.read(length) if length else b"", at=time.monotonic())
                failure = server._take_failure(request)
                if failure is not None:
                    reply = Reply(failure.status, failure.body, failure.headers)
                else:
                    with server.lock:
                        reply = server.route(request)
                if isinstance(reply.body, bytes):
                    data = reply.body
                elif reply.body is None:
                    data = b""
                else:
                    data = json.dumps(reply.body).encode()
                try:
                    self.send_response(reply.status)
                    if data or reply.status not in (204, 302):
                        self.send_header("Content-Type", reply.content_type)
                    for name, value in reply.headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass
                request.status = reply.status
                with server.lock:
                    server.log.append(request)

            do_GET = do_POST = _serve  # noqa: N815

        return Handler
