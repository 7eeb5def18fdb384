"""Object permissions on sources and documents: the rule, the sync, the rewrite on every change, the API, the admin,
and how fast a grant or a revoke reaches the index (the real embedded index of this process, refreshed from the
IndexChange outbox as a web process does)."""

import time

import pytest
from django.contrib.auth.models import Group
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from apps.accounts.access import access_scope
from apps.accounts.models import ConnectorAcl, DocumentRestriction, SourceUserObjectPermission
from apps.compliance.models import AuditEvent
from apps.ingestion import grants
from apps.ingestion.models import Document, DocumentAccess, Source, document_id_for
from apps.retrieval.models import IndexChange
from tests.conftest import admin_form_data, sync_now, token_client
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db(transaction=False)

HR_DOC = "hr/parental-leave.md"
EXPENSES = "policies/expenses.txt"
PARENTAL_QUERY = "twenty-six weeks of fully paid parental leave"


def _doc(source, external_id) -> Document:
    return Document.objects.get(pk=document_id_for(source.pk, external_id))


def _readers(document) -> set:
    return set(DocumentAccess.objects.filter(document=document).values_list("principal", flat=True))


def _titles(client, query=PARENTAL_QUERY, mode="lexical"):
    response = client.post("/api/v1/search/", {"query": query, "top_k": 10, "mode": mode}, format="json")
    assert response.status_code == 200, response.content
    return {r["document_title"] for r in response.json()["results"]}


@pytest.fixture
def manager(roles):
    # A superuser: these tests manage grants on documents and sources that a grant or a restriction has just
    # narrowed away from a power user, and grants need read access to the object (issue 12 item 4,
    # tests/accounts/test_grant_capability.py covers the power user).
    return UserFactory(username="manager", groups=["power_user"], is_superuser=True)


# --- the rule -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("acl", "source", "restricted", "document", "expected"),
    [
        (None, [], False, [], ["authenticated"]),
        (None, ["group:hr"], False, [], ["group:hr"]),
        (None, ["user:7"], False, [], ["user:7"]),  # a user grant alone makes the source private to its readers
        (["hr"], ["group:finance"], False, [], ["group:hr"]),  # the connector's ACL wins over the source
        ([], ["group:finance"], False, [], ["authenticated"]),  # an ACL naming nobody: every signed-in user
        (["hr"], [], False, ["user:3"], ["group:hr", "user:3"]),  # a document grant widens
        (["hr"], [], True, ["user:3"], ["user:3"]),  # a restriction drops what is inherited
        (None, [], True, [], []),  # restricted without grants: superusers only
    ],
)
def test_effective_principals(acl, source, restricted, document, expected):
    assert grants.effective_principals(acl_groups=acl, source_readers=source, restricted=restricted,
                                       document_readers=document) == expected


# --- the sync and the rewrite ---------------------------------------------------------------------------------


def test_sync_records_connector_acls_and_keeps_grants(indexed_source, bob, manager):
    hr, expenses = _doc(indexed_source, HR_DOC), _doc(indexed_source, EXPENSES)
    assert ConnectorAcl.objects.get(pk=hr.pk).groups == ["hr"]
    assert not ConnectorAcl.objects.filter(pk=expenses.pk).exists()  # inherits the source's readers

    grants.grant(hr, user=bob, actor=manager)
    grants.restrict(expenses, actor=manager)
    assert _readers(hr) == {"group:hr", f"user:{bob.pk}"}
    assert _readers(expenses) == set()

    run = sync_now(indexed_source)  # the sync computes the same readers: nothing to rewrite
    assert run.status == "succeeded" and run.items_updated == 0, (run.items_updated, run.errors)
    assert _readers(hr) == {"group:hr", f"user:{bob.pk}"}
    assert _readers(expenses) == set()


def test_sync_sees_a_grant_changed_while_it_runs(indexed_source, bob, manager):
    """A running sync re-reads the grants when they changed (the version check) instead of writing stale readers."""
    from apps.ingestion.grants import SyncAccess

    expenses = _doc(indexed_source, EXPENSES)
    view = SyncAccess(indexed_source.pk)
    assert view.principals(expenses.pk, None) == ["authenticated"]
    grants.restrict(expenses, actor=manager)
    view._checked -= grants.VERSION_CHECK_SECONDS  # a second has passed
    assert view.principals(expenses.pk, None) == []


