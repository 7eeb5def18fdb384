"""What the HTTP-based connectors (the generic JSON API one, SharePoint over Microsoft Graph, Confluence Cloud) share:
a requests session, held to the egress policy, whose
urllib3 ``Retry`` retries transient failures only (connection errors and resets, timeouts, 429 and 5xx, with
exponential backoff and ``Retry-After`` honoured), and failures turned into ConnectorError messages that name the
endpoint without its query string (which may carry tokens)."""

import json
from urllib.parse import urlsplit

import requests
from urllib3.util.retry import Retry

from .base import ConfigError, ConnectorError, check_number, text_setting  # noqa: F401 (re-exported)
from .egress import GuardedAdapter, body_excerpt, check_url

RETRY_STATUSES = (429, 500, 502, 503, 504)
RETRY_AFTER_MAX = 120  # seconds: Graph and Atlassian ask for up to a couple of minutes when throttling; longer: not
# honoured as given (urllib3 waits this long at most)
BACKOFF_MAX = 30  # seconds between two attempts at most
DEFAULTS = {"timeout": 30, "max_retries": 5, "backoff_factor": 1.0}
NUMBERS = (("timeout", 0.1, 300, False), ("max_retries", 0, 10, True), ("backoff_factor", 0, 60, False))


def where(url: str) -> str:
    """A URL for messages: no query string."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}"


def origin(url: str) -> tuple:
    parts = urlsplit(url)
    return parts.scheme, parts.hostname, parts.port


def retries_text(count: int) -> str:
    return "1 retry" if count == 1 else f"{count} retries"


def http_url(key: str, value) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(key, "an http:// or https:// URL is required")
    parts = urlsplit(value.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(key, "must be an http:// or https:// URL with a host")
    if parts.username or parts.password or parts.query or parts.fragment:
        raise ConfigError(key, "must be a plain URL: no credentials, query or fragment")
    check_url(key, value.strip())
    return value.strip().rstrip("/")


def groups_map_setting(config: dict) -> dict | None:
    value = config.get("groups_map")
    if value is None:
        return None
    if not isinstance(value, dict) or not all(isinstance(k, str) and k.strip() and isinstance(v, str) and v.strip()
                                              for k, v in value.items()):
        raise ConfigError("groups_map", "must map the source's group names to ragsite group names, e.g. "
                          '{"HR Team": "hr"}')
    return {k.strip(): v.strip() for k, v in value.items()}


def number_settings(config: dict, cfg: dict) -> None:
    for key, low, high, integer in NUMBERS:
        value = check_number(key, config.get(key, DEFAULTS[key]), low=low, high=high, integer=integer)
        if key in config:
            cfg[key] = value


class RestClient:
    """One session per connector instance; ``get``/``post`` raise ConnectorError when no answer came at all and
    return the response (any status) otherwise."""

    def __init__(self, config: dict, *, auth=None, headers=None, methods=("GET", "POST")):
        self.timeout = config.get("timeout", DEFAULTS["timeout"])
        self.max_retries = config.get("max_retries", DEFAULTS["max_retries"])
        retry = Retry(
            total=self.max_retries, connect=self.max_retries, read=self.max_retries, status=self.max_retries,
            other=0, redirect=5,
            # POST reaches only token endpoints, where asking again is harmless; a connector may retry GET alone.
            allowed_methods=frozenset(methods), status_forcelist=RETRY_STATUSES,
            backoff_factor=config.get("backoff_factor", DEFAULTS["backoff_factor"]), backoff_max=BACKOFF_MAX,
            respect_retry_after_header=True, retry_after_max=RETRY_AFTER_MAX,
            raise_on_status=False,  # the last response comes back, so its status and body can be reported
        )
        session = requests.Session()
        adapter = GuardedAdapter(max_retries=retry)  # every connection checked against the egress policy
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        session.headers.update({"Accept": "application/json", "User-Agent": "ragsite-connector"})
        session.headers.update(headers or {})
        session.auth = auth
        self.session = session

    def request(self, method: str, url: str, **kwargs) -> requests.Response:
        place = where(url)
        after = f"after {retries_text(self.max_retries)}"
        try:
            return self.session.request(method, url, timeout=self.timeout, **kwargs)
        except requests.Timeout as exc:
            raise ConnectorError(f"{place} timed out {after}: {exc.__class__.__name__}") from None
        except requests.ConnectionError as exc:
            raise ConnectorError(f"cannot reach {place} {after}: {cause(exc)}") from None
        except requests.RequestException as exc:
            raise ConnectorError(f"request to {place} failed: {cause(exc)}") from None

    def get(self, url: str, **kwargs) -> requests.Response:
        return self.request("GET", url, **kwargs)

    def post(self, url: str, **kwargs) -> requests.Response:
        return self.request("POST", url, **kwargs)


def retried(response: requests.Response) -> str:
    """" after N retries" when urllib3 retried before giving up on this response, else ""."""
    count = len(getattr(getattr(response.raw, "retries", None), "history", ()) or ())
    return f" after {retries_text(count)}" if count and response.status_code in RETRY_STATUSES else ""


def body_json(response: requests.Response, what: str | None = None):
    """The body as JSON; else ConnectorError saying what came instead ("{what} from URL is not JSON", or "URL did
    not answer JSON" when ``what`` is not given)."""
    try:
        return response.json()
    except ValueError:
        start = body_excerpt(" ".join(response.text[:80].split()))
        content_type = response.headers.get("Content-Type", "no Content-Type")
        starts = f"; it starts {start!r}" if start else ""
        place = where(response.url)
        problem = f"{what} from {place} is not JSON" if what else f"{place} did not answer JSON"
        raise ConnectorError(f"{problem} ({content_type}{starts})") from None


def short_body(response: requests.Response) -> str:
    """The first 200 characters of an error body, on one line."""
    try:
        text = json.dumps(response.json(), ensure_ascii=False)
    except ValueError:
        text = response.text
    return body_excerpt(" ".join(text[:200].split()))


def cause(exc) -> str:
    """The innermost reason urllib3 gave up (e.g. "Connection refused"), not requests' long wrapper."""
    reason = exc
    while getattr(reason, "args", None) and isinstance(reason.args[0], Exception):
        reason = reason.args[0]
    inner = getattr(reason, "reason", None)
    text = str(inner or reason)
    return text.split(": ", 1)[-1] if "object at 0x" in text else text


def read_capped(response: requests.Response, limit: int) -> bytes | None:
    """The streamed body, or None when it runs past ``limit`` bytes (nothing more is read)."""
    data = bytearray()
    for chunk in response.iter_content(64 * 1024):
        data.extend(chunk)
        if len(data) > limit:
            response.close()
            return None
    return bytes(data)
