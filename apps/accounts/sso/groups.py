"""IdP groups -> local groups, the same way for SAML, OIDC and LDAP.

``SSO_GROUP_MAP`` maps an IdP group name to a local group name (a role such as ``power_user`` or an access group
such as ``hr``). An IdP group with no entry joins the local group of the same name when an administrator has
created one, and is otherwise ignored: an identity provider never creates groups here.

The groups a provider granted are remembered per user and provider (:class:`SsoGroupGrant`), so a group the IdP no
longer asserts is taken away at the next sign-in, while groups an administrator assigned by hand are left alone.
Every change is audited.
"""

from django.conf import settings
from django.contrib.auth.models import Group
from django.db import transaction

from apps.accounts.models import SsoGroupGrant
from apps.compliance.audit import record


def local_groups_for(idp_groups) -> set[str]:
    mapping = settings.SSO_GROUP_MAP
    wanted = set()
    for name in idp_groups or ():
        name = str(name).strip()
        if not name:
            continue
        wanted.add(mapping.get(name, name))
    return set(Group.objects.filter(name__in=wanted).values_list("name", flat=True))


@transaction.atomic
def apply_idp_groups(user, idp_groups, provider: str) -> tuple[set[str], set[str]]:
    """Make the user's groups from ``provider`` exactly those it asserts now; returns (added, removed) names."""
    wanted = local_groups_for(idp_groups)
    granted = set(
        SsoGroupGrant.objects.filter(user=user, provider=provider).values_list("group__name", flat=True)
    )
    current = set(user.groups.values_list("name", flat=True))
    removed = granted - wanted
    added = wanted - current
    if removed:
        user.groups.remove(*Group.objects.filter(name__in=removed))
        SsoGroupGrant.objects.filter(user=user, provider=provider, group__name__in=removed).delete()
    if added:
        user.groups.add(*Group.objects.filter(name__in=added))
    for group in Group.objects.filter(name__in=wanted - granted):
        SsoGroupGrant.objects.get_or_create(user=user, provider=provider, group=group)
    if added or removed:
        record("auth.sso_groups", actor=user, object_type="user", object_id=user.pk,
               data={"provider": provider, "added": sorted(added), "removed": sorted(removed)})
    return added, removed