def test_reader_group_changes_rewrite_access_and_log_index_changes(indexed_source):
    hr, expenses = _doc(indexed_source, HR_DOC), _doc(indexed_source, EXPENSES)
    finance = Group.objects.get(name="finance")
    before = IndexChange.objects.order_by("-id").values_list("id", flat=True).first()
    indexed_source.reader_groups.add(finance)
    assert _readers(expenses) == {"group:finance"}
    assert _readers(hr) == {"group:hr"}  # the sidecar still decides for hr/
    logged = set(IndexChange.objects.filter(id__gt=before).values_list("document_id", flat=True))
    assert expenses.pk in logged and hr.pk not in logged
    finance.readable_sources.remove(indexed_source)  # the reverse side of the relation too
    assert _readers(expenses) == {"authenticated"}


def test_source_grants_widen_and_narrow(indexed_source, alice, bob, manager):
    expenses, hr = _doc(indexed_source, EXPENSES), _doc(indexed_source, HR_DOC)
    grants.grant(indexed_source, user=bob, actor=manager)
    # The source named no readers (everyone); now it names bob, so it is bob's alone. hr/ keeps its sidecar.
    assert _readers(expenses) == {f"user:{bob.pk}"}
    assert _readers(hr) == {"group:hr"}
    grants.grant(indexed_source, group=Group.objects.get(name="hr"), actor=manager)
    assert _readers(expenses) == {f"user:{bob.pk}", "group:hr"}
    grants.revoke(indexed_source, user=bob, actor=manager)
    grants.revoke(indexed_source, group=Group.objects.get(name="hr"), actor=manager)
    assert _readers(expenses) == {"authenticated"}
    with pytest.raises(grants.GrantNotFound):
        grants.revoke(indexed_source, user=bob, actor=manager)
    events = AuditEvent.objects.filter(action__startswith="access.").order_by("seq")
    actions = list(events.values_list("action", "data"))
    assert [a for a, _ in actions] == ["access.grant", "access.grant", "access.revoke", "access.revoke"]
    assert actions[0][1]["user"] == "bob" and actions[0][1]["documents_changed"] == 3


def test_migration_backfill_keeps_sidecar_acls(indexed_source, manager):
    """Documents indexed before this feature have no recorded ACL: the migration infers it from their readers."""
    from importlib import import_module

    from django.apps import apps as django_apps

    migration = import_module("apps.accounts.migrations.0004_object_permissions")
    ConnectorAcl.objects.all().delete()
    migration.backfill_connector_acls(django_apps, None)
    hr = _doc(indexed_source, HR_DOC)
    assert ConnectorAcl.objects.get(pk=hr.pk).groups == ["hr"]
    assert ConnectorAcl.objects.count() == 1
    indexed_source.reader_groups.add(Group.objects.get(name="finance"))
    assert _readers(hr) == {"group:hr"}


# --- revocation: at once through the database, and within seconds in the index --------------------------------


def test_grant_and_revoke_latency_through_the_index(indexed_source, bob, manager, settings, capsys):
    from apps.retrieval.index import get_index

    hr = _doc(indexed_source, HR_DOC)
    client = token_client(bob)
    assert hr.title not in _titles(client)

    started = time.perf_counter()
    grants.grant(hr, user=bob, actor=manager)
    while hr.title not in _titles(client):
        assert time.perf_counter() - started < 60, "the grant did not reach the index within 60 s"
        time.sleep(0.05)
    grant_visible = time.perf_counter() - started

    # Freeze the index (no refresh due for an hour), so it still holds bob as a reader after the revoke.
    settings.INDEX_REFRESH_SECONDS = 3600
    index = get_index()
    grants.revoke(hr, user=bob, actor=manager)
    stale_hits = index.search(None, access_scope(bob), 10, query=PARENTAL_QUERY, mode="lexical")
    assert hr.pk in {Document.objects.filter(chunks__pk=h.chunk_id).values_list("pk", flat=True).first()
                     for h in stale_hits}, "the index should still be stale here"
    started = time.perf_counter()
    assert hr.title not in _titles(client)  # the database re-check fails closed at once
    assert client.get(f"/api/v1/documents/{hr.pk}/").status_code == 404
    api_invisible = time.perf_counter() - started

    settings.INDEX_REFRESH_SECONDS = 1.0
    started = time.perf_counter()
    while index.search(None, access_scope(bob), 10, query=PARENTAL_QUERY, mode="lexical"):
        assert time.perf_counter() - started < 60, "the revoke did not reach the index within 60 s"
        time.sleep(0.05)
    index_invisible = time.perf_counter() - started
    with capsys.disabled():
        print(f"\n[latency] grant->visible in search {grant_visible * 1000:.0f} ms; revoke->invisible: API "
              f"{api_invisible * 1000:.0f} ms (first request), index {index_invisible * 1000:.0f} ms")


