"""The JSON Schemas of the run metadata and the static compute report, and their one validator.

Both the runner (before it emits) and the analysis (before it reads) check a record here. The
validator implements the JSON Schema keywords the shipped schemas use — `type` (one or a list;
a number must be finite), `properties`, `required`, `additionalProperties` (bool or schema),
`items`, `enum`, `const`, `minimum`, `exclusiveMinimum`, `minItems`, `maxItems`, `minLength` —
and ignores annotations (`$schema`, `$id`, `title`, `description`). What a schema cannot say
(one context length per decode step, distinct image indices) `check_run_meta` checks after it.
A test checks the validator agrees with the `jsonschema` package where that is installed; the
GPU machine does not have it, hence this.
"""

from __future__ import annotations

import json
import math
from importlib import resources
from typing import Any, Final

from llm_perf_opt.errors import MetaError
from llm_perf_opt.vocab import HF_DECODER_FAMILY

RUN_META_SCHEMA: Final = "run_meta.schema.json"
STATIC_COMPUTE_SCHEMA: Final = "static_compute.schema.json"
# Keys `model.config` must hold: our ModelConfig.to_dict(), or a Hugging Face config.json.
_OWN_CONFIG_KEYS: Final = ("schema", "family", "sam", "projector", "text", "modes")
_HF_CONFIG_KEYS: Final = ("model_type",)
# Mismatches listed in one error message.
MAX_LISTED: Final = 10

_TYPES: Final[dict[str, tuple[type, ...]]] = {
    "object": (dict,),
    "array": (list,),
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "null": (type(None),),
}
_TYPE_NAMES: Final = {
    "object": "an object",
    "array": "an array",
    "string": "a string",
    "integer": "an integer",
    "number": "a number",
    "boolean": "true or false",
    "null": "null",
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
        "exclusiveMinimum",
        "minItems",
        "maxItems",
        "minLength",
        "$schema",
        "$id",
        "title",
        "description",
    }
)


