"""OpenID Connect sign-in (authorization-code flow with PKCE) through social-auth.

Configured from the environment in settings (``OIDC_ENDPOINT`` or ``OIDC_ISSUER``, ``OIDC_CLIENT_ID``,
``OIDC_CLIENT_SECRET``, ``OIDC_SCOPES``, ``OIDC_GROUPS_CLAIM``), which become social-auth's
``SOCIAL_AUTH_OIDC_*`` settings. Endpoints and signing keys come from the provider's discovery document; the ID
token's signature, issuer, audience, expiry, nonce and ``at_hash`` are checked by social-core.

Sign-in at ``POST /auth/login/oidc/``; the provider returns to ``/auth/complete/oidc/``, which is the redirect URI
to register with it. The groups claim is read by :func:`apps.accounts.sso.pipeline.sync_idp_groups`.
"""

from django.conf import settings
from social_core.backends.open_id_connect import OpenIdConnectAuth


class OidcAuth(OpenIdConnectAuth):
    name = "oidc"
    title = "Single sign-on (OpenID Connect)"
    DEFAULT_USE_PKCE = True  # S256; harmless for a provider that ignores it, required by many
    DEFAULT_SCOPE = ["openid", "profile", "email"]

    def get_scope(self):
        # OIDC_SCOPES is the whole list (settings), not an addition to the defaults: some providers refuse a
        # scope they do not know, others need an extra one ("groups") to send the groups claim.
        return list(self.setting("SCOPE", None) or self.DEFAULT_SCOPE)

    def user_data(self, access_token, *args, **kwargs):
        """UserInfo, plus the groups claim from the validated ID token when only the ID token carries it
        (Azure AD / Entra ID, Keycloak with "add to ID token" only)."""
        data = super().user_data(access_token, *args, **kwargs) or {}
        claim = getattr(settings, "OIDC_GROUPS_CLAIM", "groups")
        if claim not in data and self.id_token and claim in self.id_token:
            data[claim] = self.id_token[claim]
        return data
