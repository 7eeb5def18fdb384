"""Issue 12 item 4 (c): grants and restrictions need the grant_access capability AND read access to the object;
an object the caller cannot read answers exactly like a missing one."""

import pytest

from apps.accounts.models import DocumentRestriction, DocumentUserObjectPermission, SourceUserObjectPermission
from apps.ingestion.models import Document, document_id_for
from apps.ingestion.sources import create_source
from tests.conftest import sync_now, token_client, write_corpus
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db

MISSING = "00000000-0000-0000-0000-000000000000"


@pytest.fixture
def hr_only(roles, tmp_path):
    root = write_corpus(tmp_path / "hr", {"salaries.txt": "Salary bands for 2027 are frozen."})
    source = create_source(name="hr-only", config={"path": str(root)}, groups=["hr"])
    assert sync_now(source).status == "succeeded"
    return source, Document.objects.get(pk=document_id_for(source.pk, "salaries.txt"))


@pytest.fixture
def pat(roles):
    return UserFactory(username="pat", groups=["power_user"])  # manage_sources and grant_access, not in hr


def test_power_user_cannot_grant_themself_an_unreadable_document(hr_only, pat):
    source, document = hr_only
    client = token_client(pat)
    for url in (f"/api/v1/documents/{document.pk}/grants/", f"/api/v1/sources/{source.pk}/grants/"):
        response = client.post(url, {"user": "pat"}, format="json")
        assert response.status_code == 404, (url, response.content)
    assert client.post(f"/api/v1/documents/{document.pk}/restriction/", {}, format="json").status_code == 404
    assert not DocumentUserObjectPermission.objects.exists() and not SourceUserObjectPermission.objects.exists()
    assert not DocumentRestriction.objects.exists()
    assert token_client(pat).get(f"/api/v1/documents/{document.pk}/").status_code == 404  # still unreadable


def test_grants_listing_does_not_reveal_that_a_document_exists(hr_only, pat):
    _, document = hr_only
    client = token_client(pat)
    hidden = client.get(f"/api/v1/documents/{document.pk}/grants/")
    missing = client.get(f"/api/v1/documents/{MISSING}/grants/")
    assert hidden.status_code == missing.status_code == 404
    assert hidden.json() == missing.json()


def test_grant_needs_the_grant_access_capability(hr_only, alice, roles):
    _, document = hr_only
    # alice reads the document (hr) but her role (user) holds no grant_access.
    assert token_client(alice).get(f"/api/v1/documents/{document.pk}/").status_code == 200
    response = token_client(alice).post(f"/api/v1/documents/{document.pk}/grants/", {"user": "alice"},
                                        format="json")
    assert response.status_code == 403 and "grant_access" in response.json()["detail"]
    viewer = UserFactory(username="vera", groups=["readonly", "hr"])
    assert token_client(viewer).get(f"/api/v1/documents/{document.pk}/grants/").status_code == 403


def test_a_reader_with_grant_access_may_share(hr_only, bob, roles):
    source, document = hr_only
    hank = UserFactory(username="hank", groups=["power_user", "hr"])
    client = token_client(hank)
    assert client.post(f"/api/v1/documents/{document.pk}/grants/", {"user": "bob"}, format="json").status_code == 201
    assert token_client(bob).get(f"/api/v1/documents/{document.pk}/").status_code == 200
    assert client.get(f"/api/v1/sources/{source.pk}/grants/").status_code == 200


def test_admin_role_holds_grant_access_but_not_read_everything(hr_only, roles):
    _, document = hr_only
    ada = UserFactory(username="ada", groups=["admin"])
    assert token_client(ada).get(f"/api/v1/documents/{document.pk}/grants/").status_code == 404
    UserFactory(username="ada", groups=["hr"])
    assert token_client(ada).get(f"/api/v1/documents/{document.pk}/grants/").status_code == 200
