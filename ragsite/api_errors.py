from rest_framework.views import exception_handler as drf_exception_handler


def _first_message(errors, path=""):
    if isinstance(errors, dict):
        for key, value in errors.items():
            return _first_message(value, f"{path}.{key}" if path else str(key))
    if isinstance(errors, list) and errors:
        return _first_message(errors[0], path)
    return f"{path}: {errors}" if path and path != "non_field_errors" else str(errors)


def exception_handler(exc, context):
    """DRF's handler, plus a top-level "detail" naming the first bad field, so every 4xx carries one message."""
    response = drf_exception_handler(exc, context)
    if response is not None and isinstance(response.data, dict) and "detail" not in response.data:
        response.data = {"detail": _first_message(response.data), "errors": response.data}
    elif response is not None and isinstance(response.data, list):
        response.data = {"detail": _first_message(response.data), "errors": response.data}
    return response


def not_found(request, exception):
    """handler404: under /api/ an unrouted URL (`sources/abc/grants/`) answers JSON like the API's own 404s."""
    from django.http import JsonResponse
    from django.views.defaults import page_not_found

    if request.path.startswith("/api/"):
        return JsonResponse({"detail": "Not found."}, status=404)
    return page_not_found(request, exception)
