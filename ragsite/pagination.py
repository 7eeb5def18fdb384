"""Limit/offset pagination that refuses bad values with a 400 naming the parameter.

DRF's LimitOffsetPagination quietly replaces a limit or offset it cannot read with its default, and passes any
integer to the database: `?limit=307015009177840386048` overflowed PostgreSQL's bigint and answered 500 (found by
tests/test_api_schema.py). Here both are checked against the bounds the schema states.
"""

from rest_framework.exceptions import ValidationError
from rest_framework.pagination import LimitOffsetPagination

MAX_OFFSET = 2**31 - 1


class StrictLimitOffsetPagination(LimitOffsetPagination):
    max_limit = 500

    def _read(self, request, name, minimum, maximum, default):
        values = request.query_params.getlist(name)
        if not values:
            return default
        if len(values) > 1:
            raise ValidationError({name: ["Give it once."]})
        try:
            value = int(values[0])
        except ValueError:
            raise ValidationError({name: ["A whole number is required."]}) from None
        if not minimum <= value <= maximum:
            raise ValidationError({name: [f"Must be between {minimum} and {maximum}."]})
        return value

    def get_limit(self, request):
        return self._read(request, self.limit_query_param, 1, self.max_limit, self.default_limit)

    def get_offset(self, request):
        return self._read(request, self.offset_query_param, 0, MAX_OFFSET, 0)

    def get_schema_operation_parameters(self, view):
        parameters = super().get_schema_operation_parameters(view)
        bounds = {self.limit_query_param: {"minimum": 1, "maximum": self.max_limit},
                  self.offset_query_param: {"minimum": 0, "maximum": MAX_OFFSET}}
        for parameter in parameters:
            parameter["schema"].update(bounds.get(parameter["name"], {}))
        return parameters
