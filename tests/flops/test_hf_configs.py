"""Hugging Face config.json parsing and the decoder formulas on the published full-size configs
(tests/data/hf_configs/, README there): hand counts, family rules, errors, `mfu-flops`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Final

import pytest
from click.testing import CliRunner

from llm_perf_opt.cli.flops import cli
from llm_perf_opt.errors import ConfigError
from llm_perf_opt.flops import decoders
from llm_perf_opt.flops.hf import (
    SUPPORTED_TYPES,
    DecoderSpec,
    DenseMlp,
    GqaAttention,
    MlaAttention,
    MoeMlp,
    hf_model_from_dict,
)
from llm_perf_opt.flops.hf_model import estimate_hf_run, read_hf_config
from tests.helpers.paths import DATA

CONFIGS: Final = DATA / "hf_configs"
DENSE: Final = ("llama-3.2-1b", "mistral-7b-v0.1", "qwen2.5-7b", "qwen3-8b", "gemma-2b",
                "gemma-2-9b", "gemma-3-1b")  # fmt: skip


def _text(name: str) -> DecoderSpec:
    model = read_hf_config(CONFIGS / f"{name}.json")
    assert model is not None and model.text is not None
    return model.text


def _json(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((CONFIGS / f"{name}.json").read_text())
    return data


@pytest.mark.parametrize("ctx_len", [1, 512, 4096])
def test_llama_decode_is_twice_the_matmul_params_plus_attention(ctx_len: int) -> None:
    """Hand count from the JSON numbers alone: 2 × matmul params (lm_head included) +
    4 · layers · C · heads · head_dim."""
    c = _json("llama-3.2-1b")
    d, inter, layers = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"]
    heads, kv, hd = c["num_attention_heads"], c["num_key_value_heads"], c["head_dim"]
    vocab = c["vocab_size"]
    per_layer = d * heads * hd + 2 * d * kv * hd + heads * hd * d + 3 * d * inter
    matmul_params = layers * per_layer + d * vocab
    assert matmul_params == 1_235_746_816  # 1.24 B: the tied table counted once, as lm_head
    hand = 2 * matmul_params + 4 * layers * ctx_len * heads * hd
    counted = decoders.decode_flops_per_token(_text("llama-3.2-1b"), ctx_len).total_flops
    assert abs(counted / hand - 1) < 1e-3
    assert counted == hand  # no approximation is needed for a dense GQA decoder


@pytest.mark.parametrize("name", DENSE)
def test_dense_matmul_params_equal_the_transformers_linear_weights(name: str) -> None:
    """On the meta device (no memory), transformers' own Linear weights at full size."""
    torch = pytest.importorskip(
        "torch", reason="needs the runner extra: pip install -e '.[runner]'"
    )
    transformers = pytest.importorskip(
        "transformers", reason="needs the runner extra: pip install -e '.[runner]'"
    )
    config = transformers.AutoConfig.for_model(**_json(name))
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(config)
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    assert sum(decoders.per_token_params(_text(name)).values()) == linear


def test_family_rules_for_windows_and_experts() -> None:
    gemma3 = _text("gemma-3-1b")  # sliding_window_pattern 6: every sixth layer is global
    assert [layer.window for layer in gemma3.layers[:6]] == [512] * 5 + [None]
    assert sum(layer.window is None for layer in gemma3.layers) == 26 // 6
    gemma2 = _text("gemma-2-9b")  # alternating, sliding first
    assert [layer.window for layer in gemma2.layers[:2]] == [4096, None]
    assert all(layer.window == 4096 for layer in _text("mistral-7b-v0.1").layers)
    assert all(layer.window is None for layer in _text("qwen2.5-7b").layers)  # use_sliding_window
    v3 = _text("deepseek-v3")
    assert [type(layer.mlp) for layer in v3.layers[:4]] == [DenseMlp] * 3 + [MoeMlp]
    moe = v3.layers[3].mlp
    assert isinstance(moe, MoeMlp) and moe.shared_intermediate_size == 2048
    assert isinstance(v3.attention, MlaAttention) and v3.attention.q_lora_rank == 1536
    lite = _text("deepseek-v2-lite")
    assert isinstance(lite.attention, MlaAttention) and lite.attention.q_lora_rank is None
    qwen_moe = _text("qwen1.5-moe-a2.7b").layers[0].mlp
    assert qwen_moe == MoeMlp(60, 4, 1408, 5632, shared_gate=True)
    gemma = _text("gemma-2b")
    assert gemma.tie_word_embeddings and gemma.attention == GqaAttention(8, 1, 256)  # MQA


