"""A real S3 endpoint for the s3 connector's tests: moto's server (``python -m moto.server``) as a separate process
on a free 127.0.0.1 port, speaking the S3 REST protocol, with IAM authentication switched on once the test users
exist, so wrong keys, wrong secrets and missing permissions are refused the way S3 refuses them.

In front of it, ``FaultProxy``: a small HTTP server in a thread that forwards every request to moto unchanged
(the Host header included, so SigV4 signatures still verify), logs it, and can answer instead with S3's own
throttling and server errors (503 SlowDown, 500 InternalError) or hold a request past the client's timeout.
"""

import http.client
import json
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from urllib.parse import urlsplit

import requests

from tests.http_server import LocalHttpServer

REGION = "us-east-1"
READ_ALL = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}
ADMIN = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}
GET_ONLY = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:GetObject", "Resource": "*"}]}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Keys:
    access_key_id: str
    secret_access_key: str


class MotoServer:
    """moto_server in its own process; stopped by its PID."""

    def __init__(self, log_path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.process = None
        self.reader: Keys | None = None  # may do anything in S3
        self.get_only: Keys | None = None  # may read objects but not list buckets
        self.admin: Keys | None = None  # may make more users once authentication is on

    def start(self):
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=self._log, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                requests.get(f"{self.url}/moto-api/", timeout=(1, 10))
                break
            except requests.RequestException:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"moto server did not start; see {self.log_path}") from None
                time.sleep(0.1)
        # Users and keys are made while moto still accepts anything; then every request must be signed by one.
        iam = self.client("iam", Keys("bootstrap", "bootstrap"))
        self.reader = self._user(iam, "ragsite-reader", READ_ALL)
        self.get_only = self._user(iam, "ragsite-get-only", GET_ONLY)
        self.admin = self._user(iam, "ragsite-admin", ADMIN)
        response = requests.post(f"{self.url}/moto-api/reset-auth", data=b"0", timeout=5)
        response.raise_for_status()
        return self

    def user(self, name: str, policy: dict) -> Keys:
        """A new IAM user with one inline policy, and its keys."""
        return self._user(self.client("iam", self.admin), name, policy)

    def _user(self, iam, name, policy) -> Keys:
        iam.create_user(UserName=name)
        iam.put_user_policy(UserName=name, PolicyName="s3", PolicyDocument=json.dumps(policy))
        key = iam.create_access_key(UserName=name)["AccessKey"]
        return Keys(key["AccessKeyId"], key["SecretAccessKey"])

    def client(self, service="s3", keys: Keys | None = None, endpoint=None):
        import boto3
        from botocore.config import Config

        keys = keys or self.reader
        return boto3.client(service, endpoint_url=endpoint or self.url, region_name=REGION,
                            aws_access_key_id=keys.access_key_id, aws_secret_access_key=keys.secret_access_key,
                            config=Config(s3={"addressing_style": "path"}))

    def stop(self):
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        if getattr(self, "_log", None):
            self._log.close()


S3_ERRORS = {
    "503": (503, "SlowDown", "Please reduce your request rate."),
    "500": (500, "InternalError", "We encountered an internal error. Please try again."),
}


@dataclass
class ProxyState:
    failures: list = field(default_factory=list)  # [mode, times left, method]
    log: list = field(default_factory=list)  # (method, path, query, status)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def fail(self, mode: str, times: int | None = None, method: str = "GET"):
        """mode: "503" (SlowDown), "500" (InternalError) or "slow" (answer after 1.5 s); times None: always."""
        with self.lock:
            self.failures.append([mode, times, method])

    def _take(self, method: str) -> str | None:
        with self.lock:
            for failure in self.failures:
                if failure[2] == method:
                    if failure[1] is not None:
                        failure[1] -= 1
                        if failure[1] <= 0:
                            self.failures.remove(failure)
                    return failure[0]
        return None

    def requests(self, method="GET") -> list:
        with self.lock:
            return [entry for entry in self.log if entry[0] == method]


class FaultProxy(LocalHttpServer):
    thread_name = "s3-fault-proxy"

    def __init__(self, upstream: str):
        self.state = ProxyState()
        upstream_port = urlsplit(upstream).port
        state = self.state

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _relay(self):
                parts = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                mode = state._take(self.command)
                if mode in S3_ERRORS:
                    status, code, message = S3_ERRORS[mode]
                    data = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{message}'
                            f"</Message><RequestId>4442587FB7D0A2F9</RequestId></Error>").encode()
                    self._answer(status, [("Content-Type", "application/xml")], data, parts)
                    return
                if mode == "slow":
                    time.sleep(1.5)
                conn = http.client.HTTPConnection("127.0.0.1", upstream_port, timeout=30)
                try:
                    conn.request(self.command, self.path, body=body, headers=dict(self.headers.items()))
                    response = conn.getresponse()
                    data = response.read()
                    headers = [(k, v) for k, v in response.getheaders()
                               if k.lower() not in ("transfer-encoding", "connection", "content-length")]
                    self._answer(response.status, headers, data, parts)
                finally:
                    conn.close()

            def _answer(self, status, headers, data, parts):
                try:
                    self.send_response(status)
                    for name, value in headers:
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client timed out first
                    pass
                with state.lock:
                    state.log.append((self.command, parts.path, parts.query, status))

            do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _relay  # noqa: N815

        self._bind(Handler)
