"""OpenID Connect sign-in against a real OpenID Provider (npm oidc-provider, started by the test), through the
real authorization-code flow: a browser-like requests.Session, Django's live server, the provider's login form."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import requests
from django.contrib.auth import get_user_model
from django.contrib.sessions.backends.db import SessionStore

from apps.compliance.models import AuditEvent
from tests.accounts.oidc_idp import CLIENT_ID, CLIENT_SECRET, OidcIdp

pytestmark = pytest.mark.django_db(transaction=True)

REPO = Path(__file__).resolve().parent.parent.parent
GROUP_MAP = {"Engineering": "power_user", "People": "hr"}
ALICE = {"password": "alice-idp-password", "sub": "00u-alice-1", "email": "alice@example.com",
         "preferred_username": "alice.sso", "name": "Alice Example", "groups": ["Engineering", "People", "Unknown"]}


@pytest.fixture(scope="session")
def oidc_idp(live_server, tmp_path_factory):
    idp = OidcIdp(tmp_path_factory.mktemp("oidc-idp"), redirect_uri=f"{live_server.url}/auth/complete/oidc/")
    idp.start()
    yield idp
    idp.stop()


@pytest.fixture
def oidc(settings, oidc_idp, roles):
    """OIDC switched on for this test, as OIDC_ISSUER / OIDC_CLIENT_ID / ... would switch it on in settings."""
    oidc_idp.set_accounts({"alice": dict(ALICE)})
    settings.SOCIAL_AUTH_OIDC_OIDC_ENDPOINT = oidc_idp.issuer
    settings.SOCIAL_AUTH_OIDC_KEY = CLIENT_ID
    settings.SOCIAL_AUTH_OIDC_SECRET = CLIENT_SECRET
    settings.SOCIAL_AUTH_OIDC_SCOPE = ["openid", "profile", "email", "groups"]
    settings.AUTHENTICATION_BACKENDS = [*settings.AUTHENTICATION_BACKENDS, "apps.accounts.sso.oidc.OidcAuth"]
    settings.SSO_GROUP_MAP = GROUP_MAP
    return oidc_idp


class Browser:
    """A requests.Session playing the browser: starts sign-in on our site, fills in the IdP's form."""

    def __init__(self, base_url: str, idp: OidcIdp):
        self.base, self.idp = base_url, idp
        self.http = requests.Session()

    def start(self, next_url: str = "") -> requests.Response:
        """Our sign-in page, its form posted (CSRF-protected) to /auth/login/oidc/, followed to the IdP's form."""
        page = self.http.get(f"{self.base}/auth/oidc/login/", params={"next": next_url} if next_url else None,
                             timeout=10)
        assert page.status_code == 200, page.text[:500]
        action = re.search(r'<form id="oidc-login" method="post" action="([^"]+)"', page.text).group(1)
        fields = dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', page.text))
        assert action == "/auth/login/oidc/" and fields["csrfmiddlewaretoken"]
        response = self.http.post(f"{self.base}{action}", data=fields, timeout=30)
        assert response.status_code == 200, response.text[:500]
        assert response.url.startswith(f"{self.idp.issuer}/interaction/"), response.url
        assert 'name="password"' in response.text
        return response

    def submit(self, form: requests.Response, login: str, password: str) -> requests.Response:
        return self.http.post(f"{form.url.split('?')[0]}/login", data={"login": login, "password": password},
                              timeout=30)

    def cancel(self, form: requests.Response) -> requests.Response:
        return self.http.post(f"{form.url.split('?')[0]}/abort", timeout=30)

    def sign_in(self, login: str, password: str) -> requests.Response:
        return self.submit(self.start(), login, password)

    def signed_in_user_id(self):
        key = self.http.cookies.get("sessionid")
        return SessionStore(session_key=key).get("_auth_user_id") if key else None


def callback_response(response: requests.Response) -> requests.Response:
    """Our /auth/complete/oidc/ answer within a followed redirect chain."""
    for item in [*response.history, response]:
        if "/auth/complete/oidc/" in item.url:
            return item
    raise AssertionError(f"the flow never reached the callback: {[r.url for r in response.history]} -> "
                         f"{response.url}")


def refusals():
    return list(AuditEvent.objects.filter(action="auth.sso_refused").order_by("seq"))