def test_leaving_a_group_hides_at_once(indexed_source, alice):
    hr = _doc(indexed_source, HR_DOC)
    client = token_client(alice)
    assert hr.title in _titles(client)
    before = IndexChange.objects.count()
    alice.groups.remove(Group.objects.get(name="hr"))
    assert hr.title not in _titles(client)
    assert client.get(f"/api/v1/documents/{hr.pk}/").status_code == 404
    assert IndexChange.objects.count() == before  # no rewrite was needed


def test_a_running_sync_is_followed_up_after_a_grant_change(indexed_source, manager, bob):
    from apps.ingestion.models import SyncRun

    run = SyncRun.objects.create(source=indexed_source, status=SyncRun.RUNNING)
    from django.utils import timezone

    SyncRun.objects.filter(pk=run.pk).update(heartbeat_at=timezone.now())
    with pytest.MonkeyPatch.context() as mp:  # the on-commit hook runs in this test's transaction
        mp.setattr("django.db.transaction.on_commit", lambda fn, *a, **k: fn())
        grants.grant(indexed_source, user=bob, actor=manager)
    assert SyncRun.objects.get(pk=run.pk).follow_up


# --- API -----------------------------------------------------------------------------------------------------


def test_grants_api(indexed_source, manager, alice, bob, charlie):
    client = token_client(manager)
    url = f"/api/v1/sources/{indexed_source.pk}/grants/"
    assert token_client(bob).get(url).status_code == 403  # no manage_sources
    assert Client().get(url).status_code in (401, 403)

    for body, field in [({"user": "nobody"}, "user"), ({"group": "nobody"}, "group"), ({}, "user"),
                        ({"user": "bob", "group": "hr"}, "user"), ({"colour": "red"}, "colour"),
                        ({"user": ["bob"]}, "user")]:
        response = client.post(url, body, format="json")
        assert response.status_code == 400, (body, response.content)
        assert response.json()["detail"].startswith(f"{field}:"), response.json()
    assert not SourceUserObjectPermission.objects.exists()

    response = client.post(url, {"user": "bob"}, format="json")
    assert response.status_code == 201 and response.json()["user"] == "bob"
    assert client.post(url, {"user": "bob"}, format="json").status_code == 200  # already granted
    assert client.post(url, {"group": "hr"}, format="json").status_code == 201
    listing = client.get(url).json()
    assert [g["user"] for g in listing["users"]] == ["bob"] and listing["users"][0]["granted_by"] == "manager"
    assert [g["group"] for g in listing["groups"]] == ["hr"] and listing["reader_groups"] == []

    assert client.delete(f"{url}?user=bob").status_code == 204
    response = client.delete(url, {"user": "bob"}, format="json")
    assert response.status_code == 404 and "holds no grant" in response.json()["detail"]
    assert client.delete(url, {"group": "hr"}, format="json").status_code == 204
    assert client.get("/api/v1/sources/99999/grants/").status_code == 404
    events = AuditEvent.objects.filter(action__startswith="access.").order_by("seq")
    actions = list(events.values_list("action", "actor_name"))
    assert actions == [("access.grant", "manager"), ("access.grant", "manager"), ("access.revoke", "manager"),
                       ("access.revoke", "manager")]


