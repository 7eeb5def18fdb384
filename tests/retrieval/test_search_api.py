"""POST /api/v1/search/: cited results, permissions inside the search, bad input answered with 400s."""

import pytest
from rest_framework.test import APIClient

from apps.compliance.models import AuditEvent
from apps.ingestion.models import Chunk
from tests.conftest import token_client

pytestmark = pytest.mark.django_db
URL = "/api/v1/search/"


def test_search_returns_cited_ranked_chunks(indexed_source, bob):
    response = token_client(bob).post(URL, {"query": "how do I connect to the VPN", "top_k": 3}, format="json")
    assert response.status_code == 200, response.content
    body = response.json()
    # The contract's keys, extended (never renamed) by pagination and the mode actually served.
    assert set(body) == {"results", "took_ms", "offset", "next_offset", "served_mode"}
    assert body["offset"] == 0 and body["next_offset"] == 3 and body["served_mode"] == "hybrid"
    top = body["results"][0]
    assert set(top) >= {"chunk_id", "document_id", "document_title", "source", "uri", "text", "score"}
    assert top["document_title"] == "Connecting to the VPN"
    assert top["source"] == "handbook" and top["uri"].endswith("/it/vpn.md")
    scores = [r["score"] for r in body["results"]]
    assert scores == sorted(scores, reverse=True) and len(scores) == 3
    chunk = Chunk.objects.get(pk=top["chunk_id"])
    assert str(chunk.document_id) == top["document_id"] and chunk.text == top["text"]


def test_search_is_audited_with_the_returned_chunks(indexed_source, bob):
    response = token_client(bob).post(URL, {"query": "hotel cap in London", "top_k": 2}, format="json")
    event = AuditEvent.objects.filter(action="search").latest("seq")
    assert event.actor_id == bob.pk
    assert event.data["chunk_ids"] == [r["chunk_id"] for r in response.json()["results"]]
    assert "hotel" not in str(event.data)  # the query itself is kept only as a keyed hash


def test_restricted_documents_reach_only_their_group(indexed_source, alice, bob):
    query = {"query": "how many weeks of paid parental leave", "top_k": 10}
    alice_docs = {r["document_title"] for r in token_client(alice).post(URL, query, format="json").json()["results"]}
    bob_docs = {r["document_title"] for r in token_client(bob).post(URL, query, format="json").json()["results"]}
    assert "Parental leave" in alice_docs
    assert "Parental leave" not in bob_docs
    assert bob_docs  # bob still gets the public documents, top_k is filled from what he may read


def test_superuser_reads_everything(indexed_source, admin_user):
    results = token_client(admin_user).post(URL, {"query": "parental leave", "top_k": 100}, format="json").json()
    assert {r["document_title"] for r in results["results"]} >= {"Parental leave", "Connecting to the VPN"}


def test_source_filter(indexed_source, bob):
    client = token_client(bob)
    hits = client.post(URL, {"query": "VPN", "filters": {"source": "handbook"}}, format="json").json()["results"]
    assert hits
    none = client.post(URL, {"query": "VPN", "filters": {"source": ["other"]}}, format="json").json()["results"]
    assert none == []


def test_no_role_no_search(indexed_source, charlie):
    response = token_client(charlie).post(URL, {"query": "VPN"}, format="json")
    assert response.status_code == 403 and "query" in response.json()["detail"]


def test_unauthenticated_is_refused(indexed_source):
    assert APIClient().post(URL, {"query": "VPN"}, format="json").status_code == 401
    bad = APIClient()
    bad.credentials(HTTP_AUTHORIZATION="Token rs_not-a-real-key")
    response = bad.post(URL, {"query": "VPN"}, format="json")
    assert response.status_code == 401 and "Invalid" in response.json()["detail"]


def test_revoked_and_expired_tokens_are_refused(indexed_source, bob):
    from datetime import timedelta

    from django.utils import timezone

    from apps.accounts.models import ApiToken

    for change in ({"revoked_at": timezone.now()}, {"expires_at": timezone.now() - timedelta(seconds=1)}):
        token, key = ApiToken.issue(bob)
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Token {key}")
        assert client.post(URL, {"query": "VPN"}, format="json").status_code == 200
        ApiToken.objects.filter(pk=token.pk).update(**change)
        assert client.post(URL, {"query": "VPN"}, format="json").status_code == 401


