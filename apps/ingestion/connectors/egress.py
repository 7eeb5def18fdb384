"""Where connectors may connect (issue 12): never to loopback, link-local, private or other special
addresses unless CONNECTOR_EGRESS_ALLOW names the network (CIDR) or the host, so that whoever may manage sources
cannot make the server probe its own machine, the cloud metadata service (169.254.169.254) or the internal network.

Checked twice: on save, on the addresses the URL's host resolves to now (a clear error naming the field), and on
every connection, on the address actually connected to (a host that resolved to a public address at save time and
to 127.0.0.1 later, DNS rebinding, is refused then). The connection check is a urllib3 connection class mounted by
:func:`guarded_adapter` on the connectors' requests sessions; it resolves once and connects to the checked address.
"""

import contextlib
import contextvars
import ipaddress
import socket
from urllib.parse import urlsplit

from django.conf import settings
from requests.adapters import HTTPAdapter
from requests.utils import select_proxy
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, NameResolutionError, NewConnectionError
from urllib3.util import connection as urllib3_connection

from .base import ConfigError, ConnectorError


class EgressDenied(ConnectorError):
    """The target's address is one connectors may not reach. Not an OSError: urllib3 does not retry it."""


def _kind_of(ip) -> str | None:
    """Why an address is denied by default, or None for a public one."""
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_loopback:
        return "a loopback address"
    if ip.is_link_local:
        return "a link-local address"
    if ip.is_unspecified or ip.is_multicast or ip.is_reserved:
        return "a reserved address"
    if ip.is_private or not ip.is_global:
        return "a private address"
    return None


def _allowed(host: str, ip) -> bool:
    name = host.lower().rstrip(".")
    for entry in settings.CONNECTOR_EGRESS_ALLOW:
        entry = str(entry).strip()
        try:
            network = ipaddress.ip_network(entry, strict=False)
        except ValueError:
            if name == entry.lower().rstrip("."):
                return True
            continue
        candidates = [ip] + ([ip.ipv4_mapped] if ip.version == 6 and ip.ipv4_mapped else [])
        if any(c.version == network.version and c in network for c in candidates):
            return True
    return False


def check_address(host: str, address: str) -> None:
    """EgressDenied when ``address`` (an IP, as resolved for ``host``) is not one connectors may reach."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])  # an IPv6 scope id is not part of the address
    kind = _kind_of(ip)
    if kind is not None and not _allowed(host, ip):
        # The address itself is left out: the message reaches whoever saves the source, and need not map the network.
        raise EgressDenied(f"{host} resolves to {kind}, which connectors may not reach (an operator can allow it "
                           "in CONNECTOR_EGRESS_ALLOW)")


def _resolve(host: str, port: int) -> list[str]:
    return [info[4][0] for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)]


def check_url(key: str, url: str) -> None:
    """On save: ConfigError naming ``key`` when the URL's host resolves to an address that is denied. A host that
    does not resolve passes here; connecting to it then fails with its own reason."""
    parts = urlsplit(url)
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return
    check_host(key, parts.hostname or "", port)


def check_host(key: str, host: str, port: int) -> None:
    """check_url for a host and port (a database server)."""
    try:
        addresses = _resolve(host, port)
    except (OSError, ValueError, UnicodeError):
        return
    for address in addresses:
        try:
            check_address(host, address)
        except EgressDenied as exc:
            raise ConfigError(key, str(exc)) from None


def check_before_connecting(host: str, port: int) -> None:
    """For clients that are not requests sessions (SQL drivers, boto3), before they connect: EgressDenied when the
    host resolves to a denied address now. They resolve the name again themselves, so unlike the guarded HTTP
    connections this leaves a short window for a name that changes its answer in between (DNS rebinding). A name
    that does not resolve passes: the client then fails with its own reason."""
    try:
        addresses = _resolve(host, port)
    except (OSError, ValueError, UnicodeError):
        return
    for address in addresses:
        check_address(host, address)


# --- on every connection ---------------------------------------------------------------------------------------


class _GuardedConnectionMixin:
    def _new_conn(self) -> socket.socket:
        """urllib3's _new_conn, but resolving the host once, checking every address, and connecting to the first."""
        try:
            addresses = _resolve(self._dns_host, self.port)
        except socket.gaierror as exc:
            raise NameResolutionError(self.host, self, exc) from exc
        for address in addresses:
            check_address(self.host, address)
        try:
            return urllib3_connection.create_connection(
                (addresses[0], self.port), self.timeout, source_address=self.source_address,
                socket_options=self.socket_options,
            )
        except TimeoutError as exc:
            raise ConnectTimeoutError(self, f"Connection to {self.host} timed out. "
                                            f"(connect timeout={self.timeout})") from exc
        except OSError as exc:
            raise NewConnectionError(self, f"Failed to establish a new connection: {exc}") from exc


class _GuardedHTTPConnection(_GuardedConnectionMixin, HTTPConnection):
    pass


class _GuardedHTTPSConnection(_GuardedConnectionMixin, HTTPSConnection):
    pass


class _GuardedHTTPPool(HTTPConnectionPool):
    ConnectionCls = _GuardedHTTPConnection


class _GuardedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _GuardedHTTPSConnection


_GUARDED_POOLS = {"http": _GuardedHTTPPool, "https": _GuardedHTTPSPool}


class GuardedAdapter(HTTPAdapter):
    """An HTTPAdapter whose connections (redirects included) go only where the egress policy allows."""

    def init_poolmanager(self, *args, **kwargs):
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = dict(_GUARDED_POOLS)

    def proxy_manager_for(self, proxy, **proxy_kwargs):
        # Through a proxy (HTTP(S)_PROXY) the connection goes to the proxy, which is checked like any address; the
        # target is resolved here and checked as on save, since the proxy would otherwise reach anything for us.
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        if not proxy.lower().startswith("socks"):  # SOCKS pools have their own connection class
            manager.pool_classes_by_scheme = dict(_GUARDED_POOLS)
        return manager

    def send(self, request, *args, proxies=None, **kwargs):
        if proxies and select_proxy(request.url, proxies):
            host = urlsplit(request.url).hostname or ""
            with contextlib.suppress(OSError, UnicodeError):
                for address in _resolve(host, 443):
                    check_address(host, address)
        return super().send(request, *args, proxies=proxies, **kwargs)


# --- what a save-time error may say ----------------------------------------------------------------------------

_SAVING = contextvars.ContextVar("ragsite_connector_saving", default=False)


@contextlib.contextmanager
def saving():
    """While a source is being saved, connector errors leave out raw response bodies: the person saving it would
    otherwise read what any service answered (a probe). Syncs, whose errors only the source's readers see, keep
    them for the operator."""
    token = _SAVING.set(True)
    try:
        yield
    finally:
        _SAVING.reset(token)


def body_excerpt(text: str) -> str:
    """``text`` (a response body's start) outside a save, "" during one."""
    return "" if _SAVING.get() else text
