"""A STAND-IN for Microsoft Graph and the Microsoft identity platform's token endpoint, for the sharepoint
connector's tests: no SharePoint can run here, so this local HTTP server (a thread on 127.0.0.1) answers the few
calls the connector makes with bodies shaped like the documented ones.

- ``POST /{tenant}/oauth2/v2.0/token`` (client credentials): ``{"token_type", "expires_in", "access_token"}``, or
  the identity platform's errors (``invalid_client`` AADSTS7000215 with 401 for a wrong secret,
  ``unauthorized_client`` AADSTS700016 for an unknown client id, ``invalid_request`` AADSTS90002 for an unknown
  tenant).
- ``GET /v1.0/sites/{hostname}:/{path}``, ``/v1.0/sites/{site-id}``, ``/v1.0/sites/{site-id}/drive``,
  ``/v1.0/drives/{drive-id}``.
- ``GET /v1.0/drives/{drive-id}/root/delta`` (and ``/sites/{site-id}/drive/root/delta``): pages of driveItems
  (``id``, ``name``, ``eTag``, ``size``, ``lastModifiedDateTime``, ``webUrl``, ``parentReference``, ``file`` /
  ``folder`` / ``root`` / ``package`` facets) linked by ``@odata.nextLink``, the last one carrying
  ``@odata.deltaLink``; with a token, only the items changed since, deleted ones as ``{"id", "deleted":
  {"state": "deleted"}, "parentReference"}`` (no name, as in OneDrive for Business); with ``Prefer:
  deltashowsharingchanges``, items whose permissions changed, annotated ``@microsoft.graph.sharedChanged``; a
  token made before ``expire_delta_tokens()`` gets ``410 Gone`` (``resyncChangesApplyDifferences``) with a
  ``Location`` starting a fresh enumeration. ``$select`` and ``$top`` are honoured.
- ``GET /v1.0/drives/{drive-id}/items/{id}/content``: ``302 Found`` to a pre-authenticated download URL.
- ``GET /v1.0/drives/{drive-id}/items/{id}/permissions``: ``{"value": [permission]}`` with ``roles``,
  ``grantedToV2`` (``user`` / ``group`` / ``siteGroup``), ``grantedToIdentitiesV2``, ``link``, ``inheritedFrom``.
- Every error is Graph's ``{"error": {"code", "message", "innerError"}}``; requests without a token it issued get
  401 ``InvalidAuthenticationToken``.
"""

import hashlib
import itertools
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from urllib.parse import quote, unquote

from .base import Reply, Request, StandinServer

TENANT = "7d2f1c3a-1b2c-4d5e-8f90-a1b2c3d4e5f6"
CLIENT_ID = "0f5d8a7e-9c1b-4e2f-a3d4-5b6c7d8e9f01"
CLIENT_SECRET = "Xq8~standin-secret-value"
HOSTNAME = "contoso.sharepoint.com"
SITE_PATH = "/sites/handbook"
SITE_ID = f"{HOSTNAME},2c7f6b2c-5a1e-4c3d-9b8a-7f6e5d4c3b2a,8b2e1f0a-9c8d-4e7f-a6b5-c4d3e2f1a0b9"
DRIVE_ID = "b!LGt_LB5aPUybin9uXUw7KgofLosMnH9OprXE0-LxoLnrC9aP3wJRR4X6bFbD07RT"
T0 = datetime(2024, 3, 1, 9, 0, tzinfo=UTC)

MEMBERS = {"roles": ["write"], "grantedToV2": {"siteGroup": {"displayName": "Handbook Members", "id": "5",
                                                              "loginName": "Handbook Members"}},
           "inheritedFrom": {}}
OWNERS = {"roles": ["owner"], "grantedToV2": {"siteGroup": {"displayName": "Handbook Owners", "id": "3",
                                                             "loginName": "Handbook Owners"}},
          "inheritedFrom": {}}
HR_TEAM = {"roles": ["read"], "grantedToV2": {"group": {"@odata.type": "#microsoft.graph.sharePointIdentity",
                                                         "displayName": "HR Team",
                                                         "id": "a4fd1c2b-3e4f-5a6b-7c8d-9e0f1a2b3c4d"}}}
DANA = {"roles": ["write"], "grantedToV2": {"user": {"@odata.type": "#microsoft.graph.sharePointIdentity",
                                                      "displayName": "Dana Smith", "email": "dana@contoso.com",
                                                      "id": "e1d2c3b4-a5f6-4789-9abc-def012345678"}}}
ORG_LINK = {"roles": ["read"], "link": {"scope": "organization", "type": "view", "preventsDownload": False,
                                        "webUrl": f"https://{HOSTNAME}/:t:/s/handbook/EabcdefStandin"},
            "grantedToIdentitiesV2": [], "hasPassword": False}


