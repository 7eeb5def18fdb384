"""The API's one role check: a DRF permission over :func:`apps.accounts.roles.has_capability`."""

from rest_framework.permissions import SAFE_METHODS, BasePermission

from .authentication import token_of
from .roles import has_capability


class HasCapability(BasePermission):
    """The capability a view needs, and the token's scope allowing it too. A view names it as
    ``required_capability``, or as ``read_capability`` / ``write_capability`` by method, with
    ``action_capabilities`` for a viewset's extra actions. The refusal says whether the role or the token's scope
    is what is missing."""

    message = "Your role does not allow this."

    def has_permission(self, request, view):
        needed = _needed(view, request)
        token = token_of(request)
        if has_capability(request.user, needed, token):
            return True
        if token is not None and has_capability(request.user, needed):
            self.message = f"This API token's scope ({token.scope!r}) does not allow this (capability {needed!r})."
        else:
            self.message = f"Your role does not allow this (capability {needed!r})."
        return False


def _needed(view, request) -> str:
    needed = getattr(view, "required_capability", None)
    if needed is None:
        needed = view.read_capability if request.method in SAFE_METHODS else view.write_capability
    return getattr(view, "action_capabilities", {}).get(getattr(view, "action", None), needed)
