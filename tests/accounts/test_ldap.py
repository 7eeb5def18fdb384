"""LDAP / Active Directory sign-in against a real OpenLDAP server (Debian's slapd, started per test): the admin
login form and django.contrib.auth.authenticate(), directory groups mapped to local groups, refusals, an
unreachable directory, and the brute-force lock-out applying to directory accounts."""

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import ldap
import pytest
from django.contrib.auth import authenticate, get_user_model
from django.test import RequestFactory
from django_auth_ldap.config import GroupOfNamesType, LDAPSearch

from apps.compliance.models import AuditEvent
from tests.accounts.ldap_server import GROUPS, PEOPLE, SERVICE_DN, SERVICE_PASSWORD, LdapServer, free_port

pytestmark = pytest.mark.django_db

REPO = Path(__file__).resolve().parent.parent.parent
BACKEND = "apps.accounts.sso.ldap.DirectoryBackend"
ALICE_PASSWORD = "alice-directory-password"
BOB_PASSWORD = "bob-directory-password"


@pytest.fixture
def directory(tmp_path):
    server = LdapServer(tmp_path / "slapd").start()
    server.add_user("alice", ALICE_PASSWORD, "Alice", "Liddell", "alice@example.com")
    server.add_user("bob", BOB_PASSWORD, "Bob", "Builder", "bob@example.com")
    server.add_user("carol", "carol-directory-password", "Carol", "Danvers", "carol@example.com")
    server.add_group("engineering", ["alice", "bob"])
    server.add_group("people-team", ["alice", "carol"])  # groupOfNames needs a member left after alice goes
    server.add_group("admin-users", ["alice"])
    yield server
    server.stop()


def use_directory(settings, uri: str, timeout: float = 5.0):
    """What the LDAP block of settings builds from LDAP_SERVER_URI, LDAP_BIND_DN, ... (see the last test)."""
    settings.AUTH_LDAP_SERVER_URI = uri
    settings.AUTH_LDAP_BIND_DN = SERVICE_DN
    settings.AUTH_LDAP_BIND_PASSWORD = SERVICE_PASSWORD
    settings.AUTH_LDAP_USER_SEARCH = LDAPSearch(PEOPLE, ldap.SCOPE_SUBTREE, "(uid=%(user)s)")
    settings.AUTH_LDAP_USER_ATTR_MAP = {"first_name": "givenName", "last_name": "sn", "email": "mail"}
    settings.AUTH_LDAP_GROUP_TYPE = GroupOfNamesType(name_attr="cn")
    settings.AUTH_LDAP_GROUP_SEARCH = LDAPSearch(GROUPS, ldap.SCOPE_SUBTREE, "(objectClass=groupOfNames)")
    settings.AUTH_LDAP_USER_FLAGS_BY_GROUP = {"is_staff": f"cn=admin-users,{GROUPS}"}
    settings.AUTH_LDAP_CONNECTION_OPTIONS = {ldap.OPT_NETWORK_TIMEOUT: timeout, ldap.OPT_TIMEOUT: timeout,
                                             ldap.OPT_REFERRALS: 0}
    settings.AUTH_LDAP_CACHE_TIMEOUT = 0
    if BACKEND not in settings.AUTHENTICATION_BACKENDS:
        settings.AUTHENTICATION_BACKENDS = [*settings.AUTHENTICATION_BACKENDS, BACKEND]
    settings.SSO_GROUP_MAP = {"engineering": "power_user", "people-team": "hr"}


@pytest.fixture
def ldap_on(settings, directory, roles):
    use_directory(settings, directory.uri)
    return directory


def groups_of(username):
    return set(get_user_model().objects.get(username=username).groups.values_list("name", flat=True))


def admin_login(client, username, password):
    return client.post("/admin/login/?next=/admin/", {"username": username, "password": password,
                                                      "next": "/admin/"})


def failed_logins(username):
    # The typed name is a claim (data.claimed_actor), never the actor (issue 12 item 7).
    return AuditEvent.objects.filter(action="auth.login_failed", actor_name="", data__claimed_actor=username).count()


# --- sign-in ----------------------------------------------------------------------------------------------------


