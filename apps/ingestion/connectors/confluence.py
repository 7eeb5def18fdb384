"""Pages of Confluence Cloud spaces, read through the REST API (v1) with an Atlassian account's email and API
token (HTTP basic auth).

Pages come from CQL search (``/wiki/rest/api/content/search``: ``space in (...) and type=page ... order by
lastmodified``, ``expand=body.storage,version,space,ancestors``), page after page through ``_links.next``
(Confluence Cloud's cursor; offsets are never computed here). The storage format is XHTML: each page becomes an
HTML document titled with the page title (a rename is a new version and re-indexes the page); the page id is the
document's id.

Incremental: the checkpoint is the latest ``version.when`` seen and the ids modified at that instant. CQL compares
dates at minute resolution in the API user's time zone, so the query asks with ``lastmodified >= now("-Nm")``,
a window relative to Confluence's own clock reaching an hour before the checkpoint, and the exact comparison on
``version.when`` is made here. Deletions: present_ids() lists the ids of every page in the spaces (no bodies).

Readers: a page's read restrictions (``/wiki/rest/api/content/{id}/restriction/byOperation/read``) and its
ancestors' (Confluence applies a parent's view restriction to every page below it) are read for each changed page.
Unrestricted pages get the source's readers. A restricted page gets the groups allowed at every restricted level
(``groups_map`` renames them); users named in restrictions are not mapped yet, so a page restricted to people only
is refused (and pruned if it was indexed before) rather than opened up. A change of restrictions alone does not
change a page's version: ``sync_source --full`` picks it up.

429 (Retry-After honoured) and 5xx are retried with backoff; other errors fail at once with Confluence's message.
"""

import html
import logging
import math
import re
from datetime import UTC, datetime, timedelta
from urllib.parse import quote, urljoin

from django.conf import settings

from . import http_client
from .base import ConfigError, Connector, ConnectorError, ItemError, RawDocument, failing_read, reject_unknown

logger = logging.getLogger(__name__)

SETTINGS = {"base_url", "email", "api_token", "space_keys", "groups_map", "timeout", "max_retries",
            "backoff_factor"}
SEARCH_LIMIT = 25  # Confluence caps a page of results with bodies expanded at 25 to 50
IDS_LIMIT = 200
MAX_PAGES = 100_000
WINDOW_MARGIN = timedelta(hours=1)  # clock skew between this server and Confluence, and CQL's minute resolution
_SPACE_KEY = re.compile(r"^~?[A-Za-z0-9_:-]{1,255}$")


