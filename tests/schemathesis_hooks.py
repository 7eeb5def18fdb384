"""schemathesis hooks for tests/test_api_schema.py (loaded through SCHEMATHESIS_HOOKS).

Rules between two fields cannot be written in JSON Schema, so a positive case generated from the schema alone may
break one and be refused, rightly, with a 400. These hooks make positive cases obey them, touching only values
that are valid on their own; negative cases are left as generated.

- search/: `offset + top_k <= SEARCH_MAX_WINDOW` (apps/retrieval/search.py)
- search/ and answer/: `filters.modified_after` earlier than `filters.modified_before`
"""

import schemathesis
from schemathesis import GenerationMode

from apps.retrieval.moments import parse_moment  # free of Django, like this module

SEARCH_MAX_WINDOW = 100  # apps/retrieval/search.py (this module runs inside schemathesis, without Django)


def _moment(value):
    if not isinstance(value, str):
        return None
    try:
        return parse_moment(value)
    except (ValueError, OverflowError):
        return None


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@schemathesis.hook
def map_case(ctx, case):
    meta = case.meta
    if meta is None or meta.generation.mode != GenerationMode.POSITIVE or not isinstance(case.body, dict):
        return case
    if case.operation.path not in ("/api/v1/search/", "/api/v1/answer/"):
        return case
    body = case.body
    offset, top_k = body.get("offset"), body.get("top_k", 10)
    if _is_int(offset) and _is_int(top_k) and offset + top_k > SEARCH_MAX_WINDOW:
        body["offset"] = max(0, SEARCH_MAX_WINDOW - top_k)
    filters = body.get("filters")
    if isinstance(filters, dict):
        after, before = _moment(filters.get("modified_after")), _moment(filters.get("modified_before"))
        if after is not None and before is not None and after >= before:
            del filters["modified_before"]
    return case
