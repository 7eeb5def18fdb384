"""Rate limits on expensive endpoints, per user and per API token, kept in the shared cache (Redis) so every
gunicorn worker counts the same requests. Over the limit: 429 with Retry-After (DRF's behaviour)."""

from rest_framework.throttling import ScopedRateThrottle

from .models import ApiToken


class UserScopedThrottle(ScopedRateThrottle):
    """The view's ``throttle_scope`` rate, counted per user (per client address when anonymous)."""


class TokenScopedThrottle(ScopedRateThrottle):
    """The rate of ``<throttle_scope>_token``, counted per API token; requests without a token are not counted."""

    def allow_request(self, request, view):
        if not isinstance(request.auth, ApiToken):
            return True
        self.scope = f"{getattr(view, 'throttle_scope', '')}_token"
        if self.scope not in self.THROTTLE_RATES:
            return True
        self.rate = self.get_rate()
        self.num_requests, self.duration = self.parse_rate(self.rate)
        return super(ScopedRateThrottle, self).allow_request(request, view)

    def get_cache_key(self, request, view):
        return self.cache_format % {"scope": self.scope, "ident": f"token-{request.auth.pk}"}
