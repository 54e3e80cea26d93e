"""The three inference stages of one image, as separate calls the runner can time and annotate.

- `vision_stage`: the vision towers and projector → the image's LLM-position embeddings (with
  v1's newline vectors and the view separator), exactly `get_image_features` of the model.
- `prefill_stage`: one decoder forward over the prompt embeddings (token embeddings with the image
  embeddings scattered onto the placeholder positions), lm_head on the last position only
  (`logits_to_keep=1`, as `generate` does) → the first token and the KV cache.
- `decode_step`: one decoder forward of one token with the KV cache, greedy.

Together they compute what `model.generate(..., do_sample=False)` computes, in the same order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

import torch
from PIL import Image

from llm_perf_opt.flops.analytic import ImageLayout
from llm_perf_opt.runner.models import BOS_TOKEN_ID, BuiltModel
from llm_perf_opt.runner.preprocess import preprocess

# "\n<|grounding|>Convert the document to markdown." stands in for the reference prompt: without a
# tokenizer the ids are fixed (taken modulo the vocabulary for tiny configs). Only their count
# matters for FLOPs and shapes.
INSTRUCTION_TOKEN_IDS: Final = (201, 128820, 35829, 270, 4782, 304, 51178, 16)


@dataclass(frozen=True)
class PreparedImage:
    """Model inputs of one image and its token geometry.

    Attributes:
        source: file path or "synthetic".
        width: original width (px).
        height: original height (px).
        mode: preprocessing mode.
        pixel_values: (1, 3, S, S) global view on the model's device and dtype.
        pixel_values_local: (n, 3, T, T) crops, or None.
        layout: crop grid, vision tokens and image positions.
        input_ids: (1, Lp) prompt: BOS, image placeholders, instruction ids.
        prompt_text_tokens: ids in the prompt that are not image positions (BOS included).
    """

    source: str
    width: int
    height: int
    mode: str
    pixel_values: torch.Tensor
    pixel_values_local: torch.Tensor | None
    layout: ImageLayout
    input_ids: torch.Tensor
    prompt_text_tokens: int

    @property
    def prefill_len(self) -> int:
        """Lp: positions of the prefill forward."""
        return int(self.input_ids.shape[1])

    def generate_inputs(self, family: str) -> dict[str, Any]:
        """Keyword inputs for `model.generate` with the same image and prompt."""
        inputs: dict[str, Any] = {
            "input_ids": self.input_ids,
            "attention_mask": torch.ones_like(self.input_ids),
            "pixel_values": self.pixel_values,
            "pixel_values_local": self.pixel_values_local,
        }
        if self.layout.crop_grid is not None:
            if family == "deepseek-ocr":
                inputs["images_spatial_crop"] = torch.tensor([self.layout.crop_grid])
            else:
                inputs["num_local_patches"] = [self.layout.n_crops]
        return inputs


def prompt_ids(built: BuiltModel, image_positions: int) -> list[int]:
    """BOS, `image_positions` placeholders, then the fixed instruction (reference order)."""
    vocab = built.config.text.vocab_size
    instruction = [t % vocab for t in INSTRUCTION_TOKEN_IDS]
    return [BOS_TOKEN_ID, *([built.image_token_id] * image_positions), *instruction]


def prepare_image(
    built: BuiltModel,
    image: Image.Image,
    mode: str,
    crops: tuple[int, int] | None = None,
    *,
    source: str = "synthetic",
) -> PreparedImage:
    """Preprocess `image` for `mode` and build the prompt, on the model's device and dtype.

    Raises:
        ConfigError: unknown mode for this model, or a bad forced crop grid.
    """
    pre = preprocess(built.config, image, mode, crops)
    device, dtype = built.device, built.dtype
    local = None
    if pre.crops is not None:
        local = torch.from_numpy(pre.crops).to(device=device, dtype=dtype)
    ids = prompt_ids(built, pre.layout.image_positions)
    return PreparedImage(
        source=source,
        width=image.size[0],
        height=image.size[1],
        mode=mode,
        pixel_values=torch.from_numpy(pre.global_view)[None].to(device=device, dtype=dtype),
        pixel_values_local=local,
        layout=pre.layout,
        input_ids=torch.tensor([ids], dtype=torch.long, device=device),
        prompt_text_tokens=len(ids) - pre.layout.image_positions,
    )


def with_random_pixels(prepared: PreparedImage, generator: torch.Generator) -> PreparedImage:
    """A copy with uniform [-1, 1) pixels of the same shapes (synthetic warmup input)."""

    def noise(like: torch.Tensor) -> torch.Tensor:
        values = torch.rand(like.shape, generator=generator) * 2 - 1
        return values.to(device=like.device, dtype=like.dtype)

    local = None if prepared.pixel_values_local is None else noise(prepared.pixel_values_local)
    return PreparedImage(
        source="random",
        width=prepared.width,
        height=prepared.height,
        mode=prepared.mode,
        pixel_values=noise(prepared.pixel_values),
        pixel_values_local=local,
        layout=prepared.layout,
        input_ids=prepared.input_ids,
        prompt_text_tokens=prepared.prompt_text_tokens,
    )


@torch.inference_mode()
def vision_stage(built: BuiltModel, prepared: PreparedImage) -> torch.Tensor:
    """Image embeddings in LLM order, (image_positions, hidden)."""
    base = built.model.model
    if built.family == "deepseek-ocr":
        features: torch.Tensor = base.get_image_features(
            prepared.pixel_values, prepared.pixel_values_local, prepared.layout.crop_grid
        )
        return features
    n_local = [prepared.layout.n_crops] if prepared.pixel_values_local is not None else None
    pooled = base.get_image_features(
        prepared.pixel_values, prepared.pixel_values_local, n_local, return_dict=True
    ).pooler_output
    first: torch.Tensor = pooled[0]
    return first


@torch.inference_mode()
def prefill_stage(
    built: BuiltModel, prepared: PreparedImage, image_embeds: torch.Tensor
) -> tuple[int, Any]:
    """One decoder forward over the prompt; returns (first generated token, KV cache)."""
    ids = prepared.input_ids
    embeds = built.model.get_input_embeddings()(ids)
    mask = (ids == built.image_token_id).unsqueeze(-1)
    embeds = embeds.masked_scatter(mask, image_embeds.to(embeds.dtype))
    out = built.model(inputs_embeds=embeds, use_cache=True, logits_to_keep=1)
    return int(out.logits[0, -1].argmax()), out.past_key_values


@torch.inference_mode()
def decode_step(built: BuiltModel, token: int, past: Any, position: int) -> tuple[int, Any]:
    """Feed `token` at 0-based `position` (attending to position + 1 keys); greedy next token."""
    ids = torch.tensor([[token]], dtype=torch.long, device=built.device)
    positions = torch.tensor([[position]], dtype=torch.long, device=built.device)
    out = built.model(
        input_ids=ids,
        past_key_values=past,
        position_ids=positions,
        use_cache=True,
        logits_to_keep=1,
    )
    return int(out.logits[0, -1].argmax()), out.past_key_values
