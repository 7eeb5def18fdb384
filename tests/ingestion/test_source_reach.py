"""Issue 12 item 4 (a, b): manage_sources is not a master key. File-system sources stay inside
FILESYSTEM_SOURCE_ROOTS (resolved paths), cannot mirror another source's folder, and HTTP-based connectors reach no
loopback, link-local or private address unless CONNECTOR_EGRESS_ALLOW says so, on save and on every connection."""

import json
import os
import socket
import subprocess
import sys
from http.server import BaseHTTPRequestHandler

import pytest

from apps.ingestion.connectors.base import ConnectorError
from apps.ingestion.connectors.egress import EgressDenied
from apps.ingestion.connectors.http import HttpConnector
from apps.ingestion.models import Document, Source, SyncRun
from apps.ingestion.sources import create_source
from tests.conftest import REPO, sync_now, token_client, write_corpus
from tests.factories import UserFactory
from tests.http_server import LocalHttpServer

pytestmark = pytest.mark.django_db

INTERNAL_SECRET = "internal-admin-panel: db password hunter2"


@pytest.fixture
def pat(roles):
    return UserFactory(username="pat", groups=["power_user"])


@pytest.fixture
def sources_root(tmp_path, settings):
    root = tmp_path / "allowed"
    write_corpus(root / "team", {"notes.txt": "Team notes."})
    settings.FILESYSTEM_SOURCE_ROOTS = [root.resolve()]
    return root


def _create(client, name, path, **extra):
    return client.post("/api/v1/sources/", {"name": name, "kind": "filesystem", "config": {"path": str(path)},
                                            **extra}, format="json")


# --- (a) file-system roots -------------------------------------------------------------------------------------


def test_filesystem_source_outside_the_roots_is_refused(pat, sources_root, tmp_path):
    (sources_root / "escape").symlink_to("/etc")
    client = token_client(pat)
    for path in ("/etc", sources_root / "escape", f"{sources_root}/team/../../..", tmp_path):
        response = _create(client, "probe", path)
        assert response.status_code == 400, (path, response.content)
        assert response.json()["detail"].startswith("config.path:")
        assert "FILESYSTEM_SOURCE_ROOTS" in response.json()["detail"]
    assert not Source.objects.exists()
    assert _create(client, "team", sources_root / "team").status_code == 201


def test_a_stored_source_outside_the_roots_does_not_sync(roles, sources_root, tmp_path):
    outside = write_corpus(tmp_path / "outside", {"secret.txt": "Not for indexing."})
    source = Source.objects.create(name="old", kind="filesystem", config={"path": str(outside)})
    run = sync_now(source)
    assert run.status == SyncRun.FAILED and "FILESYSTEM_SOURCE_ROOTS" in run.message
    assert not Document.objects.filter(source=source).exists()


def test_power_user_cannot_mirror_another_sources_folder(pat, sources_root, roles):
    hr = create_source(name="hr", config={"path": str(sources_root / "team")}, groups=["hr"])
    client = token_client(pat)
    for path in (sources_root / "team", sources_root):  # the same folder, or one containing it
        response = _create(client, "mirror", path, groups=[])
        assert response.status_code == 400 and "another source" in response.json()["detail"], response.content
    assert list(Source.objects.values_list("name", flat=True)) == ["hr"]
    admin = UserFactory(username="ada", groups=["admin"])  # administer_sources: an administrator's decision
    assert _create(token_client(admin), "mirror", sources_root, groups=["hr"]).status_code == 201
    assert hr.config["path"] == str((sources_root / "team").resolve())


