"""Analytic FLOPs of DeepSeek-OCR stages and bytes of a decode step, from a `ModelConfig`.

Conventions (docs/flops.md derives each formula):
- 1 multiply-accumulate = 2 FLOPs. Only matrix products and convolutions count (linear layers,
  attention QKᵀ and AV, relative-position einsums, convs); softmax, norms, activations, RoPE,
  residual adds, position-embedding interpolation and the embedding lookup count 0. Biases count 0.
- Counts follow what the implementation computes: SAM's windowed blocks run qkv/proj and attention
  on the *padded* grid (64×64 → 70×70 = 25 windows of 196 tokens); the decomposed relative
  positions are two einsums per attention; prefill applies lm_head to the last position only (the
  runner passes logits_to_keep=1); a MoE token runs exactly top-k routed experts plus the shared
  ones, and the router is a d×E linear.
- Attention with a mask has two conventions. "causal" (default) counts only the key positions a
  query may see: prefill position i attends to i keys; in OCR-2's query encoder a SAM token sees
  the n SAM tokens and query k sees n + k keys. "full" counts the whole square, as dense kernels
  compute it and as `torch.utils.flop_counter.FlopCounterMode` reports it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final, Literal

from llm_perf_opt.errors import ConfigError
from llm_perf_opt.flops.configs import (
    ClipConfig,
    ModelConfig,
    QueryEncoderConfig,
    SamConfig,
    TextConfig,
    conv_out,
)
from llm_perf_opt.flops.context import check_length, context_lens
from llm_perf_opt.vocab import LmHeadPositions

Convention = Literal["causal", "full"]
CONVENTIONS: Final[tuple[Convention, ...]] = ("causal", "full")
DTYPE_BYTES: Final[Mapping[str, int]] = {"bfloat16": 2, "float16": 2, "float32": 4}


@dataclass(frozen=True)
class Flops:
    """FLOPs of one piece of work, by block (e.g. "text.attn_proj"); `total_flops` sums them."""

    blocks: Mapping[str, int] = field(default_factory=dict)

    @property
    def total_flops(self) -> int:
        """Sum over blocks."""
        return sum(self.blocks.values())

    def __add__(self, other: Flops) -> Flops:
        merged = dict(self.blocks)
        for name, value in other.blocks.items():
            merged[name] = merged.get(name, 0) + value
        return Flops(merged)

    @property
    def attention_flops(self) -> int:
        """The attention score and context matmuls (`*.attn_scores` blocks): the FLOPs fused
        attention kernels do; every other block is done by GEMMs (docs/flops.md)."""
        return sum(v for k, v in self.blocks.items() if k.endswith(".attn_scores"))

    def times(self, factor: int) -> Flops:
        """These FLOPs repeated `factor` times."""
        return Flops({name: value * factor for name, value in self.blocks.items()})


def total(parts: Iterable[Flops]) -> Flops:
    """Sum of several `Flops`, block by block."""
    out = Flops()
    for part in parts:
        out = out + part
    return out


def _linear(tokens: int, d_in: int, d_out: int) -> int:
    return 2 * tokens * d_in * d_out


def _conv(out_side: int, c_in: int, c_out: int, kernel: int) -> int:
    return 2 * out_side * out_side * c_out * c_in * kernel * kernel


# --- vision ---------------------------------------------------------------------------------


def sam_flops(sam: SamConfig, side_px: int) -> Flops:
    """SAM ViT-B, neck and compressor on one square view of `side_px` pixels.

    Windowed blocks pad the g×g grid to a multiple of the window W and run qkv, attention, the
    relative-position einsums and proj on all padded tokens (the MLP runs on the g² real ones).
    Decomposed relative positions: per attention over an h×w grid, the einsums
    `bhwc,hkc->bhwk` and `bhwc,wkc->bhwk` cost 2·heads·h·w·(h + w)·head_dim.
    """
    g = sam.grid(side_px)
    d = sam.width
    blocks = {
        "sam.patch_embed": _conv(g, sam.num_channels, d, sam.patch_size),
        "sam.attn_proj": 0,
        "sam.attn_scores": 0,
        "sam.rel_pos": 0,
        "sam.mlp": 0,
    }
    for layer in range(sam.depth):
        if layer in sam.global_attn_indexes:
            n_windows, side = 1, g
        else:
            side = sam.window_size
            n_windows = (-(-g // side)) ** 2  # ceil(g / W)² windows of W×W tokens
        tokens = n_windows * side * side
        blocks["sam.attn_proj"] += _linear(tokens, d, 3 * d) + _linear(tokens, d, d)
        blocks["sam.attn_scores"] += 4 * n_windows * (side * side) ** 2 * d
        if sam.use_rel_pos:
            blocks["sam.rel_pos"] += 2 * n_windows * side * side * (side + side) * d
        blocks["sam.mlp"] += _linear(g * g, d, sam.mlp_dim) + _linear(g * g, sam.mlp_dim, d)
    c0, c1 = sam.downsample_channels
    g1 = conv_out(g, 3, 2, 1)
    g2 = conv_out(g1, 3, 2, 1)
    blocks["sam.neck"] = _conv(g, d, sam.out_chans, 1) + _conv(g, sam.out_chans, sam.out_chans, 3)
    blocks["sam.compressor"] = _conv(g1, sam.out_chans, c0, 3) + _conv(g2, c0, c1, 3)
    return Flops(blocks)


def clip_flops(clip: ClipConfig, n_tokens: int) -> Flops:
    """CLIP-L over `n_tokens` SAM tokens plus the CLS token (full attention, no mask)."""
    n = n_tokens + 1
    d = clip.width
    per_layer = {
        "clip.attn_proj": _linear(n, d, 3 * d) + _linear(n, d, d),
        "clip.attn_scores": 4 * n * n * d,
        "clip.mlp": _linear(n, d, clip.mlp_dim) + _linear(n, clip.mlp_dim, d),
    }
    return Flops(per_layer).times(clip.depth)


def query_encoder_flops(enc: QueryEncoderConfig, n_tokens: int, convention: Convention) -> Flops:
    """OCR-2's encoder over `n_tokens` SAM tokens followed by their learned queries.

    The mask is bidirectional over the n SAM tokens and causal over the q queries, so "causal"
    counts n·n + q·n + q(q+1)/2 query-key pairs and "full" counts (n + q)².
    """
    q = enc.queries_for(n_tokens)
    length = n_tokens + q
    d = enc.hidden_size
    d_kv = enc.num_kv_heads * enc.head_dim
    if convention == "causal":
        pairs = n_tokens * n_tokens + q * n_tokens + q * (q + 1) // 2
    else:
        pairs = length * length
    per_layer = {
        "query_encoder.attn_proj": _linear(length, d, d + 2 * d_kv) + _linear(length, d, d),
        "query_encoder.attn_scores": 4 * pairs * d,
        "query_encoder.mlp": 3 * _linear(length, d, enc.intermediate_size),
    }
    return Flops(per_layer).times(enc.num_layers)


def view_tokens(model: ModelConfig, side_px: int) -> int:
    """Image embeddings one view of `side_px` pixels yields (before newline/separator tokens)."""
    n = model.sam.output_tokens(side_px)
    if model.query_encoder is not None:
        return model.query_encoder.queries_for(n)
    return n


def view_flops(model: ModelConfig, side_px: int, convention: Convention = "causal") -> Flops:
    """Vision FLOPs of one square view: SAM, then CLIP (v1) or the query encoder, then projector."""
    n = model.sam.output_tokens(side_px)
    parts = [sam_flops(model.sam, side_px)]
    if model.clip is not None:
        parts.append(clip_flops(model.clip, n))
    if model.query_encoder is not None:
        parts.append(query_encoder_flops(model.query_encoder, n, convention))
    proj = model.projector
    parts.append(
        Flops({"projector": _linear(view_tokens(model, side_px), proj.input_dim, proj.output_dim)})
    )
    return total(parts)


@dataclass(frozen=True)
class ImageLayout:
    """Views and LLM positions of one image in a mode.

    Attributes:
        mode: preprocessing mode name.
        global_px: side of the global view.
        crop_px: side of each local crop (None without crops).
        crop_grid: (w, h) crops across and down, or None.
        n_crops: local crops (w·h, or 0).
        vision_tokens: image embeddings the vision stage produces.
        image_positions: LLM positions of the image: v1 rows × (cols + 1) newline layout per view
            block + 1 view separator; OCR-2 embeddings + 1 separator.
    """

    mode: str
    global_px: int
    crop_px: int | None
    crop_grid: tuple[int, int] | None
    n_crops: int
    vision_tokens: int
    image_positions: int


def image_layout(
    model: ModelConfig, mode: str, crops: tuple[int, int] | None = None
) -> ImageLayout:
    """Views and positions of one image in `mode` with an optional (w, h) crop grid.

    Modes with crops (gundam) accept a grid with min_crops ≤ w·h ≤ max_crops, or none (or 1×1,
    as the HF code does for small images) for the global view only.

    Raises:
        ConfigError: unknown mode, crops given for a mode without crops, or a grid out of range.
    """
    spec = model.mode(mode)
    if crops is not None and (crops[0] <= 0 or crops[1] <= 0):
        raise ConfigError(f"crop grid {crops[0]}x{crops[1]} must be positive, e.g. 3x2")
    if crops is not None and spec.crop_size is None:
        raise ConfigError(f"mode {mode!r} takes no crops; drop --crops or use mode gundam")
    if crops is not None and crops[0] * crops[1] == 1:
        crops = None
    if crops is not None and not spec.min_crops <= crops[0] * crops[1] <= spec.max_crops:
        raise ConfigError(
            f"crop grid {crops[0]}x{crops[1]} has {crops[0] * crops[1]} crops; {model.family} "
            f"{mode} allows {spec.min_crops}..{spec.max_crops}"
        )
    n_crops = 0 if crops is None else crops[0] * crops[1]
    global_tokens = view_tokens(model, spec.image_size)
    crop_tokens = (
        0 if crops is None or spec.crop_size is None else view_tokens(model, spec.crop_size)
    )
    vision_tokens = global_tokens + n_crops * crop_tokens
    if model.image_newline:
        rows = model.sam.output_grid(spec.image_size)
        positions = rows * (rows + 1)
        if crops is not None and spec.crop_size is not None:
            r = model.sam.output_grid(spec.crop_size)
            positions += (crops[1] * r) * (crops[0] * r + 1)
        positions += 1
    else:
        positions = vision_tokens + 1
    return ImageLayout(
        mode=mode,
        global_px=spec.image_size,
        crop_px=spec.crop_size if crops is not None else None,
        crop_grid=crops,
        n_crops=n_crops,
        vision_tokens=vision_tokens,
        image_positions=positions,
    )


def vision_flops(
    model: ModelConfig, layout: ImageLayout, convention: Convention = "causal"
) -> Flops:
    """Vision-stage FLOPs of one image: the global view plus each local crop."""
    out = view_flops(model, layout.global_px, convention)
    if layout.crop_px is not None:
        out = out + view_flops(model, layout.crop_px, convention).times(layout.n_crops)
    return out


# --- decoder --------------------------------------------------------------------------------


def _decoder_linear_per_token(text: TextConfig) -> dict[str, int]:
    """FLOPs of one position through every layer's matmuls except attention scores and lm_head."""
    d = text.hidden_size
    d_q = text.num_heads * text.head_dim
    d_kv = text.num_kv_heads * text.head_dim
    shared = text.n_shared_experts * text.moe_intermediate_size
    n_moe = text.n_moe_layers
    return {
        "text.attn_proj": text.num_layers * (_linear(1, d, d_q + 2 * d_kv) + _linear(1, d_q, d)),
        "text.dense_mlp": text.n_dense_layers * 3 * _linear(1, d, text.intermediate_size),
        "text.moe_routed": n_moe
        * text.num_experts_per_tok
        * 3
        * _linear(1, d, text.moe_intermediate_size),
        "text.moe_shared": n_moe * 3 * _linear(1, d, shared),
        "text.router": n_moe * _linear(1, d, text.n_routed_experts),
    }


