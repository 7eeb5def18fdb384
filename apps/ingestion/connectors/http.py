"""Items of a paginated JSON API, one document per item.

Transient failures (connection errors and resets, timeouts, 429 and 5xx) are retried by urllib3 on the session
with exponential backoff, a bounded number of times; anything else (another 4xx, a body that is not JSON, a
missing ``items_path``) ends the listing at once with the reason, so the sync prunes nothing.
"""

import json
import logging
import re
from datetime import UTC, datetime
from urllib.parse import urljoin, urlsplit

from . import http_client
from .base import ConfigError, Connector, ConnectorError, RawDocument, failing_read, reject_unknown
from .egress import body_excerpt, check_url
from .http_client import RestClient, body_json, check_number, origin, retried, where

logger = logging.getLogger(__name__)

SETTINGS = {"url", "items_path", "id_field", "title_field", "text_fields", "updated_field", "updated_since_param",
            "next_field", "page_param", "first_page", "ids_url", "ids_path", "headers", "groups_field",
            "url_field", "timeout", "max_retries", "backoff_factor", "max_pages"}
DEFAULTS = {**http_client.DEFAULTS, "max_pages": 10_000, "first_page": 1}
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_MISSING = object()


def _dig(data, path: str):
    """The value at a dotted path ("data.items", "links.next"); _MISSING when any step is absent."""
    if not path:
        return data
    for part in path.split("."):
        if isinstance(data, dict) and part in data:
            data = data[part]
        elif isinstance(data, list) and part.isdigit() and int(part) < len(data):
            data = data[int(part)]
        else:
            return _MISSING
    return data