def _confluence_error(response) -> str:
    """Confluence's {"message": ...} (or the start of the body)."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("message"), str) and body["message"]:
        return body["message"]
    return http_client.short_body(response)


def _parse_time(value) -> datetime | None:
    try:
        parsed = datetime.fromisoformat(value)
    except (TypeError, ValueError):
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


class ConfluenceConnector(Connector):
    """Pages of one or more Confluence Cloud spaces; incremental on the pages' last modification."""

    incremental = True
    secret_fields = ("api_token",)

    @classmethod
    def validate_config(cls, config):
        reject_unknown(config, SETTINGS, "a confluence source")
        base = http_client.http_url("base_url", config.get("base_url"))
        if base.endswith("/wiki"):
            base = base[: -len("/wiki")]
        cfg = {"base_url": base, "email": http_client.text_setting(config, "email", required=True),
               "api_token": http_client.text_setting(config, "api_token", required=True)}
        keys = config.get("space_keys")
        if not isinstance(keys, list) or not keys or not all(isinstance(k, str) for k in keys):
            raise ConfigError("space_keys", "a non-empty list of space keys is required, e.g. [\"ENG\", \"HR\"]")
        for key in keys:
            if not _SPACE_KEY.match(key.strip()):
                raise ConfigError("space_keys", f"{key!r} is not a space key (letters, digits; ~ for personal spaces)")
        cfg["space_keys"] = sorted({k.strip() for k in keys})
        groups_map = http_client.groups_map_setting(config)
        if groups_map:
            cfg["groups_map"] = groups_map
        http_client.number_settings(config, cfg)
        return cfg

    def __init__(self, config):
        super().__init__(config)
        self.http = http_client.RestClient(self.config, auth=(self.config["email"], self.config["api_token"]))
        self._since = None
        self._latest: tuple[datetime, set[str]] | None = None
        self._refused: set[str] = set()
        self._restrictions: dict[str, tuple[bool, set[str]]] = {}

    @property
    def api(self) -> str:
        return f"{self.config['base_url']}/wiki/rest/api"

    # --- requests -----------------------------------------------------------------------------------------

    def _get(self, url: str, what: str, *, params=None, item_level=False) -> dict:
        if http_client.origin(url) != http_client.origin(self.config["base_url"]):
            # The credentials would go with it: never follow a link to another host.
            raise ConnectorError(f"{what}: link points to another host ({http_client.where(url)}); not followed")
        response = self.http.get(url, params=params)
        if response.status_code >= 300:
            detail = _confluence_error(response)
            if item_level and response.status_code in (403, 404):
                raise ItemError(f"{what}: HTTP {response.status_code}: {detail}")
            hint = {401: f" (check email and api_token: Confluence did not accept them for {self.config['email']})",
                    403: f" ({self.config['email']} lacks permission)"}.get(response.status_code, "")
            raise ConnectorError(f"{what}: HTTP {response.status_code}{http_client.retried(response)} from "
                                 f"{http_client.where(response.url)}{hint}: {detail}")
        body = http_client.body_json(response, what)
        if not isinstance(body, dict):
            raise ConnectorError(f"{what}: Confluence answered a {type(body).__name__}, not an object")
        return body

    def _search(self, cql: str, *, limit: int, expand: str | None = None):
        """Every result of a CQL search, following ``_links.next``."""
        url = f"{self.api}/content/search"
        params = {"cql": cql, "limit": limit}
        if expand:
            params["expand"] = expand
        for _ in range(MAX_PAGES):
            body = self._get(url, "CQL search", params=params)
            results = body.get("results")
            if not isinstance(results, list):
                raise ConnectorError(f"CQL search from {http_client.where(url)} answered without a 'results' list")
            yield from (r for r in results if isinstance(r, dict) and isinstance(r.get("id"), str | int))
            links = body.get("_links") if isinstance(body.get("_links"), dict) else {}
            following = links.get("next")
            if not following:
                return
            base = links.get("base") or f"{self.config['base_url']}/wiki"
            url, params = urljoin(f"{base.rstrip('/')}/", str(following).lstrip("/")), None
        raise ConnectorError(f"CQL search went on for more than {MAX_PAGES} pages")

    def _spaces_cql(self) -> str:
        keys = ", ".join(f'"{k}"' for k in self.config["space_keys"])
        return f"space in ({keys}) and type = page"

    # --- the interface ------------------------------------------------------------------------------------

    def check(self):
        """Each space exists and the account may see it (which also proves the credentials)."""
        for key in self.config["space_keys"]:
            response = self.http.get(f"{self.api}/space/{quote(key)}")
            if response.status_code == 404:
                raise ConnectorError(f"space {key!r} not found at {self.config['base_url']} (or "
                                     f"{self.config['email']} may not view it): {_confluence_error(response)}")
            if response.status_code >= 300:
                self._get(f"{self.api}/space/{quote(key)}", f"space {key!r}")  # raises with the reason

    def _usable(self, since):
        if not since or since.get("spaces") != self.config["space_keys"]:
            return None
        when = _parse_time(since.get("when"))
        if when is None or not isinstance(since.get("ids"), list):
            return None
        return when, set(map(str, since["ids"]))

    def documents(self, since=None):
        self._since = since if self._usable(since) else None
        usable = self._usable(since)
        self._latest, self._refused = None, set()
        cql = self._spaces_cql()
        if usable:
            now = datetime.now(UTC)
            minutes = max(1, math.ceil((now - usable[0] + WINDOW_MARGIN).total_seconds() / 60))
            cql += f' and lastmodified >= now("-{minutes}m")'
        cql += " order by lastmodified asc"
        for page in self._search(cql, limit=SEARCH_LIMIT, expand="body.storage,version,space,ancestors"):
            page_id = str(page["id"])
            when = _parse_time((page.get("version") or {}).get("when"))
            if usable and when is not None and (when < usable[0] or (when == usable[0] and page_id in usable[1])):
                continue  # seen by an earlier sync: the window reaches back on purpose
            if when is not None:
                if self._latest is None or when > self._latest[0]:
                    self._latest = (when, {page_id})
                elif when == self._latest[0]:
                    self._latest[1].add(page_id)
            yield self._raw(page, page_id, when)

    def next_checkpoint(self):
        if self._latest is None:
            return dict(self._since) if self._since else {}
        when, ids = self._latest
        if self._since and self._usable(self._since)[0] == when:
            ids = ids | self._usable(self._since)[1]
        return {"spaces": self.config["space_keys"], "when": when.isoformat(), "ids": sorted(ids)}

    def present_ids(self):
        ids = {str(page["id"]) for page in self._search(f"{self._spaces_cql()} order by created asc",
                                                        limit=IDS_LIMIT)}
        return ids - self._refused

    # --- pages into documents -----------------------------------------------------------------------------

    def _read_restriction(self, page_id: str) -> tuple[bool, set[str]]:
        """(restricted?, group names allowed) for one page's own read restriction."""
        if page_id not in self._restrictions:
            mapping = self.config.get("groups_map", {})
            restricted, groups = False, set()
            start = 0
            for _ in range(100):
                body = self._get(f"{self.api}/content/{quote(page_id)}/restriction/byOperation/read",
                                 f"read restrictions of page {page_id}", item_level=True,
                                 params={"expand": "restrictions.user,restrictions.group", "start": start,
                                         "limit": IDS_LIMIT})
                found = body.get("restrictions") if isinstance(body.get("restrictions"), dict) else {}
                users = ((found.get("user") or {}).get("results")) or []
                group_results = ((found.get("group") or {}).get("results")) or []
                restricted = restricted or bool(users) or bool(group_results)
                for group in group_results:
                    name = group.get("name") if isinstance(group, dict) else None
                    if isinstance(name, str) and name.strip():
                        groups.add(mapping.get(name.strip(), name.strip()))
                if len(users) < IDS_LIMIT and len(group_results) < IDS_LIMIT:
                    break
                start += IDS_LIMIT
            self._restrictions[page_id] = (restricted, groups)
        return self._restrictions[page_id]

    def _groups(self, page: dict, page_id: str) -> tuple[str, ...] | None:
        """None: unrestricted (the source's readers). Else the groups allowed at every restricted level, which
        may be empty (then nobody here may read it)."""
        levels = [page_id] + [str(a["id"]) for a in page.get("ancestors") or () if isinstance(a, dict) and "id" in a]
        allowed = None
        for level in levels:
            restricted, groups = self._read_restriction(level)
            if restricted:
                allowed = set(groups) if allowed is None else allowed & groups
        return None if allowed is None else tuple(sorted(allowed))

    def _raw(self, page: dict, page_id: str, when: datetime | None) -> RawDocument:
        title = str(page.get("title") or f"Page {page_id}")
        links = page.get("_links") if isinstance(page.get("_links"), dict) else {}
        base = links.get("base") or f"{self.config['base_url']}/wiki"
        uri = f"{base}{links['webui']}" if isinstance(links.get("webui"), str) else f"{self.api}/content/{page_id}"
        storage = ((page.get("body") or {}).get("storage") or {}).get("value")
        common = {"external_id": page_id, "uri": uri[:2048], "modified_at": when}
        if not isinstance(storage, str):
            return RawDocument(**common, size=0, read=failing_read("the search result has no body.storage"))
        try:
            groups = self._groups(page, page_id)
        except ItemError as exc:
            return RawDocument(**common, size=0, read=failing_read(str(exc)))
        if groups == ():
            self._refused.add(page_id)
            return RawDocument(**common, size=0, read=failing_read(
                f"page {title!r} may be read by no group: its read restrictions (or a parent page's) name people "
                "only, or groups that not every restricted level allows; people are not mapped yet, so it is not "
                "indexed"))
        # The title is part of the document, so renaming a page re-indexes it.
        data = (f"<html><head><title>{html.escape(title)}</title></head><body>{storage}</body></html>").encode()
        limit = settings.MAX_DOCUMENT_BYTES
        if len(data) > limit:
            return RawDocument(**common, size=len(data), read=failing_read(
                f"page is {len(data):,} bytes, over the {limit:,}-byte limit (MAX_DOCUMENT_BYTES)"))
        return RawDocument(**common, size=len(data), read=lambda: data, groups=groups, content_type="text/html",
                           title=title[:500])

