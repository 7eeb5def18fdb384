"""A real HTTP server (http.server in a thread on 127.0.0.1) serving a small paginated JSON API for the http
connector's tests, with an ``updated_since`` filter, optional bearer-token auth and switchable failures."""

import json
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from http.server import BaseHTTPRequestHandler
from urllib.parse import parse_qs, urlsplit

from tests.http_server import LocalHttpServer

ARTICLES = [
    {"id": 1, "title": "Connecting to the VPN", "body": "Install the GateKeeper client and sign in with your badge.",
     "summary": "VPN set-up", "updated": "2024-03-01T09:00:00+00:00", "readers": []},
    {"id": 2, "title": "Travel and expenses", "body": "Train tickets are reimbursed in standard class only.",
     "summary": "Expenses", "updated": "2024-03-02T09:00:00+00:00", "readers": ["finance"]},
    {"id": 3, "title": "Parental leave", "body": "Employees receive twenty-six weeks of fully paid parental leave.",
     "summary": "Leave", "updated": "2024-03-03T09:00:00+00:00", "readers": ["hr"]},
    {"id": 4, "title": "Information security", "body": "Laptops must use full-disk encryption at all times.",
     "summary": "Security", "updated": "2024-03-04T09:00:00+00:00", "readers": []},
    {"id": 5, "title": "Office plants", "body": "The facilities team waters the plants on Mondays and Thursdays.",
     "summary": "Facilities", "updated": "2024-03-05T09:00:00+00:00", "readers": []},
]


@dataclass
class Failure:
    mode: str  # "500", "429", "401", "garbage", "reset", "slow"
    times: int | None  # None: every request
    path: str
    skip: int = 0  # let this many matching requests through first


@dataclass
class ApiState:
    articles: dict = field(default_factory=lambda: {a["id"]: dict(a) for a in ARTICLES})
    page_size: int = 2
    token: str | None = None  # when set, every request needs "Authorization: Bearer <token>"
    next_base: str = ""  # prefix for next links (another host, to test that they are not followed)
    failures: list = field(default_factory=list)
    log: list = field(default_factory=list)  # (path, query dict, status or "reset")
    lock: threading.Lock = field(default_factory=threading.Lock)

    def fail(self, mode: str, times: int | None = None, path: str = "/api/", skip: int = 0):
        with self.lock:
            self.failures.append(Failure(mode, times, path, skip))

    def requests_to(self, path: str) -> list:
        with self.lock:
            return [entry for entry in self.log if entry[0] == path]

    def _take_failure(self, path: str) -> str | None:
        with self.lock:
            for failure in self.failures:
                if path.startswith(failure.path):
                    if failure.skip:
                        failure.skip -= 1
                        return None
                    if failure.times is not None:
                        failure.times -= 1
                        if failure.times <= 0:
                            self.failures.remove(failure)
                    return failure.mode
        return None


def _handler(state: ApiState):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # quiet
            pass

        def _send(self, status: int, body, content_type="application/json", headers=None):
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            try:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):  # the client gave up waiting (the "slow" mode)
                pass
            with state.lock:
                state.log.append((self.path_only, self.query, status))

        def do_GET(self):  # noqa: N802 (http.server's name)
            parts = urlsplit(self.path)
            self.path_only, self.query = parts.path, {k: v[0] for k, v in parse_qs(parts.query).items()}
            mode = state._take_failure(self.path_only)
            if mode == "reset":
                with state.lock:
                    state.log.append((self.path_only, self.query, "reset"))
                self.close_connection = True  # hang up without an answer: the client sees a reset
                return
            if mode == "slow":
                time.sleep(1.0)
            elif mode == "500":
                return self._send(500, {"error": "internal error"})
            elif mode == "429":
                return self._send(429, {"error": "slow down"}, headers={"Retry-After": "0"})
            elif mode == "401":
                return self._send(401, {"error": "invalid token"})
            elif mode == "garbage":
                return self._send(200, b"<html><body>Gateway says hello</body></html>", "text/html")
            if state.token and self.headers.get("Authorization") != f"Bearer {state.token}":
                return self._send(401, {"error": "missing or wrong token"})
            if self.path_only == "/api/articles":
                return self._articles()
            if self.path_only == "/api/ids":
                with state.lock:
                    ids = sorted(state.articles)
                return self._send(200, {"ids": ids})
            if self.path_only == "/api/other-shape":
                return self._send(200, {"results": []})
            return self._send(404, {"error": "no such endpoint"})

        def _articles(self):
            with state.lock:
                items = sorted(state.articles.values(), key=lambda a: (a["updated"], a["id"]))
            since = self.query.get("updated_since")
            if since:
                floor = datetime.fromisoformat(since)
                items = [a for a in items if datetime.fromisoformat(a["updated"]) > floor]
            size = state.page_size
            if "page" in self.query:  # numbered pages
                page = int(self.query["page"])
                return self._send(200, {"data": {"items": items[(page - 1) * size: page * size]}})
            cursor = int(self.query.get("cursor", 0))
            chunk = items[cursor: cursor + size]
            following = None
            if cursor + size < len(items):
                following = f"{state.next_base}/api/articles?cursor={cursor + size}"
                if since:
                    following += f"&updated_since={since.replace('+', '%2B')}"
            return self._send(200, {"data": {"items": chunk}, "links": {"next": following}})

    return Handler


class JsonApiServer(LocalHttpServer):
    thread_name = "json-api"

    def __init__(self):
        self.state = ApiState()
        self._bind(_handler(self.state))
