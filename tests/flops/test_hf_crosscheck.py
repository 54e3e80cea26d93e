"""Analytic FLOPs of Hugging Face configs vs `FlopCounterMode` on the transformers models.

For each family a tiny config (every structural feature kept: GQA, sliding windows, MoE with
shared experts and dense layers, MLA with and without a q LoRA) is read by our JSON parser and
built by transformers on CPU with random weights; prefill of Lp tokens (logits on the last
position, as `generate` does) and one decode step at C = Lp + 1 are counted. `FlopCounterMode`
counts masked attention over the full square, so prefill is compared with the full-square
convention; decode has no mask. The vision towers are counted on one image.
"""

from __future__ import annotations

from typing import Any, Final

import pytest

torch = pytest.importorskip("torch", reason="needs the runner extra: pip install -e '.[runner]'")
transformers = pytest.importorskip(
    "transformers", reason="needs the runner extra: pip install -e '.[runner]'"
)

from llm_perf_opt.flops import decoders, vision_towers  # noqa: E402
from llm_perf_opt.flops.hf import hf_model_from_dict  # noqa: E402
from llm_perf_opt.runner.static_compute import flop_counter_flops  # noqa: E402

TOLERANCE: Final = 0.005
LP: Final = 24
BASE: Final = {
    "hidden_size": 64,
    "intermediate_size": 96,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "vocab_size": 256,
    "max_position_embeddings": 512,
}
MLA: Final = {
    "num_key_value_heads": 4,
    "n_routed_experts": 4,
    "num_experts_per_tok": 2,
    "moe_intermediate_size": 32,
    "n_shared_experts": 1,
    "first_k_dense_replace": 1,
    "kv_lora_rank": 32,
    "qk_nope_head_dim": 16,
    "qk_rope_head_dim": 8,
    "head_dim": 8,
    "v_head_dim": 16,
}
# Windows (8) shorter than Lp so the sliding layers clip both prefill masks and decode caches.
TINY: Final[dict[str, dict[str, Any]]] = {
    "llama": {},
    "mistral": {"sliding_window": 8},
    "qwen2": {"num_key_value_heads": 1},
    "qwen3": {},
    "gemma": {"num_key_value_heads": 1},
    "gemma2": {"sliding_window": 8},
    "gemma3_text": {
        "sliding_window": 8,
        "layer_types": ["sliding_attention", "sliding_attention", "full_attention"],
    },
    "mixtral": {"num_local_experts": 4, "num_experts_per_tok": 2},
    "qwen2_moe": {
        "num_experts": 4,
        "num_experts_per_tok": 2,
        "moe_intermediate_size": 32,
        "shared_expert_intermediate_size": 48,
        "mlp_only_layers": [1],
    },
    "qwen3_moe": {"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 32},
    "deepseek_v2": {**MLA, "q_lora_rank": None},
    "deepseek_v3": {**MLA, "q_lora_rank": 24, "n_group": 1, "topk_group": 1},
}


@pytest.fixture(autouse=True)
def _one_thread() -> Any:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _close(counted: int, expected: int) -> bool:
    return abs(counted / expected - 1) <= TOLERANCE


@pytest.mark.parametrize("family", list(TINY))
def test_decoder_prefill_and_decode_match_flop_counter_mode(family: str) -> None:
    data = {**BASE, "model_type": family, **TINY[family]}
    spec = hf_model_from_dict(data, "tiny").text
    assert spec is not None
    torch.manual_seed(0)
    config = transformers.AutoConfig.for_model(**data)
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    ids = torch.randint(0, BASE["vocab_size"], (1, LP))
    with torch.no_grad():
        prefill, out = flop_counter_flops(lambda: model(ids, use_cache=True, logits_to_keep=1))
        token = torch.tensor([[5]])
        past = out.past_key_values
        decode, _ = flop_counter_flops(lambda: model(token, past_key_values=past, use_cache=True))
    expected_prefill = decoders.prefill_flops(spec, LP, "full").total_flops
    expected_decode = decoders.decode_flops_per_token(spec, LP + 1).total_flops
    assert _close(prefill, expected_prefill), (prefill, expected_prefill)
    assert _close(decode, expected_decode), (decode, expected_decode)
    # the causal convention differs from the full square only in attention scores
    causal = decoders.prefill_flops(spec, LP, "causal").blocks
    full = decoders.prefill_flops(spec, LP, "full").blocks
    assert {k for k in full if full[k] != causal[k]} == {"text.attn_scores"}


VIT: Final = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "image_size": 64,
    "patch_size": 8,
}


