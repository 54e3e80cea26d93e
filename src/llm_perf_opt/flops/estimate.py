"""One planning estimate of a run (vision, prefill, decode FLOPs and decode bytes) as plain data.

`estimate_run` is what `mfu-flops` prints: every number comes from `analytic`, and the result
says which conventions produced it, so a report can quote it without re-deriving anything.
"""

from __future__ import annotations

from typing import Any, Final

from llm_perf_opt.errors import ConfigError
from llm_perf_opt.flops.analytic import (
    decode_bytes_per_step,
    decode_flops,
    dtype_bytes,
    image_layout,
    prefill_flops,
    vision_flops,
)
from llm_perf_opt.flops.configs import ModelConfig
from llm_perf_opt.vocab import parse_size

CONVENTION_NOTES: Final = {
    "flop": "1 multiply-accumulate = 2 FLOPs; matmuls and convs only (softmax, norms, "
    "activations, RoPE, embedding lookup, biases: 0)",
    "attention": "causal: each query counts only the keys its mask lets it see (prefill: "
    "Lp(Lp+1)/2 pairs; OCR-2 query encoder: n² + q·n + q(q+1)/2); *_full_square: the whole "
    "square, as dense kernels and torch FlopCounterMode count it",
    "lm_head": "prefill: last position only (logits_to_keep=1); decode: every step",
    "sam_windows": "windowed SAM blocks compute on the grid padded to a multiple of the window",
    "decode_steps": "T decode forward passes after prefill (which yields the first token); step "
    "k attends to C_k = Lp + k positions in auto mode",
    "ctx_len_used": "auto: mean C = Lp + (T+1)/2 (exact for the per-step sum, since FLOPs are "
    "linear in C); fixed: the given C; max: max_position_embeddings",
    "bytes": "active weights of one token (batch 1: top-k routed + shared experts, router, "
    "attention, dense MLP, norms, lm_head, one embedding row) + KV cache read "
    "2·layers·kv_heads·head_dim·bytes·C; activations not counted",
}


def parse_crops(text: str) -> tuple[int, int]:
    """Parse a crop grid "WxH" (crops across × crops down).

    Raises:
        ConfigError: not of the form WxH with positive integers.
    """
    return parse_size(text, "crop grid")


def estimate_run(
    model: ModelConfig,
    *,
    mode: str,
    crops: tuple[int, int] | None = None,
    prefill_len: int | None = None,
    decode_steps: int = 1,
    ctx_mode: str = "auto",
    ctx_len: int | None = None,
    dtype: str = "bfloat16",
) -> dict[str, Any]:
    """Per-stage FLOPs and decode bytes of one image, as a JSON-able dict.

    Args:
        model: architecture.
        mode: preprocessing mode (v1: tiny/small/base/large/gundam; OCR-2: base/gundam).
        crops: gundam crop grid (w, h), or None.
        prefill_len: Lp, positions in the prefill forward; None uses the image positions of the
            mode alone (a real run adds its prompt's text tokens: pass them for its Lp).
        decode_steps: T, decode forward passes.
        ctx_mode: auto, fixed or max.
        ctx_len: C for fixed.
        dtype: weight and KV-cache dtype for the bytes.

    Returns:
        Keys `vision_flops`, `prefill_flops`, `decode_flops_per_token`, `decode_flops_total`,
        `decode_bytes_per_step` (ints), their full-square variants, the geometry, `ctx_len_used`,
        `breakdown` (by block) and `conventions`.

    Raises:
        ConfigError: bad mode, crops, lengths, context mode or dtype.
    """
    if prefill_len is not None and prefill_len < 1:
        raise ConfigError(f"prefill length must be ≥ 1, got {prefill_len}")
    if ctx_len is not None and ctx_len < 1:
        raise ConfigError(f"context length must be ≥ 1, got {ctx_len}")
    dtype_bytes(dtype)
    layout = image_layout(model, mode, crops)
    lp = layout.image_positions if prefill_len is None else prefill_len
    vision = vision_flops(model, layout, "causal")
    prefill = prefill_flops(model.text, lp, "causal")
    decode = decode_flops(model.text, lp, decode_steps, ctx_mode, ctx_len)
    bytes_step = decode_bytes_per_step(model.text, decode.ctx_len_effective, dtype)
    return {
        "model": model.family,
        "tiny": model.tiny,
        "mode": mode,
        "crop_grid": list(layout.crop_grid) if layout.crop_grid else None,
        "n_crops": layout.n_crops,
        "vision_tokens": layout.vision_tokens,
        "image_positions": layout.image_positions,
        "prefill_len": lp,
        "prefill_len_source": "given" if prefill_len is not None else "image positions only",
        "decode_steps": decode_steps,
        "ctx_mode": ctx_mode,
        "ctx_len_used": decode.ctx_len_effective,
        "ctx_len_first_last": list(decode.ctx_lens_first_last),
        "dtype": dtype,
        "vision_flops": vision.total_flops,
        "vision_flops_full_square": vision_flops(model, layout, "full").total_flops,
        "prefill_flops": prefill.total_flops,
        "prefill_flops_full_square": prefill_flops(model.text, lp, "full").total_flops,
        "decode_flops_per_token": decode.flops_per_token.total_flops,
        "decode_flops_total": decode.flops_total.total_flops,
        "decode_bytes_per_step": sum(bytes_step.values()),
        "breakdown": {
            "vision": dict(vision.blocks),
            "prefill": dict(prefill.blocks),
            "decode_per_token": dict(decode.flops_per_token.blocks),
            "decode_bytes_per_step": bytes_step,
        },
        "conventions": dict(CONVENTION_NOTES),
    }