def test_sliding_window_caps_the_keys_of_decode_and_causal_prefill() -> None:
    spec = _text("gemma-2-9b")  # 21 sliding layers of 4096, 21 global
    slope = decoders.pair_flops(spec)
    at = {c: decoders.decode_flops_per_token(spec, c).blocks["text.attn_scores"] for c in
          (4096, 8192)}  # fmt: skip
    assert at[4096] == 42 * 4096 * slope
    assert at[8192] == (21 * 4096 + 21 * 8192) * slope
    lp = 6000
    causal = decoders.prefill_flops(spec, lp).blocks["text.attn_scores"]
    sliding_pairs = 4096 * 4097 // 2 + (lp - 4096) * 4096
    assert causal == (21 * sliding_pairs + 21 * lp * (lp + 1) // 2) * slope


def test_moe_decode_bytes_read_only_the_active_experts() -> None:
    spec = _text("mixtral-8x7b-v0.1")
    params = decoders.active_params(spec)
    assert params["text.moe_routed"] == 32 * 2 * 3 * 4096 * 14336
    one = decoders.decode_bytes_per_step(spec, 1000, "bfloat16")
    assert one["text.kv_cache_read"] == 32 * 1000 * 2 * 8 * 128 * 2
    assert one["text.kv_cache_write"] == 32 * 2 * 8 * 128 * 2
    assert one["text.moe_routed"] == 2 * params["text.moe_routed"]


def test_mla_caches_the_latent_and_expands_it_per_key() -> None:
    spec = _text("deepseek-v3")
    assert decoders.kv_bytes_per_position(spec, "bfloat16") == (512 + 64) * 2
    expand = 61 * 512 * 128 * (128 + 128)
    assert decoders.kv_expand_params(spec) == expand
    step = decoders.decode_flops_per_token(spec, 100).blocks
    assert step["text.mla_kv_expand"] == 2 * expand * 100
    assert step["text.attn_scores"] == 61 * 100 * 2 * 128 * (192 + 128)


def test_composite_vlm_config_is_split_into_text_and_vision() -> None:
    model = read_hf_config(CONFIGS / "qwen2.5-vl-7b-instruct.json")
    assert model is not None and model.text is not None and model.vision is not None
    assert model.text.model_type == "qwen2" and model.text.hidden_size == 3584
    assert model.vision.window_px == 112 and model.vision.full_attention_blocks == (7, 15, 23, 31)
    nested = {
        "model_type": "llava",
        "text_config": {**_json("llama-3.2-1b")},
        "vision_config": _json("clip-vit-large-patch14-336.vision"),
    }
    split = hf_model_from_dict(nested, "llava")
    assert split.text is not None and split.text.hidden_size == 2048
    assert split.vision is not None and split.vision.image_size == 336


def test_unknown_model_type_lists_the_supported_ones(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"model_type": "falcon", "hidden_size": 64}))
    with pytest.raises(ConfigError) as info:
        read_hf_config(path)
    message = str(info.value)
    assert "model_type 'falcon' is not supported" in message
    assert all(t in message for t in SUPPORTED_TYPES)


def test_deepseek_ocr_and_own_configs_are_left_to_their_reader(tmp_path: Path) -> None:
    for data in ({"schema": "x"}, {"model_type": "deepseek_ocr2", "text_config": {}},
                 {"language_config": {}}):  # fmt: skip
        path = tmp_path / "c.json"
        path.write_text(json.dumps(data))
        assert read_hf_config(path) is None


