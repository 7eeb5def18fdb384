from django.conf import settings
from django.core.exceptions import RequestDataTooBig, TooManyFieldsSent, TooManyFilesSent
from rest_framework import status
from rest_framework.exceptions import ValidationError
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from .errors import FieldError


def first_message(errors, path=""):
    """The first error of a DRF error structure as "field.path: message" (the API's `detail`)."""
    if isinstance(errors, dict):
        for key, value in errors.items():
            return first_message(value, f"{path}.{key}" if path else str(key))
    if isinstance(errors, list) and errors:
        return first_message(errors[0], path)
    return f"{path}: {errors}" if path and path != "non_field_errors" else str(errors)


def exception_handler(exc, context):
    """DRF's handler, plus a top-level "detail" naming the first bad field, so every 4xx carries one message. A
    service's FieldError (bad input traced to one field) is a 400 naming that field: views do not translate it."""
    if isinstance(exc, FieldError):
        exc = ValidationError({exc.field: [exc.message]})
    response = _request_limits(exc) or drf_exception_handler(exc, context)
    if response is not None and isinstance(response.data, dict) and "detail" not in response.data:
        response.data = {"detail": first_message(response.data), "errors": response.data}
    elif response is not None and isinstance(response.data, list):
        response.data = {"detail": first_message(response.data), "errors": response.data}
    return response


def _request_limits(exc) -> Response | None:
    """Django's own request limits, raised while DRF reads the body: left to Django they became its HTML 400 page."""
    if isinstance(exc, RequestDataTooBig):
        return Response({"detail": f"body: over the {settings.DATA_UPLOAD_MAX_MEMORY_SIZE:,}-byte limit "
                                   "(DATA_UPLOAD_MAX_MEMORY_SIZE)"}, status=status.HTTP_413_REQUEST_ENTITY_TOO_LARGE)
    if isinstance(exc, TooManyFieldsSent | TooManyFilesSent):
        return Response({"detail": f"body: {exc}"}, status=status.HTTP_400_BAD_REQUEST)
    return None


def not_found(request, exception):
    """handler404: under /api/ an unrouted URL (`sources/abc/grants/`) answers JSON like the API's own 404s."""
    from django.http import JsonResponse
    from django.views.defaults import page_not_found

    if request.path.startswith("/api/"):
        return JsonResponse({"detail": "Not found."}, status=404)
    return page_not_found(request, exception)
