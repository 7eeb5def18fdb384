"""A STAND-IN for the Confluence Cloud REST API (v1), for the confluence connector's tests: no Confluence can run
here, so this local HTTP server (a thread on 127.0.0.1) answers the calls the connector makes with bodies shaped
like Atlassian's documented ones.

- HTTP basic auth with an email and API token; anything else gets 401 ``{"statusCode": 401, "message": ...}``.
- ``GET /wiki/rest/api/space/{key}``: the space, or 404 ``"No space found with key : X"``.
- ``GET /wiki/rest/api/content/search?cql=...&limit=...&expand=...``: understands the CQL the connector sends
  (``space in ("A", "B")``, ``type = page``, ``lastmodified >= now("-Nm")``, ``lastmodified > "yyyy-MM-dd HH:mm"``,
  ``order by lastmodified|created [asc|desc]``) and answers 400 ``"Could not parse cql : ..."`` for anything else.
  Results are content objects (``id``, ``type``, ``status``, ``title``, ``space``, ``version`` {``when``,
  ``number``, ``by``}, ``ancestors``, ``body.storage`` {``value``, ``representation``}, ``_links.webui``) with
  only the requested expansions; pages are linked through ``_links.next`` (relative to ``_links.base``) carrying
  an opaque keyset ``cursor``, as Confluence Cloud does, so a page edited while the results are read is not
  skipped.
- ``GET /wiki/rest/api/content/{id}/restriction/byOperation/read``: ``{"operation": "read", "restrictions":
  {"user": {"results", "start", "limit", "size"}, "group": {...}}}``.
"""

import base64
import json
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from urllib.parse import quote, unquote, urlencode

from .base import Reply, Request, StandinServer

EMAIL = "sync-bot@example.com"
API_TOKEN = "ATATT3xFfGF0standin-token"  # noqa: S105 - a test value
SPACES = {"ENG": ("Engineering", 98305), "HR": ("People team", 98306), "OPS": ("Operations", 98307)}
_SPACE_CLAUSE = re.compile(r"space\s+in\s*\(([^)]*)\)", re.IGNORECASE)
_TYPE_CLAUSE = re.compile(r"type\s*=\s*page", re.IGNORECASE)
_NOW_CLAUSE = re.compile(r'lastmodified\s*>=\s*now\("-(\d+)m"\)', re.IGNORECASE)
_DATE_CLAUSE = re.compile(r'lastmodified\s*>\s*"(\d{4}-\d{2}-\d{2} \d{2}:\d{2})"', re.IGNORECASE)
_ORDER = re.compile(r"\s+order\s+by\s+(lastmodified|created)(?:\s+(asc|desc))?\s*$", re.IGNORECASE)