@dataclass
class Item:
    id: str
    name: str
    parent: str | None
    content: bytes | None = None  # None: a folder (or the root, or a package)
    permissions: list = field(default_factory=list)
    kind: str = "file"  # file | folder | root | package
    modified: datetime = T0
    seq: int = 0  # change sequence number of the last change (content, name, place, deletion)
    sharing_seq: int = 0  # of the last permission change
    deleted: bool = False
    version: int = 1


def _item_id(n: int) -> str:
    return f"01BYE5RZ{n:04d}STANDIN{hashlib.sha1(str(n).encode()).hexdigest()[:12].upper()}"  # noqa: S324


class GraphStandin(StandinServer):
    thread_name = "graph-standin"

    def __init__(self):
        super().__init__()
        self.tokens: set[str] = set()
        self.download_keys: dict[str, str] = {}
        self.counter = itertools.count(1)
        self.feeds: dict[str, tuple[list, int]] = {}
        self.page_size = 2
        self.expired_before = 0  # delta tokens made at or below this sequence number get 410
        self.items: dict[str, Item] = {}
        self._ids = itertools.count(1)
        root = self._add("root", None, kind="root")
        policies = self._add("Policies", root.id, kind="folder")
        hr = self._add("HR", root.id, kind="folder")
        inherited = [OWNERS, MEMBERS]
        self.vpn = self._add("VPN guide.md", root.id, b"# Connecting to the VPN\n\nInstall the GateKeeper client "
                             b"and sign in with your badge number.", inherited)
        self.expenses = self._add("expenses.txt", policies.id, b"Travel and expenses\n\nTrain tickets are "
                                  b"reimbursed in standard class only.", inherited)
        self.leave = self._add("parental-leave.html", hr.id, b"<html><head><title>Parental leave</title></head><body>"
                               b"<p>Employees receive twenty-six weeks of fully paid parental leave after six months "
                               b"of service.</p></body></html>", [OWNERS, HR_TEAM, DANA])
        self.board = self._add("board-notes.txt", policies.id, b"Board notes: the merger talks are confidential.",
                               [DANA, ORG_LINK])
        self._add("setup.exe", root.id, b"MZ\x90\x00binary", inherited)
        self._add("Team notebook", root.id, kind="package")

    # --- mutations for tests ----------------------------------------------------------------------------------

    def _add(self, name, parent, content=None, permissions=None, kind="file") -> Item:
        item = Item(_item_id(next(self._ids)), name, parent, content, list(permissions or []), kind)
        item.seq = next(self.counter)
        item.modified = T0 + timedelta(minutes=item.seq)
        self.items[item.id] = item
        return item

    def _touch(self, item: Item, *, sharing=False):
        if sharing:
            item.sharing_seq = next(self.counter)
        else:
            item.seq = next(self.counter)
            item.modified = T0 + timedelta(days=30, minutes=item.seq)
            item.version += 1

    def edit(self, item: Item, content: bytes):
        with self.lock:
            item.content = content
            self._touch(item)

    def rename(self, item: Item, name: str, parent: str | None = None):
        with self.lock:
            item.name = name
            item.parent = parent or item.parent
            self._touch(item)

    def delete(self, item: Item):
        with self.lock:
            item.deleted = True
            self._touch(item)

    def set_permissions(self, item: Item, permissions: list):
        with self.lock:
            item.permissions = list(permissions)
            self._touch(item, sharing=True)

    def expire_delta_tokens(self):
        with self.lock:
            self.expired_before = next(self.counter)

    # --- shapes -----------------------------------------------------------------------------------------------

    def _web_url(self, item: Item) -> str:
        parts = []
        node = item
        while node is not None and node.kind != "root":
            parts.append(node.name)
            node = self.items.get(node.parent) if node.parent else None
        return f"https://{HOSTNAME}{SITE_PATH}/Shared%20Documents/" + "/".join(quote(p) for p in reversed(parts))

    def _drive_item(self, item: Item, shared_changed=False) -> dict:
        parent = {"driveType": "documentLibrary", "driveId": DRIVE_ID}
        if item.parent:
            parent["id"] = item.parent
        if item.deleted:
            return {"@odata.type": "#microsoft.graph.driveItem", "id": item.id, "parentReference": parent,
                    "deleted": {"state": "deleted"}}
        body = {
            "@odata.type": "#microsoft.graph.driveItem",
            "createdDateTime": T0.isoformat().replace("+00:00", "Z"),
            "eTag": f'"{{{item.id[-12:]}-standin}},{item.version}"',
            "id": item.id,
            "lastModifiedDateTime": item.modified.isoformat().replace("+00:00", "Z"),
            "name": item.name,
            "webUrl": self._web_url(item) if item.kind != "root" else f"https://{HOSTNAME}{SITE_PATH}/Shared%20Documents",
            "cTag": f'"c:{{{item.id[-12:]}-standin}},{item.version}"',
            "size": len(item.content or b""),
            "parentReference": parent,
            "fileSystemInfo": {"createdDateTime": T0.isoformat().replace("+00:00", "Z"),
                               "lastModifiedDateTime": item.modified.isoformat().replace("+00:00", "Z")},
        }
        if item.kind == "file":
            body["file"] = {"mimeType": "application/octet-stream",
                            "hashes": {"quickXorHash": hashlib.sha1(item.content).hexdigest()[:27]}}  # noqa: S324
        elif item.kind == "package":
            body["package"] = {"type": "oneNote"}
        else:
            body["folder"] = {"childCount": sum(1 for i in self.items.values() if i.parent == item.id
                                                and not i.deleted)}
            if item.kind == "root":
                body["root"] = {}
        if shared_changed:
            body["@microsoft.graph.sharedChanged"] = "True"
        return body

    @staticmethod
    def error(status: int, code: str, message: str, headers=None) -> Reply:
        return Reply(status, {"error": {"code": code, "message": message, "innerError": {
            "date": "2024-03-01T09:00:00", "request-id": "8d5f6b4a-standin", "client-request-id": "8d5f6b4a-standin"}}},
            headers or {})

    @staticmethod
    def throttled(retry_after: int = 1) -> tuple[dict, dict]:
        """Body and headers of Graph's 429 for SharePoint, for ``fail()``."""
        return ({"error": {"code": "activityLimitReached", "message": "The request has been throttled",
                           "innerError": {"code": "throttledRequest"}}}, {"Retry-After": str(retry_after)})

    # --- routing ----------------------------------------------------------------------------------------------

    def route(self, request: Request) -> Reply:
        path = request.path
        if request.method == "POST" and path.endswith("/oauth2/v2.0/token"):
            return self._token(request, path.split("/")[1])
        if path.startswith("/download/"):
            item = self.items.get(path.rsplit("/", 1)[1])
            if item is None or self.download_keys.get(item.id) != request.query.get("tempauth"):
                return Reply(401, b"invalid tempauth", content_type="text/plain")
            return Reply(200, item.content, content_type="application/octet-stream")
        if not path.startswith("/v1.0/"):
            return self.error(404, "BadRequest", f"Resource not found for the segment '{path}'.")
        auth = request.headers.get("authorization", "")
        if not auth.startswith("Bearer ") or auth[7:] not in self.tokens:
            return self.error(401, "InvalidAuthenticationToken",
                              "Access token is empty." if not auth else "Access token validation failure.")
        rest = unquote(path[len("/v1.0/"):])
        if rest in (f"sites/{HOSTNAME}:{SITE_PATH}", f"sites/{SITE_ID}"):
            return Reply(200, self._site())
        if rest.startswith("sites/") and ":" in rest.split("/", 1)[1] and not rest.endswith("/drive"):
            return self.error(404, "itemNotFound", "Requested site could not be found")
        if rest in (f"sites/{SITE_ID}/drive", f"drives/{DRIVE_ID}"):
            return Reply(200, self._drive())
        if rest in (f"drives/{DRIVE_ID}/root/delta", f"sites/{SITE_ID}/drive/root/delta"):
            return self._delta(request)
        prefix = f"drives/{DRIVE_ID}/items/"
        if rest.startswith(prefix):
            item_id, _, what = rest[len(prefix):].partition("/")
            item = self.items.get(item_id)
            if item is None or item.deleted:
                return self.error(404, "itemNotFound", "The resource could not be found.")
            if what == "content":
                key = secrets.token_urlsafe(8)
                self.download_keys[item.id] = key
                return Reply(302, None, {"Location": f"{self.base}/download/{item.id}?tempauth={key}"})
            if what == "permissions":
                value = [{"id": f"perm-{n}", **p} for n, p in enumerate(item.permissions)]
                return Reply(200, {"@odata.context": f"https://graph.microsoft.com/v1.0/$metadata#drives('{DRIVE_ID}')"
                                                     f"/items('{item.id}')/permissions", "value": value})
        if rest.startswith("sites/") or rest.startswith("drives/"):
            return self.error(404, "itemNotFound", "The resource could not be found.")
        return self.error(400, "BadRequest", f"Resource not found for the segment '{rest.split('/')[0]}'.")

    def _token(self, request: Request, tenant: str) -> Reply:
        form = request.form()
        stamp = "\r\nTrace ID: 0b2c-standin\r\nCorrelation ID: 77aa-standin\r\nTimestamp: 2024-03-01 09:00:00Z"
        if tenant != TENANT:
            return Reply(400, {"error": "invalid_request", "error_description": f"AADSTS90002: Tenant '{tenant}' not "
                               "found. Check to make sure you have the correct tenant ID and are signing into the "
                               "correct cloud." + stamp, "error_codes": [90002]})
        if form.get("grant_type") != "client_credentials" or form.get("scope") != f"{self.base}/.default":
            return Reply(400, {"error": "invalid_scope", "error_description": "AADSTS1002012: The provided value for "
                               f"scope {form.get('scope')} is not valid." + stamp, "error_codes": [1002012]})
        if form.get("client_id") != CLIENT_ID:
            return Reply(400, {"error": "unauthorized_client", "error_description": "AADSTS700016: Application with "
                               f"identifier '{form.get('client_id')}' was not found in the directory '{tenant}'."
                               + stamp, "error_codes": [700016]})
        if form.get("client_secret") != CLIENT_SECRET:
            return Reply(401, {"error": "invalid_client", "error_description": "AADSTS7000215: Invalid client "
                               "secret provided. Ensure the secret being sent in the request is the client secret "
                               f"value, not the client secret ID, for a secret added to app '{CLIENT_ID}'." + stamp,
                               "error_codes": [7000215], "error_uri": "https://login.microsoftonline.com/error?"
                               "code=7000215"})
        token = "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9." + secrets.token_urlsafe(24)
        self.tokens.add(token)
        return Reply(200, {"token_type": "Bearer", "expires_in": 3599, "ext_expires_in": 3599, "access_token": token})

    def _site(self) -> dict:
        return {"@odata.context": "https://graph.microsoft.com/v1.0/$metadata#sites/$entity",
                "createdDateTime": "2023-01-10T08:00:00Z", "description": "Company handbook", "id": SITE_ID,
                "lastModifiedDateTime": "2024-03-01T09:00:00Z", "name": "handbook",
                "webUrl": f"https://{HOSTNAME}{SITE_PATH}", "displayName": "Handbook", "root": {},
                "siteCollection": {"hostname": HOSTNAME}}

    def _drive(self) -> dict:
        return {"@odata.context": "https://graph.microsoft.com/v1.0/$metadata#drives/$entity", "id": DRIVE_ID,
                "driveType": "documentLibrary", "name": "Documents", "createdDateTime": "2023-01-10T08:00:00Z",
                "webUrl": f"https://{HOSTNAME}{SITE_PATH}/Shared%20Documents"}

    def _delta(self, request: Request) -> Reply:
        token = request.query.get("token")
        top = int(request.query.get("$top", self.page_size))
        select = request.query.get("$select")
        delta_url = f"{self.base}/v1.0/drives/{DRIVE_ID}/root/delta"
        if token and token.startswith("p~"):  # a next page of a feed being read
            _, feed_id, offset = token.split("~")
            if feed_id not in self.feeds:
                return self.error(400, "invalidRequest", "Invalid or expired paging token.")
            entries, seq = self.feeds[feed_id]
            offset = int(offset)
        else:
            since = None
            if token:
                if not token.startswith("d~") or not token[2:].isdigit():
                    return self.error(400, "invalidRequest", "Invalid delta token.")
                since = int(token[2:])
                if since <= self.expired_before:
                    return self.error(410, "resyncChangesApplyDifferences", "Resync required. Replace any local "
                                      "items with the server's version (including deletes) if you're sure that the "
                                      "service was up to date with your local changes when you last sync'd.",
                                      headers={"Location": delta_url})
            sharing = "deltashowsharingchanges" in request.headers.get("prefer", "")
            seq = next(self.counter)
            entries = []
            for item in self.items.values():
                if since is None:
                    if not item.deleted:
                        entries.append(self._drive_item(item))
                elif item.seq > since or (sharing and item.sharing_seq > since and not item.deleted):
                    entries.append(self._drive_item(item, shared_changed=sharing and item.sharing_seq > since
                                                    and item.seq <= since))
            if select:
                fields = set(select.split(",")) | {"id", "@odata.type"}
                entries = [{k: v for k, v in e.items() if k in fields} for e in entries]
            feed_id = secrets.token_hex(4)
            self.feeds[feed_id] = (entries, seq)
            offset = 0
        page = entries[offset: offset + top]
        body = {"@odata.context": "https://graph.microsoft.com/v1.0/$metadata#Collection(driveItem)", "value": page}
        if offset + top < len(entries):
            body["@odata.nextLink"] = f"{delta_url}?token=p~{feed_id}~{offset + top}"
        else:
            body["@odata.deltaLink"] = f"{delta_url}?token=d~{seq}"
        return Reply(200, body)
