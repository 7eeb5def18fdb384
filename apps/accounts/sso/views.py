"""Pages of the sign-in flow that are ours rather than social-auth's."""

from django.conf import settings
from django.http import HttpResponse
from django.shortcuts import render
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import ensure_csrf_cookie


def sso_error(request):
    """Where a refused single sign-on lands: a 4xx page with the reason, never a 500 (the reason is audited by
    whoever refused it)."""
    message = request.session.pop("sso_error", "") or "Single sign-on was refused."
    return render(request, "accounts/sso_error.html", {"message": message}, status=403)


def _login_page(request, backend: str, idp: str = ""):
    """The sign-in button: social-auth starts a sign-in only on a CSRF-protected POST to /auth/login/BACKEND/, so
    this page carries that form; ``next`` is kept only when it points back to this site."""
    next_url = request.GET.get("next", "")
    if not url_has_allowed_host_and_scheme(next_url, allowed_hosts={request.get_host()}):
        next_url = ""
    return render(request, "accounts/sso_login.html", {"backend": backend, "idp": idp, "next": next_url})


@ensure_csrf_cookie
@never_cache
def saml_login(request):
    """The SAML sign-in button: social-auth starts a sign-in only on a CSRF-protected POST, so this page carries the
    form that posts to /auth/login/saml/."""
    from .saml import is_configured

    if not is_configured():
        return render(request, "accounts/sso_error.html", {"message": "SAML sign-in is not configured."}, status=404)
    return _login_page(request, "saml", idp=settings.SAML_IDP_NAME)


@never_cache
def saml_metadata(request):
    """This service provider's metadata (entity id, ACS URL, signing certificate) for the IdP's administrator."""
    from social_django.utils import load_strategy

    from .saml import SamlAuth, is_configured, sp_metadata

    if not is_configured():
        return HttpResponse("SAML sign-in is not configured.\n", status=404, content_type="text/plain")
    backend = SamlAuth(load_strategy(request), redirect_uri=reverse("social:complete", args=[SamlAuth.name]))
    metadata, errors = sp_metadata(backend)
    if errors:
        return HttpResponse("SP metadata is invalid: " + ", ".join(errors) + "\n", status=503,
                            content_type="text/plain")
    return HttpResponse(metadata, content_type="application/samlmetadata+xml")


@ensure_csrf_cookie
@never_cache
def oidc_login(request):
    """The OpenID Connect sign-in button: a form that posts (with its CSRF token) to /auth/login/oidc/."""
    if "apps.accounts.sso.oidc.OidcAuth" not in settings.AUTHENTICATION_BACKENDS:
        return render(request, "accounts/sso_error.html", {"message": "OpenID Connect sign-in is not configured."},
                      status=404)
    return _login_page(request, "oidc")
