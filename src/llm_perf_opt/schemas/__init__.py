"""JSON Schemas shipped with the package and a small validator for them (no dependencies).

The validator implements the JSON Schema keywords the shipped schemas use — `type` (one or a
list), `properties`, `required`, `additionalProperties` (bool or schema), `items`, `enum`,
`const`, `minimum`, `minItems`, `maxItems`, `minLength` — and ignores annotations (`$schema`,
`$id`, `title`, `description`). A test checks it agrees with the `jsonschema` package where that
is installed; the GPU machine does not have it, hence this.
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any, Final

from llm_perf_opt.errors import LlmPerfOptError

RUN_META_SCHEMA: Final = "run_meta.schema.json"
RUN_META_ID: Final = "llm_perf_opt.run_meta/1"

_TYPES: Final[dict[str, tuple[type, ...]]] = {
    "object": (dict,),
    "array": (list,),
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "null": (type(None),),
}
_SUPPORTED: Final = frozenset(
    {
        "type",
        "properties",
        "required",
        "additionalProperties",
        "items",
        "enum",
        "const",
        "minimum",
        "minItems",
        "maxItems",
        "minLength",
        "$schema",
        "$id",
        "title",
        "description",
    }
)


class SchemaValidationError(LlmPerfOptError):
    """A JSON document does not match its schema; the message lists every mismatch."""


def load_schema(name: str = RUN_META_SCHEMA) -> dict[str, Any]:
    """Read a schema shipped in this package (e.g. `run_meta.schema.json`)."""
    text = resources.files(__package__).joinpath(name).read_text(encoding="utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


def validate(instance: Any, schema: dict[str, Any]) -> list[str]:
    """Every mismatch between `instance` and `schema`, as `path: problem` lines (empty: valid).

    Raises:
        ValueError: the schema uses a keyword this validator does not implement.
    """
    errors: list[str] = []
    _check(instance, schema, "$", errors)
    return errors


def check_run_meta(meta: dict[str, Any]) -> None:
    """Validate run metadata against `run_meta.schema.json`.

    Raises:
        SchemaValidationError: it does not match; the message names each failing key.
    """
    errors = validate(meta, load_schema(RUN_META_SCHEMA))
    if errors:
        raise SchemaValidationError(
            f"run metadata does not match {RUN_META_ID}: " + "; ".join(errors[:10])
        )


def _check(value: Any, schema: dict[str, Any], path: str, errors: list[str]) -> None:
    unknown = set(schema) - _SUPPORTED
    if unknown:
        raise ValueError(f"schema at {path} uses unsupported keywords {sorted(unknown)}")
    if "type" in schema and not _type_ok(value, schema["type"]):
        errors.append(f"{path}: expected {schema['type']}, got {_json_type(value)}")
        return
    if "const" in schema and value != schema["const"]:
        errors.append(f"{path}: must be {schema['const']!r}, got {value!r}")
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{path}: must be one of {schema['enum']}, got {value!r}")
    if "minimum" in schema and _is_number(value) and value < schema["minimum"]:
        errors.append(f"{path}: must be ≥ {schema['minimum']}, got {value!r}")
    if "minLength" in schema and isinstance(value, str) and len(value) < schema["minLength"]:
        errors.append(f"{path}: must have at least {schema['minLength']} characters")
    if isinstance(value, dict):
        _check_object(value, schema, path, errors)
    if isinstance(value, list):
        if "minItems" in schema and len(value) < schema["minItems"]:
            errors.append(f"{path}: needs at least {schema['minItems']} items, has {len(value)}")
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            errors.append(f"{path}: allows at most {schema['maxItems']} items, has {len(value)}")
        if "items" in schema:
            for i, item in enumerate(value):
                _check(item, schema["items"], f"{path}[{i}]", errors)


def _check_object(
    value: dict[str, Any], schema: dict[str, Any], path: str, errors: list[str]
) -> None:
    errors.extend(
        f"{path}: missing key '{k}'" for k in schema.get("required", ()) if k not in value
    )
    properties: dict[str, Any] = schema.get("properties", {})
    extra = schema.get("additionalProperties", True)
    for key, item in value.items():
        if key in properties:
            _check(item, properties[key], f"{path}.{key}", errors)
        elif extra is False:
            errors.append(f"{path}: unexpected key '{key}'")
        elif isinstance(extra, dict):
            _check(item, extra, f"{path}.{key}", errors)


def _type_ok(value: Any, expected: str | list[str]) -> bool:
    names = [expected] if isinstance(expected, str) else expected
    for name in names:
        if name in ("integer", "number") and isinstance(value, bool):
            continue
        if name == "integer" and isinstance(value, float) and value.is_integer():
            return True
        if isinstance(value, _TYPES[name]):
            return True
    return False


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _json_type(value: Any) -> str:
    for name in _TYPES:
        if _type_ok(value, name) and not (name == "number" and isinstance(value, int)):
            return name
    return type(value).__name__