@dataclass
class Page:
    id: str
    space: str
    title: str
    body: str
    when: datetime
    ancestors: list = field(default_factory=list)  # ids, root first
    read_groups: list = field(default_factory=list)
    read_users: list = field(default_factory=list)
    version: int = 1
    created: datetime | None = None
    status: str = "current"


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class ConfluenceStandin(StandinServer):
    thread_name = "confluence-standin"

    def __init__(self):
        super().__init__()
        now = datetime.now(UTC).replace(microsecond=0)
        start = now - timedelta(days=3)
        self.pages: dict[str, Page] = {}
        self.vpn = self._add("1001", "ENG", "Connecting to the VPN", "<h1>Set-up</h1><p>Install the GateKeeper "
                             "client and sign in with your badge number.</p>", start)
        self.deploy = self._add("1002", "ENG", "Deploy checklist", "<p>Run the smoke tests before every release."
                                '</p><ac:structured-macro ac:name="info"><ac:rich-text-body><p>Ask in #releases.'
                                "</p></ac:rich-text-body></ac:structured-macro>", start + timedelta(hours=1),
                                ancestors=["1001"])
        self.people = self._add("2001", "HR", "People policies", "<p>The people team owns these policies.</p>",
                                start + timedelta(hours=2), read_groups=["confluence-hr"])
        self.leave = self._add("2002", "HR", "Parental leave", "<p>Employees receive twenty-six weeks of fully paid "
                               "parental leave after six months of service.</p>", start + timedelta(hours=3),
                               ancestors=["2001"])
        self.salaries = self._add("2003", "HR", "Salary bands", "<p>Band C starts at 58,000 pounds.</p>",
                                  start + timedelta(hours=4), read_users=["5b10ac8d82e05b22cc7d4ef5"])
        self._add("3001", "OPS", "On-call rota", "<p>Not in a synced space.</p>", start + timedelta(hours=5))
        self.page_size: int | None = None  # None: the limit the client asks for

    def _add(self, page_id, space, title, body, when, **extra) -> Page:
        page = Page(page_id, space, title, body, when, created=when, **extra)
        self.pages[page_id] = page
        return page

    # --- mutations for tests ----------------------------------------------------------------------------------

    def edit(self, page: Page, *, body: str | None = None, title: str | None = None):
        with self.lock:
            page.body = body if body is not None else page.body
            page.title = title if title is not None else page.title
            page.version += 1
            page.when = datetime.now(UTC)

    def trash(self, page: Page):
        with self.lock:
            page.status = "trashed"

    def restrict(self, page: Page, groups=(), users=()):
        with self.lock:  # as in Confluence, a restriction change makes no new version
            page.read_groups, page.read_users = list(groups), list(users)

    # --- shapes -----------------------------------------------------------------------------------------------

    @staticmethod
    def error(status: int, message: str, reason: str, headers=None) -> Reply:
        return Reply(status, {"statusCode": status, "data": {"authorized": status != 401, "valid": True,
                                                             "errors": [], "successful": False},
                              "message": message, "reason": reason}, headers or {})

    @staticmethod
    def rate_limited(retry_after: int = 1) -> tuple[dict, dict]:
        """Body and headers of Confluence Cloud's 429, for ``fail()``."""
        return ({"statusCode": 429, "message": "Rate limit exceeded. Please retry after the time given in the "
                 "Retry-After header."}, {"Retry-After": str(retry_after), "X-RateLimit-Limit": "100"})

    def _space(self, key: str) -> dict:
        name, space_id = SPACES[key]
        return {"id": space_id, "key": key, "name": name, "type": "global", "status": "current",
                "_expandable": {"homepage": f"/rest/api/content/{space_id}0"},
                "_links": {"webui": f"/spaces/{key}", "self": f"{self.base}/wiki/rest/api/space/{key}"}}

    def _content(self, page: Page, expand: set) -> dict:
        body = {"id": page.id, "type": "page", "status": page.status, "title": page.title,
                "_links": {"webui": f"/spaces/{page.space}/pages/{page.id}/{quote(page.title.replace(' ', '+'))}",
                           "edit": f"/pages/resumedraft.action?draftId={page.id}", "tinyui": f"/x/{page.id}",
                           "self": f"{self.base}/wiki/rest/api/content/{page.id}"},
                "_expandable": {}}
        if "space" in expand:
            body["space"] = self._space(page.space)
        if "version" in expand:
            body["version"] = {"by": {"type": "known", "accountId": "557058:standin", "displayName": "Sam Writer"},
                               "when": _iso(page.when), "friendlyWhen": "recently", "number": page.version,
                               "minorEdit": False}
        if "ancestors" in expand:
            body["ancestors"] = [{"id": a, "type": "page", "status": "current", "title": self.pages[a].title}
                                 for a in page.ancestors]
        if "body.storage" in expand:
            body["body"] = {"storage": {"value": page.body, "representation": "storage", "embeddedContent": []}}
        for name in ("space", "version", "ancestors", "body"):
            if name not in body:
                body["_expandable"][name] = f"/rest/api/content/{page.id}/{name}"
        return body

    # --- routing ----------------------------------------------------------------------------------------------

    def route(self, request: Request) -> Reply:
        auth = request.headers.get("authorization", "")
        expected = "Basic " + base64.b64encode(f"{EMAIL}:{API_TOKEN}".encode()).decode()
        if auth != expected:
            return self.error(401, "Client must be authenticated to access this resource.", "Unauthorized")
        path = unquote(request.path)
        if path.startswith("/wiki/rest/api/space/"):
            key = path.rsplit("/", 1)[1]
            if key not in SPACES:
                return self.error(404, f"No space found with key : {key}", "Not Found")
            return Reply(200, self._space(key))
        if path == "/wiki/rest/api/content/search":
            return self._search(request)
        match = re.fullmatch(r"/wiki/rest/api/content/([^/]+)/restriction/byOperation/read", path)
        if match:
            page = self.pages.get(match.group(1))
            if page is None or page.status != "current":
                return self.error(404, f"No content found with id : {match.group(1)}", "Not Found")
            users = [{"type": "known", "accountId": u, "accountType": "atlassian", "displayName": f"User {u[:4]}"}
                     for u in page.read_users]
            groups = [{"type": "group", "name": g, "id": f"{g}-id"} for g in page.read_groups]
            return Reply(200, {"operation": "read", "restrictions": {
                "user": {"results": users, "start": 0, "limit": 200, "size": len(users)},
                "group": {"results": groups, "start": 0, "limit": 200, "size": len(groups)}},
                "_expandable": {"content": f"/rest/api/content/{page.id}"},
                "_links": {"self": f"{self.base}/wiki/rest/api/content/{page.id}/restriction/byOperation/read",
                           "base": f"{self.base}/wiki", "context": "/wiki"}})
        return self.error(404, "null for uri: " + path, "Not Found")

    def _search(self, request: Request) -> Reply:
        cql = request.query.get("cql", "")
        rest = cql
        order = _ORDER.search(rest)
        if order:
            rest = rest[: order.start()]
        clauses = [c.strip() for c in re.split(r"\s+and\s+", rest, flags=re.IGNORECASE) if c.strip()]
        spaces, cutoff = None, None
        for clause in clauses:
            if _SPACE_CLAUSE.fullmatch(clause):
                spaces = {k.strip().strip('"') for k in _SPACE_CLAUSE.fullmatch(clause).group(1).split(",")}
            elif _TYPE_CLAUSE.fullmatch(clause):
                pass
            elif _NOW_CLAUSE.fullmatch(clause):
                cutoff = datetime.now(UTC) - timedelta(minutes=int(_NOW_CLAUSE.fullmatch(clause).group(1)))
            elif _DATE_CLAUSE.fullmatch(clause):
                cutoff = datetime.strptime(_DATE_CLAUSE.fullmatch(clause).group(1), "%Y-%m-%d %H:%M").replace(
                    tzinfo=UTC)
            else:
                return self.error(400, f"Could not parse cql : {cql}", "Bad Request")
        pages = [p for p in self.pages.values() if p.status == "current" and (spaces is None or p.space in spaces)]
        if cutoff is not None:
            pages = [p for p in pages if p.when.replace(second=0, microsecond=0) >= cutoff.replace(second=0,
                                                                                                   microsecond=0)]
        field_name = (order.group(1).lower() if order else "created")

        def key(page: Page):
            stamp = page.when if field_name == "lastmodified" else page.created
            return (stamp.timestamp(), int(page.id))

        descending = bool(order and (order.group(2) or "").lower() == "desc")
        pages.sort(key=key, reverse=descending)
        cursor = request.query.get("cursor")
        if cursor:
            after = tuple(json.loads(base64.urlsafe_b64decode(cursor.encode()).decode()))
            pages = [p for p in pages if (key(p) < after if descending else key(p) > after)]
        limit = int(request.query.get("limit", 25))
        size = min(limit, self.page_size or limit)
        chunk = pages[:size]
        expand = set(filter(None, request.query.get("expand", "").split(",")))
        links = {"base": f"{self.base}/wiki", "context": "/wiki",
                 "self": f"{self.base}/wiki/rest/api/content/search?{urlencode({'cql': cql})}"}
        if len(pages) > size:
            token = base64.urlsafe_b64encode(json.dumps(list(key(chunk[-1]))).encode()).decode()
            params = {"next": "true", "cursor": token, "limit": limit, "cql": cql}
            if expand:
                params["expand"] = ",".join(sorted(expand))
            links["next"] = f"/rest/api/content/search?{urlencode(params)}"
        return Reply(200, {"results": [self._content(p, expand) for p in chunk], "start": 0, "limit": limit,
                           "size": len(chunk), "cqlQuery": cql, "searchDuration": 7, "_links": links})