def test_missing_key_names_it() -> None:
    with pytest.raises(ConfigError, match="lacks required key 'intermediate_size'"):
        hf_model_from_dict({"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2,
                            "num_attention_heads": 4, "vocab_size": 10}, "c")  # fmt: skip


def test_estimate_slope_and_intercept_reproduce_every_step() -> None:
    model = read_hf_config(CONFIGS / "qwen3-30b-a3b.json")
    assert model is not None and model.text is not None
    est = estimate_hf_run(model, prefill_len=300, decode_steps=4)
    for c in (301, 304):
        step = decoders.decode_flops_per_token(model.text, c).total_flops
        assert step == est["decode_flops_at_c0"] + c * est["decode_flops_per_ctx"]
    assert (
        est["decode_flops_total"]
        == decoders.decode_flops_total(model.text, (301, 302, 303, 304)).total_flops
    )
    assert est["stages"] == ["prefill", "decode"] and est["vision_flops"] is None


def test_mfu_flops_cli_on_hf_configs() -> None:
    runner = CliRunner()
    llama = str(CONFIGS / "llama-3.2-1b.json")
    result = runner.invoke(cli, ["--config", llama])  # planning without Lp: per-token figures
    assert result.exit_code == 0, result.output
    assert "pass --prefill-len N for prefill and decode totals" in result.stdout
    assert "decode FLOPs / token at C = 0" in result.stdout and "prefill FLOPs" not in result.stdout
    doc = json.loads(runner.invoke(cli, ["--config", llama, "--format", "json"]).stdout)
    assert doc["prefill_flops"] is None and doc["decode_flops_per_ctx"] == 131_072
    assert doc["kv_cache_bytes_per_position"] == 16 * 2 * 8 * 64 * 2
    assert doc["tied_lm_head"] is True
    result = runner.invoke(cli, ["--config", llama, "--prefill-len", "512", "--format", "json"])
    doc = json.loads(result.stdout)
    assert (
        doc["decode_flops_per_token"]
        == decoders.decode_flops_per_token(_text("llama-3.2-1b"), 513).total_flops
    )
    table = runner.invoke(cli, ["--config", llama, "--prefill-len", "512"]).stdout
    assert "decode FLOPs / token at C = 0" in table and "2,471,493,632" in table
    vl = str(CONFIGS / "qwen2-vl-7b-instruct.json")
    doc = json.loads(
        runner.invoke(cli, ["--config", vl, "--image-size", "448x672", "--format", "json"]).stdout
    )
    assert doc["image_tokens"] == 16 * 24 and doc["prefill_len"] == 16 * 24
    bad = runner.invoke(cli, ["--config", vl, "--image-size", "big"])
    assert bad.exit_code == 2 and "image size 'big' is not HxW" in bad.output


def test_docs_full_size_table_matches_the_code(repo_root: Path) -> None:
    """Every row of the decoder table in docs/flops.md, recomputed from its config file."""
    sources = {}
    for line in (CONFIGS / "README.md").read_text().splitlines():
        cells = [c.strip().strip("`") for c in line.strip("|").split("|")]
        if len(cells) == 3 and cells[0].endswith(".json"):
            sources[cells[1]] = cells[0]
    rows = 0
    for line in (repo_root / "docs" / "flops.md").read_text().splitlines():
        cells = [c.strip().strip("`") for c in line.strip("|").split("|")]
        if len(cells) != 7 or cells[0] not in sources:
            continue
        model = read_hf_config(CONFIGS / sources[cells[0]])
        assert model is not None and model.text is not None
        est = estimate_hf_run(model, prefill_len=1)
        kv = decoders.kv_bytes_per_position(model.text, "bfloat16") * len(model.text.layers)
        assert cells[1] == model.model_type
        assert cells[3] == f"{est['active_params']:,}"
        assert cells[4] == f"{est['decode_flops_at_c0'] / 1e9:,.3f}"
        assert cells[5] == f"{est['decode_flops_per_ctx']:,}"
        assert cells[6] == f"{kv:,}"
        rows += 1
    assert rows == 12
