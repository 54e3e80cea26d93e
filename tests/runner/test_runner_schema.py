"""The run-metadata schema: the runner's output matches it, the built-in validator agrees with
`jsonschema`, the documented keys are the schema's, and the analysis side reads the output."""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable
from typing import Any

import pytest

# The runner extra (`pip install -e ".[runner]"`) brings these; without it the module is skipped.
pytest.importorskip("torch", reason="needs the runner extra: pip install -e '.[runner]'")
pytest.importorskip("transformers", reason="needs the runner extra: pip install -e '.[runner]'")
import torch

from llm_perf_opt.errors import MetaError
from llm_perf_opt.inputs.run_meta import parse_meta
from llm_perf_opt.runner.cli import main
from llm_perf_opt.schemas import (
    check_run_meta,
    load_schema,
    validate,
)
from tests.helpers.paths import REPO

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def meta(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("run")
    args = ["--tiny", "--device", "cpu", "--no-nvtx", "--out", str(out), "--mode", "gundam"]
    assert main([*args, "--max-new-tokens", "3", "--num-images", "2"]) == 0
    data: dict[str, Any] = json.loads((out / "run.meta.json").read_text())
    return data


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def apply(doc: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        target: Any = doc
        for key in parents:
            target = target[int(key)] if isinstance(target, list) else target[key]
        if value is _DELETE:
            del target[last]
        else:
            target[last] = value

    return apply


_DELETE = object()
MUTATIONS = {
    "valid as is": lambda d: None,
    "missing run_id": _set("run_id", _DELETE),
    "wrong schema id": _set("schema", "llm_perf_opt.run_meta/2"),
    "bool as integer": _set("max_new_tokens", True),
    "float as integer": _set("max_new_tokens", 3.5),
    "unknown top key": _set("extra", 1),
    "bad dtype": _set("dtype", "int8"),
    "bad family": _set("model.family", "deepseek-vl"),
    "null fixed context ok": _set("context.context_len_fixed", None),
    "zero fixed context": _set("context.context_len_fixed", 0),
    "crop grid of 3": _set("images.0.crop_grid", [1, 2, 3]),
    "null crop grid ok": _set("images.0.crop_grid", None),
    "negative wall": _set("images.0.wall_s.decode", -1.0),
    "wall as string": _set("images.1.wall_s.vision", "fast"),
    "missing wall stage": _set("images.0.wall_s.prefill", _DELETE),
    "string step wall": _set("images.0.decode_step_wall_s", ["x"]),
    "extra version ok": _set("versions.cuda", "13.0"),
    "non-string version": _set("versions.cuda", 13),
}
# Rules across keys the schema cannot state (`schemas._run_meta_rules`): schema-valid, refused.
RULE_MUTATIONS = {
    "no images outside a serve run": _set("images", []),
    "config without schema": _set("model.config.schema", _DELETE),
    "hf-decoder config without model_type": _set("model.family", "hf-decoder"),
}


@pytest.mark.parametrize("name", list(RULE_MUTATIONS))
def test_rules_across_keys_refuse_what_the_schema_allows(name: str, meta: dict[str, Any]) -> None:
    doc = copy.deepcopy(meta)
    RULE_MUTATIONS[name](doc)
    assert validate(doc, load_schema()) == []
    with pytest.raises(MetaError):
        check_run_meta(doc, "test")


@pytest.mark.parametrize("name", list(MUTATIONS))
def test_builtin_validator_agrees_with_jsonschema(name: str, meta: dict[str, Any]) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    doc = copy.deepcopy(meta)
    MUTATIONS[name](doc)
    schema = load_schema()
    reference = sorted(e.message for e in jsonschema.Draft202012Validator(schema).iter_errors(doc))
    ours = validate(doc, schema)
    assert bool(ours) == bool(reference), (ours, reference)
    assert bool(ours) == ("ok" not in name and name != "valid as is")


def test_schema_itself_is_valid_draft_2020_12() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.Draft202012Validator.check_schema(load_schema())


def test_check_run_meta_names_the_failing_key(meta: dict[str, Any]) -> None:
    doc = copy.deepcopy(meta)
    doc["images"][1]["prefill_len"] = "many"
    with pytest.raises(MetaError, match=r"images\[1\]\.prefill_len"):
        check_run_meta(doc)
    check_run_meta(meta)


def test_validator_rejects_keywords_it_does_not_implement() -> None:
    with pytest.raises(ValueError, match="pattern"):
        validate("x", {"type": "string", "pattern": "^x$"})


def _documented_keys() -> set[str]:
    """Keys in the first column of the tables in docs/run-metadata.md (`a.b, c` expanded)."""
    text = (REPO / "docs" / "run-metadata.md").read_text()
    keys: set[str] = set()
    for row in re.findall(r"^\| (`[^|]+) \|", text, flags=re.MULTILINE):
        for key in re.findall(r"`([\w.]+)`", row):
            keys.add(key)
    return keys


def _schema_keys(schema: dict[str, Any], prefix: str = "") -> set[str]:
    keys: set[str] = set()
    for name, sub in schema.get("properties", {}).items():
        if prefix == "model.config.":
            continue  # ModelConfig's own keys are documented in flops/configs.py
        keys.add(prefix + name)
        keys |= _schema_keys(sub, f"{prefix}{name}.")
        if "items" in sub:
            keys |= _schema_keys(sub["items"], "")
    return keys


def test_documented_keys_are_the_schema_keys() -> None:
    documented = _documented_keys()
    in_schema = _schema_keys(load_schema())
    # the doc lists leaves (`model.name`) and image keys bare (`wall_s.vision`); compare leaves
    leaves = {k for k in in_schema if not any(o.startswith(k + ".") for o in in_schema)}
    assert documented == leaves


def test_runner_output_is_consistent_and_readable_by_the_analyzer(meta: dict[str, Any]) -> None:
    parsed = parse_meta(meta, "test")
    assert parsed.family == meta["model"]["family"] and len(parsed.images) == 2
    for image in parsed.images:
        assert image.decode_steps == meta["max_new_tokens"] - 1
        assert image.decode_context_lens == tuple(
            image.prefill_len + k for k in range(1, image.decode_steps + 1)
        )
        assert image.n_crops == (image.crop_grid[0] * image.crop_grid[1] if image.crop_grid else 0)
