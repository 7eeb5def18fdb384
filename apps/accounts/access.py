"""The one place that turns a user into the principals the index filters on (DESIGN invariant 5)."""

from dataclasses import dataclass

AUTHENTICATED = "authenticated"


def group_principal(name: str) -> str:
    return f"group:{name}"


def user_principal(user_id) -> str:
    return f"user:{user_id}"


@dataclass(frozen=True)
class AccessScope:
    principals: frozenset
    unrestricted: bool = False  # superusers read everything

    @property
    def empty(self) -> bool:
        return not self.unrestricted and not self.principals

    def allows(self, principals) -> bool:
        return self.unrestricted or not self.principals.isdisjoint(principals)

    @property
    def cache_key(self) -> str:
        return "*" if self.unrestricted else "|".join(sorted(self.principals))


NO_ACCESS = AccessScope(frozenset())


def access_scope(user) -> AccessScope:
    if user is None or not user.is_authenticated or not user.is_active:
        return NO_ACCESS
    if user.is_superuser:
        return AccessScope(frozenset(), unrestricted=True)
    groups = getattr(user, "_identity_groups", None)
    if groups is None:
        groups = user.groups.values_list("name", flat=True)
    return AccessScope(frozenset({AUTHENTICATED, user_principal(user.pk), *(group_principal(g) for g in groups)}))


def load_identity(user) -> None:
    """Read the user's group names and permissions in one query and keep them on this user object, so that
    access_scope and has_perm (has_capability) answer from them instead of three queries of their own (~1.3 ms of
    a search request). For user objects that live one request (the API's authentication calls it on the user it
    has just loaded): a membership or permission change takes effect on the next request, as it always did."""
    if user is None or not user.is_authenticated or not user.is_active:
        return
    from django.db import connection

    groups, permissions = set(), set()
    with connection.cursor() as cursor:
        cursor.execute(_identity_sql(), [user.pk, user.pk])
        for group, app_label, codename in cursor.fetchall():
            if group is not None:
                groups.add(group)
            if codename is not None:
                permissions.add(f"{app_label}.{codename}")
    user._identity_groups = frozenset(groups)
    if not user.is_superuser:  # a superuser's has_perm is True without looking
        # ModelBackend.get_all_permissions answers from this attribute when it is set (its own per-object cache).
        user._perm_cache = permissions


_IDENTITY_SQL = None


def _identity_sql() -> str:
    """Group names with their permissions, then the user's own permissions: (group or NULL, app_label, codename)."""
    global _IDENTITY_SQL
    if _IDENTITY_SQL is None:
        from django.contrib.auth import get_user_model
        from django.contrib.auth.models import Group, Permission
        from django.contrib.contenttypes.models import ContentType
        from django.db import connection

        q = connection.ops.quote_name
        user_model = get_user_model()
        user_groups = user_model.groups.through._meta
        user_perms = user_model.user_permissions.through._meta
        group_perms = Group.permissions.through._meta

        def column(meta, model):
            return q(next(f.column for f in meta.fields if getattr(f, "related_model", None) is model))

        _IDENTITY_SQL = (
            f"SELECT g.{q('name')}, ct.{q('app_label')}, p.{q('codename')} "  # noqa: S608 (quoted identifiers only; values are parameters)
            f"FROM {q(user_groups.db_table)} ug "
            f"JOIN {q(Group._meta.db_table)} g ON g.{q('id')} = ug.{column(user_groups, Group)} "
            f"LEFT JOIN {q(group_perms.db_table)} gp ON gp.{column(group_perms, Group)} = g.{q('id')} "
            f"LEFT JOIN {q(Permission._meta.db_table)} p ON p.{q('id')} = gp.{column(group_perms, Permission)} "
            f"LEFT JOIN {q(ContentType._meta.db_table)} ct ON ct.{q('id')} = p.{q('content_type_id')} "
            f"WHERE ug.{column(user_groups, user_model)} = %s "
            f"UNION ALL "
            f"SELECT NULL, ct.{q('app_label')}, p.{q('codename')} "
            f"FROM {q(user_perms.db_table)} up "
            f"JOIN {q(Permission._meta.db_table)} p ON p.{q('id')} = up.{column(user_perms, Permission)} "
            f"JOIN {q(ContentType._meta.db_table)} ct ON ct.{q('id')} = p.{q('content_type_id')} "
            f"WHERE up.{column(user_perms, user_model)} = %s"
        )
    return _IDENTITY_SQL
