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
    groups = user.groups.values_list("name", flat=True)
    return AccessScope(frozenset({AUTHENTICATED, user_principal(user.pk), *(group_principal(g) for g in groups)}))
