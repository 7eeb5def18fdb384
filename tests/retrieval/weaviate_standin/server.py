"""The stand-in process: Weaviate's REST API (the calls weaviate-client v4 makes to connect and manage the schema) on
one port and its gRPC API on another, both in threads of the test process, over one in-memory store."""

import json
import logging
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
from weaviate.proto.v1 import weaviate_pb2_grpc

from .grpc_api import UnknownMethodHandler, WeaviateServicer, health_handler
from .store import NotImplementedByStandIn, Shard, StandInError, Store

logger = logging.getLogger(__name__)


class WeaviateStandIn:
    """A wire-level STAND-IN for a Weaviate server, for tests: NOT Weaviate.

    It answers what weaviate-client 4.23 sends for ragsite's backend (see the package docstring) from an in-memory
    store, and refuses anything else with 501 / UNIMPLEMENTED, recording it in ``unknown_calls`` so a test can
    assert that nothing unimplemented was asked for. ``reject_objects`` makes BatchObjects fail chosen objects,
    as Weaviate does per object.
    """

    def __init__(self, *, version: str = "1.32.0", api_key: str | None = None):
        self.version = version
        self.api_key = api_key
        self.store = Store()
        self.calls: list[str] = []
        self.unknown_calls: list[str] = []
        self._http = None
        self._grpc = None

    # --- lifecycle -----------------------------------------------------------------------------------------

    def start(self) -> "WeaviateStandIn":
        self._http = ThreadingHTTPServer(("127.0.0.1", 0), _handler_class(self))
        self._http.daemon_threads = True
        threading.Thread(target=self._http.serve_forever, name="weaviate-standin-rest", daemon=True).start()
        self._grpc = grpc.server(ThreadPoolExecutor(max_workers=8, thread_name_prefix="weaviate-standin-grpc"))
        weaviate_pb2_grpc.add_WeaviateServicer_to_server(WeaviateServicer(self), self._grpc)
        self._grpc.add_generic_rpc_handlers((health_handler(self), UnknownMethodHandler(self)))
        self.grpc_port = self._grpc.add_insecure_port("127.0.0.1:0")
        self._grpc.start()
        return self

    def stop(self):
        if self._grpc is not None:
            self._grpc.stop(grace=0).wait()
            self._grpc = None
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None

    @property
    def http_port(self) -> int:
        return self._http.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    # --- for tests -----------------------------------------------------------------------------------------

    def reset(self):
        with self.store.lock:
            self.store.collections.clear()
            self.store.rejections.clear()
        self.calls.clear()
        self.unknown_calls.clear()

    def reject_objects(self, predicate, message="rejected by the stand-in on purpose"):
        """Make BatchObjects answer an error for each object where ``predicate(collection, properties)`` holds."""
        self.store.rejections.append((predicate, message))

    def shard(self, collection: str, tenant: str = "") -> Shard:
        with self.store.lock:
            return self.store.collection(collection).shard(tenant)

    def record_unknown(self, what: str):
        self.unknown_calls.append(what)
        logger.error("WEAVIATE STAND-IN: unimplemented request: %s", what)

    def check_grpc_auth(self, context):
        if self.api_key is None:
            return
        metadata = dict(context.invocation_metadata())
        if metadata.get("authorization") != f"Bearer {self.api_key}":
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "anonymous access not enabled, please provide an api key")

    # --- REST ----------------------------------------------------------------------------------------------

    def rest(self, method: str, path: str, headers, body):
        """(status, json or None) for one REST request."""
        self.calls.append(f"{method} {path}")
        if self.api_key is not None and not path.startswith("/v1/.well-known/") and \
                headers.get("authorization") != f"Bearer {self.api_key}":
            return 401, {"code": 401, "message": "anonymous access not enabled, please provide an api key"}
        for route_method, pattern, handler in _ROUTES:
            match = re.fullmatch(pattern, path)
            if match and route_method == method:
                try:
                    with self.store.lock:
                        return handler(self, body, **match.groupdict())
                except NotImplementedByStandIn as exc:
                    self.record_unknown(f"{method} {path}: {exc}")
                    return exc.http_status, _error(str(exc))
                except StandInError as exc:
                    return exc.http_status, _error(str(exc))
        self.record_unknown(f"{method} {path}")
        return 501, _error(f"weaviate stand-in: {method} {path} is not implemented")

    def _meta(self, body):
        return 200, {"hostname": "http://[::]:8080", "version": self.version, "modules": {},
                     "grpcMaxMessageSize": 104858000, "standIn": "ragsite test stand-in, not Weaviate"}

    def _ok(self, body, **_):
        return 200, None

    def _get_collection(self, body, name):
        return 200, self.store.collection(name).config

    def _create_collection(self, body):
        collection = self.store.create(body)
        return 200, {**collection.config, "class": collection.name}

    def _add_property(self, body, name):
        self.store.collection(name).add_property(body)
        return 200, body

    def _delete_collection(self, body, name):
        self.store.collections.pop(name[:1].upper() + name[1:], None)
        return 200, None

    def _tenant_exists(self, body, name, tenant):
        collection = self.store.collection(name)
        if not collection.multi_tenant:
            raise StandInError(f"multi-tenancy is not enabled for class {collection.name}")
        return (200 if tenant in collection.tenants else 404), None

    def _create_tenants(self, body, name):
        collection = self.store.collection(name)
        if not collection.multi_tenant:
            raise StandInError(f"multi-tenancy is not enabled for class {collection.name}")
        for tenant in body:
            if set(tenant) - {"name", "activityStatus"} or tenant.get("activityStatus", "ACTIVE") not in ("ACTIVE",
                                                                                                          "HOT"):
                raise NotImplementedByStandIn(f"tenant settings {tenant}")
            if tenant["name"] in collection.tenants:
                raise StandInError(f"tenant {tenant['name']} already exists")
        for tenant in body:
            collection.tenants[tenant["name"]] = Shard()
        return 200, body

    def _delete_tenants(self, body, name):
        collection = self.store.collection(name)
        for tenant in body:
            collection.tenants.pop(tenant, None)
        return 200, None