def _attn_scores_per_key(text: TextConfig) -> int:
    """FLOPs per (query, key) pair over all layers: QKᵀ and AV, 2·2·heads·head_dim each layer."""
    return 4 * text.num_layers * text.num_heads * text.head_dim


def lm_head_flops(text: TextConfig, positions: int = 1) -> int:
    """lm_head on `positions` positions (2·d·vocab each)."""
    return _linear(positions, text.hidden_size, text.vocab_size)


def decode_flops_per_token(text: TextConfig, ctx_len: int) -> Flops:
    """One decode step: one new position attending to `ctx_len` keys (itself included).

    v1: 1,148,190,720 + 61,440·C (lm_head included, embedding lookup 0).

    Raises:
        ConfigError: ctx_len outside 1..max_position_embeddings.
    """
    check_length(text.max_position_embeddings, ctx_len, "context length")
    blocks = _decoder_linear_per_token(text)
    blocks["text.attn_scores"] = _attn_scores_per_key(text) * ctx_len
    blocks["text.lm_head"] = lm_head_flops(text)
    return Flops(blocks)


def prefill_flops(
    text: TextConfig,
    prefill_len: int,
    convention: Convention = "causal",
    lm_head_positions: LmHeadPositions = "last",
) -> Flops:
    """Prefill of `prefill_len` positions (image embeddings + text tokens) from an empty cache.

    "causal": position i (1-based) attends to i keys, Σ i = Lp(Lp+1)/2 pairs; "full": Lp² pairs.
    lm_head runs on the last position ("last", the runner's logits_to_keep=1) or on all.

    Raises:
        ConfigError: prefill_len outside 1..max_position_embeddings.
    """
    check_length(text.max_position_embeddings, prefill_len, "prefill length")
    blocks = Flops(_decoder_linear_per_token(text)).times(prefill_len).blocks
    pairs = prefill_len * (prefill_len + 1) // 2 if convention == "causal" else prefill_len**2
    out = dict(blocks)
    out["text.attn_scores"] = _attn_scores_per_key(text) * pairs
    out["text.lm_head"] = lm_head_flops(text, 1 if lm_head_positions == "last" else prefill_len)
    return Flops(out)