@pytest.mark.parametrize("model_type", ["clip_vision_model", "siglip_vision_model"])
def test_vit_towers_match_flop_counter_mode(model_type: str) -> None:
    data = {**VIT, "model_type": model_type}
    spec = hf_model_from_dict(data, "tiny").vision
    assert spec is not None
    cls = {
        "clip_vision_model": transformers.CLIPVisionModel,
        "siglip_vision_model": transformers.SiglipVisionModel,
    }[model_type]
    model = cls(transformers.AutoConfig.for_model(**data)).eval()
    with torch.no_grad():
        counted, _ = flop_counter_flops(lambda: model(pixel_values=torch.randn(1, 3, 64, 64)))
    expected = vision_towers.vision_flops(spec, (64, 64)).total_flops
    assert _close(counted, expected), (counted, expected)
    assert vision_towers.image_tokens(spec, (64, 64)) == 64


QWEN_VL: Final = {
    "qwen2_vl": {
        "depth": 2,
        "embed_dim": 64,
        "hidden_size": 96,
        "mlp_ratio": 2,
        "num_heads": 4,
        "patch_size": 4,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
    },
    # 16 px windows = 2×2 merged units; a 7×11 merged grid leaves smaller edge windows
    "qwen2_5_vl": {
        "depth": 3,
        "hidden_size": 64,
        "intermediate_size": 80,
        "out_hidden_size": 96,
        "num_heads": 4,
        "patch_size": 4,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "window_size": 16,
        "fullatt_block_indexes": [1],
    },
}


@pytest.mark.parametrize("model_type", list(QWEN_VL))
def test_qwen_vl_towers_match_flop_counter_mode(model_type: str) -> None:
    text = {k: v for k, v in BASE.items() if k != "head_dim"} | {"hidden_size": 96}
    data = {"model_type": model_type, "vision_config": QWEN_VL[model_type], "text_config": text}
    parsed = hf_model_from_dict(data, "tiny")
    assert parsed.text is not None and parsed.text.hidden_size == 96
    spec = parsed.vision
    assert spec is not None
    gh, gw = vision_towers.patch_grid(spec, (56, 88))  # rounded to multiples of 4 × 2 px
    assert (gh, gw) == (14, 22)
    config = transformers.AutoConfig.for_model(**data).vision_config
    module = {
        "qwen2_vl": "transformers.models.qwen2_vl.modeling_qwen2_vl",
        "qwen2_5_vl": "transformers.models.qwen2_5_vl.modeling_qwen2_5_vl",
    }[model_type]
    name = {
        "qwen2_vl": "Qwen2VisionTransformerPretrainedModel",
        "qwen2_5_vl": "Qwen2_5_VisionTransformerPretrainedModel",
    }[model_type]
    cls = getattr(__import__(module, fromlist=[name]), name)
    tower = cls._from_config(config).eval()
    pixels = torch.randn(gh * gw, 3 * 2 * 4 * 4)
    grid = torch.tensor([[1, gh, gw]])
    with torch.no_grad():
        counted, out = flop_counter_flops(lambda: tower(pixels, grid_thw=grid))
    assert out.pooler_output.shape[0] == vision_towers.image_tokens(spec, (56, 88)) == 77
    expected = vision_towers.vision_flops(spec, (56, 88)).total_flops
    assert _close(counted, expected), (counted, expected)
