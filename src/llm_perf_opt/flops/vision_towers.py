"""FLOPs and image tokens of ViT vision towers: CLIP, SigLIP, Qwen2-VL and Qwen2.5-VL.

Conventions as `analytic`: 2 FLOPs per MAC, matmuls and convolutions only, no mask (every
attention is full over its token set). CLIP/SigLIP see the processor's square `image_size`;
the Qwen towers take any image, resized to multiples of patch × merge (the processor's rounding,
without its min/max pixel clamp), one temporal patch per image. Qwen2.5-VL's windowed blocks
attend inside windows of `window_px` pixels cut from the merged grid without padding (edge
windows are smaller), as transformers' `get_vision_window_index` cuts them.
"""

from __future__ import annotations

from llm_perf_opt.errors import ConfigError
from llm_perf_opt.flops.analytic import Flops
from llm_perf_opt.flops.hf import VisionSpec


def default_image_size(spec: VisionSpec) -> tuple[int, int]:
    """(height, width) in px the tower sees when no size is given: the processor's square, or
    448×448 for the Qwen towers (any size fits them)."""
    side = spec.image_size if spec.image_size is not None else 448
    return side, side


def patch_grid(spec: VisionSpec, image_hw: tuple[int, int]) -> tuple[int, int]:
    """Patches down and across for an image of (height, width) px.

    Raises:
        ConfigError: a non-positive size.
    """
    h, w = image_hw
    if h <= 0 or w <= 0:
        raise ConfigError(f"image size {h}x{w} must be positive, e.g. 448x448")
    if spec.kind == "vit":
        side = spec.image_size or h
        return side // spec.patch_size, side // spec.patch_size
    factor = spec.patch_size * spec.spatial_merge_size
    merge = spec.spatial_merge_size
    return (
        max(1, round(h / factor)) * merge,
        max(1, round(w / factor)) * merge,
    )


def image_tokens(spec: VisionSpec, image_hw: tuple[int, int]) -> int:
    """Embeddings one image gives the LLM: patches (CLS dropped) / merge²."""
    gh, gw = patch_grid(spec, image_hw)
    return gh * gw // spec.spatial_merge_size**2


def _window_square_sum(spec: VisionSpec, grid: tuple[int, int]) -> int:
    """Σ over windows of (tokens in the window)²."""
    merge = spec.spatial_merge_size
    if spec.window_px is None:
        return (grid[0] * grid[1]) ** 2
    side = spec.window_px // merge // spec.patch_size  # window side in merged units

    def squares(units: int) -> int:
        full, rest = divmod(units, side)
        return full * side * side + rest * rest

    return merge**4 * squares(grid[0] // merge) * squares(grid[1] // merge)


def vision_flops(spec: VisionSpec, image_hw: tuple[int, int]) -> Flops:
    """The tower on one image of (height, width) px, by block."""
    gh, gw = patch_grid(spec, image_hw)
    patches = gh * gw
    d, depth, mlp = spec.width, spec.depth, spec.intermediate_size
    tokens = patches + (1 if spec.class_token else 0)
    kernel = spec.in_channels * spec.temporal_patch_size * spec.patch_size**2
    blocks = {
        "vision.patch_embed": 2 * patches * kernel * d,
        "vision.attn_proj": depth * 8 * tokens * d * d,
        "vision.mlp": depth * (6 if spec.gated_mlp else 4) * tokens * d * mlp,
    }
    full_square = tokens * tokens
    if spec.kind == "qwen_vl" and spec.window_px is not None:
        n_full = sum(1 for i in spec.full_attention_blocks if 0 <= i < depth)
        windowed = _window_square_sum(spec, (gh, gw))
        blocks["vision.attn_scores"] = 4 * d * (n_full * full_square + (depth - n_full) * windowed)
    else:
        blocks["vision.attn_scores"] = depth * 4 * d * full_square
    if spec.attention_pool:
        # one probe query: q and out projections on 1 token, k/v on all, then a 1-token MLP
        blocks["vision.head"] = 4 * d * d + 4 * tokens * d * d + 4 * tokens * d + 4 * d * mlp
    if spec.kind == "qwen_vl":
        merged = patches // spec.spatial_merge_size**2
        wide = d * spec.spatial_merge_size**2
        blocks["vision.merger"] = 2 * merged * wide * (wide + spec.out_hidden_size)
    return Flops(blocks)
