"""Authentication backends of our own."""

from axes.backends import AxesStandaloneBackend


class SignInThrottleBackend(AxesStandaloneBackend):
    """django-axes' brute-force guard for every sign-in that arrives over HTTP (admin form, LDAP, API session).

    Axes refuses an ``authenticate()`` call made without a request; such calls come only from inside the
    process (management commands, Django's test client), never from a client who could guess passwords, so they
    pass through here unthrottled instead of failing."""

    def authenticate(self, request=None, *args, **kwargs):
        if request is None:
            return None
        return super().authenticate(request, *args, **kwargs)