def test_admin_login_form_signs_in_a_directory_user_with_mapped_groups(client, ldap_on):
    assert not get_user_model().objects.filter(username="alice").exists()
    response = admin_login(client, "alice", ALICE_PASSWORD)
    assert response.status_code == 302 and response["Location"] == "/admin/"

    user = get_user_model().objects.get(username="alice")
    assert (user.email, user.first_name, user.last_name) == ("alice@example.com", "Alice", "Liddell")
    assert user.is_staff and not user.is_superuser and not user.has_usable_password()
    # "admin-users" has no local group and no mapping: the directory never creates groups here.
    assert groups_of("alice") == {"power_user", "hr"}
    assert str(client.session["_auth_user_id"]) == str(user.pk)
    assert AuditEvent.objects.get(action="auth.login", actor=user).data["backend"] == BACKEND
    granted = AuditEvent.objects.get(action="auth.sso_groups", actor=user)
    assert granted.data == {"provider": "ldap", "added": ["hr", "power_user"], "removed": []}
    assert client.get("/admin/").status_code == 200


def test_authenticate_with_directory_credentials(ldap_on):
    request = RequestFactory().post("/api/v1/session/")  # any request: the brute-force guard needs one
    user = authenticate(request=request, username="bob", password=BOB_PASSWORD)
    assert user is not None and user.backend == BACKEND
    assert user.username == "bob" and not user.is_staff
    assert groups_of("bob") == {"power_user"}


def test_wrong_password_and_unknown_user_are_refused_and_audited(client, ldap_on):
    request = RequestFactory().post("/")
    assert authenticate(request=request, username="alice", password="not-alices-password") is None
    assert authenticate(request=request, username="mallory", password="anything-at-all") is None
    response = admin_login(client, "alice", "still-not-alices-password")
    assert response.status_code == 200 and "correct username and password" in response.content.decode()

    assert failed_logins("alice") == 2 and failed_logins("mallory") == 1
    assert not get_user_model().objects.filter(username__in=["alice", "mallory"]).exists()
    assert "_auth_user_id" not in client.session


def test_group_removed_in_directory_is_removed_at_next_sign_in(client, ldap_on):
    from django.contrib.auth.models import Group

    assert admin_login(client, "alice", ALICE_PASSWORD).status_code == 302
    alice = get_user_model().objects.get(username="alice")
    alice.groups.add(Group.objects.get(name="finance"))  # granted by hand: not the directory's to take away
    assert groups_of("alice") == {"power_user", "hr", "finance"}

    ldap_on.remove_member("people-team", "alice")
    client.logout()
    assert admin_login(client, "alice", ALICE_PASSWORD).status_code == 302
    assert groups_of("alice") == {"power_user", "finance"}
    removed = AuditEvent.objects.filter(action="auth.sso_groups", actor=alice).order_by("seq").last()
    assert removed.data == {"provider": "ldap", "added": [], "removed": ["hr"]}
    assert get_user_model().objects.filter(username="alice").count() == 1


# --- the directory unreachable ----------------------------------------------------------------------------------


def test_unreachable_directory_refuses_cleanly_and_logs(client, settings, roles, caplog):
    uri = f"ldap://127.0.0.1:{free_port()}"  # nothing listens there
    use_directory(settings, uri)
    with caplog.at_level("ERROR", logger="apps.accounts.sso.ldap"):
        response = admin_login(client, "alice", ALICE_PASSWORD)
    assert response.status_code == 200  # the form again, with its error: not a 500
    assert "correct username and password" in response.content.decode()
    assert any(f"failed against {uri}: SERVER_DOWN" in r.getMessage()
               for r in caplog.records), [r.getMessage() for r in caplog.records]
    assert failed_logins("alice") == 1
    assert not get_user_model().objects.filter(username="alice").exists()


