"""The Confluence connector against a STAND-IN for the Confluence Cloud REST API
(tests/ingestion/standins/confluence_standin.py: a local HTTP server answering with the documented shapes; no real
Confluence runs here): the first sync through paginated CQL search, an edit re-indexed alone, a rename keeping the
document's id, a deletion pruned, read restrictions (inherited from ancestors) mapped to reader groups and
enforced by the search API, bad credentials, a missing space, and throttling with Retry-After."""

import pytest

from apps.ingestion.connectors.base import ConfigError
from apps.ingestion.connectors.confluence import ConfluenceConnector
from apps.ingestion.models import Chunk, Document, DocumentAccess, SyncRun, document_id_for
from apps.ingestion.sources import SourceError, create_source
from tests.conftest import sync_now, token_client
from tests.ingestion.standins import confluence_standin as conf
from tests.ingestion.standins.confluence_standin import ConfluenceStandin

pytestmark = pytest.mark.django_db
SEARCH = "/api/v1/search/"
SEARCH_PATH = "/wiki/rest/api/content/search"


@pytest.fixture
def standin():
    with ConfluenceStandin() as server:
        server.page_size = 2  # several result pages, _links.next followed
        yield server


def conf_config(standin, **overrides):
    config = {"base_url": f"{standin.base}/wiki", "email": conf.EMAIL, "api_token": conf.API_TOKEN,
              "space_keys": ["ENG", "HR"], "groups_map": {"confluence-hr": "hr"},
              "max_retries": 3, "backoff_factor": 0.01, "timeout": 5}
    config.update(overrides)
    return {k: v for k, v in config.items() if v is not None}


@pytest.fixture
def source(standin, roles):
    return create_source(name="wiki", kind="confluence", config=conf_config(standin))


def readers(source) -> dict:
    found = {}
    for external_id, principal in DocumentAccess.objects.filter(document__source=source).values_list(
            "document__external_id", "principal"):
        found.setdefault(external_id, set()).add(principal)
    return found


def searches(standin, since=0) -> list:
    return [r for r in standin.requests_to(SEARCH_PATH)[since:]]


def test_first_sync_reads_the_spaces_through_cql(source, standin):
    run = sync_now(source)
    assert run.status == SyncRun.PARTIAL, (run.message, run.errors)
    assert run.counts["seen"] == 5 and run.counts["new"] == 4 and run.counts["failed"] == 1
    assert run.errors[0]["item"] == "2003" and "may be read by no group" in run.errors[0]["reason"]
    docs = {d.external_id: d for d in Document.objects.filter(source=source)}
    assert set(docs) == {"1001", "1002", "2001", "2002"}  # OPS is not a synced space
    deploy = docs["1002"]
    assert deploy.title == "Deploy checklist" and deploy.content_type == "text/html"
    assert deploy.uri == f"{standin.base}/wiki/spaces/ENG/pages/1002/Deploy%2Bchecklist"
    text = " ".join(Chunk.objects.filter(document=deploy).values_list("text", flat=True))
    assert "smoke tests" in text and "Ask in #releases" in text  # macro bodies are text too
    assert readers(source) == {"1001": {"authenticated"}, "1002": {"authenticated"}, "2001": {"group:hr"},
                               "2002": {"group:hr"}}  # 2002 inherits its parent's restriction
    first = searches(standin)[0]
    assert first.query["cql"] == 'space in ("ENG", "HR") and type = page order by lastmodified asc'
    assert first.query["expand"] == "body.storage,version,space,ancestors"
    assert any(r.query.get("cursor") for r in searches(standin))
    source.refresh_from_db()
    assert source.checkpoint == {"spaces": ["ENG", "HR"], "when": standin.salaries.when.isoformat(),
                                 "ids": ["2003"]}


def test_edit_alone_is_reindexed_through_the_cql_window(source, standin):
    sync_now(source)
    untouched = set(Chunk.objects.filter(document__external_id="1001").values_list("id", "created_at"))
    standin.edit(standin.deploy, body="<p>Run the smoke tests and the canary before every release.</p>")
    before = len(searches(standin))
    run = sync_now(source)
    assert run.status == SyncRun.SUCCEEDED, (run.message, run.errors)
    assert run.counts["seen"] == 1 and run.counts["updated"] == 1
    assert run.counts["new"] == 0 and run.counts["unchanged"] == 0 and run.counts["deleted"] == 0
    pull = searches(standin, before)[0]
    assert 'and lastmodified >= now("-' in pull.query["cql"] and "expand" in pull.query
    assert Chunk.objects.filter(document__external_id="1002", text__contains="canary").exists()
    assert set(Chunk.objects.filter(document__external_id="1001").values_list("id", "created_at")) == untouched
    source.refresh_from_db()
    assert source.checkpoint["ids"] == ["1002"]
    again = sync_now(source)
    assert again.status == SyncRun.SUCCEEDED and again.counts["seen"] == 0


def test_renamed_page_keeps_its_document(source, standin):
    sync_now(source)
    doc_id = document_id_for(source.pk, "1001")
    standin.edit(standin.vpn, title="VPN from home")
    run = sync_now(source)
    assert run.status == SyncRun.SUCCEEDED, (run.message, run.errors)
    assert run.counts["seen"] == 1 and run.counts["updated"] == 1 and run.counts["new"] == 0
    doc = Document.objects.get(pk=doc_id)
    assert doc.external_id == "1001" and doc.title == "VPN from home"
    assert Document.objects.filter(source=source).count() == 4