_ROUTES = [
    ("GET", r"/v1/meta", WeaviateStandIn._meta),
    ("GET", r"/v1/\.well-known/(?:live|ready)", WeaviateStandIn._ok),
    ("GET", r"/v1/schema/(?P<name>[A-Za-z0-9_]+)", WeaviateStandIn._get_collection),
    ("POST", r"/v1/schema", WeaviateStandIn._create_collection),
    ("DELETE", r"/v1/schema/(?P<name>[A-Za-z0-9_]+)", WeaviateStandIn._delete_collection),
    ("POST", r"/v1/schema/(?P<name>[A-Za-z0-9_]+)/properties", WeaviateStandIn._add_property),
    ("HEAD", r"/v1/schema/(?P<name>[A-Za-z0-9_]+)/tenants/(?P<tenant>[^/]+)", WeaviateStandIn._tenant_exists),
    ("POST", r"/v1/schema/(?P<name>[A-Za-z0-9_]+)/tenants", WeaviateStandIn._create_tenants),
    ("DELETE", r"/v1/schema/(?P<name>[A-Za-z0-9_]+)/tenants", WeaviateStandIn._delete_tenants),
]


def _error(message: str) -> dict:
    return {"error": [{"message": message}]}


def _handler_class(standin: WeaviateStandIn):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _dispatch(self):
            length = int(self.headers.get("content-length") or 0)
            raw = self.rfile.read(length) if length else b""
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                status, payload = 400, _error("request body is not JSON")
            else:
                headers = {k.lower(): v for k, v in self.headers.items()}
                status, payload = standin.rest(self.command, self.path.split("?", 1)[0], headers, body)
            data = b"" if payload is None else json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _dispatch  # noqa: N815

        def log_message(self, format, *args):  # noqa: A002 - the base class's signature
            logger.debug("weaviate stand-in REST: " + format, *args)

    return Handler
