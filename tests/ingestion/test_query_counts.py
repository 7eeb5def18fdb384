"""List endpoints issue the same number of queries whatever the number of rows (no N+1)."""

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from apps.ingestion.models import Document, DocumentAccess, Source, SyncRun, document_id_for
from tests.conftest import token_client
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db


def _documents(source, n, start=0):
    for i in range(start, start + n):
        doc = Document.objects.create(id=document_id_for(source.pk, f"d{i}"), source=source, external_id=f"d{i}",
                                      uri=f"file:///d{i}", title=f"D{i}", content_type="text/plain",
                                      content_hash=f"{i:064x}")
        DocumentAccess.objects.create(document=doc, principal="authenticated")


def _count(client, url):
    with CaptureQueriesContext(connection) as queries:
        response = client.get(url)
    assert response.status_code == 200, response.content
    return len(queries), response.json()


@pytest.mark.parametrize("url", ["/api/v1/documents/", "/api/v1/sources/", "/api/v1/sync-runs/"])
def test_list_queries_do_not_grow_with_rows(roles, url, tmp_path):
    user = UserFactory(username="lister", groups=["power_user"])
    client = token_client(user)
    sources = [Source.objects.create(name=f"s{i}", config={"path": str(tmp_path)}) for i in range(2)]
    for source in sources:
        _documents(source, 2)
        SyncRun.objects.create(source=source)
    few, body = _count(client, url)
    assert body["count"] >= 2
    more = [Source.objects.create(name=f"t{i}", config={"path": str(tmp_path)}) for i in range(8)]
    for i, source in enumerate(more):
        _documents(source, 3, start=100 + i * 10)
        SyncRun.objects.create(source=source)
        source.reader_groups.add(*user.groups.all())
    many, body = _count(client, url)
    assert body["count"] > 8  # the second listing really has more rows
    assert many == few


def _grant_listing_counts(client, url, target, grantees):
    """Queries for the listing with the first third of the grantees granted, then with all of them."""
    from apps.ingestion import grants

    third = len(grantees) // 3
    counts = []
    for batch in (grantees[:third], grantees[third:]):
        for user, group in batch:
            grants.grant(target, user=user, group=group)
        queries, body = _count(client, url)
        counts.append((queries, len(body["users"]) + len(body["groups"])))
    return counts


@pytest.mark.parametrize("target", ["source", "document"])
def test_grant_listings_do_not_grow_with_grants(roles, target, tmp_path):
    """GET sources/{id}/grants/ and documents/{id}/grants/ for N and 3N grants (users and groups, each with a
    granting user): the same number of queries."""
    from django.contrib.auth.models import Group

    # A superuser: the first user grant narrows the source to its grantees, and grants need read access to it.
    manager = UserFactory(username="granter", groups=["power_user"], is_superuser=True)
    client = token_client(manager)
    source = Source.objects.create(name="granted", config={"path": str(tmp_path)})
    _documents(source, 1)
    obj = source if target == "source" else Document.objects.get(source=source)
    url = f"/api/v1/{target}s/{obj.pk}/grants/"
    grantees = []
    for i in range(6):
        grantees.append((UserFactory(username=f"reader{i}"), None))
        grantees.append((None, Group.objects.create(name=f"team{i}")))
    (few, listed_few), (many, listed_many) = _grant_listing_counts(client, url, obj, grantees)
    assert (listed_few, listed_many) == (4, 12)  # the second listing really has three times the grants
    assert many == few
