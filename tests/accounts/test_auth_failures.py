"""Failed token authentications (issue 12 item 7): never logged under the name the caller wrote, rate-limited per
client address (429 with Retry-After), and aggregated so a flood of bogus tokens cannot grow the audit log."""

import itertools

import pytest
from rest_framework.test import APIClient

from apps.compliance.audit import verify_chain
from apps.compliance.models import AuditEvent

pytestmark = pytest.mark.django_db

_addresses = (f"198.51.100.{i}" for i in itertools.count(1))  # one fresh address per test: counts never leak


@pytest.fixture
def address():
    return next(_addresses)


def _bogus(address, key="admin"):
    client = APIClient(REMOTE_ADDR=address)
    client.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    return client.post("/api/v1/search/", {"query": "VPN"}, format="json")


def test_a_bogus_token_is_not_logged_as_an_actor(roles, address):
    response = _bogus(address, "admin")
    assert response.status_code == 401
    event = AuditEvent.objects.filter(action="auth.token_refused").latest("seq")
    assert event.actor_name == "" and event.actor_id is None
    assert event.data["key_prefix"] == "admin" and event.ip == address


def test_failures_are_limited_per_address_and_aggregated(roles, settings, address):
    settings.AUTH_FAILURE_THROTTLE_RATE = "3/min"
    codes = [_bogus(address, f"guess{i}").status_code for i in range(40)]
    assert codes[:3] == [401] * 3 and set(codes[3:]) == {429}
    refused = _bogus(address)
    assert refused.status_code == 429 and 0 < int(refused["Retry-After"]) <= 60
    assert "detail" in refused.json()
    rows = AuditEvent.objects.filter(ip=address)
    # 3 refusals recorded one by one, then the 38 throttled ones aggregated: rows at 1, 2, 4, 8, 16 and 32.
    assert rows.filter(action="auth.token_refused").count() == 3
    throttled = list(rows.filter(action="auth.failures_throttled").order_by("seq").values_list("data", flat=True))
    assert [d["throttled"] for d in throttled] == [1, 2, 4, 8, 16, 32]
    assert all(d["limit"] == 3 and d["window_seconds"] == 60 for d in throttled)
    assert verify_chain().ok
    # Another address is not affected.
    assert _bogus(next(_addresses)).status_code == 401


def test_a_valid_token_from_a_throttled_address_still_works(indexed_source, bob, settings, address):
    """The limit counts failures only: a legitimate client behind the same address is not locked out by a
    neighbour guessing tokens (a 256-bit key is not guessable anyway; the limit is there to bound the log)."""
    from apps.accounts.models import ApiToken

    settings.AUTH_FAILURE_THROTTLE_RATE = "1/min"
    assert [_bogus(address).status_code for _ in range(2)] == [401, 429]
    _, key = ApiToken.issue(bob)
    assert _bogus(address, key).status_code == 200