@dataclass(frozen=True)
class DecodeEstimate:
    """Decode FLOPs over the steps of one image.

    Attributes:
        ctx_mode: auto (exact per-step C_k = Lp + k), fixed (given C) or max (the window).
        steps: decode forward passes T (tokens generated after the first, which prefill yields).
        ctx_lens_first_last: C of the first and last step.
        ctx_len_effective: C at which one step costs the mean step (Lp + (T+1)/2 for auto).
        flops_total: sum over steps, by block.
        flops_per_token: the mean step, by block (total / T, an exact integer).
    """

    ctx_mode: str
    steps: int
    ctx_lens_first_last: tuple[int, int]
    ctx_len_effective: float
    flops_total: Flops
    flops_per_token: Flops


def resolve_ctx(
    text: TextConfig, ctx_mode: str, prefill_len: int, steps: int, ctx_len: int | None
) -> list[int]:
    """`context_lens` with the prefill and every context length checked against the window.

    Raises:
        ConfigError: see `context_lens`; also non-positive lengths or a context longer than the
            window.
    """
    window = text.max_position_embeddings
    lens = context_lens(ctx_mode, window, prefill_len, steps, ctx_len)
    check_length(window, prefill_len, "prefill length")
    if ctx_mode == "fixed":
        check_length(window, lens[0], "context length")
    if ctx_mode == "auto":
        check_length(window, lens[-1], f"prefill length + decode tokens ({prefill_len} + {steps})")
    return lens


