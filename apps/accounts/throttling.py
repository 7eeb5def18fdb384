"""Rate limits on expensive endpoints, per user and per API token, kept in Redis so every gunicorn worker counts
the same requests. Over the limit: 429 with Retry-After (DRF's behaviour).

Written here rather than stacking two DRF ScopedRateThrottles, for speed and correctness: DRF's throttle reads the
history list, then writes it back (two round trips per limit, four per search, ~1.4 ms), and the read-then-write
is not atomic, so concurrent requests on several workers can each see room for one more and all pass. One Lua
script checks both limits and records the request in both only if both allow it: one round trip, atomic in Redis,
and a request refused by the token's limit does not spend the user's allowance. Each limit is a sliding log
(a sorted set of request times, Redis's own clock) that forgets requests older than the limit's period."""

import uuid

from django.core.cache import cache
from redis.exceptions import RedisError
from rest_framework.exceptions import APIException
from rest_framework.throttling import SimpleRateThrottle

from .models import ApiToken

# KEYS: one sorted set per limit. ARGV: a unique member for this request, then (limit, period in ms) per key.
# Returns 0 when the request is allowed (and recorded under every key), else the milliseconds until the fullest
# limit has room again.
_SLIDING_LOG = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local wait = 0
for i, key in ipairs(KEYS) do
  local limit, period = tonumber(ARGV[2 * i]), tonumber(ARGV[2 * i + 1])
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now - period)
  if redis.call('ZCARD', key) >= limit then
    local oldest = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
    wait = math.max(wait, tonumber(oldest[2]) + period - now, 1)
  end
end
if wait > 0 then
  return wait
end
for i, key in ipairs(KEYS) do
  redis.call('ZADD', key, now, ARGV[1])
  redis.call('PEXPIRE', key, tonumber(ARGV[2 * i + 1]))
end
return 0
"""

_script = None


class RateLimiterUnavailable(APIException):
    status_code = 503
    default_detail = "rate limiter unavailable"
    default_code = "rate_limiter_unavailable"


def _run(client, keys, args) -> int:
    """The script by EVALSHA (redis-py loads it on NOSCRIPT, e.g. after a Redis restart)."""
    global _script
    if _script is None:
        _script = client.register_script(_SLIDING_LOG)
    return int(_script(keys=keys, args=args, client=client))


# Failed authentications per client address: a fixed window that starts with the address's first failure.
# KEYS[1]: the address's counter. ARGV[1]: the window in ms. Returns {failures in the window, ms left in it}.
_FAILURE_WINDOW = """
local n = redis.call('INCR', KEYS[1])
if n == 1 then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
end
return {n, redis.call('PTTL', KEYS[1])}
"""

_failure_script = None


def count_auth_failure(address: str, period_s: int) -> tuple[int, float]:
    """Count one failed authentication from ``address``: (failures in its current window, seconds the window has
    left). One atomic round trip; a Redis that is down fails closed (503) like the other limits."""
    global _failure_script
    backend = cache._cache
    client = getattr(backend, "throttle_client", None)
    if client is None:
        client = backend.throttle_client = backend.get_client(write=True)
    if _failure_script is None:
        _failure_script = client.register_script(_FAILURE_WINDOW)
    key = cache.make_and_validate_key(f"throttle_auth_failures_{address}")
    try:
        count, left_ms = _failure_script(keys=[key], args=[period_s * 1000], client=client)
    except RedisError as exc:
        raise RateLimiterUnavailable(f"rate limiter unavailable: its Redis (CACHE_URL) did not answer "
                                     f"({type(exc).__name__}); try again shortly") from exc
    return int(count), max(int(left_ms), 1) / 1000


class ScopedThrottle(SimpleRateThrottle):
    """The view's ``throttle_scope`` rate counted per user (per client address when anonymous), and the rate of
    ``<throttle_scope>_token`` counted per API token when the request carries one. Views without a
    ``throttle_scope`` are not limited. Rates come from REST_FRAMEWORK's DEFAULT_THROTTLE_RATES (THROTTLE_RATES)."""

    def __init__(self):  # rates are looked up per request, from the view's scope
        self.wait_ms = 0

    def _limits(self, request, view) -> list[tuple[str, int, int]]:
        scope = getattr(view, "throttle_scope", None)
        if not scope:
            return []
        limits = []
        rate = self.THROTTLE_RATES.get(scope)
        if rate:
            user = request.user
            ident = f"user-{user.pk}" if user and user.is_authenticated else f"addr-{self.get_ident(request)}"
            limits.append((self.cache_format % {"scope": scope, "ident": ident}, *self.parse_rate(rate)))
        token_rate = self.THROTTLE_RATES.get(f"{scope}_token")
        if token_rate and isinstance(request.auth, ApiToken):
            key = self.cache_format % {"scope": f"{scope}_token", "ident": f"token-{request.auth.pk}"}
            limits.append((key, *self.parse_rate(token_rate)))
        return limits

    def allow_request(self, request, view):
        limits = self._limits(request, view)
        if not limits:
            return True
        backend = cache._cache  # Django's RedisCacheClient: one redis-py client kept on it (making one costs ~60 µs)
        client = getattr(backend, "throttle_client", None)
        if client is None:
            client = backend.throttle_client = backend.get_client(write=True)
        keys = [cache.make_and_validate_key(key) for key, _, _ in limits]
        args = [uuid.uuid4().hex]
        for _, num_requests, duration in limits:
            args += [num_requests, duration * 1000]
        try:
            self.wait_ms = _run(client, keys, args)
        except RedisError as exc:  # fail closed, and say why, rather than a 500 (or a hang: CACHE_TIMEOUT)
            raise RateLimiterUnavailable(f"rate limiter unavailable: its Redis (CACHE_URL) did not answer "
                                         f"({type(exc).__name__}); try again shortly") from exc
        return self.wait_ms == 0

    def wait(self):
        return self.wait_ms / 1000 if self.wait_ms else None
