"""Search and answer are rate-limited per user and per token, with 429 and Retry-After."""

import pytest
from rest_framework.throttling import SimpleRateThrottle

from apps.accounts.models import ApiToken
from tests.conftest import token_client

pytestmark = pytest.mark.django_db


@pytest.fixture
def rates(monkeypatch):
    """Low limits for one test. Counts cannot leak between tests: every test's users and tokens are new rows."""
    limits = dict(SimpleRateThrottle.THROTTLE_RATES)
    monkeypatch.setattr(SimpleRateThrottle, "THROTTLE_RATES", limits)
    return limits


def _search(client, url="/api/v1/search/"):
    return client.post(url, {"query": "VPN", "top_k": 1}, format="json")


def test_per_user_limit_applies_across_tokens(indexed_source, bob, rates):
    rates.update({"search": "3/min", "search_token": "100/min"})
    first, second = token_client(bob), token_client(bob)
    assert [_search(first).status_code for _ in range(2)] == [200, 200]
    assert _search(second).status_code == 200
    refused = _search(second)
    assert refused.status_code == 429
    assert int(refused["Retry-After"]) > 0 and "throttled" in refused.json()["detail"].lower()
    assert _search(first, "/api/v1/answer/").status_code == 429  # answer shares the limit


def test_per_token_limit_leaves_other_tokens_alone(indexed_source, bob, rates):
    rates.update({"search": "100/min", "search_token": "2/min"})
    first, second = token_client(bob), token_client(bob)
    assert [_search(first).status_code for _ in range(3)] == [200, 200, 429]
    assert _search(second).status_code == 200
    assert ApiToken.objects.filter(user=bob).count() == 2


def test_limits_are_per_user(indexed_source, alice, bob, rates):
    rates.update({"search": "1/min"})
    assert _search(token_client(bob)).status_code == 200
    assert _search(token_client(bob)).status_code == 429
    assert _search(token_client(alice)).status_code == 200
