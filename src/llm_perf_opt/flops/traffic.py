"""Analytic bytes each stage moves to and from device memory: the roofline's denominator.

Arithmetic intensity = analytic FLOPs / these bytes. The assumptions (docs/flops.md, "Bytes
moved") are those of an ideal unfused-elementwise, fused-attention implementation:
- weights: the matrix of every linear and conv is read once per forward (biases, norm scales and
  position tables are not counted). A MoE layer over T tokens reads the routed experts those
  tokens pick, E·(1 − (1 − k/E)^T) of them in expectation under uniform routing (exactly k at
  T = 1, nearly all E in a prefill); lm_head reads its whole matrix, the embedding T rows.
- activations: each matmul and conv reads its input and writes its output once; fused attention
  reads Q, K, V and writes O once (its score matrix stays on chip), except SAM's relative-position
  bias, which is materialized (heads × N² per attention) and so written and read once.
  Elementwise ops (norms, activations, residual adds, RoPE) move nothing in this count.
- KV cache: a decoder forward of T new positions at context C reads C positions' K and V and
  writes T.
Bytes are thus a lower bound of the real traffic, and intensity an upper bound.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, overload

from llm_perf_opt.flops.analytic import ImageLayout, dtype_bytes, kv_cache_bytes_per_position

if TYPE_CHECKING:  # a step's token count may be a polars expression (flops/steps.py)
    import polars as pl

from llm_perf_opt.flops.configs import (
    ClipConfig,
    ModelConfig,
    QueryEncoderConfig,
    SamConfig,
    TextConfig,
    conv_out,
)


@overload
def expected_experts(n_experts: int, top_k: int, tokens: int) -> float: ...
@overload
def expected_experts(n_experts: int, top_k: int, tokens: pl.Expr) -> pl.Expr: ...
def expected_experts(n_experts: int, top_k: int, tokens: int | pl.Expr) -> float | pl.Expr:
    """Expected distinct experts of `n_experts` that `tokens` tokens, top-k each, pick under
    uniform routing: E·(1 − (1 − k/E)^T) (k at T = 1, nearly E for large T). `tokens` may be a
    number or a polars expression (flops/steps.py: one value per engine step)."""
    return n_experts * (1.0 - (1.0 - top_k / n_experts) ** tokens)


def experts_touched(text: TextConfig, tokens: int) -> float:
    """Expected distinct routed experts `tokens` tokens pick in one MoE layer (uniform routing)."""
    return expected_experts(text.n_routed_experts, text.num_experts_per_tok, tokens)


def _linear(tokens: int, d_in: int, d_out: int) -> tuple[int, int]:
    """(weight elements, activation elements) of one linear over `tokens` rows."""
    return d_in * d_out, tokens * (d_in + d_out)


def decoder_bytes(
    text: TextConfig, new_tokens: int, ctx_len: int, dtype: str, lm_head_positions: int = 1
) -> dict[str, int]:
    """Bytes one decoder forward over `new_tokens` positions at context `ctx_len` moves, by kind.

    Prefill is `new_tokens = ctx_len = Lp`; a decode step is `new_tokens = 1`, `ctx_len = C`.

    Raises:
        ConfigError: unknown dtype.
    """
    size = dtype_bytes(dtype)
    t = new_tokens
    d = text.hidden_size
    d_q = text.num_heads * text.head_dim
    d_kv = text.num_kv_heads * text.head_dim
    shared = text.n_shared_experts * text.moe_intermediate_size
    moe_i = text.moe_intermediate_size
    k = text.num_experts_per_tok
    weights = 0.0
    acts = 0
    for w, a in (_linear(t, d, d_q + 2 * d_kv), _linear(t, d_q, d)):
        weights, acts = weights + text.num_layers * w, acts + text.num_layers * a
    acts += text.num_layers * t * 2 * d_q  # attention reads Q and writes O
    w_dense, a_dense = _linear(t, d, text.intermediate_size)
    weights += text.n_dense_layers * 3 * w_dense
    acts += text.n_dense_layers * 3 * a_dense
    w_expert, a_expert = _linear(t, d, moe_i)
    w_shared, a_shared = _linear(t, d, shared)
    w_router, a_router = _linear(t, d, text.n_routed_experts)
    routed_weights = experts_touched(text, t) * 3 * w_expert
    weights += text.n_moe_layers * (routed_weights + 3 * w_shared + w_router)
    acts += text.n_moe_layers * (k * 3 * a_expert + 3 * a_shared + a_router)
    w_head, a_head = _linear(lm_head_positions, d, text.vocab_size)
    weights += w_head + t * d  # lm_head, and the embedding rows looked up
    acts += a_head
    kv = kv_cache_bytes_per_position(text, dtype)
    return {
        "text.weights": round(weights * size),
        "text.activations": acts * size,
        "text.kv_cache_read": kv * ctx_len,
        "text.kv_cache_write": kv * new_tokens,
    }


def _sam_elements(sam: SamConfig, side_px: int, views: int) -> tuple[int, dict[str, int]]:
    """SAM, neck and compressor on `views` square views: weight elements, activation elements."""
    g = sam.grid(side_px)
    d = sam.width
    real = views * g * g
    weights = sam.num_channels * sam.patch_size**2 * d
    acts = views * sam.num_channels * side_px * side_px + real * d  # patch conv in and out
    bias = 0
    for layer in range(sam.depth):
        if layer in sam.global_attn_indexes:
            n_windows, side = 1, g
        else:
            side = sam.window_size
            n_windows = (-(-g // side)) ** 2
        tokens = views * n_windows * side * side
        for w, a in (_linear(tokens, d, 3 * d), _linear(tokens, d, d)):
            weights, acts = weights + w, acts + a
        acts += tokens * 4 * d  # attention reads Q, K, V and writes O
        if sam.use_rel_pos:
            bias += 2 * views * n_windows * sam.num_heads * (side * side) ** 2
        for w, a in (_linear(real, d, sam.mlp_dim), _linear(real, sam.mlp_dim, d)):
            weights, acts = weights + w, acts + a
    neck = sam.out_chans
    c0, c1 = sam.downsample_channels
    g1 = conv_out(g, 3, 2, 1)
    g2 = conv_out(g1, 3, 2, 1)
    weights += d * neck + 9 * neck * neck + 9 * neck * c0 + 9 * c0 * c1
    acts += real * (d + neck) + real * 2 * neck  # neck: 1×1 then 3×3 conv
    acts += views * (g * g * neck + g1 * g1 * c0 + g1 * g1 * c0 + g2 * g2 * c1)  # compressor
    return weights, {"activations": acts, "rel_pos_bias": bias}


def _clip_elements(clip: ClipConfig, n_tokens: int, views: int) -> tuple[int, int]:
    """CLIP-L over [CLS] + `n_tokens` SAM tokens on `views` views."""
    n = views * (n_tokens + 1)
    d = clip.width
    parts = (_linear(n, d, 3 * d), _linear(n, d, d), _linear(n, d, clip.mlp_dim),
             _linear(n, clip.mlp_dim, d))  # fmt: skip
    weights = sum(w for w, _ in parts)
    acts = sum(a for _, a in parts) + n * 4 * d
    return clip.depth * weights, clip.depth * acts


def _query_encoder_elements(enc: QueryEncoderConfig, n_tokens: int, views: int) -> tuple[int, int]:
    """OCR-2's encoder over `n_tokens` SAM tokens and their queries on `views` views."""
    length = views * (n_tokens + enc.queries_for(n_tokens))
    d = enc.hidden_size
    d_kv = enc.num_kv_heads * enc.head_dim
    mlp = _linear(length, d, enc.intermediate_size)
    parts = (_linear(length, d, d + 2 * d_kv), _linear(length, d, d), mlp, mlp, mlp)
    weights = sum(w for w, _ in parts)
    acts = sum(a for _, a in parts) + length * (2 * d + 2 * d_kv)
    return enc.num_layers * weights, enc.num_layers * acts


