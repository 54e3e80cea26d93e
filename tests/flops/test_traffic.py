"""Bytes moved per stage (flops/traffic.py), checked by hand on the v1 architecture."""

from __future__ import annotations

import pytest

from llm_perf_opt.flops import analytic, traffic
from llm_perf_opt.flops.configs import builtin_config

V1 = builtin_config("deepseek-ocr")
TEXT = V1.text
BF16 = "bfloat16"


def test_v1_prefill_bytes_and_intensity_by_hand() -> None:
    """Lp = 282 (v1 base: 273 image positions + 9 text tokens), bf16 (2 bytes)."""
    lp = 282
    d, d_qkv, ff, e_ff, shared_ff, experts, vocab = 1280, 3 * 1280, 6848, 896, 2 * 896, 64, 129280
    # weights, in elements: 12 layers of q/k/v/o; 1 dense SwiGLU; 11 MoE layers reading all 64
    # experts (282 tokens × top-6 leave each expert unpicked with probability (58/64)^282 ≈ 1e-12),
    # the 2 shared experts and the router; the whole lm_head; 282 embedding rows.
    attn = 12 * (d * d_qkv + d * d)  # 78,643,200
    dense = 1 * 3 * d * ff  # 26,296,320
    moe = 11 * (experts * 3 * d * e_ff + 3 * d * shared_ff + d * experts)  # 2,498,805,760
    weights = attn + dense + moe + d * vocab + lp * d
    assert weights == 2_769_584_640
    # activations: each linear reads its input, writes its output; attention reads Q, writes O
    acts_attn = 12 * lp * ((d + d_qkv) + (d + d) + 2 * d)  # 34,652,160
    acts_dense = 3 * lp * (d + ff)  # 6,876,288
    acts_moe = 11 * (6 * 3 * lp * (d + e_ff) + 3 * lp * (d + shared_ff) + lp * (d + experts))
    acts_head = 1 * (d + vocab)  # lm_head on the last position
    acts = acts_attn + acts_dense + acts_moe + acts_head
    assert acts == 195_915_264
    kv = 2 * 12 * 10 * 128 * 2  # K and V, all layers, bf16: 61,440 bytes per position
    expected = {
        "text.weights": 2 * weights,
        "text.activations": 2 * acts,
        "text.kv_cache_read": kv * lp,
        "text.kv_cache_write": kv * lp,
    }
    got = traffic.decoder_bytes(TEXT, lp, lp, BF16)
    assert got == expected
    total = 2 * weights + 2 * acts + 2 * kv * lp
    assert traffic.total_bytes(got) == total == 5_965_651_968
    flops = analytic.prefill_flops(TEXT, lp).total_flops
    assert flops == 233_242_562_560  # docs/flops.md cross-check table
    intensity = flops / total
    assert intensity == pytest.approx(39.098, abs=1e-3)
    assert intensity < 989.4e12 / 3.35e12  # below the H100 SXM ridge (295 FLOP/B): memory-bound


def test_decode_step_is_the_mbu_bytes_plus_what_mbu_leaves_out() -> None:
    """At T = 1 the routed weights are exactly top-k; the roofline adds activations and the new
    K/V write to the bytes MBU counts, and does not count norm scales."""
    c = 283
    moved = traffic.decoder_bytes(TEXT, 1, c, BF16)
    mbu = analytic.decode_bytes_per_step(TEXT, c, BF16)
    assert moved["text.weights"] == sum(mbu.values()) - mbu["text.kv_cache"] - mbu["text.norms"]
    assert moved["text.kv_cache_read"] == mbu["text.kv_cache"] == 61_440 * c
    assert moved["text.kv_cache_write"] == 61_440
    assert traffic.experts_touched(TEXT, 1) == pytest.approx(TEXT.num_experts_per_tok)
    assert traffic.experts_touched(TEXT, 10_000) == pytest.approx(TEXT.n_routed_experts)


def test_vision_reads_weights_once_per_forward_and_counts_the_rel_pos_bias() -> None:
    base = traffic.vision_bytes(V1, analytic.image_layout(V1, "base"), BF16)
    gundam = traffic.vision_bytes(V1, analytic.image_layout(V1, "gundam", (2, 3)), BF16)
    # global view then one batched forward over the 6 crops: the weights twice
    assert gundam["vision.weights"] == 2 * base["vision.weights"]
    # v1 base, 64×64 SAM grid, 12 heads: 4 global layers with a 4096² bias, 8 windowed layers of
    # 25 windows × 196² (the grid padded to 70×70), written once and read once, 2 bytes
    bias = 2 * 2 * 12 * (4 * 4096**2 + 8 * 25 * 196**2)
    assert base["vision.rel_pos_bias"] == bias
    # SAM, CLIP and projector matrices: ~1% under the checkpoint's 401,369,600 vision parameters
    # (SAM 95,569,152 + CLIP 303,177,728 + projector 2,622,720; position tables, biases and norms
    # are not counted)
    params = base["vision.weights"] / 2
    assert 0.95 * 401_369_600 < params < 401_369_600