def load_schema(name: str = RUN_META_SCHEMA) -> dict[str, Any]:
    """Read a schema shipped in this package (e.g. `run_meta.schema.json`)."""
    text = resources.files(__package__).joinpath(name).read_text(encoding="utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


def validate(instance: Any, schema: dict[str, Any], path: str = "") -> list[str]:
    """Every mismatch between `instance` and `schema`, as "`key` problem" lines (empty: valid).

    Args:
        instance: the decoded JSON value.
        schema: the schema it must match.
        path: the dotted key of `instance` in its document ("" for the whole document).

    Raises:
        ValueError: the schema uses a keyword this validator does not implement.
    """
    errors: list[str] = []
    _check(instance, schema, path, errors)
    return errors


def check_run_meta(meta: Any, source: str = "runner") -> None:
    """Validate run metadata against `run_meta.schema.json` and the rules across its keys.

    Args:
        meta: the decoded JSON value.
        source: where it came from (shown in the error), e.g. `trace mark` or a file path.

    Raises:
        MetaError: it does not match; the message names each failing key.
    """
    errors = validate(meta, load_schema(RUN_META_SCHEMA))
    if not errors:
        errors = _run_meta_rules(meta)
    _raise(errors, f"run metadata ({source})")


def check_static_compute(report: Any, source: str) -> None:
    """Validate the runner's static compute report against `static_compute.schema.json`.

    Raises:
        MetaError: it does not match; the message names each failing key.
    """
    _raise(
        validate(report, load_schema(STATIC_COMPUTE_SCHEMA)), f"static compute report ({source})"
    )


def check_part(value: Any, key: str, what: str) -> None:
    """Validate the value of the run metadata's top-level `key` against its part of the schema.

    Raises:
        MetaError: it does not match.
    """
    _raise(validate(value, load_schema(RUN_META_SCHEMA)["properties"][key], key), what)


def _raise(errors: list[str], what: str) -> None:
    if not errors:
        return
    more = f"; … ({len(errors) - MAX_LISTED} more)" if len(errors) > MAX_LISTED else ""
    raise MetaError(f"{what}: " + "; ".join(errors[:MAX_LISTED]) + more)


def _run_meta_rules(meta: dict[str, Any]) -> list[str]:
    """What the schema cannot say: one context length per decode step, distinct image indices,
    at least one image unless the run is a `serve` loop, and the model config's keys by family
    (ours for DeepSeek-OCR, a Hugging Face config.json for `hf-decoder`)."""
    errors = []
    if not meta["images"] and "serve" not in meta:
        errors.append("`images` needs at least 1 item(s), has 0 (only a `serve` run has none)")
    model = meta["model"]
    if isinstance(model.get("config"), dict):
        keys = _HF_CONFIG_KEYS if model.get("family") == HF_DECODER_FAMILY else _OWN_CONFIG_KEYS
        errors.extend(f"`model.config.{k}` is missing" for k in keys if k not in model["config"])
    for i, image in enumerate(meta["images"]):
        lens, steps = image["decode_context_lens"], image["decode_steps"]
        if len(lens) != steps:
            errors.append(
                f"`images[{i}].decode_context_lens` has {len(lens)} entries but decode_steps is "
                f"{steps}"
            )
    indices = [image["index"] for image in meta["images"]]
    if len(set(indices)) != len(indices):
        errors.append(f"`images` has repeated `index` values {indices}")
    return errors


def _check(value: Any, schema: dict[str, Any], path: str, errors: list[str]) -> None:
    unknown = set(schema) - _SUPPORTED
    if unknown:
        raise ValueError(f"schema at {_key(path)} uses unsupported keywords {sorted(unknown)}")
    if "type" in schema and not _type_ok(value, schema["type"]):
        errors.append(f"{_key(path)} must be {_type_words(schema['type'], value)}, got {value!r}")
        return
    if "const" in schema and value != schema["const"]:
        errors.append(f"{_key(path)} must be {schema['const']!r}, got {value!r}")
    if "enum" in schema and value not in schema["enum"]:
        allowed = ", ".join("null" if v is None else str(v) for v in schema["enum"])
        errors.append(f"{_key(path)} must be one of {allowed}, got {value!r}")
    if "minimum" in schema and _is_number(value) and value < schema["minimum"]:
        errors.append(f"{_key(path)} must be ≥ {schema['minimum']}, got {value!r}")
    if "exclusiveMinimum" in schema and _is_number(value) and value <= schema["exclusiveMinimum"]:
        errors.append(f"{_key(path)} must be > {schema['exclusiveMinimum']}, got {value!r}")
    if "minLength" in schema and isinstance(value, str) and len(value) < schema["minLength"]:
        errors.append(f"{_key(path)} must have at least {schema['minLength']} characters")
    if isinstance(value, dict):
        _check_object(value, schema, path, errors)
    if isinstance(value, list):
        if "minItems" in schema and len(value) < schema["minItems"]:
            errors.append(
                f"{_key(path)} needs at least {schema['minItems']} item(s), has {len(value)}"
            )
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            errors.append(
                f"{_key(path)} allows at most {schema['maxItems']} item(s), has {len(value)}"
            )
        if "items" in schema:
            for i, item in enumerate(value):
                _check(item, schema["items"], f"{path}[{i}]", errors)


def _check_object(
    value: dict[str, Any], schema: dict[str, Any], path: str, errors: list[str]
) -> None:
    prefix = f"{path}." if path else ""
    errors.extend(f"`{prefix}{k}` is missing" for k in schema.get("required", ()) if k not in value)
    properties: dict[str, Any] = schema.get("properties", {})
    extra = schema.get("additionalProperties", True)
    for key, item in value.items():
        if key in properties:
            _check(item, properties[key], f"{prefix}{key}", errors)
        elif extra is False:
            errors.append(f"`{prefix}{key}` is not a known key")
        elif isinstance(extra, dict):
            _check(item, extra, f"{prefix}{key}", errors)


def _key(path: str) -> str:
    return f"`{path}`" if path else "(top level)"


def _type_ok(value: Any, expected: str | list[str]) -> bool:
    names = [expected] if isinstance(expected, str) else expected
    for name in names:
        if name in ("integer", "number") and (isinstance(value, bool) or not _finite(value)):
            continue
        if name == "integer" and isinstance(value, float) and value.is_integer():
            return True
        if isinstance(value, _TYPES[name]):
            return True
    return False


def _type_words(expected: str | list[str], value: Any) -> str:
    """`a number`, `an integer or null`; `a finite number` for NaN and ±Infinity."""
    names = [expected] if isinstance(expected, str) else expected
    words = " or ".join(_TYPE_NAMES[n] for n in names)
    if not _finite(value) and {"integer", "number"} & set(names):
        return words.replace("a number", "a finite number").replace(
            "an integer", "a finite integer"
        )
    return words


def _finite(value: Any) -> bool:
    return not isinstance(value, float) or math.isfinite(value)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
