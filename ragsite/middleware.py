"""Refuse a NUL in the query string before any view sees it.

PostgreSQL stores no U+0000 in text, so a NUL in a query parameter that reached a lookup (`DELETE
sources/{id}/grants/?group=hr%00`, an admin search) failed in the database: a 500. Bodies are checked by
ragsite/parsers.py; this is the same rule for the query string, once, for every view.
"""

from django.http import HttpResponseBadRequest, JsonResponse


class RefuseNulInQuery:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        for key, values in request.GET.lists():
            if "\x00" in key or any("\x00" in value for value in values):
                message = f"{key.replace(chr(0), '')}: contains a NUL (\\u0000) character"
                if request.path.startswith("/api/"):
                    return JsonResponse({"detail": message}, status=400)
                return HttpResponseBadRequest(message, content_type="text/plain")
        return self.get_response(request)
