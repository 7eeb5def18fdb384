from drf_spectacular.extensions import OpenApiAuthenticationExtension


class ApiTokenScheme(OpenApiAuthenticationExtension):
    target_class = "apps.accounts.authentication.ApiTokenAuthentication"
    name = "tokenAuth"

    def get_security_definition(self, auto_schema):
        return {
            "type": "apiKey",
            "in": "header",
            "name": "Authorization",
            "description": 'An API token from `manage.py create_token USER`, sent as "Token KEY".',
        }


class SessionIdentityScheme(OpenApiAuthenticationExtension):
    """DRF's session authentication under its own name (apps.accounts.authentication.SessionIdentityAuthentication):
    the same cookie scheme drf-spectacular documents for SessionAuthentication."""

    target_class = "apps.accounts.authentication.SessionIdentityAuthentication"
    name = "cookieAuth"

    def get_security_definition(self, auto_schema):
        from django.conf import settings

        return {"type": "apiKey", "in": "cookie", "name": settings.SESSION_COOKIE_NAME}