@pytest.fixture
def browser(live_server, oidc):
    return Browser(live_server.url, oidc)


# --- the positive flow --------------------------------------------------------------------------------------


def test_sign_in_creates_the_user_with_mapped_groups_and_audits(browser):
    response = browser.sign_in("alice", ALICE["password"])
    callback = callback_response(response)
    assert callback.status_code == 302, callback.text[:500]
    assert callback.headers["Location"] == "/admin/"

    user = get_user_model().objects.get(social_auth__provider="oidc", social_auth__uid=ALICE["sub"])
    assert user.username == "alice.sso" and user.email == "alice@example.com"
    assert not user.has_usable_password()
    # "Unknown" has no local group and no mapping: an identity provider never creates groups here.
    assert set(user.groups.values_list("name", flat=True)) == {"power_user", "hr"}
    assert str(browser.signed_in_user_id()) == str(user.pk)

    login = AuditEvent.objects.get(action="auth.login", actor=user)
    assert login.data["backend"] == "apps.accounts.sso.oidc.OidcAuth"
    granted = AuditEvent.objects.get(action="auth.sso_groups", actor=user)
    assert granted.data == {"provider": "oidc", "added": ["hr", "power_user"], "removed": []}
    assert refusals() == []


def test_group_removed_at_the_idp_is_removed_at_next_sign_in(browser, oidc, live_server):
    callback = callback_response(browser.sign_in("alice", ALICE["password"]))
    assert callback.status_code == 302
    user = get_user_model().objects.get(social_auth__uid=ALICE["sub"])
    assert set(user.groups.values_list("name", flat=True)) == {"power_user", "hr"}
    from django.contrib.auth.models import Group

    user.groups.add(Group.objects.get(name="finance"))  # granted by hand by an administrator: not the IdP's

    oidc.set_accounts({"alice": {**ALICE, "groups": ["Engineering"]}})
    again = Browser(live_server.url, oidc)  # a new browser: a new session at the IdP too
    assert callback_response(again.sign_in("alice", ALICE["password"])).status_code == 302

    assert set(user.groups.values_list("name", flat=True)) == {"power_user", "finance"}
    assert get_user_model().objects.filter(social_auth__provider="oidc").count() == 1  # the same account
    removed = AuditEvent.objects.filter(action="auth.sso_groups", actor=user).order_by("seq").last()
    assert removed.data == {"provider": "oidc", "added": [], "removed": ["hr"]}
    assert AuditEvent.objects.filter(action="auth.login", actor=user).count() == 2


def test_wrong_password_at_the_idp_never_reaches_us(browser):
    form = browser.start()
    response = browser.submit(form, "alice", "not-her-password")
    assert response.status_code == 401 and "Invalid user name or password" in response.text
    assert not get_user_model().objects.filter(social_auth__provider="oidc").exists()


# --- refusals: a 4xx page and an audit event, never a 500 ---------------------------------------------------


@pytest.mark.parametrize(("query", "status", "reason"), [
    ("code=stolen-code&state=forged-state", 403, "session_context_missing"),  # no sign-in began with this state
    ("code=stolen-code", 400, "missing_parameter"),
], ids=["forged state", "missing state"])
def test_callback_with_forged_or_missing_state_is_refused(browser, query, status, reason):
    browser.start()  # a real sign-in is under way in this browser: the session holds the real state
    response = browser.http.get(f"{browser.base}/auth/complete/oidc/?{query}", timeout=30, allow_redirects=False)
    assert response.status_code == status
    assert "Sign-in refused" in response.text
    assert browser.signed_in_user_id() is None
    (event,) = refusals()
    assert event.data["provider"] == "oidc" and event.data["status"] == status
    assert event.data["reason"] == reason and event.data["stage"] == "callback"
    assert not get_user_model().objects.filter(social_auth__provider="oidc").exists()


def test_callback_without_any_sign_in_under_way_is_refused(live_server, oidc):
    response = requests.get(f"{live_server.url}/auth/complete/oidc/?code=x&state=y", timeout=30,
                            allow_redirects=False)
    assert 400 <= response.status_code < 500
    assert [event.data["provider"] for event in refusals()] == ["oidc"]