def test_directory_that_never_answers_is_given_up_on_within_the_timeout(settings, roles, caplog):
    """A server that accepts the connection and then says nothing (a hung DC, a firewall eating packets)."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # connections complete in the kernel's backlog; nobody ever reads or answers
    try:
        use_directory(settings, f"ldap://127.0.0.1:{silent.getsockname()[1]}", timeout=1.0)
        started = time.monotonic()
        with caplog.at_level("ERROR", logger="apps.accounts.sso.ldap"):
            user = authenticate(request=RequestFactory().post("/"), username="alice", password=ALICE_PASSWORD)
        elapsed = time.monotonic() - started
    finally:
        silent.close()
    assert user is None
    assert elapsed < 6, f"took {elapsed:.1f}s with a 1s timeout"
    assert any("failed against ldap://127.0.0.1:" in r.getMessage() and "TIMEOUT" in r.getMessage()
               for r in caplog.records), [r.getMessage() for r in caplog.records]


# --- brute force ---------------------------------------------------------------------------------------------


def test_directory_accounts_are_locked_out_after_the_failure_limit(client, ldap_on, settings):
    limit = settings.AXES_FAILURE_LIMIT
    for _ in range(limit - 1):
        assert admin_login(client, "alice", "guessing-alices-password").status_code == 200
    locked = admin_login(client, "alice", "guessing-alices-password")
    assert locked.status_code == 429
    assert int(locked["Retry-After"]) == int(settings.AXES_COOLOFF_TIME * 3600)
    # Locked means locked: the right password from the same address is refused too, and never reaches LDAP.
    again = admin_login(client, "alice", ALICE_PASSWORD)
    assert again.status_code == 429
    assert "_auth_user_id" not in client.session
    assert not get_user_model().objects.filter(username="alice").exists()
    # The locked-out name is a claim, not a proven actor (issue 12 item 7).
    assert AuditEvent.objects.filter(action="auth.locked_out", actor_name="", data__claimed_actor="alice",
                                     data__username="alice").exists()
    # Another account from the same address is not affected.
    assert admin_login(client, "bob", BOB_PASSWORD).status_code == 200  # bob signs in but is not staff
    assert authenticate(request=RequestFactory().post("/"), username="bob", password=BOB_PASSWORD) is not None


# --- settings from the environment ---------------------------------------------------------------------------


def _settings_probe(env: dict) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if not k.startswith("LDAP_")}
    full.update(env)
    code = ("from django.conf import settings as s; import ldap; print(s.AUTHENTICATION_BACKENDS); "
            "print(s.AUTH_LDAP_SERVER_URI, s.AUTH_LDAP_BIND_DN, s.AUTH_LDAP_BIND_PASSWORD, "
            "s.AUTH_LDAP_USER_SEARCH.base_dn, s.AUTH_LDAP_USER_SEARCH.filterstr, "
            "type(s.AUTH_LDAP_GROUP_TYPE).__name__, s.AUTH_LDAP_GROUP_SEARCH.filterstr, s.AUTH_LDAP_START_TLS, "
            "s.AUTH_LDAP_CONNECTION_OPTIONS[ldap.OPT_NETWORK_TIMEOUT])")
    return subprocess.run([sys.executable, "manage.py", "shell", "--no-imports", "-c", code], cwd=REPO, env=full,
                          capture_output=True, text=True, timeout=120)


def test_ldap_backend_is_on_only_when_configured_and_after_the_guard(tmp_path):
    off = _settings_probe({"DATA_DIR": str(tmp_path)})
    assert "DirectoryBackend" not in off.stdout and "AUTH_LDAP_SERVER_URI" in off.stderr  # not configured at all

    secret = tmp_path / "bind-password"
    secret.write_text("from-a-file\n")
    active_directory = {
        "DATA_DIR": str(tmp_path), "LDAP_SERVER_URI": "ldaps://dc1.corp.example.com",
        "LDAP_BIND_DN": "CN=svc-ragsite,OU=Service Accounts,DC=corp,DC=example,DC=com",
        "LDAP_BIND_PASSWORD_FILE": str(secret), "LDAP_USER_SEARCH_BASE": "OU=Staff,DC=corp,DC=example,DC=com",
        "LDAP_USER_FILTER": "(sAMAccountName=%(user)s)", "LDAP_GROUP_SEARCH_BASE": "DC=corp,DC=example,DC=com",
        "LDAP_GROUP_TYPE": "active_directory", "LDAP_START_TLS": "false", "LDAP_TIMEOUT": "3",
    }
    on = _settings_probe(active_directory)
    assert on.returncode == 0, on.stderr
    backends = eval(on.stdout.splitlines()[0])  # noqa: S307 - a list literal printed by our own probe
    assert backends.index("apps.accounts.sso.ldap.DirectoryBackend") > backends.index(
        "apps.accounts.backends.SignInThrottleBackend")
    assert on.stdout.splitlines()[1] == (
        "ldaps://dc1.corp.example.com CN=svc-ragsite,OU=Service Accounts,DC=corp,DC=example,DC=com from-a-file "
        "OU=Staff,DC=corp,DC=example,DC=com (sAMAccountName=%(user)s) ActiveDirectoryGroupType "
        "(objectClass=group) False 3.0")

    wrong = _settings_probe({**active_directory, "LDAP_GROUP_TYPE": "groupsOfNames"})
    assert wrong.returncode != 0 and "LDAP_GROUP_TYPE must be one of" in wrong.stderr
