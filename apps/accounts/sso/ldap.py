"""LDAP / Active Directory password sign-in (django-auth-ldap), configured from the environment in settings.

The user is found with ``LDAP_USER_FILTER`` under ``LDAP_USER_SEARCH_BASE`` (bound as ``LDAP_BIND_DN``), then
the password is checked by binding as that user. The directory's groups (``LDAP_GROUP_SEARCH_BASE``,
``LDAP_GROUP_TYPE``) reach local groups through :func:`apps.accounts.sso.groups.apply_idp_groups` with provider
``ldap``, so ``SSO_GROUP_MAP`` applies as for SAML and OIDC, and a group taken away in the directory is taken away
here at the next sign-in. The backend sits after django-axes' guard in ``AUTHENTICATION_BACKENDS``, so failed
passwords count towards the same lock-out; a directory that cannot be reached refuses the sign-in (logged, and
audited as a failed sign-in by Django's ``user_login_failed``), it never raises.
"""

import logging

import ldap
from django.dispatch import receiver
from django_auth_ldap.backend import LDAPBackend, ldap_error

from .groups import apply_idp_groups

logger = logging.getLogger(__name__)


class DirectoryBackend(LDAPBackend):
    def authenticate_ldap_user(self, ldap_user, password):
        user = super().authenticate_ldap_user(ldap_user, password)
        if user is not None and self.settings.GROUP_SEARCH is not None:
            try:
                groups = ldap_user.group_names
            except ldap.LDAPError as error:
                # Without the directory's answer the user's groups cannot be brought up to date: refuse rather
                # than sign someone in with groups the directory may have taken away.
                ldap_error.send(type(self), context="group_names", user=user, request=ldap_user._request,
                                exception=error)
                return None
            apply_idp_groups(user, groups, provider="ldap")
        return user


@receiver(ldap_error, dispatch_uid="accounts.sso.ldap_error")
def _directory_error(sender, context, user=None, request=None, exception=None, **kwargs):
    """django-auth-ldap swallows directory errors (the sign-in is refused); say which one, so an operator sees
    "server down" rather than a wave of wrong passwords."""
    uri = getattr(sender().settings, "SERVER_URI", "") if sender is not None else ""
    logger.error("LDAP %s failed against %s: %s", context, uri, _describe(exception))


def _describe(exception) -> str:
    if exception is not None and exception.args and isinstance(exception.args[0], dict):
        info = exception.args[0]
        return f"{type(exception).__name__}: {info.get('desc', '')} {info.get('info', '')}".strip()
    return repr(exception)
