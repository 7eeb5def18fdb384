"""The OpenAPI schema says what the API really answers: its error responses and the strings it refuses.

drf-spectacular documents only the success response of each operation, yet every operation may answer 401/403
(credentials, role), 404 (a path id), 400 (a bad body or query parameter), 415 (a body in another media type) and
429 (throttled), all with the body ``ragsite.api_errors`` builds. A client generated from the schema, or a schema
fuzzer (tests/test_api_schema.py runs schemathesis), needs them listed.
"""

import copy

from drf_spectacular import openapi
from rest_framework import serializers

ERROR_DESCRIPTIONS = {
    "400": "Bad request: `detail` names the first bad field, `errors` has every field's messages",
    "401": "No credentials, or credentials that are invalid, expired or revoked",
    "403": "Signed in, but the role or the token's scope does not allow this",
    "404": "No such object, or one the caller may not see (the same answer for both)",
    "413": "The body is over the size limit (DATA_UPLOAD_MAX_MEMORY_SIZE)",
    "415": "The body is not in a media type the operation accepts",
    "429": "Throttled: try again after `Retry-After` seconds",
    "503": "Unavailable: the rate limiter's Redis or the search index did not answer; try again shortly",
}


class ErrorSerializer(serializers.Serializer):
    detail = serializers.CharField(help_text="One message; for a bad field it starts with the field's name")
    errors = serializers.JSONField(required=False, help_text="DRF's messages per field, when fields were at fault")


class AutoSchema(openapi.AutoSchema):
    def get_operation(self, path, path_regex, path_prefix, method, registry):
        operation = super().get_operation(path, path_regex, path_prefix, method, registry)
        if operation is None:
            return None
        responses = operation["responses"]
        for code in self._error_codes(operation):
            if code not in responses:
                response = self._get_response_for_code(ErrorSerializer, code)
                responses[code] = {**response, "description": ERROR_DESCRIPTIONS[code]}
        return operation

    def _error_codes(self, operation) -> list[str]:
        parameters = operation.get("parameters", [])
        codes = []
        if operation.get("requestBody") or any(p["in"] == "query" for p in parameters):
            codes.append("400")
        if operation.get("security") and {} not in operation["security"]:
            codes += ["401", "403"]
        if any(p["in"] == "path" for p in parameters):
            codes.append("404")
        if operation.get("requestBody"):
            codes += ["413", "415"]
        if self._is_throttled():
            codes += ["429", "503"]
        return codes

    def _is_throttled(self) -> bool:
        from apps.accounts.throttling import ScopedThrottle

        # The default throttle is scoped: it counts only on views that name a throttle_scope.
        return any(getattr(self.view, "throttle_scope", None) if isinstance(throttle, ScopedThrottle) else True
                   for throttle in self.view.get_throttles())

    def _map_basic_serializer(self, serializer, direction):
        from ragsite.serializers import RejectUnknownFields

        schema = super()._map_basic_serializer(serializer, direction)
        if direction == "request" and isinstance(serializer, RejectUnknownFields):
            schema["additionalProperties"] = False  # the server refuses other keys with a 400
        return schema

    def _map_serializer_field(self, field, direction, bypass_extensions=False):
        schema = super()._map_serializer_field(field, direction, bypass_extensions)
        # A required-non-blank CharField trims first, so "   " is refused as blank: say so with a pattern.
        if (direction == "request" and isinstance(field, serializers.CharField) and not field.allow_blank
                and field.trim_whitespace and schema.get("type") == "string"
                and not ({"pattern", "format", "enum"} & schema.keys())):
            schema["pattern"] = r"\S"
        if direction == "request":
            schema = _without_nul(copy.deepcopy(schema))  # extend_schema_field's dicts are shared: copy first
        return schema


NO_NUL = r"^[^\u0000]*$"
NON_BLANK_NO_NUL = r"^[^\u0000]*[^\s\u0000][^\u0000]*$"


def _without_nul(schema):
    """No string in a request body may hold NUL (ragsite/parsers.py refuses it: PostgreSQL cannot store one); the
    schema says so, or a fuzzer's schema-valid case with a NUL would be a valid request refused."""
    if isinstance(schema, list):
        return [_without_nul(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    schema = {key: _without_nul(value) for key, value in schema.items()}
    if schema.get("type") == "string" and not ({"format", "enum"} & schema.keys()):
        pattern = schema.get("pattern")
        if pattern is None:
            schema["pattern"] = NO_NUL
        elif pattern == r"\S":
            schema["pattern"] = NON_BLANK_NO_NUL
    return schema