def test_error_returned_by_the_idp_is_refused_and_audited(browser):
    form = browser.start()
    response = browser.cancel(form)  # the IdP sends the browser back with error=access_denied
    callback = callback_response(response)
    assert "error=access_denied" in callback.url
    assert callback.status_code == 403
    assert "Sign-in refused" in callback.text
    (event,) = refusals()
    assert event.data["provider"] == "oidc" and event.data["error"] == "AuthCanceled"
    assert browser.signed_in_user_id() is None


def test_wrong_client_secret_is_refused_and_audited(browser, settings):
    settings.SOCIAL_AUTH_OIDC_SECRET = "not-the-registered-secret"
    response = browser.sign_in("alice", ALICE["password"])  # the IdP accepts alice, then refuses our client
    callback = callback_response(response)
    assert "code=" in callback.url
    assert 400 <= callback.status_code < 500, callback.status_code
    (event,) = refusals()
    assert event.data["stage"] == "token_exchange" and event.data["provider_code"] == "invalid_client"
    assert "InvalidClientAuth" in browser.idp.log()  # the provider itself refused our client's credentials
    assert not get_user_model().objects.filter(social_auth__provider="oidc").exists()


def test_sign_in_returns_to_the_page_asked_for_and_only_to_this_site(browser, live_server, oidc):
    form = browser.start(next_url="/admin/auth/user/?from=sso")
    callback = callback_response(browser.submit(form, "alice", ALICE["password"]))
    assert callback.status_code == 302 and callback.headers["Location"] == "/admin/auth/user/?from=sso"

    elsewhere = Browser(live_server.url, oidc)
    callback = callback_response(elsewhere.submit(elsewhere.start(next_url="https://evil.example/"), "alice",
                                                  ALICE["password"]))
    assert callback.status_code == 302 and callback.headers["Location"] == "/admin/"


def test_sign_in_page_is_404_when_oidc_is_off(client, settings):
    assert "apps.accounts.sso.oidc.OidcAuth" not in settings.AUTHENTICATION_BACKENDS
    response = client.get("/auth/oidc/login/")
    assert response.status_code == 404 and b"not configured" in response.content


def test_begin_needs_post_with_csrf(live_server, oidc):
    """Starting a sign-in is a CSRF-protected POST (social-auth), so no page can start one behind a user's back."""
    response = requests.post(f"{live_server.url}/auth/login/oidc/", timeout=30, allow_redirects=False)
    assert response.status_code == 403
    assert requests.get(f"{live_server.url}/auth/login/oidc/", timeout=30).status_code == 405


# --- settings from the environment ---------------------------------------------------------------------------


def _settings_probe(env: dict) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if not k.startswith("OIDC_")}
    full.update(env)
    code = ("from django.conf import settings as s; print(s.AUTHENTICATION_BACKENDS); "
            "print(getattr(s, 'SOCIAL_AUTH_OIDC_OIDC_ENDPOINT', None), getattr(s, 'SOCIAL_AUTH_OIDC_SECRET', None),"
            " getattr(s, 'SOCIAL_AUTH_OIDC_SCOPE', None))")
    return subprocess.run([sys.executable, "manage.py", "shell", "-c", code], cwd=REPO, env=full,
                          capture_output=True, text=True, timeout=120)


def test_oidc_backend_is_on_only_when_configured(tmp_path):
    off = _settings_probe({"DATA_DIR": str(tmp_path)})
    assert off.returncode == 0, off.stderr
    assert "OidcAuth" not in off.stdout

    secret = tmp_path / "oidc-secret"
    secret.write_text("from-a-file\n")
    on = _settings_probe({"DATA_DIR": str(tmp_path), "OIDC_ISSUER": "https://idp.example.com/", "OIDC_CLIENT_ID": "x",
                          "OIDC_CLIENT_SECRET_FILE": str(secret), "OIDC_SCOPES": "openid,email,groups"})
    assert on.returncode == 0, on.stderr
    assert "'apps.accounts.sso.oidc.OidcAuth'" in on.stdout
    assert "https://idp.example.com from-a-file ['openid', 'email', 'groups']" in on.stdout

    half = _settings_probe({"DATA_DIR": str(tmp_path), "OIDC_ENDPOINT": "https://idp.example.com"})
    assert half.returncode != 0
    assert re.search(r"OIDC_CLIENT_ID and OIDC_CLIENT_SECRET", half.stderr)
