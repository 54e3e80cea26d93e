"""Analytic FLOPs and bytes: reference figures, closed forms vs brute-force sums, context modes."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from llm_perf_opt.errors import ConfigError
from llm_perf_opt.flops import analytic as A
from llm_perf_opt.flops.configs import builtin_config

V1 = builtin_config("deepseek-ocr")
V2 = builtin_config("deepseek-ocr2")
TEXT = V1.text


@pytest.mark.parametrize("ctx_len", [1, 273, 1000, 8192])
def test_v1_decode_flops_per_token_is_the_reference_line(ctx_len: int) -> None:
    # flops-and-mfu.md: 2·574,095,360 + 12·4·1280·C
    assert A.decode_flops_per_token(TEXT, ctx_len).total_flops == 1_148_190_720 + 61_440 * ctx_len


def test_v1_active_parameters_match_the_a570m_figures() -> None:
    params = A.active_decode_params(TEXT)
    without = sum(v for k, v in params.items() if k not in ("text.embedding", "text.norms"))
    assert without - params["text.lm_head"] == 408_616_960
    assert without == 574_095_360


def test_v1_kv_cache_is_61440_bytes_per_position_in_bf16() -> None:
    assert A.kv_cache_bytes_per_position(TEXT, "bfloat16") == 61_440
    assert A.kv_cache_bytes_per_position(TEXT, "float32") == 122_880


def test_decode_bytes_read_weights_once_plus_the_cache() -> None:
    bytes_ = A.decode_bytes_per_step(TEXT, 1000, "bfloat16")
    assert bytes_["text.kv_cache"] == 61_440 * 1000
    weights = sum(v for k, v in bytes_.items() if k != "text.kv_cache")
    assert weights == 2 * sum(A.active_decode_params(TEXT).values())


@pytest.mark.parametrize(
    ("mode", "tokens", "positions"),
    [("tiny", 64, 73), ("small", 100, 111), ("base", 256, 273), ("large", 400, 421)],
)
def test_v1_mode_table(mode: str, tokens: int, positions: int) -> None:
    layout = A.image_layout(V1, mode)
    assert (layout.vision_tokens, layout.image_positions) == (tokens, positions)


@pytest.mark.parametrize(("w", "h"), [(2, 1), (3, 2), (3, 3), (1, 9)])
def test_v1_gundam_positions(w: int, h: int) -> None:
    layout = A.image_layout(V1, "gundam", (w, h))
    assert layout.vision_tokens == 256 + 100 * w * h
    assert layout.image_positions == 272 + 10 * h * (10 * w + 1) + 1


@pytest.mark.parametrize("n_crops", [0, 2, 6])
def test_ocr2_positions(n_crops: int) -> None:
    crops = None if n_crops == 0 else (n_crops // 2, 2)
    layout = A.image_layout(V2, "gundam", crops)
    assert layout.vision_tokens == 256 + 144 * n_crops
    assert layout.image_positions == 256 + 144 * n_crops + 1


def test_sam_window_padding_at_1024() -> None:
    # 64×64 grid padded to 70×70: 25 windows of 196 tokens in 8 windowed layers; 4 global layers.
    d = 768
    expected_scores = 8 * 4 * 25 * 196**2 * d + 4 * 4 * 4096**2 * d
    expected_proj = (8 * 25 * 196 + 4 * 4096) * 2 * d * 4 * d
    expected_rel = 8 * 25 * 2 * 196 * 28 * d + 4 * 2 * 4096 * 128 * d
    blocks = A.sam_flops(V1.sam, 1024).blocks
    assert blocks["sam.attn_scores"] == expected_scores
    assert blocks["sam.attn_proj"] == expected_proj
    assert blocks["sam.rel_pos"] == expected_rel
    assert blocks["sam.mlp"] == 12 * 4096 * 2 * 2 * d * 3072
    # neck: 1×1 768→256 and 3×3 256→256 on 64²; compressor 3×3 s2 256→512 (32²), 512→1024 (16²)
    assert blocks["sam.neck"] == 2 * 4096 * (768 * 256 + 9 * 256 * 256)
    assert blocks["sam.compressor"] == 2 * (1024 * 9 * 256 * 512 + 256 * 9 * 512 * 1024)


@pytest.mark.parametrize("prefill_len", [1, 2, 57, 273])
def test_causal_prefill_is_the_sum_of_per_position_costs(prefill_len: int) -> None:
    # Position i attends to i keys; lm_head only on the last position.
    lm_head = A.lm_head_flops(TEXT)
    brute = sum(
        A.decode_flops_per_token(TEXT, i).total_flops - lm_head for i in range(1, prefill_len + 1)
    )
    assert A.prefill_flops(TEXT, prefill_len).total_flops == brute + lm_head


def test_full_square_prefill_differs_only_in_attention_scores() -> None:
    lp = 273
    causal = A.prefill_flops(TEXT, lp, "causal").blocks
    full = A.prefill_flops(TEXT, lp, "full").blocks
    assert {k: v for k, v in causal.items() if k != "text.attn_scores"} == {
        k: v for k, v in full.items() if k != "text.attn_scores"
    }
    per_pair = 4 * 12 * 1280
    assert full["text.attn_scores"] - causal["text.attn_scores"] == per_pair * (
        lp * lp - lp * (lp + 1) // 2
    )


def test_all_position_lm_head_option() -> None:
    last = A.prefill_flops(TEXT, 100, lm_head_positions="last").total_flops
    every = A.prefill_flops(TEXT, 100, lm_head_positions="all").total_flops
    assert every - last == 99 * 2 * 1280 * 129280


def test_ocr2_query_encoder_mask_aware_count() -> None:
    enc = V2.query_encoder
    assert enc is not None
    n, q = 256, 256
    causal = A.query_encoder_flops(enc, n, "causal").blocks["query_encoder.attn_scores"]
    full = A.query_encoder_flops(enc, n, "full").blocks["query_encoder.attn_scores"]
    per_pair = 24 * 4 * 896
    assert full == per_pair * (n + q) ** 2
    assert causal == per_pair * (n * n + q * n + q * (q + 1) // 2)


@pytest.mark.parametrize(("lp", "steps"), [(273, 1), (273, 32), (10, 7), (893, 100)])
def test_auto_decode_is_the_exact_per_step_sum(lp: int, steps: int) -> None:
    est = A.decode_flops(TEXT, lp, steps, "auto")
    brute = sum(A.decode_flops_per_token(TEXT, lp + k).total_flops for k in range(1, steps + 1))
    assert est.flops_total.total_flops == brute
    assert est.ctx_len_effective == lp + (steps + 1) / 2
    assert est.flops_per_token.total_flops * steps == brute
    if steps % 2 == 1:  # the mean context is a whole position: one step there, block by block
        mean_step = A.decode_flops_per_token(TEXT, lp + (steps + 1) // 2)
        assert est.flops_per_token.blocks == mean_step.blocks
    assert est.ctx_lens_first_last == (lp + 1, lp + steps)


def test_fixed_and_max_decode() -> None:
    fixed = A.decode_flops(TEXT, 273, 10, "fixed", 2048)
    assert fixed.flops_total.total_flops == 10 * (1_148_190_720 + 61_440 * 2048)
    top = A.decode_flops(TEXT, 273, 10, "max")
    assert top.flops_per_token.total_flops == 1_148_190_720 + 61_440 * 8192


@given(lp=st.integers(1, 4000), steps=st.integers(1, 2000), slack=st.integers(0, 8192))
def test_context_modes_order_auto_fixed_max(lp: int, steps: int, slack: int) -> None:
    # With T decode steps (T + 1 generated tokens) the exact mean context is Lp + (T+1)/2, that
    # is Lp + T_gen/2; whenever it is ≤ the fixed C ≤ window: auto ≤ fixed ≤ max.
    fixed = lp + (steps + 2) // 2 + slack  # ≥ Lp + (T+1)/2
    assume(lp + steps <= TEXT.max_position_embeddings)
    assume(fixed <= TEXT.max_position_embeddings)
    auto = A.decode_flops(TEXT, lp, steps, "auto").flops_per_token.total_flops
    at_fixed = A.decode_flops(TEXT, lp, steps, "fixed", fixed).flops_per_token.total_flops
    at_max = A.decode_flops(TEXT, lp, steps, "max").flops_per_token.total_flops
    assert auto <= at_fixed <= at_max


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: A.decode_flops_per_token(TEXT, 8193), "exceeds the context window of 8192"),
        (lambda: A.decode_flops_per_token(TEXT, 0), "must be ≥ 1"),
        (lambda: A.prefill_flops(TEXT, -5), "must be ≥ 1"),
        (lambda: A.decode_flops(TEXT, 8000, 500, "auto"), "exceeds the context window"),
        (lambda: A.decode_flops(TEXT, 100, 0, "auto"), "decode tokens must be ≥ 1"),
        (lambda: A.decode_flops(TEXT, 100, 5, "fixed"), "needs a context length"),
        (lambda: A.decode_flops(TEXT, 100, 5, "max", 100), "only used with context mode 'fixed'"),
        (lambda: A.image_layout(V2, "tiny"), "use one of base, gundam"),
        (lambda: A.image_layout(V1, "base", (2, 2)), "takes no crops"),
        (lambda: A.image_layout(V1, "gundam", (5, 2)), "allows 2..9"),
        (lambda: A.image_layout(V2, "gundam", (4, 2)), "allows 2..6"),
        (lambda: A.dtype_bytes("int3"), "dtype 'int3' is unknown"),
    ],
)
def test_bad_input_raises_config_error(call: Callable[[], object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        call()