def decode_flops(
    text: TextConfig,
    prefill_len: int,
    steps: int,
    ctx_mode: str = "auto",
    ctx_len: int | None = None,
) -> DecodeEstimate:
    """Decode FLOPs for `steps` steps after a prefill of `prefill_len` positions.

    Per-step FLOPs are linear in C, so the exact sum equals T steps at the mean C; for auto the
    mean is Lp + (T+1)/2 (= Lp + T_gen/2 with T_gen = T + 1 generated tokens; the seed plan's
    Lp + T/2 with T decode steps is half a position short). The sum of C over the steps is
    closed-form, so no per-step list is built, and Lp + T is checked against the window first.

    Raises:
        ConfigError: see `resolve_ctx`; also Lp + T beyond the window in any mode.
    """
    if steps < 1:
        raise ConfigError(f"decode tokens must be ≥ 1, got {steps}")
    check_length(
        text.max_position_embeddings,
        prefill_len + steps,
        f"prefill length + decode tokens ({prefill_len} + {steps})",
    )
    first = resolve_ctx(text, ctx_mode, prefill_len, 1, ctx_len)[0]  # checks mode and --ctx-len
    if ctx_mode == "auto":
        last = prefill_len + steps
        ctx_sum = steps * prefill_len + steps * (steps + 1) // 2
    else:
        last = first
        ctx_sum = first * steps
    fixed = _decoder_linear_per_token(text)
    fixed["text.attn_scores"] = 0
    fixed["text.lm_head"] = lm_head_flops(text)
    per_key = _attn_scores_per_key(text)
    total_blocks = {name: value * steps for name, value in fixed.items()}
    total_blocks["text.attn_scores"] = per_key * ctx_sum
    # Exact integer: per_key is a multiple of 4 and ctx_sum/T = Lp + (T+1)/2 for auto.
    mean = {name: value // steps for name, value in total_blocks.items()}
    return DecodeEstimate(
        ctx_mode=ctx_mode,
        steps=steps,
        ctx_lens_first_last=(first, last),
        ctx_len_effective=ctx_sum / steps,
        flops_total=Flops(total_blocks),
        flops_per_token=Flops(mean),
    )


# --- bytes per decode step -----------------------------------------------------------------------


def dtype_bytes(dtype: str) -> int:
    """Bytes per element of `dtype` (bfloat16, float16, float32).

    Raises:
        ConfigError: unknown dtype.
    """
    try:
        return DTYPE_BYTES[dtype]
    except KeyError:
        raise ConfigError(
            f"dtype {dtype!r} is unknown; use one of {', '.join(DTYPE_BYTES)}"
        ) from None


def active_decode_params(text: TextConfig) -> dict[str, int]:
    """Parameters one decode token reads, by block (batch 1: exactly top-k routed experts).

    v1 without embedding: 408,616,960; with lm_head 574,095,360 (the "A570M").
    """
    d = text.hidden_size
    d_q = text.num_heads * text.head_dim
    d_kv = text.num_kv_heads * text.head_dim
    bias = (d_q + 2 * d_kv + d) if text.attention_bias else 0
    shared = text.n_shared_experts * text.moe_intermediate_size
    n_moe = text.n_moe_layers
    return {
        "text.embedding": d,  # one row of the table
        "text.attn_proj": text.num_layers * (d * (d_q + 2 * d_kv) + d_q * d + bias),
        "text.norms": (2 * text.num_layers + 1) * d,
        "text.dense_mlp": text.n_dense_layers * 3 * d * text.intermediate_size,
        "text.moe_routed": n_moe * text.num_experts_per_tok * 3 * d * text.moe_intermediate_size,
        "text.moe_shared": n_moe * 3 * d * shared,
        "text.router": n_moe * d * text.n_routed_experts,
        "text.lm_head": d * text.vocab_size,
    }


def kv_cache_bytes_per_position(text: TextConfig, dtype: str) -> int:
    """K and V of one position, all layers: 2·layers·kv_heads·head_dim·bytes (v1 bf16: 61,440)."""
    return 2 * text.num_layers * text.num_kv_heads * text.head_dim * dtype_bytes(dtype)


def decode_bytes_per_step(text: TextConfig, ctx_len: float, dtype: str) -> dict[str, int]:
    """Bytes one decode step reads at context `ctx_len`: active weights + KV cache, by block.

    Activations and the new K/V write are not counted (both are O(d), negligible at batch 1).
    A fractional `ctx_len` (the auto mean) is rounded to the nearest byte.

    Raises:
        ConfigError: unknown dtype.
    """
    size = dtype_bytes(dtype)
    out = {name: params * size for name, params in active_decode_params(text).items()}
    out["text.kv_cache"] = round(kv_cache_bytes_per_position(text, dtype) * ctx_len)
    return out
