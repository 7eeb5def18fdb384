"""The SharePoint connector against a STAND-IN for Microsoft Graph and its token endpoint
(tests/ingestion/standins/graph_standin.py: a local HTTP server answering with the documented shapes; no real
SharePoint runs here): the first sync through the delta feed, an edit re-indexed alone, a rename keeping the
document's id, a deletion pruned, permissions mapped to reader groups and enforced by the search API, token
failures, throttling with Retry-After, and an expired delta token."""

import time

import pytest
from django.contrib.auth.models import Group

from apps.ingestion.connectors.base import ConfigError
from apps.ingestion.connectors.sharepoint import SharePointConnector
from apps.ingestion.models import Chunk, Document, DocumentAccess, SyncRun, document_id_for
from apps.ingestion.sources import SourceError, create_source
from tests.conftest import sync_now, token_client
from tests.ingestion.standins import graph_standin as graph
from tests.ingestion.standins.graph_standin import GraphStandin

pytestmark = pytest.mark.django_db
SEARCH = "/api/v1/search/"


@pytest.fixture
def standin():
    with GraphStandin() as server:
        yield server


def sp_config(standin, **overrides):
    config = {
        "tenant_id": graph.TENANT, "client_id": graph.CLIENT_ID, "client_secret": graph.CLIENT_SECRET,
        "site_url": f"https://{graph.HOSTNAME}{graph.SITE_PATH}",
        "authority_url": standin.base, "graph_url": standin.base,
        "groups_map": {"Handbook Members": "staff", "HR Team": "hr"},  # Handbook Owners kept as it is
        "max_retries": 3, "backoff_factor": 0.01, "timeout": 5,
    }
    config.update(overrides)
    return {k: v for k, v in config.items() if v is not None}


@pytest.fixture
def staff(roles, alice, bob):
    group, _ = Group.objects.get_or_create(name="staff")
    alice.groups.add(group)
    bob.groups.add(group)
    return group


@pytest.fixture
def source(standin, staff):
    return create_source(name="handbook-sp", kind="sharepoint", config=sp_config(standin))


def readers(source) -> dict:
    found = {}
    for external_id, principal in DocumentAccess.objects.filter(document__source=source).values_list(
            "document__external_id", "principal"):
        found.setdefault(external_id, set()).add(principal)
    return found


def downloads(standin) -> list[str]:
    return [r.path.split("/")[-2] for r in standin.requests_to("/v1.0/drives/") if r.path.endswith("/content")]


def test_first_sync_reads_the_library_through_the_delta_feed(source, standin):
    run = sync_now(source)
    assert run.status == SyncRun.PARTIAL, (run.message, run.errors)
    # folders, the root, the OneNote package and the .exe are not documents; board notes are refused (below)
    assert run.counts["seen"] == 4 and run.counts["new"] == 3 and run.counts["failed"] == 1
    assert run.errors == [{"item": standin.board.id, "reason": "'board-notes.txt' is shared with no group (only "
                           "people or links, which are not mapped yet); not indexed"}]
    docs = {d.external_id: d for d in Document.objects.filter(source=source)}
    assert set(docs) == {standin.vpn.id, standin.expenses.id, standin.leave.id}
    vpn = docs[standin.vpn.id]
    assert vpn.title == "VPN guide" and vpn.content_type == "text/markdown"
    assert vpn.uri == f"https://{graph.HOSTNAME}{graph.SITE_PATH}/Shared%20Documents/VPN%20guide.md"
    assert vpn.modified_at is not None
    assert docs[standin.leave.id].content_type == "text/html"
    assert "badge number" in Chunk.objects.get(document=vpn, ordinal=0).text
    owners = "group:Handbook Owners"  # not in groups_map: the SharePoint name as it is
    assert readers(source) == {standin.vpn.id: {owners, "group:staff"}, standin.expenses.id: {owners, "group:staff"},
                               standin.leave.id: {owners, "group:hr"}}  # Dana (a person) is not mapped
    pages = [r.query.get("token", "") for r in standin.requests_to(f"/v1.0/drives/{graph.DRIVE_ID}/root/delta")]
    assert any(t.startswith("p~") for t in pages)  # several pages, @odata.nextLink followed
    source.refresh_from_db()
    assert source.checkpoint["drive"] == graph.DRIVE_ID
    delta = f"{standin.base}/v1.0/drives/{graph.DRIVE_ID}/root/delta"
    assert source.checkpoint["delta_link"].startswith(f"{delta}?token=d~")


