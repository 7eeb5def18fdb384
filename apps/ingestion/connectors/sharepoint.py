"""Files of a SharePoint document library, read through Microsoft Graph with an app registration's client
credentials (application permission Sites.Read.All or Files.Read.All, admin-consented).

Changes come from the drive's delta API: the first sync enumerates the whole library, and the ``@odata.deltaLink``
that ends each enumeration is the checkpoint, so the next sync receives only the items changed since (an edit, a
rename or a move; renamed and moved files keep their drive item id, which is the document's id here). Items
carrying a ``deleted`` facet are gone. When Graph no longer accepts a delta token (410 Gone) the library is
enumerated again from scratch. Deletions are found the way every incremental connector finds them: present_ids()
lists every item id once per sync (metadata only, ``$select=id,name,file``; no content is fetched).

Readers: each changed file's permissions (``/drives/{drive}/items/{id}/permissions``, inherited ones included) are
read, and every Entra ID group or SharePoint group they name (``grantedToV2`` and ``grantedToIdentitiesV2``,
``group`` and ``siteGroup`` display names) becomes a reader group, renamed through ``groups_map`` when listed
there. People and sharing links are not mapped yet: a file shared only with people or through links is refused
(and pruned if it was indexed before) rather than opened to everyone. A change of permissions alone is only seen
with ``sharing_changes: true``, which asks Graph to report it in the delta feed (that needs the
Sites.FullControl.All application permission), or by ``sync_source --full``.

Throttling (429) and 5xx answers are retried with backoff, ``Retry-After`` honoured; other errors fail at once with
Graph's own code and message.
"""

import logging
import time
from datetime import datetime
from pathlib import PurePosixPath
from urllib.parse import quote, urlsplit

from django.conf import settings

from ..parsing import content_type_for
from . import http_client
from .base import ConfigError, Connector, ConnectorError, ItemError, RawDocument, failing_read, reject_unknown

logger = logging.getLogger(__name__)

SETTINGS = {"tenant_id", "client_id", "client_secret", "site_id", "site_url", "drive_id", "authority_url",
            "graph_url", "groups_map", "sharing_changes", "timeout", "max_retries", "backoff_factor"}
AUTHORITY = "https://login.microsoftonline.com"
GRAPH = "https://graph.microsoft.com"
MAX_PAGES = 100_000
TOKEN_MARGIN = 120  # seconds: a token this close to expiry is renewed before use
LISTING_FIELDS = "id,name,file,folder,deleted,root"
SHARING_PREFER = "deltashowremovedasdeleted, deltatraversepermissiongaps, deltashowsharingchanges"
_KEEP = ("id", "name", "size", "lastModifiedDateTime", "webUrl", "file", "folder", "root", "deleted", "eTag",
         "package")


def _graph_error(response) -> str:
    """Graph's {"error": {"code", "message"}} as "code: message", else the start of the body."""
    try:
        error = response.json().get("error")
    except (ValueError, AttributeError):
        error = None
    if isinstance(error, dict) and error.get("code"):
        return f"{error['code']}: {error.get('message', '')}".strip()
    return http_client.short_body(response)


def _parse_time(value) -> datetime | None:
    try:
        return datetime.fromisoformat(value)
    except (TypeError, ValueError):
        return None