def test_token_use_updates_last_used(indexed_source, bob):
    from apps.accounts.models import ApiToken

    client = token_client(bob)
    assert ApiToken.objects.get(user=bob).last_used_at is None
    client.post(URL, {"query": "VPN"}, format="json")
    assert ApiToken.objects.get(user=bob).last_used_at is not None


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"query": ""}, "query"),
        ({"query": "   "}, "query"),
        ({}, "query"),
        ({"query": "x" * 20000}, "query"),
        ({"query": "VPN", "top_k": 0}, "top_k"),
        ({"query": "VPN", "top_k": 100000}, "top_k"),
        ({"query": "VPN", "top_k": "many"}, "top_k"),
        ({"query": "VPN", "filters": {"colour": "red"}}, "filters.colour"),
        ({"query": "VPN", "filters": "source"}, "filters"),
        ({"query": "VPN", "filters": {"source": [True]}}, "filters.source"),
        ({"query": ["VPN"]}, "query"),
        ({"query": "VPN", "filters": {"classification": ["secret"]}}, "filters.classification"),
        ({"query": "VPN", "filters": {"classification": []}}, "filters.classification"),
        ({"query": "VPN", "filters": {"classification": [3]}}, "filters.classification"),
        ({"query": "VPN", "filters": {"modified_after": "yesterday"}}, "filters.modified_after"),
        ({"query": "VPN", "filters": {"modified_after": "2024-13-01"}}, "filters.modified_after"),
        ({"query": "VPN", "filters": {"modified_before": 20240101}}, "filters.modified_before"),
        ({"query": "VPN", "filters": {"modified_after": "2024-02-01", "modified_before": "2024-01-01"}},
         "filters.modified_before"),
        ({"query": "VPN", "offset": -1}, "offset"),
        ({"query": "VPN", "offset": "next"}, "offset"),
        ({"query": "VPN", "offset": 95, "top_k": 10}, "offset"),
    ],
)
def test_bad_requests_get_400_naming_the_field(indexed_source, bob, payload, field):
    response = token_client(bob).post(URL, payload, format="json")
    assert response.status_code == 400, response.content
    assert response.json()["detail"].startswith(f"{field}:")


def test_malformed_json_gets_400(indexed_source, bob):
    response = token_client(bob).post(URL, data='{"query": "VPN",', content_type="application/json")
    assert response.status_code == 400
    assert "JSON parse error" in response.json()["detail"]


def test_search_command_prints_the_api_results(indexed_source, bob, capsys):
    import json

    from django.core.management import call_command

    api = token_client(bob).post(URL, {"query": "laptop encryption", "top_k": 4}, format="json").json()
    call_command("search", "laptop encryption", "--user", "bob", "--top-k", "4", "--json")
    printed = json.loads(capsys.readouterr().out)
    assert [r["chunk_id"] for r in printed["results"]] == [r["chunk_id"] for r in api["results"]]


def test_search_command_pages_and_filters_like_the_api(indexed_source, bob, capsys):
    import json

    from django.core.management import call_command

    body = {"query": "policy", "top_k": 2, "offset": 1, "filters": {"classification": ["internal"],
                                                                     "modified_after": "2000-01-01"}}
    api = token_client(bob).post(URL, body, format="json").json()
    assert api["results"]
    call_command("search", "policy", "--user", "bob", "--top-k", "2", "--offset", "1", "--classification",
                 "internal", "--modified-after", "2000-01-01", "--json")
    printed = json.loads(capsys.readouterr().out)
    assert [r["chunk_id"] for r in printed["results"]] == [r["chunk_id"] for r in api["results"]]
    assert printed["next_offset"] == api["next_offset"] and printed["offset"] == 1


def test_search_command_names_a_bad_filter(indexed_source, bob):
    from django.core.management import CommandError, call_command

    with pytest.raises(CommandError, match="filters.classification: unknown classification 'secret'"):
        call_command("search", "policy", "--user", "bob", "--classification", "secret")


def test_openapi_documents_filters_and_pages(indexed_source, admin_user):
    from django.test import Client

    client = Client()
    client.force_login(admin_user)
    schema = client.get("/api/schema/", HTTP_ACCEPT="application/json").json()
    components = schema["components"]["schemas"]
    assert {"offset", "filters"} <= set(components["SearchRequestRequest"]["properties"])
    assert {"classification", "modified_after", "modified_before", "source"} <= set(
        components["SearchFiltersRequest"]["properties"])
    assert {"next_offset", "offset", "served_mode", "results", "took_ms"} <= set(
        components["SearchResponse"]["properties"])


def test_pdf_results_cite_their_page(indexed_source, bob, corpus_dir):
    from tests.conftest import sync_now, write_corpus
    from tests.ingestion.test_parsing import make_pdf

    pages = [["Mooring inspection schedule for the Avonmouth pontoons."],
             ["Anodes on the pontoon chains are replaced every eighteen months by the marine crew."]]
    write_corpus(corpus_dir, {"manuals/moorings.pdf": make_pdf(pages, title="Mooring manual")})
    assert sync_now(indexed_source).items_new == 1
    body = token_client(bob).post(URL, {"query": "how often are pontoon chain anodes replaced", "top_k": 1},
                                  format="json").json()
    top = body["results"][0]
    assert top["document_title"] == "Mooring manual" and top["page"] == 2
    vpn = token_client(bob).post(URL, {"query": "VPN gateway", "top_k": 1}, format="json").json()["results"][0]
    assert vpn["page"] is None  # not a paged format
