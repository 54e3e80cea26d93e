"""Architecture configs: built-in numbers, exact JSON round trip, and loading user JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from llm_perf_opt.errors import ConfigError
from llm_perf_opt.flops.configs import (
    ModelConfig,
    builtin_config,
    config_from_json_dict,
    load_config_json,
)
from llm_perf_opt.vocab import FAMILIES


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("tiny", [False, True])
def test_to_dict_round_trips_exactly_through_json(family: str, tiny: bool) -> None:
    config = builtin_config(family, tiny=tiny)
    text = json.dumps(config.to_dict())
    again = ModelConfig.from_dict(json.loads(text))
    assert again == config
    assert json.dumps(again.to_dict()) == text


def test_v1_numbers_match_the_reference_architecture() -> None:
    # the published architecture numbers (docs/flops.md)
    config = builtin_config("deepseek-ocr")
    sam, clip, text = config.sam, config.clip, config.text
    assert clip is not None
    assert (sam.width, sam.depth, sam.num_heads, sam.mlp_dim, sam.window_size) == (
        768,
        12,
        12,
        3072,
        14,
    )
    assert sam.global_attn_indexes == (2, 5, 8, 11)
    assert (sam.out_chans, sam.downsample_channels) == (256, (512, 1024))
    assert (clip.width, clip.depth, clip.num_heads, clip.mlp_dim) == (1024, 24, 16, 4096)
    assert (config.projector.input_dim, config.projector.output_dim) == (2048, 1280)
    assert (text.hidden_size, text.num_layers, text.num_heads, text.num_kv_heads) == (
        1280,
        12,
        10,
        10,
    )
    assert text.head_dim == 128
    assert text.mlp_layer_types == ("dense",) + ("sparse",) * 11
    assert (text.intermediate_size, text.moe_intermediate_size) == (6848, 896)
    assert (text.n_routed_experts, text.num_experts_per_tok, text.n_shared_experts) == (64, 6, 2)
    assert (text.vocab_size, text.max_position_embeddings) == (129280, 8192)
    assert not text.tie_word_embeddings
    # 1024 px → 64×64 SAM patches → 16×16 = 256 tokens
    assert sam.grid(1024) == 64
    assert sam.output_tokens(1024) == 256


def test_ocr2_numbers_match_transformers_and_the_reference() -> None:
    config = builtin_config("deepseek-ocr2")
    enc = config.query_encoder
    assert enc is not None and config.clip is None
    assert config.sam.downsample_channels == (512, 896)
    assert (enc.hidden_size, enc.num_layers, enc.num_heads, enc.num_kv_heads) == (896, 24, 14, 2)
    assert enc.intermediate_size == 4864
    assert (enc.num_queries_global, enc.num_queries_crop) == (256, 144)
    assert enc.queries_for(config.sam.output_tokens(1024)) == 256
    assert enc.queries_for(config.sam.output_tokens(768)) == 144
    assert config.projector.input_dim == 896
    assert config.text == builtin_config("deepseek-ocr").text


@pytest.mark.parametrize("family", FAMILIES)
def test_tiny_configs_keep_every_structural_feature(family: str) -> None:
    config = builtin_config(family, tiny=True)
    sam, text = config.sam, config.text
    windowed = [i for i in range(sam.depth) if i not in sam.global_attn_indexes]
    assert windowed and sam.global_attn_indexes
    assert sam.use_rel_pos
    base = config.mode("base").image_size
    assert sam.grid(base) % sam.window_size != 0  # windows need padding, as at full size
    assert text.mlp_layer_types[0] == "dense" and text.n_moe_layers >= 1
    assert text.n_shared_experts >= 1 and text.num_experts_per_tok < text.n_routed_experts
    assert not text.tie_word_embeddings
    assert text.hidden_size <= 64 and text.vocab_size <= 1024
    gundam = config.mode("gundam")
    assert gundam.crop_size is not None
    if config.query_encoder is not None:
        assert config.query_encoder.num_kv_heads < config.query_encoder.num_heads  # GQA


def test_unknown_family_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="deepseek-ocr, deepseek-ocr2"):
        builtin_config("deepseek-ocr3")


def test_from_dict_names_a_missing_key() -> None:
    data = builtin_config("deepseek-ocr").to_dict()
    del data["text"]["vocab_size"]
    with pytest.raises(ConfigError, match=r"config\.text lacks required key 'vocab_size'"):
        ModelConfig.from_dict(data)


def test_from_dict_rejects_unknown_keys_and_wrong_types() -> None:
    data = builtin_config("deepseek-ocr").to_dict()
    data["text"]["hidden_sise"] = 3
    with pytest.raises(ConfigError, match="unknown keys"):
        ModelConfig.from_dict(data)
    data = builtin_config("deepseek-ocr").to_dict()
    data["sam"]["depth"] = "12"
    with pytest.raises(ConfigError, match=r"config\.sam\.depth must be int"):
        ModelConfig.from_dict(data)


def test_inconsistent_widths_are_rejected() -> None:
    data = builtin_config("deepseek-ocr").to_dict()
    data["projector"]["input_dim"] = 1024
    with pytest.raises(ConfigError, match=r"projector\.input_dim"):
        ModelConfig.from_dict(data)
    data = builtin_config("deepseek-ocr").to_dict()
    data["text"]["mlp_layer_types"] = ["dense"] * 3
    with pytest.raises(ConfigError, match="mlp_layer_types has 3 entries"):
        ModelConfig.from_dict(data)


def _hf_ocr2_json() -> dict[str, Any]:
    """A DeepSeek-OCR-2 config.json as transformers writes it (defaults of SAM omitted)."""
    return {
        "model_type": "deepseek_ocr2",
        "image_token_id": 128815,
        "vision_config": {
            "sam_config": {"downsample_channels": [512, 896]},
            "encoder_config": {
                "hidden_size": 896,
                "intermediate_size": 4864,
                "num_hidden_layers": 24,
                "num_attention_heads": 14,
                "num_key_value_heads": 2,
                "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0},
            },
        },
        "text_config": {
            "hidden_size": 1280,
            "intermediate_size": 6848,
            "moe_intermediate_size": 896,
            "num_hidden_layers": 12,
            "num_attention_heads": 10,
            "num_key_value_heads": 10,
            "n_routed_experts": 64,
            "n_shared_experts": 2,
            "num_experts_per_tok": 6,
            "mlp_layer_types": ["dense"] + ["sparse"] * 11,
            "vocab_size": 129280,
            "max_position_embeddings": 8192,
        },
    }


def test_hf_ocr2_config_json_gives_the_builtin_architecture(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(_hf_ocr2_json()))
    assert load_config_json(path) == builtin_config("deepseek-ocr2")


def test_hf_config_may_use_first_k_dense_replace() -> None:
    data = _hf_ocr2_json()
    del data["text_config"]["mlp_layer_types"]
    data["text_config"]["first_k_dense_replace"] = 1
    assert config_from_json_dict(data).text.mlp_layer_types == ("dense",) + ("sparse",) * 11


@pytest.mark.parametrize(
    ("section", "key"),
    [("text_config", "hidden_size"), ("text_config", "num_experts_per_tok")],
)
def test_hf_config_missing_a_placeholder_key_is_named(
    tmp_path: Path, section: str, key: str
) -> None:
    data = _hf_ocr2_json()
    del data[section][key]
    path = tmp_path / "config.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ConfigError, match=f"text_config lacks required key '{key}'"):
        load_config_json(path)


def test_hf_config_missing_the_encoder_is_named() -> None:
    data = _hf_ocr2_json()
    del data["vision_config"]["encoder_config"]
    with pytest.raises(ConfigError, match="lacks required object 'encoder_config'"):
        config_from_json_dict(data, source="c.json")


def test_v1_config_json_reads_language_and_projector_config() -> None:
    data = {
        "language_config": {
            "hidden_size": 1280,
            "intermediate_size": 6848,
            "moe_intermediate_size": 896,
            "num_hidden_layers": 12,
            "num_attention_heads": 10,
            "num_key_value_heads": 10,
            "n_routed_experts": 64,
            "n_shared_experts": 2,
            "num_experts_per_tok": 6,
            "first_k_dense_replace": 1,
            "vocab_size": 129280,
            "max_position_embeddings": 8192,
        },
        "projector_config": {"input_dim": 2048, "n_embed": 1280, "projector_type": "linear"},
    }
    assert config_from_json_dict(data) == builtin_config("deepseek-ocr")


def test_load_config_json_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config_json(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="not readable JSON"):
        load_config_json(bad)
    other = tmp_path / "other.json"
    other.write_text('{"foo": 1}')
    with pytest.raises(ConfigError, match="not a recognised model config"):
        load_config_json(other)
