"""API tokens: scope on top of the user's roles, expiry and revocation refused and audited, last-used kept;
and the brute-force guard on password sign-in."""

from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import call_command
from django.utils import timezone
from rest_framework.test import APIClient

from apps.accounts.models import ApiToken
from apps.compliance.models import AuditEvent
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db


def _client(key: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    return client


@pytest.fixture
def power(roles):
    return UserFactory(username="pat", groups=["power_user"])


def _new_source(client, corpus_dir, name):
    return client.post("/api/v1/sources/", {"name": name, "config": {"path": str(corpus_dir)}}, format="json")


def test_query_scope_retrieves_and_nothing_else(indexed_source, power, corpus_dir):
    _, key = ApiToken.issue(power, scope="query")
    client = _client(key)
    assert client.post("/api/v1/search/", {"query": "vpn"}, format="json").status_code == 200
    listing = client.get("/api/v1/sources/")
    assert listing.status_code == 403
    assert "scope ('query')" in listing.json()["detail"]
    assert client.get("/api/v1/documents/").status_code == 200  # reading what one may read is retrieval
    assert client.get(f"/api/v1/sync-runs/?source={indexed_source.pk}").status_code == 403
    assert _new_source(client, corpus_dir, "by-query-token").status_code == 403


def test_read_scope_reads_but_cannot_change(indexed_source, power, corpus_dir):
    _, key = ApiToken.issue(power, scope="read")
    client = _client(key)
    assert client.get("/api/v1/sources/").status_code == 200
    assert client.get("/api/v1/documents/").status_code == 200
    refused = _new_source(client, corpus_dir, "by-read-token")
    assert refused.status_code == 403 and "manage_sources" in refused.json()["detail"]
    assert client.post(f"/api/v1/sources/{indexed_source.pk}/sync/", {}, format="json").status_code == 403


def test_full_scope_is_bounded_by_the_role(indexed_source, power, bob, corpus_dir):
    _, key = ApiToken.issue(power, scope="full")
    assert _new_source(_client(key), corpus_dir, "by-full-token").status_code == 201
    _, weak = ApiToken.issue(bob, scope="full")  # role "user" cannot manage sources whatever the scope
    refused = _new_source(_client(weak), corpus_dir, "by-bob")
    assert refused.status_code == 403 and "Your role" in refused.json()["detail"]


@pytest.mark.parametrize("state", ["expired", "revoked"])
def test_expired_or_revoked_token_is_refused_and_audited(indexed_source, bob, state):
    token, key = ApiToken.issue(bob)
    if state == "expired":
        ApiToken.objects.filter(pk=token.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    else:
        ApiToken.objects.filter(pk=token.pk).update(revoked_at=timezone.now())
    response = _client(key).post("/api/v1/search/", {"query": "vpn"}, format="json")
    assert response.status_code == 401
    assert response.json()["detail"] == "Invalid, expired or revoked token."
    event = AuditEvent.objects.filter(action="auth.token_refused").latest("id")
    assert event.data["key_prefix"] == key[:10]


def test_every_use_updates_last_used(indexed_source, bob):
    token, key = ApiToken.issue(bob)
    assert token.last_used_at is None
    _client(key).post("/api/v1/search/", {"query": "vpn"}, format="json")
    token.refresh_from_db()
    first = token.last_used_at
    assert first is not None
    _client(key).post("/api/v1/search/", {"query": "vpn"}, format="json")
    token.refresh_from_db()
    assert token.last_used_at > first


def test_create_token_command_takes_a_scope(indexed_source, bob):
    out = StringIO()
    call_command("create_token", "bob", "--scope", "query", stdout=out)
    key = out.getvalue().strip()
    assert ApiToken.objects.get(key_prefix=key[:10]).scope == "query"
    assert _client(key).post("/api/v1/search/", {"query": "vpn"}, format="json").status_code == 200
    assert _client(key).get("/api/v1/sources/").status_code == 403


# --- brute-force guard on password sign-in (django-axes) ---------------------------------------------------


def _sign_in(client, password, ip="203.0.113.7"):
    return client.post("/admin/login/?next=/admin/", {"username": "ops", "password": password}, REMOTE_ADDR=ip)


def test_repeated_wrong_passwords_lock_the_account_from_that_address(client, settings, roles):
    settings.AXES_FAILURE_LIMIT = 3
    UserFactory(username="ops", is_staff=True, password="the right password 42")
    for _ in range(2):
        assert _sign_in(client, "guess").status_code == 200  # the form again, with an error
    locked = _sign_in(client, "guess")
    assert locked.status_code == 429
    assert int(locked["Retry-After"]) == int(settings.AXES_COOLOFF_TIME * 3600)
    # Locked means locked: the right password from that address is refused too...
    assert _sign_in(client, "the right password 42").status_code == 429
    assert AuditEvent.objects.filter(action="auth.locked_out", data__username="ops").exists()
    assert AuditEvent.objects.filter(action="auth.login_failed", data__username="ops").count() >= 3
    # ...while the same account from another address is not (no one can lock someone else out).
    assert _sign_in(client, "the right password 42", ip="198.51.100.9").status_code == 302


def test_a_successful_sign_in_resets_the_count(client, settings, roles):
    settings.AXES_FAILURE_LIMIT = 3
    UserFactory(username="ops", is_staff=True, password="the right password 42")
    for _ in range(2):
        _sign_in(client, "guess")
    assert _sign_in(client, "the right password 42").status_code == 302
    client.logout()
    for _ in range(2):
        assert _sign_in(client, "guess").status_code == 200