def test_defaults_deny_outside_folders_and_loopback(tmp_path):
    """Without the test settings: DATA_DIR/sources and the demo folder, and no egress exceptions."""
    env = {k: v for k, v in os.environ.items() if k not in ("FILESYSTEM_SOURCE_ROOTS", "CONNECTOR_EGRESS_ALLOW")}
    env["DATA_DIR"] = str(tmp_path)
    code = ("from django.conf import settings; import json; print(json.dumps([[str(p) for p in "
            "settings.FILESYSTEM_SOURCE_ROOTS], settings.CONNECTOR_EGRESS_ALLOW]))")
    result = subprocess.run([sys.executable, "manage.py", "shell", "-c", code], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    roots, allow = json.loads(result.stdout.strip().splitlines()[-1])
    assert roots == [str((tmp_path / "sources").resolve()), str((REPO / "demo").resolve())] and allow == []


# --- (b) egress ------------------------------------------------------------------------------------------------


class _Internal(BaseHTTPRequestHandler):
    """An internal service that must not be probed: it answers errors whose bodies hold secrets."""

    hits = 0

    def do_GET(self):  # noqa: N802
        type(self).hits += 1
        body = INTERNAL_SECRET.encode()
        self.send_response(500 if "fail" in self.path else 200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class InternalService(LocalHttpServer):
    def __init__(self):
        _Internal.hits = 0
        self._bind(_Internal)


@pytest.fixture
def internal():
    with InternalService() as server:
        yield server


def _http_source(url):
    return {"name": "probe", "kind": "http", "config": {"url": url, "id_field": "id", "text_fields": ["body"]}}


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "[::ffff:127.0.0.1]", "169.254.169.254", "10.1.2.3"])
def test_default_policy_denies_loopback_link_local_and_private(pat, settings, internal, host):
    settings.CONNECTOR_EGRESS_ALLOW = []
    port = internal.url.rsplit(":", 1)[1]
    response = token_client(pat).post("/api/v1/sources/", _http_source(f"http://{host}:{port}/api/fail"),
                                      format="json")
    assert response.status_code == 400, response.content
    assert response.json()["detail"].startswith("config.url:") and "CONNECTOR_EGRESS_ALLOW" in response.json()["detail"]
    assert _Internal.hits == 0 and not Source.objects.exists()


def test_allowed_target_errors_do_not_echo_the_body_on_save(pat, settings, internal):
    settings.CONNECTOR_EGRESS_ALLOW = ["127.0.0.1/32"]
    for path in ("/api/fail", "/api/html"):  # an error status, and a 200 that is not JSON
        response = token_client(pat).post("/api/v1/sources/", _http_source(f"{internal.url}{path}"), format="json")
        assert response.status_code == 400, response.content
        assert "hunter2" not in response.content.decode() and "internal-admin" not in response.content.decode()
    assert _Internal.hits >= 2  # the target really answered, with its secret, and the answer was not echoed


def test_dns_rebinding_is_refused_at_connection_time(settings, internal, monkeypatch):
    """The host resolves to a public address when the source is saved and to 127.0.0.1 when it connects."""
    settings.CONNECTOR_EGRESS_ALLOW = []
    real = socket.getaddrinfo
    answers = iter(["93.184.216.34"])

    def rebinding(host, port, *args, **kwargs):
        if host == "rebind.example":
            return real(next(answers, "127.0.0.1"), port, *args, **kwargs)
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", rebinding)
    port = internal.url.rsplit(":", 1)[1]
    connector = HttpConnector(_http_source(f"http://rebind.example:{port}/api/items")["config"])  # save: public
    with pytest.raises(EgressDenied) as err:
        connector.check()
    assert isinstance(err.value, ConnectorError) and "loopback" in str(err.value)
    assert _Internal.hits == 0  # refused before a byte was sent


def test_a_sub_folder_copy_of_an_open_source_keeps_the_restriction_above_it(pat, sources_root, roles):
    share = write_corpus(sources_root / "share", {"hr/.ragsite-access.json": '{"groups": ["hr"]}',
                                                  "hr/2027/layoffs.txt": "The list of names.",
                                                  "lunch.txt": "Pizza on Fridays."})
    create_source(name="share", config={"path": str(share)})  # open to every signed-in user; hr/ by its sidecar
    response = _create(token_client(pat), "copy", share / "hr" / "2027", groups=[])
    assert response.status_code == 201, response.content  # an open folder may be shared
    copy = Source.objects.get(name="copy")
    assert sync_now(copy).status == SyncRun.SUCCEEDED
    document = Document.objects.get(source=copy)
    assert list(document.access.values_list("principal", flat=True)) == ["group:hr"]


