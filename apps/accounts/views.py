"""Account pages that are not part of the API."""

from django.http import JsonResponse
from django.shortcuts import render

from apps.compliance.audit import client_ip, record


def locked_out(request, original_response=None, credentials=None):
    """django-axes' answer once an account and address have failed too often: 429 with Retry-After."""
    from axes.helpers import get_client_username
    from django.conf import settings

    retry_after = int(settings.AXES_COOLOFF_TIME * 3600)
    username = str(get_client_username(request, credentials) or "")[:150]
    record("auth.locked_out", claimed_actor=username, ip=client_ip(request), data={"username": username})
    message = "Too many failed sign-in attempts; try again later."
    if request.path.startswith("/api/"):
        response = JsonResponse({"detail": message}, status=429)
    else:
        response = render(request, "accounts/locked_out.html", {"message": message}, status=429)
    response["Retry-After"] = str(retry_after)
    return response
