from django.utils import timezone
from rest_framework import exceptions
from rest_framework.authentication import BaseAuthentication, get_authorization_header

from .models import ApiToken, hash_token


class ApiTokenAuthentication(BaseAuthentication):
    """`Authorization: Token KEY` (or `Bearer KEY`) against hashed ApiToken rows."""

    keywords = (b"token", b"bearer")

    def authenticate(self, request):
        parts = get_authorization_header(request).split()
        if not parts or parts[0].lower() not in self.keywords:
            return None
        if len(parts) != 2:
            raise exceptions.AuthenticationFailed("Invalid token header: expected 'Token KEY'.")
        try:
            key = parts[1].decode()
        except UnicodeError as exc:
            raise exceptions.AuthenticationFailed("Invalid token header: the key is not valid text.") from exc
        token = ApiToken.objects.usable().select_related("user").filter(key_hash=hash_token(key)).first()
        if token is None or not token.user.is_active:
            from apps.compliance.audit import client_ip, record

            record("auth.token_refused", actor=key[:10], ip=client_ip(request), data={"key_prefix": key[:10]})
            raise exceptions.AuthenticationFailed("Invalid, expired or revoked token.")
        ApiToken.objects.filter(pk=token.pk).update(last_used_at=timezone.now())
        return token.user, token

    def authenticate_header(self, request):
        return "Token"


def token_of(request):
    """The ApiToken a request authenticated with, or None (session sign-in, or no sign-in)."""
    auth = getattr(request, "auth", None)
    return auth if isinstance(auth, ApiToken) else None
