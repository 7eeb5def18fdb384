"""access.load_identity: one query gives the request's user its groups and permissions, and access_scope and
has_capability then answer exactly as they do without it, with no further queries."""

import pytest
from django.contrib.auth.models import Group, Permission
from django.db import connection
from django.test.utils import CaptureQueriesContext

from apps.accounts.access import access_scope, load_identity
from apps.accounts.roles import CAPABILITIES, has_capability
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db


def _fresh(user):
    return type(user).objects.get(pk=user.pk)


@pytest.mark.parametrize("groups", [[], ["user"], ["readonly", "hr"], ["admin", "compliance_officer", "eng"]])
def test_same_answers_as_without_it(roles, groups):
    user = UserFactory(groups=groups)
    if groups:  # a permission given to the user directly, besides the groups'
        user.user_permissions.add(Permission.objects.get(codename="view_audit"))
    expected_scope = access_scope(_fresh(user))
    expected_caps = {c for c in CAPABILITIES if has_capability(_fresh(user), c)}
    expected_perms = _fresh(user).get_all_permissions()

    loaded = _fresh(user)
    with CaptureQueriesContext(connection) as queries:
        load_identity(loaded)
    assert len(queries) == 1
    with CaptureQueriesContext(connection) as queries:
        assert access_scope(loaded) == expected_scope
        assert {c for c in CAPABILITIES if has_capability(loaded, c)} == expected_caps
        assert loaded.get_all_permissions() == expected_perms
    assert len(queries) == 0
    assert ("view_audit" in {c for c in expected_caps}) == bool(groups)


def test_superuser_and_inactive_users(roles):
    boss = UserFactory(groups=["hr"])
    boss.is_superuser = True
    boss.save()
    loaded = _fresh(boss)
    load_identity(loaded)
    assert access_scope(loaded).unrestricted and has_capability(loaded, "configure_system")

    gone = UserFactory(groups=["admin"])
    gone.is_active = False
    gone.save()
    loaded = _fresh(gone)
    load_identity(loaded)
    assert access_scope(loaded).empty and not has_capability(loaded, "query")


def test_a_search_request_reads_groups_and_permissions_once(indexed_source, bob):
    """The token path: the token row, the identity, last-used; no separate group or permission queries."""
    from tests.conftest import token_client

    client = token_client(bob)
    with CaptureQueriesContext(connection) as queries:
        assert client.post("/api/v1/search/", {"query": "VPN", "top_k": 3}, format="json").status_code == 200
    sql = [q["sql"] for q in queries.captured_queries]
    assert sum('FROM "auth_user_groups"' in s for s in sql) == 1, sql
    assert not any('FROM "auth_permission"' in s or 'FROM "auth_group" INNER JOIN' in s for s in sql), sql
    assert Group.objects.filter(user=bob).exists()