def test_document_grants_and_restriction_api(indexed_source, manager, alice, bob):
    client = token_client(manager)
    hr, expenses = _doc(indexed_source, HR_DOC), _doc(indexed_source, EXPENSES)
    bob_client = token_client(bob)
    assert bob_client.get(f"/api/v1/documents/{hr.pk}/").status_code == 404

    assert client.post(f"/api/v1/documents/{hr.pk}/grants/", {"user": "bob"}, format="json").status_code == 201
    detail = bob_client.get(f"/api/v1/documents/{hr.pk}/")
    assert detail.status_code == 200
    # The document's own serializer names no other user, group or principal.
    assert "user:" not in detail.content.decode() and "group:" not in detail.content.decode()
    assert '"bob"' not in detail.content.decode() and "grants" not in detail.json()

    response = client.post(f"/api/v1/documents/{expenses.pk}/restriction/", {"reason": "legal hold"}, format="json")
    assert response.status_code == 201 and response.json()["reason"] == "legal hold"
    assert client.post(f"/api/v1/documents/{expenses.pk}/restriction/", {}, format="json").status_code == 200
    assert bob_client.get(f"/api/v1/documents/{expenses.pk}/").status_code == 404
    assert client.post(f"/api/v1/documents/{expenses.pk}/grants/", {"user": "alice"}, format="json").status_code == 201
    listing = client.get(f"/api/v1/documents/{expenses.pk}/grants/").json()
    assert listing["restriction"]["reason"] == "legal hold" and listing["principals"] == [f"user:{alice.pk}"]
    assert token_client(alice).get(f"/api/v1/documents/{expenses.pk}/").status_code == 200
    assert client.delete(f"/api/v1/documents/{expenses.pk}/restriction/").status_code == 204
    assert client.delete(f"/api/v1/documents/{expenses.pk}/restriction/").status_code == 404
    assert bob_client.get(f"/api/v1/documents/{expenses.pk}/").status_code == 200

    for bad in ("not-a-uuid", "00000000-0000-0000-0000-000000000000"):
        response = client.get(f"/api/v1/documents/{bad}/grants/")
        assert response.status_code == 404 and response.json()["detail"] == "No document with this id."
    assert token_client(bob).post(f"/api/v1/documents/{hr.pk}/restriction/", {}).status_code == 403
    long_reason = {"reason": "x" * 501}
    response = client.post(f"/api/v1/documents/{hr.pk}/restriction/", long_reason, format="json")
    assert response.status_code == 400 and response.json()["detail"].startswith("reason:")
    assert not DocumentRestriction.objects.filter(document=hr).exists()


def _count(client, url):
    with CaptureQueriesContext(connection) as queries:
        response = client.get(url)
    assert response.status_code == 200, response.content
    return len(queries), response.json()


def test_grant_listings_and_document_list_do_not_grow_with_grants(indexed_source, manager, bob):
    hr = _doc(indexed_source, HR_DOC)
    client = token_client(manager)
    urls = [f"/api/v1/sources/{indexed_source.pk}/grants/", f"/api/v1/documents/{hr.pk}/grants/"]
    grants.grant(indexed_source, user=bob, actor=manager)
    grants.grant(hr, user=bob, actor=manager)
    few = [_count(client, url)[0] for url in urls]
    few_list = _count(token_client(bob), "/api/v1/documents/")[0]
    for i in range(6):
        user = UserFactory(username=f"reader{i}", groups=["user"])
        group = Group.objects.create(name=f"team{i}")
        for target in (indexed_source, hr):
            grants.grant(target, user=user, actor=manager)
            grants.grant(target, group=group, actor=manager)
    many = [_count(client, url) for url in urls]
    assert len(many[0][1]["users"]) == 7 and len(many[1][1]["groups"]) == 6  # the listings really grew
    assert [n for n, _ in many] == few
    assert _count(token_client(bob), "/api/v1/documents/")[0] == few_list


# --- admin ---------------------------------------------------------------------------------------------------


def test_admin_who_can_read_and_grant_inline(indexed_source, admin_user, alice, bob, charlie):
    hr = _doc(indexed_source, HR_DOC)
    grants.grant(hr, user=bob, actor=admin_user)
    client = Client()
    client.force_login(admin_user)
    page = client.get(f"/admin/ingestion/document/{hr.pk}/change/").content.decode()
    assert "Who can read this document" in page
    assert "member of group hr (named by the connector&#x27;s access list for this document)" in page
    assert "named directly (granted on this document)" in page
    assert "superuser: reads every document" in page
    assert ">charlie<" not in page  # charlie reads nothing here

    # A grant added through the source page's inline goes through the service: readers, outbox and audit follow.
    expenses = _doc(indexed_source, EXPENSES)
    url = f"/admin/ingestion/source/{indexed_source.pk}/change/"
    form = admin_form_data(client, url)
    form.update({"user_grants-TOTAL_FORMS": "1", "user_grants-0-user": str(charlie.pk)})
    response = client.post(url, form)
    assert response.status_code == 302, _errors(response)
    assert _readers(expenses) == {f"user:{charlie.pk}"}
    assert AuditEvent.objects.filter(action="access.grant", data__user="charlie").exists()


