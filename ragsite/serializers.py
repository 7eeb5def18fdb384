"""Serializer parts every write endpoint shares."""

from collections.abc import Mapping

from rest_framework import serializers


# Mix into a request serializer: a key it does not take is a 400 naming the key, not silently dropped (a mistyped
# `topk` used to give ten results without a word). The schema says so too: ragsite.api_schema writes
# `additionalProperties: false` for these serializers' request bodies. (A comment, not a docstring: drf-spectacular
# would show a docstring as the description of every serializer that has none of its own.)
class RejectUnknownFields:

    def to_internal_value(self, data):
        if isinstance(data, Mapping):
            writable = sorted(name for name, field in self.fields.items() if not field.read_only)
            for key in sorted(map(str, data)):
                if key not in writable:
                    problem = "read-only; leave it out" if key in self.fields else "unknown field"
                    raise serializers.ValidationError({key: [f"{problem}; this request takes: "
                                                             f"{', '.join(writable)}"]})
        return super().to_internal_value(data)


class StrictBooleanField(serializers.BooleanField):
    """JSON true or false only: "yes", 1 or "false" are refused rather than read as a boolean."""

    def to_internal_value(self, data):
        if not isinstance(data, bool):
            self.fail("invalid", input=data)
        return data
