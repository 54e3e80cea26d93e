"""The shared vocabulary: one spelling of each word, which the schemas, the CLIs' choices and the
runner's checks all use, and the one `AxB` size reader."""

from __future__ import annotations

from typing import Any

import click
import pytest

from llm_perf_opt import vocab
from llm_perf_opt.cli.analyze import main as analyze
from llm_perf_opt.cli.flops import cli as flops
from llm_perf_opt.errors import ConfigError
from llm_perf_opt.flops.analytic import DTYPE_BYTES
from llm_perf_opt.schemas import STATIC_COMPUTE_SCHEMA, load_schema

RUN_META = load_schema()


def _choices(command: click.Command, option: str) -> tuple[str, ...]:
    param = next(p for p in command.params if p.name == option)
    assert isinstance(param.type, click.Choice)
    return tuple(param.type.choices)


def _prop(schema: dict[str, Any], *path: str) -> dict[str, Any]:
    for key in path:
        schema = schema["items"] if key == "[]" else schema["properties"][key]
    return schema


def test_the_run_metadata_schema_spells_the_vocabulary() -> None:
    assert _prop(RUN_META, "schema")["const"] == vocab.RUN_META_SCHEMA_ID
    assert _prop(RUN_META, "nvtx_domain")["const"] == vocab.NVTX_DOMAIN
    families = (*vocab.FAMILIES, vocab.HF_DECODER_FAMILY)
    assert tuple(_prop(RUN_META, "model", "family")["enum"]) == families
    config = _prop(RUN_META, "model", "config", "schema")
    assert config["const"] == vocab.MODEL_CONFIG_SCHEMA_ID
    assert tuple(_prop(RUN_META, "dtype")["enum"]) == vocab.STORAGE_DTYPES
    # null: a text-only --serve --decoder-config run
    assert tuple(_prop(RUN_META, "mode")["enum"]) == (*vocab.VISION_MODES, None)
    assert tuple(_prop(RUN_META, "images", "[]", "mode")["enum"]) == vocab.VISION_MODES
    modes = _prop(RUN_META, "context", "context_len_mode")["enum"]
    assert tuple(modes) == vocab.CTX_MODES
    assert set(_prop(RUN_META, "calibration", "dtype")["enum"]) <= set(vocab.PEAK_DTYPES)
    stages = _prop(RUN_META, "calibration", "gemms", "[]", "stage")["enum"]
    assert tuple(stages) == (*vocab.STAGES, None)
    assert tuple(_prop(RUN_META, "images", "[]", "wall_s")["required"]) == vocab.STAGES
    static = load_schema(STATIC_COMPUTE_SCHEMA)
    assert static["properties"]["schema"]["const"] == vocab.STATIC_COMPUTE_SCHEMA_ID


def test_the_serve_block_spells_the_vocabulary() -> None:
    assert tuple(_prop(RUN_META, "serve", "images", "[]", "mode")["enum"]) == vocab.VISION_MODES
    phases = _prop(RUN_META, "serve", "steps", "[]", "entries", "[]", "phase")["enum"]
    assert tuple(phases) == vocab.SERVE_PHASES


def test_dtype_spellings_map_onto_each_other() -> None:
    assert set(DTYPE_BYTES) == set(vocab.STORAGE_DTYPES)
    assert all(vocab.PEAK_DTYPE_OF[d] in vocab.PEAK_DTYPES for d in vocab.STORAGE_DTYPES)
    assert set(vocab.STORAGE_DTYPE_OF.values()) == set(vocab.STORAGE_DTYPES)
    for storage in vocab.STORAGE_DTYPES:  # a storage dtype's peak column implies it back
        assert vocab.STORAGE_DTYPE_OF[vocab.PEAK_DTYPE_OF[storage]] == storage


def test_both_clis_take_their_choices_from_the_vocabulary() -> None:
    for command in (analyze, flops):
        assert _choices(command, "ctx_mode") == vocab.CTX_MODES
        assert _choices(command, "prefill_logits") == vocab.LM_HEAD_POSITIONS
    assert _choices(analyze, "model") == _choices(flops, "model_name") == vocab.FAMILIES
    assert _choices(analyze, "mode") == _choices(flops, "mode") == vocab.VISION_MODES
    assert _choices(analyze, "dtype") == vocab.PEAK_DTYPES
    assert _choices(flops, "dtype") == vocab.STORAGE_DTYPES


def test_parse_size_reads_two_positive_integers() -> None:
    assert vocab.parse_size("3x2", "crop grid") == (3, 2)
    assert vocab.parse_size("10X4", "crop grid") == (10, 4)
    assert vocab.parse_size(" 3 × 2 ", "crop grid") == (3, 2)
    assert vocab.parse_size("448", "image size", square=True) == (448, 448)
    for bad in ("3", "0x2", "ax2", "3x2x1", "-1x2", ""):
        with pytest.raises(ConfigError, match=r"crop grid .* is not WxH with positive integers"):
            vocab.parse_size(bad, "crop grid")
    with pytest.raises(ConfigError, match=r"image size 'big' is not HxW .*, e\.g\. 448x448"):
        vocab.parse_size("big", "image size", "HxW", "448x448", square=True)
