"""JSON request bodies, read once and bounded, for the API's parser and for the webhook (which parses its signed
bytes itself).

Why a bound: Python's json module recurses, so a body nested ~950 deep raised RecursionError (a 500), and a body
that parses a little shallower still reaches code that recurses over it (serializers, the audit log's canonical
JSON, PostgreSQL's jsonb). Why no NUL: PostgreSQL stores no U+0000 in text or jsonb, so a NUL that got past the
API failed at the INSERT (a 500, e.g. in a file-system source's path). Both are refused here, naming where.
"""

import codecs
import json

from django.conf import settings
from rest_framework.exceptions import ParseError
from rest_framework.parsers import JSONParser, get_encoding
from rest_framework.utils.json import strict_constant


class BadJSON(ValueError):
    """The body is not JSON this API takes; the message names where when it can (``config.path: ...``)."""


def max_depth() -> int:
    return settings.API_JSON_MAX_DEPTH


def _where(path: tuple) -> str:
    return ".".join(str(part) for part in path) or "body"


def check_value(value, *, depth_limit: int | None = None) -> None:
    """Refuse nesting deeper than the limit and NUL in any string or key; iterative, so it cannot recurse."""
    depth_limit = max_depth() if depth_limit is None else depth_limit
    stack = [(value, (), 0)]
    while stack:
        item, path, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth >= depth_limit:
                raise BadJSON(f"{_where(path)}: nested deeper than {depth_limit} levels (API_JSON_MAX_DEPTH)")
            pairs = item.items() if isinstance(item, dict) else enumerate(item)
            for key, child in pairs:
                if isinstance(key, str) and "\x00" in key:
                    raise BadJSON(f"{_where(path)}: a key contains a NUL (\\u0000) character")
                stack.append((child, (*path, key), depth + 1))
        elif isinstance(item, str) and "\x00" in item:
            raise BadJSON(f"{_where(path)}: contains a NUL (\\u0000) character, which cannot be stored")


def loads(data: bytes | str):
    """json.loads, plus the checks above; every refusal is a BadJSON (a ValueError), never a RecursionError."""
    try:
        value = json.loads(data, parse_constant=strict_constant)
    except RecursionError:
        raise BadJSON(f"body: nested deeper than {max_depth()} levels (API_JSON_MAX_DEPTH)") from None
    check_value(value)
    return value


class BoundedJSONParser(JSONParser):
    """DRF's JSONParser with the checks above, and an object (not a list or a scalar) as the only top level: every
    JSON body this API takes is an object, and a list used to reach views that then read it as empty (`["x"]`
    created a restriction; a list started a sync)."""

    def parse(self, stream, media_type=None, parser_context=None):
        encoding = get_encoding(parser_context or {})
        try:
            value = loads(codecs.getreader(encoding)(stream).read())
        except UnicodeDecodeError as exc:
            raise ParseError(f"JSON parse error - not valid {encoding}: {exc}") from None
        except BadJSON as exc:
            raise ParseError(str(exc)) from None
        except ValueError as exc:
            raise ParseError(f"JSON parse error - {exc}") from None
        if not isinstance(value, dict):
            raise ParseError(f"body: must be a JSON object, not {_json_type(value)}")
        return value


def _json_type(value) -> str:
    return {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number")