def test_edit_alone_is_downloaded_and_reindexed(source, standin):
    sync_now(source)
    untouched = set(Chunk.objects.filter(document__external_id=standin.vpn.id).values_list("id", "created_at"))
    standin.edit(standin.expenses, b"Travel and expenses\n\nTrain tickets are reimbursed in first class on long trips.")
    before = len(downloads(standin))
    run = sync_now(source)
    assert run.status == SyncRun.SUCCEEDED, (run.message, run.errors)
    assert run.counts["seen"] == 1 and run.counts["updated"] == 1
    assert run.counts["new"] == 0 and run.counts["deleted"] == 0 and run.counts["unchanged"] == 0
    assert downloads(standin)[before:] == [standin.expenses.id]
    assert Chunk.objects.filter(document__external_id=standin.expenses.id, text__contains="first class").exists()
    assert set(Chunk.objects.filter(document__external_id=standin.vpn.id).values_list("id", "created_at")) == untouched
    tokens = [r.query.get("token") for r in standin.requests_to(f"/v1.0/drives/{graph.DRIVE_ID}/root/delta")]
    assert any(t and t.startswith("d~") for t in tokens)  # the stored deltaLink was used
    again = sync_now(source)
    assert again.status == SyncRun.SUCCEEDED and again.counts["seen"] == 0


def test_renamed_and_moved_file_keeps_its_document(source, standin):
    sync_now(source)
    doc_id = document_id_for(source.pk, standin.expenses.id)
    hr_folder = standin.leave.parent
    standin.rename(standin.expenses, "travel-and-expenses.txt", parent=hr_folder)
    run = sync_now(source)
    assert run.status == SyncRun.SUCCEEDED, (run.message, run.errors)
    assert run.counts["seen"] == 1 and run.counts["unchanged"] == 1
    assert run.counts["new"] == 0 and run.counts["deleted"] == 0
    assert Document.objects.filter(pk=doc_id, external_id=standin.expenses.id).exists()
    assert Document.objects.filter(source=source).count() == 3


def test_deleted_file_is_pruned(source, standin):
    sync_now(source)
    standin.delete(standin.vpn)
    run = sync_now(source)
    assert run.status == SyncRun.SUCCEEDED, (run.message, run.errors)
    assert run.counts["deleted"] == 1 and run.counts["seen"] == 0
    assert not Document.objects.filter(source=source, external_id=standin.vpn.id).exists()
    feed = [r for r in standin.requests_to(f"/v1.0/drives/{graph.DRIVE_ID}/root/delta")
            if (r.query.get("token") or "").startswith("d~")]
    assert feed  # the change came through the delta feed with its deleted facet


def test_group_permissions_reach_the_search(source, alice, bob):
    sync_now(source)
    query = {"query": "how many weeks of paid parental leave", "top_k": 10}
    alice_docs = {r["document_title"] for r in token_client(alice).post(SEARCH, query, format="json").json()["results"]}
    bob_docs = {r["document_title"] for r in token_client(bob).post(SEARCH, query, format="json").json()["results"]}
    assert "Parental leave" in alice_docs  # alice is in hr, mapped from the "HR Team" group
    assert "Parental leave" not in bob_docs
    assert bob_docs  # the staff documents are still his
    board = token_client(alice).post(SEARCH, {"query": "merger talks board notes", "top_k": 10}, format="json")
    assert all("merger" not in r["text"] for r in board.json()["results"])  # refused: shared with people only