def test_power_user_cannot_copy_a_source_with_a_restricted_document(pat, sources_root, roles):
    from apps.ingestion import grants

    share = write_corpus(sources_root / "share", {"memo.txt": "Quarterly numbers."})
    source = create_source(name="share", config={"path": str(share)})
    sync_now(source)
    grants.restrict(Document.objects.get(source=source), reason="legal")
    response = _create(token_client(pat), "copy", share, groups=[])
    assert response.status_code == 400 and "another source" in response.json()["detail"]


def test_rest_connectors_are_held_to_the_same_policy(pat, settings, internal):
    """Confluence (and SharePoint, through the same RestClient and URL check): refused on save, and a connection
    made later to a denied address is refused before anything is sent."""
    from apps.ingestion.connectors.http_client import RestClient

    settings.CONNECTOR_EGRESS_ALLOW = []
    config = {"base_url": internal.url, "email": "a@example.com", "api_token": "t" * 20, "space_keys": ["ENG"]}
    response = token_client(pat).post("/api/v1/sources/", {"name": "wiki", "kind": "confluence", "config": config},
                                      format="json")
    assert response.status_code == 400 and response.json()["detail"].startswith("config.base_url:")
    with pytest.raises(EgressDenied):
        RestClient({}).get(f"{internal.url}/wiki/rest/api/space/ENG")
    assert _Internal.hits == 0


def test_a_proxy_from_the_environment_is_held_to_the_policy(settings, internal, monkeypatch):
    """HTTP_PROXY would otherwise carry requests past the check: the proxy's address is checked too."""
    from apps.ingestion.connectors.http_client import RestClient

    settings.CONNECTOR_EGRESS_ALLOW = []
    monkeypatch.setenv("HTTP_PROXY", internal.url)
    monkeypatch.setenv("NO_PROXY", "")
    with pytest.raises(EgressDenied):
        RestClient({"max_retries": 0}).get("http://93.184.216.34/wiki/rest/api/space/ENG")
    assert _Internal.hits == 0


# --- SQL and S3 sources are held to the same egress policy -----------------------------------------------------

MARIADB = "mysql+pymysql://root@127.0.0.1:3306/test"
ONE_ROW = {"query": "SELECT 1 AS id, 'hello' AS body", "id_column": "id", "text_template": "{body}"}


def test_sql_source_on_an_internal_database_is_refused_by_default(pat, settings):
    settings.CONNECTOR_EGRESS_ALLOW = []
    response = token_client(pat).post("/api/v1/sources/", {"name": "probe-db", "kind": "sql",
                                                           "config": {"url": MARIADB, **ONE_ROW}}, format="json")
    assert response.status_code == 400, response.content
    assert response.json()["detail"].startswith("config.url:") and "CONNECTOR_EGRESS_ALLOW" in response.json()["detail"]
    assert not Source.objects.exists()


def test_sql_source_is_checked_again_before_each_connection(roles, settings):
    source = create_source(name="kb-db", kind="sql", config={"url": MARIADB, **ONE_ROW})  # allowed: loopback
    assert sync_now(source).status == SyncRun.SUCCEEDED
    settings.CONNECTOR_EGRESS_ALLOW = []  # the operator narrows the policy; the stored source must follow it
    run = sync_now(source)
    assert run.status == SyncRun.FAILED and "CONNECTOR_EGRESS_ALLOW" in run.message, run.message


def test_s3_endpoint_on_loopback_is_refused_by_default(pat, settings):
    settings.CONNECTOR_EGRESS_ALLOW = []
    response = token_client(pat).post("/api/v1/sources/", {"name": "probe-s3", "kind": "s3", "config": {
        "bucket": "docs", "endpoint_url": "http://127.0.0.1:9000", "access_key_id": "AKIAEXAMPLE",
        "secret_access_key": "example-secret"}}, format="json")
    assert response.status_code == 400, response.content
    assert response.json()["detail"].startswith("config.endpoint_url:")
    assert "CONNECTOR_EGRESS_ALLOW" in response.json()["detail"]
