"""schemathesis hooks for tests/test_api_schema.py (loaded through SCHEMATHESIS_HOOKS).

Rules between two fields cannot be written in JSON Schema, so a positive case generated from the schema alone may
break one and be refused, rightly, with a 400. These hooks make positive cases obey them, touching only values
that are valid on their own; negative cases are left as generated.

- search/: `offset + top_k <= SEARCH_MAX_WINDOW` (apps/retrieval/api/serializers.py)
- search/ and answer/: `filters.modified_after` earlier than `filters.modified_before`

A writer's run (tests/test_api_schema.py sets SCHEMATHESIS_TARGETS) also aims three of four positive cases at
objects that exist, so that they reach the code behind the 404: path ids of real sources, documents and sync runs
(DELETE of a source: scratch sources only, so the others stay for the rest of the run), grantees that exist, and
a file-system source's path at a real folder.
"""

import itertools
import json
import os

import schemathesis
from schemathesis import GenerationMode

from apps.retrieval.filter_dates import parse_moment  # free of Django, like this module

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


_TARGETS = json.loads(os.environ.get("SCHEMATHESIS_TARGETS") or "{}")
_AIMED = itertools.count()


def _target_kind(method: str, path: str) -> str:
    if path.startswith("/api/v1/documents/"):
        return "document"
    if path.startswith("/api/v1/sync-runs/"):
        return "sync_run"
    return "scratch_source" if (method, path) == ("DELETE", "/api/v1/sources/{id}/") else "source"


def _aim(case):
    """Point a positive case at existing objects (three cases of four; the fourth keeps what was generated)."""
    n = next(_AIMED)
    if n % 4 == 0:
        return
    if case.path_parameters and "id" in case.path_parameters:
        ids = _TARGETS[_target_kind(case.method.upper(), case.operation.path)]
        case.path_parameters["id"] = ids[n % len(ids)]
    body = case.body if isinstance(case.body, dict) else {}
    if case.operation.path.endswith("/grants/"):
        for key, names in (("user", _TARGETS["users"]), ("group", _TARGETS["groups"])):
            if key in body:
                body[key] = names[n % len(names)]
    config = body.get("config")
    if case.operation.path.startswith("/api/v1/sources/") and isinstance(config, dict) \
            and body.get("kind", "filesystem") == "filesystem":
        config["path"] = _TARGETS["folder"]


@schemathesis.hook
def map_case(ctx, case):
    meta = case.meta
    if meta is None or meta.generation.mode != GenerationMode.POSITIVE:
        return case
    if _TARGETS:
        _aim(case)
    if not isinstance(case.body, dict):
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