def _errors(response):
    context = getattr(response, "context", None)
    if not context:
        return response.content[:500]
    return [context["adminform"].form.errors, [f.formset.errors for f in context["inline_admin_formsets"]]]


def test_source_group_inline_is_audited_and_revocable(indexed_source, admin_user, bob):
    Source.objects.get(pk=indexed_source.pk)
    grants.grant(indexed_source, user=bob, actor=admin_user)
    client = Client()
    client.force_login(admin_user)
    url = f"/admin/ingestion/source/{indexed_source.pk}/change/"
    form = admin_form_data(client, url)
    row = SourceUserObjectPermission.objects.get()
    form.update({"user_grants-0-id": str(row.pk), "user_grants-0-content_object": str(indexed_source.pk),
                 "user_grants-0-user": str(bob.pk), "user_grants-0-DELETE": "on"})
    response = client.post(url, form)
    assert response.status_code == 302, _errors(response)
    assert not SourceUserObjectPermission.objects.exists()
    assert _readers(_doc(indexed_source, EXPENSES)) == {"authenticated"}
    assert AuditEvent.objects.filter(action="access.revoke", data__user="bob").exists()


def test_weaviate_follows_grants_through_the_outbox(indexed_source, bob, manager, settings, capsys):
    """The same outbox drives the Weaviate backend (here the wire-level STAND-IN in tests/retrieval/weaviate_standin,
    NOT a real Weaviate): a grant and a revoke reach its principals filter."""
    from apps.retrieval.index import get_index
    from tests.retrieval.weaviate_standin import WeaviateStandIn

    server = WeaviateStandIn().start()
    try:
        settings.VECTOR_BACKEND = "weaviate"
        settings.WEAVIATE_URL, settings.WEAVIATE_GRPC_PORT = server.url, server.grpc_port
        get_index.cache_clear()
        index = get_index()
        index.refresh()  # imports every chunk: a new collection
        hr = _doc(indexed_source, HR_DOC)
        hr_chunks = {str(c) for c in hr.chunks.values_list("pk", flat=True)}

        def bob_sees():
            hits = index.search(None, access_scope(bob), 10, query="parental leave", mode="lexical")
            return bool(hr_chunks & {str(h.chunk_id) for h in hits})

        assert not bob_sees()
        latencies = {}
        for step, expected in ((lambda: grants.grant(hr, user=bob, actor=manager), True),
                               (lambda: grants.revoke(hr, user=bob, actor=manager), False)):
            started = time.perf_counter()
            step()
            while bob_sees() != expected:
                assert time.perf_counter() - started < 60, "Weaviate did not follow within 60 s"
                time.sleep(0.05)
            latencies["grant" if expected else "revoke"] = time.perf_counter() - started
        assert server.unknown_calls == []
        with capsys.disabled():
            print(f"\n[latency, weaviate stand-in] grant->visible {latencies['grant'] * 1000:.0f} ms, "
                  f"revoke->invisible {latencies['revoke'] * 1000:.0f} ms")
    finally:
        index = get_index()
        if hasattr(index, "close"):
            index.close()
        get_index.cache_clear()
        server.stop()


def test_deleting_a_group_removes_what_it_was_granted(indexed_source, manager):
    expenses, hr = _doc(indexed_source, EXPENSES), _doc(indexed_source, HR_DOC)
    team = Group.objects.create(name="team")
    indexed_source.reader_groups.add(team)
    grants.grant(hr, group=team, actor=manager)
    assert _readers(expenses) == {"group:team"} and _readers(hr) == {"group:hr", "group:team"}
    team.delete()
    # A group created later under the same name must not inherit its readers.
    assert _readers(expenses) == {"authenticated"} and _readers(hr) == {"group:hr"}