class SharePointConnector(Connector):
    """One document library (a drive) of a SharePoint site; incremental through the delta API."""

    incremental = True
    secret_fields = ("client_secret",)

    @classmethod
    def validate_config(cls, config):
        reject_unknown(config, SETTINGS, "a sharepoint source")
        cfg = {}
        for key in ("tenant_id", "client_id", "client_secret"):
            cfg[key] = http_client.text_setting(config, key, required=True)
        if "/" in cfg["tenant_id"] or "?" in cfg["tenant_id"]:
            raise ConfigError("tenant_id", "must be the directory (tenant) id or domain, e.g. contoso.onmicrosoft.com")
        site_id, site_url = http_client.text_setting(config, "site_id"), config.get("site_url")
        if (site_id is None) == (site_url is None):
            raise ConfigError("site_id", "set either site_id or site_url (https://contoso.sharepoint.com/sites/x)")
        if site_id is not None:
            if "/" in site_id or "?" in site_id:
                raise ConfigError("site_id", "must be a Graph site id (hostname,site-guid,web-guid)")
            cfg["site_id"] = site_id
        else:
            cfg["site_url"] = http_client.http_url("site_url", site_url)
        drive_id = http_client.text_setting(config, "drive_id")
        if drive_id is not None:
            if "/" in drive_id or "?" in drive_id:
                raise ConfigError("drive_id", "must be a Graph drive id")
            cfg["drive_id"] = drive_id
        for key in ("authority_url", "graph_url"):
            if config.get(key) is not None:
                cfg[key] = http_client.http_url(key, config[key])
        groups_map = http_client.groups_map_setting(config)
        if groups_map:
            cfg["groups_map"] = groups_map
        if "sharing_changes" in config:
            if not isinstance(config["sharing_changes"], bool):
                raise ConfigError("sharing_changes", "must be true or false")
            cfg["sharing_changes"] = config["sharing_changes"]
        http_client.number_settings(config, cfg)
        return cfg

    def __init__(self, config):
        super().__init__(config)
        self.http = http_client.RestClient(self.config)
        self._token = None
        self._token_expires = 0.0
        self._drive_id = None
        self._since = None
        self._delta_link = None
        self._deleted: set[str] = set()
        self._refused: set[str] = set()

    # --- endpoints and auth -------------------------------------------------------------------------------

    @property
    def graph(self) -> str:
        return f"{self.config.get('graph_url', GRAPH)}/v1.0"

    @property
    def _token_url(self) -> str:
        return f"{self.config.get('authority_url', AUTHORITY)}/{quote(self.config['tenant_id'])}/oauth2/v2.0/token"

    def _access_token(self, renew=False) -> str:
        if self._token and not renew and time.monotonic() < self._token_expires:
            return self._token
        scope = f"{self.config.get('graph_url', GRAPH)}/.default"
        response = self.http.post(self._token_url, data={
            "grant_type": "client_credentials", "client_id": self.config["client_id"],
            "client_secret": self.config["client_secret"], "scope": scope,
        })
        if response.status_code != 200:
            raise ConnectorError(self._token_failure(response))
        body = http_client.body_json(response, "the token answer")
        token = body.get("access_token") if isinstance(body, dict) else None
        if not isinstance(token, str) or not token:
            raise ConnectorError(f"the token answer from {http_client.where(self._token_url)} has no access_token")
        lifetime = body.get("expires_in", 3599)
        lifetime = lifetime if isinstance(lifetime, int) and not isinstance(lifetime, bool) else 3599
        self._token, self._token_expires = token, time.monotonic() + max(lifetime - TOKEN_MARGIN, 30)
        return token

    def _token_failure(self, response) -> str:
        try:
            body = response.json()
        except ValueError:
            body = {}
        error = body.get("error") if isinstance(body, dict) else None
        description = str(body.get("error_description", "")) if isinstance(body, dict) else ""
        reason = description.splitlines()[0].strip() if description else http_client.short_body(response)
        hint = ""
        if error == "invalid_client":
            hint = " (check client_secret)"
        elif error == "unauthorized_client" or "AADSTS700016" in description:
            hint = " (check client_id)"
        elif "AADSTS90002" in description or "AADSTS900023" in description:
            hint = " (check tenant_id)"
        return (f"cannot get an access token from {http_client.where(self._token_url)}: HTTP {response.status_code}"
                f"{http_client.retried(response)} {error or ''}{hint}: {reason}").replace("  ", " ")

    def _get(self, url: str, what: str, *, params=None, headers=None, stream=False, item_level=False, delta=False):
        """GET with the bearer token (renewed once if Graph says it expired). Returns the response for 2xx;
        raises ConnectorError otherwise, ItemError for a 404/403 when ``item_level``, _Resync for a delta feed's
        410 Gone."""
        if http_client.origin(url) != http_client.origin(self.graph):
            # The bearer token would go with it: never follow a link to another host.
            raise ConnectorError(f"{what}: link points to another host ({http_client.where(url)}); not followed")
        for attempt in (1, 2):
            sent = {"Authorization": f"Bearer {self._access_token(renew=attempt == 2)}", **(headers or {})}
            response = self.http.get(url, params=params, headers=sent, stream=stream)
            if response.status_code == 401 and attempt == 1:
                response.close()
                continue
            break
        if response.status_code < 300:
            return response
        detail = _graph_error(response)
        response.close()
        if delta and response.status_code == 410:
            raise _Resync(detail, response.headers.get("Location"))
        if item_level and response.status_code in (403, 404):
            raise ItemError(f"{what}: HTTP {response.status_code} {detail}")
        hint = {401: " (Graph rejected the app's token)",
                403: " (grant the app registration Sites.Read.All and admin consent)"}.get(response.status_code, "")
        raise ConnectorError(f"{what}: HTTP {response.status_code}{http_client.retried(response)} from "
                             f"{http_client.where(response.url)}{hint}: {detail}")

    def _json(self, url: str, what: str, **kwargs) -> dict:
        body = http_client.body_json(self._get(url, what, **kwargs), what)
        if not isinstance(body, dict):
            raise ConnectorError(f"{what}: Graph answered a {type(body).__name__}, not an object")
        return body

    # --- site and drive -----------------------------------------------------------------------------------

    def _site_url(self) -> str:
        if "site_id" in self.config:
            return f"{self.graph}/sites/{quote(self.config['site_id'], safe=',')}"
        parts = urlsplit(self.config["site_url"])
        path = parts.path.rstrip("/")
        return f"{self.graph}/sites/{parts.hostname}:{quote(path)}" if path else f"{self.graph}/sites/{parts.hostname}"

    def _site_name(self) -> str:
        return self.config.get("site_id") or self.config["site_url"]

    def _drive(self) -> str:
        """The drive's id: the configured one (checked to exist) or the site's default document library."""
        if self._drive_id is None:
            if "drive_id" in self.config:
                drive = self._json(f"{self.graph}/drives/{quote(self.config['drive_id'])}",
                                   f"drive {self.config['drive_id']!r}")
            else:
                site = self._json(self._site_url(), f"site {self._site_name()!r}")
                drive = self._json(f"{self.graph}/sites/{quote(str(site.get('id', '')), safe=',')}/drive",
                                   f"the default document library of site {self._site_name()!r}")
            if not isinstance(drive.get("id"), str) or not drive["id"]:
                raise ConnectorError("Graph answered a drive without an id")
            self._drive_id = drive["id"]
        return self._drive_id

    def _delta_start(self) -> str:
        return f"{self.graph}/drives/{quote(self._drive())}/root/delta"

    # --- the interface ------------------------------------------------------------------------------------

    def check(self):
        """A token, the site and the drive resolved, and the first page of the delta feed readable."""
        self._access_token()
        self._json(self._delta_start(), f"delta of drive {self._drive()!r}", params={"$top": 1,
                                                                                      "$select": "id"})

    def _usable(self, since):
        if not since or since.get("drive") != self._drive():
            return None
        link = since.get("delta_link")
        if not isinstance(link, str) or http_client.origin(link) != http_client.origin(self.graph):
            return None
        return since

    def _feed(self, url: str, *, params=None, headers=None, out: dict | None = None):
        """The items of every page of a delta feed; the deltaLink that ends it goes into ``out``."""
        what = "delta feed"
        for _ in range(MAX_PAGES):
            body = http_client.body_json(self._get(url, what, params=params, headers=headers, delta=True), what)
            value = body.get("value") if isinstance(body, dict) else None
            if not isinstance(value, list):
                raise ConnectorError(f"{what} page from {http_client.where(url)} has no 'value' list")
            yield from (item for item in value if isinstance(item, dict) and isinstance(item.get("id"), str))
            if body.get("@odata.nextLink"):
                url, params = body["@odata.nextLink"], None
                continue
            link = body.get("@odata.deltaLink")
            if not isinstance(link, str) or not link:
                raise ConnectorError(f"the last {what} page from {http_client.where(url)} has neither "
                                     "@odata.nextLink nor @odata.deltaLink")
            if out is not None:
                out["delta_link"] = link
            return
        raise ConnectorError(f"{what} went on for more than {MAX_PAGES} pages")

    def _collect(self, url: str, params=None) -> tuple[dict, bool]:
        """Every item of a feed (the last occurrence of each wins, as Graph asks), and whether the feed had to
        be restarted from scratch because the token had expired."""
        headers = {"Prefer": SHARING_PREFER} if self.config.get("sharing_changes") else None
        items: dict[str, dict] = {}
        restarted = False
        while True:
            try:
                out = {}
                for item in self._feed(url, params=params, headers=headers, out=out):
                    items.pop(item["id"], None)
                    items[item["id"]] = {k: item[k] for k in _KEEP if k in item}
                self._delta_link = out["delta_link"]
                return items, restarted
            except _Resync as resync:
                if restarted:
                    raise ConnectorError("Graph asked for a fresh delta enumeration twice in one sync") from None
                logger.warning("sharepoint delta token no longer valid (%s); enumerating the library again",
                               resync.code)
                items, restarted = {}, True
                url, params = resync.location or self._delta_start(), None

    def documents(self, since=None):
        self._since = self._usable(since)
        self._delta_link, self._deleted, self._refused = None, set(), set()
        start = self._since["delta_link"] if self._since else self._delta_start()
        items, _restarted = self._collect(start)
        for item in items.values():
            if "deleted" in item:
                self._deleted.add(item["id"])
                continue
            if not self._wanted(item):
                continue
            yield self._raw(item)

    def next_checkpoint(self):
        if not self._delta_link:
            return dict(self._since) if self._since else {}
        return {"drive": self._drive(), "delta_link": self._delta_link}

    def present_ids(self):
        ids = set()
        for item in self._feed(self._delta_start(), params={"$select": LISTING_FIELDS}):
            if "deleted" not in item and self._wanted(item):
                ids.add(item["id"])
            elif item["id"] in ids:
                ids.discard(item["id"])
        return ids - self._deleted - self._refused

    # --- items into documents -----------------------------------------------------------------------------

    @staticmethod
    def _wanted(item: dict) -> bool:
        """Files of a type the parser reads; folders, the root, OneNote packages and the rest are not documents."""
        return "file" in item and isinstance(item.get("name"), str) and content_type_for(item["name"]) is not None

    def _item_url(self, item_id: str) -> str:
        return f"{self.graph}/drives/{quote(self._drive())}/items/{quote(item_id)}"

    def _groups(self, item_id: str) -> set[str]:
        """Reader groups from the item's permissions: group and SharePoint-group display names only."""
        mapping = self.config.get("groups_map", {})
        names: set[str] = set()
        url, params = f"{self._item_url(item_id)}/permissions", None
        for _ in range(100):
            body = http_client.body_json(self._get(url, "permissions", params=params, item_level=True), "permissions")
            for permission in body.get("value", ()) if isinstance(body, dict) else ():
                if not isinstance(permission, dict):
                    continue
                identities = [permission.get("grantedToV2")] + list(permission.get("grantedToIdentitiesV2") or ())
                for identity in identities:
                    if not isinstance(identity, dict):
                        continue
                    for kind in ("group", "siteGroup"):
                        name = (identity.get(kind) or {}).get("displayName")
                        if isinstance(name, str) and name.strip():
                            names.add(mapping.get(name.strip(), name.strip()))
            following = body.get("@odata.nextLink") if isinstance(body, dict) else None
            if not following:
                break
            url, params = following, None
        return names

    def _raw(self, item: dict) -> RawDocument:
        item_id, name = item["id"], item["name"]
        size = item.get("size") if isinstance(item.get("size"), int) else 0
        uri = item.get("webUrl") or self._item_url(item_id)
        modified = _parse_time(item.get("lastModifiedDateTime"))
        base = {"external_id": item_id, "uri": str(uri)[:2048], "size": size, "modified_at": modified}
        try:
            groups = self._groups(item_id)
        except ItemError as exc:
            return RawDocument(**base, read=failing_read(f"cannot read the permissions of {name!r}: {exc}"))
        if not groups:
            self._refused.add(item_id)
            return RawDocument(**base, read=failing_read(
                f"{name!r} is shared with no group (only people or links, which are not mapped yet); not indexed"))
        limit = settings.MAX_DOCUMENT_BYTES

        def read():
            if size > limit:
                raise ItemError(f"file is {size:,} bytes, over the {limit:,}-byte limit (MAX_DOCUMENT_BYTES)")
            response = self._get(f"{self._item_url(item_id)}/content", f"content of {name!r}", stream=True,
                                 item_level=True)
            with response:
                data = http_client.read_capped(response, limit)
            if data is None:
                raise ItemError(f"file is over the {limit:,}-byte limit (MAX_DOCUMENT_BYTES)")
            return data

        return RawDocument(**base, read=read, groups=tuple(sorted(groups)), content_type=content_type_for(name),
                           title=_title(name))


def _title(name: str) -> str:
    """The file name as SharePoint shows it, minus the extension, "-" and "_" read as spaces: the parser would
    otherwise fall back on the drive item id, which is the document's name here."""
    stem = PurePosixPath(name).stem.replace("-", " ").replace("_", " ").strip() or name
    return (stem[:1].upper() + stem[1:])[:500]


class _Resync(ConnectorError):
    """A delta token Graph no longer accepts (410 Gone); ``location`` starts a fresh enumeration."""

    def __init__(self, code: str, location: str | None):
        super().__init__(code)
        self.code, self.location = code, location

