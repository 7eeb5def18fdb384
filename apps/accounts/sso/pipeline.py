"""social-auth pipeline steps shared by the SAML and OIDC backends."""

from django.conf import settings

from .groups import apply_idp_groups


def idp_groups(backend, response) -> list[str] | None:
    """The groups the identity provider asserted for this sign-in, or None when it says nothing about groups."""
    if backend.name == "saml":
        values = (response or {}).get("attributes", {}).get(settings.SAML_GROUPS_ATTRIBUTE)
    else:
        values = (response or {}).get(getattr(settings, "OIDC_GROUPS_CLAIM", "groups"))
    if values is None:
        return None
    if isinstance(values, str):
        values = [values]
    return [str(v) for v in values]


def sync_idp_groups(backend, user=None, response=None, *args, **kwargs):
    """Bring the user's IdP-granted groups in line with what the IdP asserts at this sign-in."""
    if user is None:
        return
    groups = idp_groups(backend, response)
    if groups is not None:
        apply_idp_groups(user, groups, provider=backend.name)
