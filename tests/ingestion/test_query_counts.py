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
