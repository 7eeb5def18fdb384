"""A refused single sign-on becomes a 4xx page and an audit event, never a 500.

social-auth raises its exceptions (forged or missing state, an error the identity provider returned such as
``access_denied``, a token endpoint refusing our client, an ID token that fails validation, ...) out of the
``/auth/complete/<backend>/`` view. This middleware answers them at that URL, with the status saying whose fault
it was, and records ``auth.sso_refused`` naming the provider, the reason (social-auth's error code) and the stage;
the message shown is social-auth's generic one, never the provider's own text or a token.
"""

import logging

from django.shortcuts import render
from django.utils.cache import add_never_cache_headers
from social_core.exceptions import AuthInputError, AuthProviderError, SocialAuthBaseException
from social_django.middleware import SocialAuthExceptionMiddleware

from apps.compliance.audit import client_ip, record

logger = logging.getLogger(__name__)

# The provider could not be reached or answered with a server error: not the user's fault, and not ours.
_UPSTREAM_CODES = {"timeout": 504, "connection_failed": 502, "tls_error": 502, "unavailable": 502}


class SsoRefusalMiddleware(SocialAuthExceptionMiddleware):
    def raise_exception(self, request, exception):
        return False  # always answered here: a traceback page is never the answer to a forged callback

    def get_error_status(self, request, exception) -> int:
        if isinstance(exception, AuthProviderError) and exception.code in _UPSTREAM_CODES:
            return _UPSTREAM_CODES[exception.code]
        if isinstance(exception, AuthInputError):
            return 400
        return 403

    def process_exception(self, request, exception):
        if not isinstance(exception, SocialAuthBaseException) or getattr(request, "social_strategy", None) is None:
            return None
        backend = getattr(getattr(request, "backend", None), "name", "") or ""
        status = self.get_error_status(request, exception)
        details = {
            "provider": backend,
            "reason": exception.code,  # social-auth's error code, e.g. session_context_missing
            "error": type(exception).__name__,
            "stage": exception.stage,
            "status": status,
        }
        if exception.provider_code:
            details["provider_code"] = str(exception.provider_code)[:100]
        logger.warning("single sign-on refused: %s", details)
        record("auth.sso_refused", actor="", ip=client_ip(request), data=details)
        response = render(request, "accounts/sso_error.html", {"message": str(exception)}, status=status)
        add_never_cache_headers(response)
        return response
