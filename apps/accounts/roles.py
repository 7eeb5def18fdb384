"""Role names and the capabilities each one carries (the README's role table is written from this)."""

CAPABILITIES = (
    "query",
    "upload",
    "view_sources",
    "manage_sources",
    "run_syncs",
    "view_audit",
    "handle_subject_requests",
    "configure_system",
    "administer_sources",  # sees every source and sync run; without it, only sources the user may read
    "grant_access",  # grants and restrictions, and only on what the granting user may read
)

ROLE_CAPABILITIES = {
    "admin": CAPABILITIES,
    # A power user shares what they may read (grant_access) but sees and manages only sources they may read.
    "power_user": ("query", "upload", "view_sources", "manage_sources", "run_syncs", "grant_access"),
    "user": ("query", "upload", "view_sources"),
    "readonly": ("query", "view_sources"),
    "compliance_officer": ("query", "view_sources", "view_audit", "handle_subject_requests"),
}


# What an API token may do, on top of (never beyond) what its user's roles allow. "query" is retrieval: search,
# answer and reading the documents the user may read; "read" adds sources and sync runs; "full" is the roles'.
TOKEN_SCOPES = {
    "query": ("query",),
    "read": ("query", "view_sources"),
    "full": CAPABILITIES,
}


def has_capability(user, capability: str, token=None) -> bool:
    """Whether the user's roles carry the capability and, for a request made with an API token, its scope does."""
    if token is not None and capability not in TOKEN_SCOPES.get(getattr(token, "scope", "full"), ()):
        return False
    return bool(user and user.is_authenticated and user.has_perm(f"accounts.{capability}"))


def ensure_roles() -> None:
    """Create the role groups with their capabilities if missing (the data migration does this on migrate)."""
    from django.contrib.auth.models import Group, Permission

    for role, capabilities in ROLE_CAPABILITIES.items():
        group, _ = Group.objects.get_or_create(name=role)
        group.permissions.add(*Permission.objects.filter(content_type__app_label="accounts", codename__in=capabilities))
