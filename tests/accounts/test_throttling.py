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


def test_a_request_refused_by_its_token_limit_does_not_spend_the_user_allowance(indexed_source, bob, rates):
    """Both limits are checked before either counts the request (one atomic script): a client hammering one
    token does not use up the user's other tokens."""
    rates.update({"search": "3/min", "search_token": "1/min"})
    first = token_client(bob)
    assert [_search(first).status_code for _ in range(3)] == [200, 429, 429]
    # 3 per user: the two 429s did not count, so two more tokens (one request each, their own limit) get through.
    assert [_search(token_client(bob)).status_code for _ in range(2)] == [200, 200]
    assert _search(token_client(bob)).status_code == 429  # now the user's limit is reached


def test_retry_after_is_the_time_until_the_oldest_request_leaves_the_window(indexed_source, bob, rates):
    rates.update({"search": "1/min"})
    client = token_client(bob)
    assert _search(client).status_code == 200
    refused = _search(client)
    assert refused.status_code == 429 and 55 <= int(refused["Retry-After"]) <= 60


def test_concurrent_requests_never_pass_more_than_the_limit(rates):
    """The check and the count are one Redis script, so requests racing on several threads (or gunicorn workers)
    cannot all see room for one more. DRF's own throttle reads, then writes the history and lets races through.
    Real Redis; the throttle is called directly, with requests standing in for 24 threads' worth of clients."""
    import threading
    import uuid as uuidlib
    from types import SimpleNamespace

    from apps.accounts.throttling import ScopedThrottle

    rates.update({"search": "30/min", "search_token": "1000/min"})
    user = SimpleNamespace(pk=f"race-{uuidlib.uuid4().hex}", is_authenticated=True)
    view = SimpleNamespace(throttle_scope="search")
    allowed, start = [], threading.Barrier(24)

    def client(n):
        request = SimpleNamespace(user=user, auth=ApiToken(pk=10**9 + n), META={"REMOTE_ADDR": "10.0.0.1"})
        start.wait()
        for _ in range(5):
            allowed.append(ScopedThrottle().allow_request(request, view))

    threads = [threading.Thread(target=client, args=(n,)) for n in range(24)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(allowed) == 120 and allowed.count(True) == 30


def test_views_without_a_scope_are_not_limited(bob, rates):
    rates.update({"search": "1/min"})
    client = token_client(bob)
    assert [client.get("/api/v1/sources/").status_code for _ in range(3)] == [200, 200, 200]


@pytest.mark.parametrize("server", ["refused", "silent"])
def test_a_rate_limiter_down_or_silent_answers_503_within_seconds(indexed_source, bob, settings, server):
    """The limits live in Redis (CACHE_URL). Nothing listening, or a socket that accepts and never answers: the
    search fails closed with 503 naming the rate limiter, within the cache's timeout, instead of a 500 or a hang."""
    import socket
    import time

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    if server == "silent":
        listener.listen(16)  # the kernel accepts connections; nobody ever reads or answers
    else:
        listener.close()
    client = token_client(bob)
    settings.CACHES = {"default": {**settings.CACHES["default"], "LOCATION": f"redis://127.0.0.1:{port}/0",
                                   "OPTIONS": {"socket_connect_timeout": 1.0, "socket_timeout": 1.0}}}
    try:
        started = time.monotonic()
        response = _search(client)
        took = time.monotonic() - started
    finally:
        listener.close()
    assert response.status_code == 503, response.content
    assert response.json()["detail"].startswith("rate limiter unavailable")
    assert took < 8, took