def _order_key(value):
    """Orders updated values: numbers by value, ISO timestamps as instants, other text as text."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return (0, float(value))
    if isinstance(value, str):
        parsed = _parse_time(value)
        if parsed is not None:
            return (1, parsed.timestamp())
        return (2, value)
    return None


def _parse_time(value) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _as_text(value) -> str:
    if value is _MISSING or value is None:
        return ""
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return "\n".join(v.strip() for v in value if v.strip())
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


def _groups(value) -> tuple[str, ...] | None:
    if value is _MISSING or value is None:
        return None
    items = value if isinstance(value, list) else str(value).split(",")
    groups = tuple(sorted({str(g).strip() for g in items if str(g).strip()}))
    return groups or None


def _http_url(key: str, value) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(key, "an http:// or https:// URL is required")
    parts = urlsplit(value.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(key, "must be an http:// or https:// URL with a host")
    if parts.username or parts.password:
        raise ConfigError(key, "must not carry credentials; send them in headers (stored encrypted)")
    check_url(key, value.strip())
    return value.strip()


def _number(config, key, *, low, high, integer):
    return check_number(key, config.get(key, DEFAULTS[key]), low=low, high=high, integer=integer)


class HttpConnector(Connector):
    """One document per item of a JSON API listing; incremental on ``updated_field`` when it is set."""

    incremental = True
    # Query values of the URLs too: APIs take keys there (?api_key=...), and a readonly user may view sources.
    secret_fields = ("headers.*", "url?", "ids_url?")

    @classmethod
    def validate_config(cls, config):
        reject_unknown(config, SETTINGS, "an http source")
        cfg = {"url": _http_url("url", config.get("url"))}
        items_path = config.get("items_path", "")
        if not isinstance(items_path, str):
            raise ConfigError("items_path", "must be a dotted path such as data.items (empty: the body is the list)")
        cfg["items_path"] = items_path.strip()
        id_field = config.get("id_field")
        if not isinstance(id_field, str) or not id_field.strip():
            raise ConfigError("id_field", "the (dotted) name of each item's id is required")
        cfg["id_field"] = id_field.strip()
        text_fields = config.get("text_fields")
        if (not isinstance(text_fields, list) or not text_fields
                or not all(isinstance(f, str) and f.strip() for f in text_fields)):
            raise ConfigError("text_fields", "a non-empty list of the (dotted) fields holding each item's text")
        cfg["text_fields"] = [f.strip() for f in text_fields]
        for key in ("title_field", "updated_field", "updated_since_param", "next_field", "page_param", "ids_path",
                    "groups_field", "url_field"):
            if config.get(key) is None:
                continue
            if not isinstance(config[key], str) or not config[key].strip():
                raise ConfigError(key, "must be a non-empty name")
            cfg[key] = config[key].strip()
        if "updated_since_param" in cfg and "updated_field" not in cfg:
            raise ConfigError("updated_since_param", "needs updated_field, whose highest value it sends back")
        if "next_field" in cfg and "page_param" in cfg:
            raise ConfigError("page_param", "set either next_field (a next-page link) or page_param, not both")
        if config.get("ids_url") is not None:
            cfg["ids_url"] = _http_url("ids_url", config["ids_url"])
        headers = config.get("headers", {})
        if not isinstance(headers, dict):
            raise ConfigError("headers", "must be an object of header names and values")
        for name, value in headers.items():
            if not _HEADER_NAME.match(name):
                raise ConfigError(f"headers.{name}", "not a valid header name")
            if not isinstance(value, str) or "\r" in value or "\n" in value:
                raise ConfigError(f"headers.{name}", "must be a single-line string")
        if headers:
            cfg["headers"] = dict(headers)
        for key, low, high, integer in (("timeout", 0.1, 300, False), ("max_retries", 0, 10, True),
                                        ("backoff_factor", 0, 60, False), ("max_pages", 1, 1_000_000, True),
                                        ("first_page", 0, 1_000_000, True)):
            value = _number(config, key, low=low, high=high, integer=integer)
            if key in config:
                cfg[key] = value
        return cfg

    def __init__(self, config):
        super().__init__(config)
        self._client = None
        self._since = None
        self._latest = None

    def _setting(self, key):
        return self.config.get(key, DEFAULTS[key])

    @property
    def client(self) -> RestClient:
        if self._client is None:  # GET only: listing is all this connector does
            self._client = RestClient(self.config, headers=self.config.get("headers", {}), methods=("GET",))
        return self._client

    # --- fetching -----------------------------------------------------------------------------------------

    def _get_json(self, url: str, params: dict | None):
        place = where(url)
        response = self.client.get(url, params=params)
        if response.status_code >= 400:
            detail = body_excerpt(" ".join(response.text[:200].split()))
            hint = {401: " (check the credentials in headers)", 403: " (the credentials lack access)",
                    404: " (check the URL)"}.get(response.status_code, "")
            raise ConnectorError(f"HTTP {response.status_code} {response.reason} from {place}{retried(response)}{hint}"
                                 + (f": {detail}" if detail else ""))
        return body_json(response)

    def _items(self, body, url: str, path: str) -> list:
        items = _dig(body, path)
        if items is _MISSING:
            keys = ", ".join(sorted(body)[:20]) if isinstance(body, dict) else type(body).__name__
            raise ConnectorError(f"items_path {path!r} is not in the response from {where(url)} (it has: {keys})")
        if not isinstance(items, list):
            what = f"items_path {path!r}" if path else "the response"
            raise ConnectorError(f"{what} from {where(url)} is a {type(items).__name__}, not a list")
        return items

    def _pages(self, url: str, path: str, params: dict):
        """Each page's list of items: numbered pages with page_param, else next-page links with next_field,
        else the one page."""
        cfg = self.config
        max_pages = self._setting("max_pages")
        if "page_param" in cfg:
            page, previous = self._setting("first_page"), None
            for _ in range(max_pages):
                items = self._items(self._get_json(url, {**params, cfg["page_param"]: page}), url, path)
                if not items:
                    return
                if items == previous:
                    raise ConnectorError(f"{where(url)} answered page {page} with the previous page's items: "
                                         f"does it read {cfg['page_param']!r}?")
                yield items
                previous, page = items, page + 1
        else:
            visited = set()
            for _ in range(max_pages):
                body = self._get_json(url, params)
                yield self._items(body, url, path)
                link = _dig(body, cfg["next_field"]) if "next_field" in cfg else None
                if link in (_MISSING, None, ""):
                    return
                if not isinstance(link, str):
                    raise ConnectorError(f"next_field {cfg['next_field']!r} holds a {type(link).__name__}, not a URL")
                visited.add(url)
                url, params = urljoin(url, link), None  # a next link carries its own query
                if origin(url) != origin(self.config["url"]):
                    # The headers hold credentials: never follow a link to another host with them.
                    raise ConnectorError(f"next page link points to another host ({where(url)}); not followed")
                if url in visited:
                    raise ConnectorError(f"next page link loops back to {where(url)}")
        raise ConnectorError(f"more than max_pages ({max_pages}) pages; raise max_pages if that is expected")

    # --- the interface ------------------------------------------------------------------------------------

    def check(self):
        """Fetch the first page (and the first page of ids_url): reachable, answering JSON, items where
        items_path says."""
        for url, path in self._listings():
            body = self._get_json(url, {self.config["page_param"]: self._setting("first_page")}
                                  if "page_param" in self.config else None)
            self._items(body, url, path)

    def _listings(self):
        yield self.config["url"], self.config["items_path"]
        if "ids_url" in self.config:
            yield self.config["ids_url"], self.config.get("ids_path", self.config["items_path"])

    def documents(self, since=None):
        cfg = self.config
        updated = cfg.get("updated_field")
        self._since = since if updated and since and since.get("field") == updated and "value" in since else None
        self._latest = None
        params = {}
        if self._since and "updated_since_param" in cfg:
            params[cfg["updated_since_param"]] = self._since["value"]
        # Without a server-side filter, the checkpoint still spares unchanged items from being listed.
        floor = _order_key(self._since["value"]) if self._since and "updated_since_param" not in cfg else None
        for number, items in enumerate(self._pages(cfg["url"], cfg["items_path"], params), start=1):
            for index, item in enumerate(items):
                value = _dig(item, updated) if updated and isinstance(item, dict) else _MISSING
                key = _order_key(value) if value is not _MISSING else None
                if floor is not None and key is not None and key[0] == floor[0] and key <= floor:
                    continue
                if key is not None and (self._latest is None or key > self._latest[0]):
                    self._latest = (key, value)
                yield self._raw(item, f"page {number} item {index + 1}")

    def next_checkpoint(self):
        updated = self.config.get("updated_field")
        if not updated:
            return {}
        if self._latest is None:
            return dict(self._since) if self._since else {}
        return {"field": updated, "value": self._latest[1]}

    def present_ids(self):
        cfg = self.config
        url, path = cfg.get("ids_url", cfg["url"]), cfg.get("ids_path", cfg["items_path"])
        ids = set()
        for number, items in enumerate(self._pages(url, path, {}), start=1):
            for index, entry in enumerate(items):
                ident = _dig(entry, cfg["id_field"]) if isinstance(entry, dict) else entry
                if not isinstance(ident, str | int) or isinstance(ident, bool) or ident == "":
                    # An id we cannot read may belong to an indexed document: prune nothing rather than guess.
                    raise ConnectorError(f"{where(url)} page {number} entry {index + 1} has no usable "
                                         f"{cfg['id_field']!r}")
                ids.add(f"item/{ident}")
        return ids

    # --- items into documents -----------------------------------------------------------------------------

    def _raw(self, item, position: str) -> RawDocument:
        cfg = self.config
        ident = _dig(item, cfg["id_field"]) if isinstance(item, dict) else _MISSING
        if not isinstance(ident, str | int) or isinstance(ident, bool) or ident == "":
            external_id = f"item/(no id: {position})"
            return RawDocument(external_id, f"{cfg['url']}#{external_id}", 0, None,
                               failing_read(f"no usable {cfg['id_field']!r} in this item"))
        external_id = f"item/{ident}"
        link = _dig(item, cfg["url_field"]) if "url_field" in cfg else _MISSING
        uri = link if isinstance(link, str) and link else f"{where(cfg['url'])}#{external_id}"
        text = "\n\n".join(t for t in (_as_text(_dig(item, f)) for f in cfg["text_fields"]) if t)
        if not text:
            return RawDocument(external_id, uri, 0, None,
                               failing_read(f"none of the text_fields ({', '.join(cfg['text_fields'])}) has text"))
        data = text.encode("utf-8")
        title = _as_text(_dig(item, cfg["title_field"])) if "title_field" in cfg else ""
        updated = _dig(item, cfg["updated_field"]) if "updated_field" in cfg else None
        return RawDocument(
            external_id=external_id,
            uri=uri[:2048],
            size=len(data),
            modified_at=_parse_time(updated),
            read=lambda: data,
            groups=_groups(_dig(item, cfg["groups_field"])) if "groups_field" in cfg else None,
            content_type="text/plain",
            title=title[:500] or None,
        )