def _view_batch(model: ModelConfig, side_px: int, views: int) -> dict[str, int]:
    """Elements one vision forward over `views` views of `side_px` moves, by kind."""
    weights, sam = _sam_elements(model.sam, side_px, views)
    acts = sam["activations"]
    n = model.sam.output_tokens(side_px)
    if model.clip is not None:
        w, a = _clip_elements(model.clip, n, views)
        weights, acts = weights + w, acts + a
    if model.query_encoder is not None:
        w, a = _query_encoder_elements(model.query_encoder, n, views)
        weights, acts = weights + w, acts + a
    tokens = model.query_encoder.queries_for(n) if model.query_encoder is not None else n
    w, a = _linear(views * tokens, model.projector.input_dim, model.projector.output_dim)
    return {"weights": weights + w, "activations": acts + a, "rel_pos_bias": sam["rel_pos_bias"]}


def vision_bytes(model: ModelConfig, layout: ImageLayout, dtype: str) -> dict[str, int]:
    """Bytes the vision stage of one image moves: the global view's forward, then one batched
    forward over its crops (each forward reads the weights once), by kind.

    Raises:
        ConfigError: unknown dtype.
    """
    size = dtype_bytes(dtype)
    forwards = [_view_batch(model, layout.global_px, 1)]
    if layout.crop_px is not None and layout.n_crops:
        forwards.append(_view_batch(model, layout.crop_px, layout.n_crops))
    return {
        f"vision.{kind}": size * sum(f[kind] for f in forwards)
        for kind in ("weights", "activations", "rel_pos_bias")
    }


def total_bytes(blocks: Mapping[str, int]) -> int:
    """Sum over kinds."""
    return sum(blocks.values())