def test_deleted_page_is_pruned(source, standin):
    sync_now(source)
    standin.trash(standin.deploy)
    run = sync_now(source)
    assert run.status == SyncRun.SUCCEEDED, (run.message, run.errors)
    assert run.counts["deleted"] == 1 and run.counts["seen"] == 0
    assert not Document.objects.filter(source=source, external_id="1002").exists()
    ids_listing = [r for r in searches(standin) if "expand" not in r.query]
    assert ids_listing and ids_listing[-1].query["cql"] == 'space in ("ENG", "HR") and type = page order by created asc'


def test_restrictions_reach_the_search(source, alice, bob):
    sync_now(source)
    query = {"query": "how many weeks of paid parental leave", "top_k": 10}
    alice_docs = {r["document_title"] for r in token_client(alice).post(SEARCH, query, format="json").json()["results"]}
    bob_docs = {r["document_title"] for r in token_client(bob).post(SEARCH, query, format="json").json()["results"]}
    assert "Parental leave" in alice_docs
    assert "Parental leave" not in bob_docs and "People policies" not in bob_docs
    assert bob_docs  # the unrestricted pages are his
    salaries = token_client(alice).post(SEARCH, {"query": "salary band C", "top_k": 10}, format="json").json()
    assert all("58,000" not in r["text"] for r in salaries["results"])  # restricted to a person: not indexed


def test_page_restricted_to_people_only_is_removed_on_full_sync(source, standin):
    sync_now(source)
    assert Document.objects.filter(source=source, external_id="1001").exists()
    standin.restrict(standin.vpn, users=["5b10ac8d82e05b22cc7d4ef5"])  # no new version: a full sync sees it
    run = sync_now(source, full=True)
    assert run.counts["deleted"] == 2 and run.counts["failed"] == 3  # 1001, 1002 below it, and 2003 as before
    assert not Document.objects.filter(source=source, external_id="1001").exists()
    assert not Document.objects.filter(source=source, external_id="1002").exists()  # inherits it


def test_wrong_api_token_is_a_clear_error(standin, roles):
    with pytest.raises(SourceError) as err:
        create_source(name="wiki", kind="confluence", config=conf_config(standin, api_token="not-the-token"))
    assert err.value.message == (f"space 'ENG': HTTP 401 from {standin.base}/wiki/rest/api/space/ENG (check email and "
                                 f"api_token: Confluence did not accept them for {conf.EMAIL}): Client must be "
                                 "authenticated to access this resource.")
    assert "not-the-token" not in err.value.message


def test_missing_space_is_named(standin, roles):
    with pytest.raises(SourceError) as err:
        create_source(name="wiki", kind="confluence", config=conf_config(standin, space_keys=["ENG", "LEGAL"]))
    assert err.value.message == (f"space 'LEGAL' not found at {standin.base} (or {conf.EMAIL} may not view it): "
                                 "No space found with key : LEGAL")


def test_rate_limit_with_retry_after_is_waited_out(source, standin):
    body, headers = ConfluenceStandin.rate_limited(retry_after=1)
    standin.fail(SEARCH_PATH, 429, body, headers=headers, times=1)
    run = sync_now(source)
    assert run.counts["new"] == 4, (run.message, run.errors)
    first = searches(standin)[:2]
    assert [r.status for r in first] == [429, 200]
    assert first[1].at - first[0].at >= 0.9  # Retry-After: 1 honoured, not the 0.01 s backoff


def test_persistent_server_error_fails_the_run_and_prunes_nothing(source, standin):
    sync_now(source)
    standin.trash(standin.vpn)
    standin.fail(SEARCH_PATH, 503, {"statusCode": 503, "message": "Service Unavailable"})
    run = sync_now(source)
    assert run.status == SyncRun.FAILED
    assert run.message == (f"listing failed after 0 documents: CQL search: HTTP 503 after 3 retries from "
                           f"{standin.base}{SEARCH_PATH}: Service Unavailable")
    assert Document.objects.filter(source=source, external_id="1001").exists()


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"base_url": "example.atlassian.net"}, "base_url"),
        ({"email": None}, "email"),
        ({"api_token": ""}, "api_token"),
        ({"space_keys": []}, "space_keys"),
        ({"space_keys": ['ENG") or space = "X']}, "space_keys"),
        ({"groups_map": ["hr"]}, "groups_map"),
        ({"timeout": 0}, "timeout"),
        ({"cql": "type = blogpost"}, "cql"),
    ],
)
def test_bad_confluence_settings_name_the_field(changes, field):
    config = {k: v for k, v in {**conf_config(type("S", (), {"base": "http://127.0.0.1:9"})), **changes}.items()
              if v is not None}
    with pytest.raises(ConfigError) as err:
        ConfluenceConnector.validate_config(config)
    assert err.value.field == field


def test_api_token_is_stored_encrypted(source):
    from apps.ingestion.secrets import is_secret

    source.refresh_from_db()
    assert is_secret(source.config["api_token"]) and conf.API_TOKEN not in str(source.config)