def test_permission_change_alone_is_picked_up_with_sharing_changes(standin, staff, alice):
    source = create_source(name="handbook-sp", kind="sharepoint", config=sp_config(standin, sharing_changes=True))
    sync_now(source)
    assert readers(source)[standin.vpn.id] == {"group:Handbook Owners", "group:staff"}
    standin.set_permissions(standin.vpn, [graph.OWNERS, graph.HR_TEAM])  # no longer for every member
    run = sync_now(source)
    assert run.status == SyncRun.SUCCEEDED, (run.message, run.errors)
    assert run.counts["seen"] == 1 and run.counts["updated"] == 1 and run.counts["new"] == 0
    assert readers(source)[standin.vpn.id] == {"group:Handbook Owners", "group:hr"}
    prefer = {r.headers.get("prefer") for r in standin.requests_to(f"/v1.0/drives/{graph.DRIVE_ID}/root/delta")}
    assert "deltashowremovedasdeleted, deltatraversepermissiongaps, deltashowsharingchanges" in prefer
    # and a file whose groups all go away is removed, not opened up
    standin.set_permissions(standin.vpn, [graph.DANA])
    run = sync_now(source)
    assert run.counts["failed"] == 1 and run.counts["deleted"] == 1
    assert not Document.objects.filter(source=source, external_id=standin.vpn.id).exists()


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"client_secret": "wrong-secret"},
         "HTTP 401 invalid_client (check client_secret): AADSTS7000215: Invalid client secret provided."),
        ({"client_id": "00000000-0000-0000-0000-000000000000"},
         "HTTP 400 unauthorized_client (check client_id): AADSTS700016: Application with identifier"),
        ({"tenant_id": "no-such-tenant"}, "HTTP 400 invalid_request (check tenant_id): AADSTS90002: Tenant"),
    ],
    ids=["wrong-secret", "unknown-client", "unknown-tenant"],
)
def test_token_failures_are_clear_errors(standin, staff, changes, expected):
    with pytest.raises(SourceError) as err:
        create_source(name="handbook-sp", kind="sharepoint", config=sp_config(standin, **changes))
    tenant = changes.get("tenant_id", graph.TENANT)
    assert err.value.message.startswith(f"cannot get an access token from {standin.base}/{tenant}/oauth2/v2.0/token: ")
    assert expected in err.value.message
    assert "wrong-secret" not in err.value.message
    assert not standin.requests_to("/v1.0/")  # Graph itself was never asked


def test_token_failure_at_sync_fails_the_run_and_prunes_nothing(source, standin):
    sync_now(source)
    standin.delete(standin.vpn)
    standin.fail("/" + graph.TENANT + "/oauth2/", 401, {"error": "invalid_client", "error_description":
                 "AADSTS7000222: The provided client secret keys for app are expired."})
    run = sync_now(source)
    assert run.status == SyncRun.FAILED
    assert "cannot get an access token" in run.message and "AADSTS7000222" in run.message
    assert "(check client_secret)" in run.message
    assert Document.objects.filter(source=source, external_id=standin.vpn.id).exists()


def test_throttling_with_retry_after_is_waited_out(source, standin):
    body, headers = GraphStandin.throttled(retry_after=1)
    standin.fail(f"/v1.0/drives/{graph.DRIVE_ID}/root/delta", 429, body, headers=headers, times=1, skip=1)
    run = sync_now(source)
    assert run.status == SyncRun.PARTIAL and run.counts["new"] == 3, (run.message, run.errors)
    feed = standin.requests_to(f"/v1.0/drives/{graph.DRIVE_ID}/root/delta")
    statuses = [r.status for r in feed]
    assert 429 in statuses
    throttled = statuses.index(429)
    assert statuses[throttled + 1] == 200
    assert feed[throttled + 1].at - feed[throttled].at >= 0.9  # Retry-After: 1 honoured, not the 0.01 s backoff


