"""Which sources (and so which sync runs) a caller may see: DESIGN invariant 5 for source metadata.

A source's path, reader groups, counts and the names of its failing files describe its documents, so a caller sees a
source only when they may read it: its readers (reader groups, group and user grants on it; none at all means every
signed-in user, as for its documents) include one of the caller's principals. Holders of ``administer_sources``
(the admin role) and superusers see every source. Everyone else gets the same 404 as for a missing source.
"""

from django.db.models import Exists, OuterRef, Q

from apps.accounts.access import access_scope
from apps.accounts.models import SourceGroupObjectPermission, SourceUserObjectPermission
from apps.accounts.roles import has_capability

from .models import Source

ADMINISTER = "administer_sources"
_VIEW_SOURCE = "view_source"


def readable_sources(queryset, user):
    """The sources of ``queryset`` whose readers include the user (the rule for its documents' inherited readers)."""
    scope = access_scope(user)
    if scope.unrestricted:
        return queryset
    if not scope.principals:
        return queryset.none()
    groups = sorted(p.removeprefix("group:") for p in scope.principals if p.startswith("group:"))
    reader_rows = Source.reader_groups.through.objects.filter(source_id=OuterRef("pk"))
    group_grants = SourceGroupObjectPermission.objects.filter(content_object_id=OuterRef("pk"),
                                                              permission__codename=_VIEW_SOURCE)
    user_grants = SourceUserObjectPermission.objects.filter(content_object_id=OuterRef("pk"),
                                                            permission__codename=_VIEW_SOURCE)
    open_to_all = ~Exists(reader_rows) & ~Exists(group_grants) & ~Exists(user_grants)
    named = (Exists(reader_rows.filter(group__name__in=groups)) | Exists(group_grants.filter(group__name__in=groups))
             | Exists(user_grants.filter(user_id=user.pk)))
    return queryset.filter(open_to_all | named)


def visible_sources(queryset, user, token=None):
    """What sources/ and sync-runs/ show the caller: every source with ``administer_sources``, else readable ones."""
    if has_capability(user, ADMINISTER, token):
        return queryset
    return readable_sources(queryset, user)


def failure_scope(user, token=None):
    """Whose failed items a caller may see named in a run's errors: None (every one) with ``administer_sources``,
    else the caller's access scope, matched against each item's readers."""
    return None if has_capability(user, ADMINISTER, token) else access_scope(user)


def visible_sync_runs(queryset, user, token=None):
    if has_capability(user, ADMINISTER, token):
        return queryset
    return queryset.filter(Q(source__in=readable_sources(Source.objects.all(), user).values("pk")))
