"""A fast yes for pipeline documents the JSON Schema accepts, without importing jsonschema (~70 ms of every
start). It decides only for schemas written in the keywords it implements (`supports`); a document it does not
accept still goes to jsonschema, which has the final word and writes the messages."""

from __future__ import annotations

import re
from collections.abc import Mapping
from functools import cache
from typing import Any

# The keywords the shipped schema uses, with draft 2020-12 semantics. A schema with any other keyword is not
# `supports`ed, so adding one to the schema can slow validation down but never loosen it.
SUPPORTED = frozenset(
    {
        "$schema",
        "$id",
        "title",
        "description",
        "type",
        "properties",
        "additionalProperties",
        "required",
        "propertyNames",
        "items",
        "minItems",
        "uniqueItems",
        "const",
        "enum",
        "oneOf",
        "minLength",
        "maxLength",
        "pattern",
        "minimum",
    }
)


def supports(schema: Any) -> bool:
    """True when every keyword of `schema`, at every depth, is one `is_valid` implements."""
    if isinstance(schema, bool):
        return True
    if not isinstance(schema, Mapping) or not SUPPORTED.issuperset(schema):
        return False
    subs: list[Any] = list(schema.get("properties", {}).values())
    subs += [schema[k] for k in ("additionalProperties", "items", "propertyNames") if k in schema]
    subs += schema.get("oneOf", [])
    return all(supports(sub) for sub in subs)


def is_valid(schema: Any, data: Any) -> bool:
    """Whether `data` satisfies `schema`; exact only for a schema that `supports` accepts."""
    if isinstance(schema, bool):
        return schema
    types = schema.get("type")
    if types is not None and not any(_is_type(data, t) for t in (types if isinstance(types, list) else [types])):
        return False
    if "const" in schema and not _same(data, schema["const"]):
        return False
    if "enum" in schema and not any(_same(data, v) for v in schema["enum"]):
        return False
    if "oneOf" in schema and sum(1 for sub in schema["oneOf"] if is_valid(sub, data)) != 1:
        return False
    if isinstance(data, dict):
        return _object_ok(schema, data)
    if isinstance(data, list):
        return _array_ok(schema, data)
    if isinstance(data, str):
        return _string_ok(schema, data)
    if "minimum" in schema and _is_number(data):
        return bool(data >= schema["minimum"])
    return True


def _object_ok(schema: Mapping[str, Any], data: dict[Any, Any]) -> bool:
    if any(key not in data for key in schema.get("required", ())):
        return False
    properties: Mapping[str, Any] = schema.get("properties", {})
    names = schema.get("propertyNames")
    extra = schema.get("additionalProperties", True)
    for key, value in data.items():
        if not isinstance(key, str):
            return False  # YAML allows other keys; jsonschema says what it makes of them
        if names is not None and not is_valid(names, key):
            return False
        if not is_valid(properties.get(key, extra), value):
            return False
    return True


def _array_ok(schema: Mapping[str, Any], data: list[Any]) -> bool:
    if len(data) < schema.get("minItems", 0):
        return False
    if schema.get("uniqueItems") and not _unique(data):
        return False
    items = schema.get("items")
    return items is None or all(is_valid(items, v) for v in data)


def _string_ok(schema: Mapping[str, Any], data: str) -> bool:
    # JSON Schema counts code points, as len() does
    if len(data) < schema.get("minLength", 0) or len(data) > schema.get("maxLength", len(data)):
        return False
    pattern = schema.get("pattern")
    return pattern is None or _regex(pattern).search(data) is not None


@cache
def _regex(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_type(value: Any, name: str) -> bool:
    if name == "object":
        return isinstance(value, dict)
    if name == "array":
        return isinstance(value, list)
    if name == "string":
        return isinstance(value, str)
    if name == "boolean":
        return isinstance(value, bool)
    if name == "null":
        return value is None
    if name == "number":
        return _is_number(value)
    if name == "integer":
        return _is_number(value) and (isinstance(value, int) or float(value).is_integer())
    return False


def _same(a: Any, b: Any) -> bool:
    """JSON equality: unlike Python's ==, true is not 1 and a list is not a tuple."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if _is_number(a) and _is_number(b):
        return bool(a == b)
    if type(a) is not type(b):
        return False
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return bool(a == b)


def _unique(items: list[Any]) -> bool:
    keys: set[tuple[str, Any]] = set()
    for v in items:
        if isinstance(v, dict | list):
            # containers: pairwise JSON equality (rare, and short lists in a pipeline)
            return all(not _same(items[i], items[j]) for i in range(len(items)) for j in range(i + 1, len(items)))
        # tagged so that true and 1 differ while 1 and 1.0 (one JSON number) do not
        keys.add(("b", v) if isinstance(v, bool) else ("n", v) if _is_number(v) else (type(v).__name__, v))
    return len(keys) == len(items)