def test_persistent_throttling_fails_with_graphs_reason(source, standin):
    body, headers = GraphStandin.throttled(retry_after=0)
    standin.fail("/v1.0/", 429, body, headers=headers)
    run = sync_now(source)
    assert run.status == SyncRun.FAILED
    assert "HTTP 429 after 3 retries" in run.message
    assert "activityLimitReached: The request has been throttled" in run.message


def test_expired_delta_token_starts_a_fresh_enumeration(source, standin):
    sync_now(source)
    standin.edit(standin.vpn, b"# Connecting to the VPN\n\nThe new client is called GateKeeper Next.")
    standin.expire_delta_tokens()
    run = sync_now(source)
    assert run.status == SyncRun.PARTIAL, (run.message, run.errors)  # board notes still refused
    assert run.counts["updated"] == 1 and run.counts["unchanged"] == 2 and run.counts["deleted"] == 0
    assert 410 in [r.status for r in standin.requests_to(f"/v1.0/drives/{graph.DRIVE_ID}/root/delta")]
    assert Chunk.objects.filter(document__external_id=standin.vpn.id, text__contains="GateKeeper Next").exists()


def test_unknown_site_is_refused_at_save(standin, staff):
    with pytest.raises(SourceError) as err:
        create_source(name="handbook-sp", kind="sharepoint",
                      config=sp_config(standin, site_url=f"https://{graph.HOSTNAME}/sites/nowhere"))
    assert err.value.message == (f"site 'https://{graph.HOSTNAME}/sites/nowhere': HTTP 404 from {standin.base}"
                                 f"/v1.0/sites/{graph.HOSTNAME}:/sites/nowhere: itemNotFound: Requested site could "
                                 "not be found")


def test_site_id_and_drive_id_are_used_as_given(standin, staff):
    source = create_source(name="handbook-sp", kind="sharepoint",
                           config=sp_config(standin, site_url=None, site_id=graph.SITE_ID, drive_id=graph.DRIVE_ID))
    run = sync_now(source)
    assert run.counts["new"] == 3
    assert not standin.requests_to("/v1.0/sites/")  # the drive was named: no site lookup


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"tenant_id": None}, "tenant_id"),
        ({"client_secret": ""}, "client_secret"),
        ({"site_url": None}, "site_id"),
        ({"site_id": "x"}, "site_id"),
        ({"site_url": "contoso.sharepoint.com/sites/x"}, "site_url"),
        ({"graph_url": "https://graph.example.com/?x=1"}, "graph_url"),
        ({"groups_map": {"HR Team": 3}}, "groups_map"),
        ({"sharing_changes": "yes"}, "sharing_changes"),
        ({"max_retries": -1}, "max_retries"),
        ({"folder": "x"}, "folder"),
    ],
)
def test_bad_sharepoint_settings_name_the_field(changes, field):
    config = {k: v for k, v in {**sp_config(type("S", (), {"base": "http://127.0.0.1:9"})), **changes}.items()
              if v is not None}
    with pytest.raises(ConfigError) as err:
        SharePointConnector.validate_config(config)
    assert err.value.field == field


def test_client_secret_is_stored_encrypted(source):
    from apps.ingestion.secrets import is_secret

    source.refresh_from_db()
    assert is_secret(source.config["client_secret"])
    assert graph.CLIENT_SECRET not in str(source.config)


def test_a_token_is_reused_within_its_lifetime(source, standin):
    start = len(standin.requests_to(f"/{graph.TENANT}/oauth2/"))
    began = time.monotonic()
    sync_now(source)
    assert time.monotonic() - began < 30
    assert len(standin.requests_to(f"/{graph.TENANT}/oauth2/")) - start == 1  # one token for the whole run
