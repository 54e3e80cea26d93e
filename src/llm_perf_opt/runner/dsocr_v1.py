"""DeepSeek-OCR (v1) composed from transformers building blocks, for random-weight runs.

transformers has no native v1 class. Its parts exist elsewhere and are reused as is:
- SAM ViT-B with neck and 16× compressor: `DeepseekOcr2SamVisionEncoder` with downsample
  channels (512, 1024) — v1's `net_2`/`net_3` convs;
- the DeepSeek3B-MoE decoder: `DeepseekOcr2TextModel` (OCR-2's text model is the v1 decoder);
- CLIP-L: `CLIPEncoder` layers, fed SAM's features as patch embeddings plus a CLS token.
Only the glue follows the reference `deepencoder.py` / `modeling_deepseekocr.py`: the CLIP
embeddings, the 2048→1280 linear projector, the newline/separator layout, the order
(local crops first, then the global view) and the forward signature that `generate` drives.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, TypeVar

import torch
import torch.nn.functional as F
from torch import nn
from transformers import CLIPVisionConfig, GenerationMixin, PreTrainedConfig, PreTrainedModel
from transformers.cache_utils import Cache
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.models.clip.modeling_clip import CLIPEncoder
from transformers.models.deepseek_ocr2.configuration_deepseek_ocr2 import (
    DeepseekOcr2SamVisionConfig,
    DeepseekOcr2TextConfig,
)
from transformers.models.deepseek_ocr2.modeling_deepseek_ocr2 import (
    DeepseekOcr2SamVisionEncoder,
    DeepseekOcr2TextModel,
)

_C = TypeVar("_C", bound=PreTrainedConfig)


class DeepseekOcrV1Config(PreTrainedConfig):  # type: ignore[no-untyped-call]
    """Composite config: SAM, CLIP and text sub-configs plus the projector input width."""

    model_type = "llm_perf_opt_deepseek_ocr_v1"
    sub_configs: ClassVar[dict[str, Any]] = {
        "sam_config": DeepseekOcr2SamVisionConfig,
        "clip_config": CLIPVisionConfig,
        "text_config": DeepseekOcr2TextConfig,
    }

    sam_config: dict[str, Any] | PreTrainedConfig | None = None
    clip_config: dict[str, Any] | PreTrainedConfig | None = None
    text_config: dict[str, Any] | PreTrainedConfig | None = None
    projector_input_dim: int = 2048
    image_token_id: int = 128815
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs: Any) -> None:
        for key, cls in self.sub_configs.items():
            value = getattr(self, key)
            if value is None:
                setattr(self, key, cls())
            elif isinstance(value, dict):
                setattr(self, key, cls(**value))
        super().__post_init__(**kwargs)  # type: ignore[no-untyped-call]

    def sub(self, key: str, cls: type[_C]) -> _C:
        """Sub-config `key`, typed (always built as `cls` by `__post_init__`)."""
        value = getattr(self, key)
        if not isinstance(value, cls):
            raise TypeError(f"{key} is {type(value).__name__}, expected {cls.__name__}")
        return value


class ClipFromSamEmbeddings(nn.Module):
    """CLIP-L embeddings over SAM features: CLS + SAM tokens + a resized position table."""

    def __init__(self, config: CLIPVisionConfig) -> None:
        super().__init__()
        width = config.hidden_size
        self.class_embedding = nn.Parameter(torch.empty(width))
        # Bypassed like in the original (SAM features replace it); kept so the parameter set
        # matches the checkpoint's.
        patch, size = config.patch_size, config.image_size
        if not isinstance(patch, int) or not isinstance(size, int):
            raise TypeError("the CLIP config needs int image_size and patch_size")
        self.patch_embedding = nn.Conv2d(config.num_channels, width, patch, patch, bias=False)
        grid = size // patch
        self.position_embedding = nn.Embedding(grid * grid + 1, width)

    def forward(self, sam_features: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) SAM features → (B, 1 + h·w, C) embeddings."""
        batch = sam_features.shape[0]
        patches = sam_features.flatten(2).transpose(1, 2)
        cls = self.class_embedding.expand(batch, 1, -1)
        embeddings = torch.cat([cls, patches], dim=1)
        return embeddings + self._positions(patches.shape[1])

    def _positions(self, n_tokens: int) -> torch.Tensor:
        """The position table for n_tokens patches (+CLS), bicubic-resized like `get_abs_pos`."""
        table = self.position_embedding.weight
        src = math.isqrt(table.shape[0] - 1)
        tgt = math.isqrt(n_tokens)
        if src == tgt:
            return table.unsqueeze(0)
        grid = table[1:].reshape(1, src, src, -1).permute(0, 3, 1, 2).float()
        resized = F.interpolate(
            grid, size=(tgt, tgt), mode="bicubic", antialias=True, align_corners=False
        )
        resized = resized.to(table.dtype).permute(0, 2, 3, 1).reshape(tgt * tgt, -1)
        return torch.cat([table[:1], resized], dim=0).unsqueeze(0)


class SamFedClip(nn.Module):
    """CLIP-L transformer (pre-LN, no post-LN) over SAM features; returns every token."""

    def __init__(self, config: CLIPVisionConfig) -> None:
        super().__init__()
        self.embeddings = ClipFromSamEmbeddings(config)
        self.pre_layrnorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.encoder = CLIPEncoder(config)  # type: ignore[arg-type]  # reads only layer fields

    def forward(self, sam_features: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) → (B, 1 + h·w, C), CLS first."""
        hidden = self.pre_layrnorm(self.embeddings(sam_features))
        output: torch.Tensor = self.encoder(inputs_embeds=hidden).last_hidden_state
        return output


class DeepseekOcrV1PreTrainedModel(PreTrainedModel):  # type: ignore[no-untyped-call]
    """Shared settings; weights are initialised by the runner (random), not here."""

    config_class = DeepseekOcrV1Config
    config: DeepseekOcrV1Config
    base_model_prefix = "model"
    input_modalities: str | list[str] = ["image", "text"]  # noqa: RUF012
    _supports_sdpa = True
    _supports_flash_attn = False  # SAM's relative-position bias needs an explicit mask
    _no_split_modules: set[str] | list[str] | None = [  # noqa: RUF012
        "DeepseekOcr2SamVisionLayer",
        "CLIPEncoderLayer",
        "DeepseekOcr2TextDecoderLayer",
    ]
    _skip_keys_device_placement: set[str] | list[str] | None = ["past_key_values"]  # noqa: RUF012

    @classmethod
    def _can_set_experts_implementation(cls) -> bool:
        """The decoder's experts come from transformers (`@use_experts_implementation`), so
        grouped_mm / batched_mm apply; the default check looks for that decorator in this file."""
        return True


class DeepseekOcrV1Model(DeepseekOcrV1PreTrainedModel):
    """Vision towers, projector, layout vectors and the decoder (no lm_head)."""

    def __init__(self, config: DeepseekOcrV1Config) -> None:
        super().__init__(config)
        text = config.sub("text_config", DeepseekOcr2TextConfig)
        self.sam_model = DeepseekOcr2SamVisionEncoder(
            config.sub("sam_config", DeepseekOcr2SamVisionConfig)
        )
        self.vision_model = SamFedClip(config.sub("clip_config", CLIPVisionConfig))
        self.projector = nn.Linear(config.projector_input_dim, text.hidden_size)
        self.image_newline = nn.Parameter(torch.empty(text.hidden_size))
        self.view_seperator = nn.Parameter(torch.empty(text.hidden_size))
        self.language_model = DeepseekOcr2TextModel(text)
        self.post_init()  # type: ignore[no-untyped-call]

    def get_input_embeddings(self) -> nn.Module:
        """The decoder's token embedding."""
        embed: nn.Module = self.language_model.embed_tokens
        return embed

    def encode_views(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) views → (B, tokens, hidden): SAM, CLIP, concat, project."""
        sam = self.sam_model(pixel_values).last_hidden_state
        clip = self.vision_model(sam)
        features = torch.cat([clip[:, 1:], sam.flatten(2).transpose(1, 2)], dim=-1)
        projected: torch.Tensor = self.projector(features)
        return projected

    def get_image_features(
        self,
        pixel_values: torch.Tensor,
        pixel_values_local: torch.Tensor | None = None,
        images_spatial_crop: torch.Tensor | tuple[int, int] | None = None,
    ) -> torch.Tensor:
        """One image's embeddings in LLM order: [local rows + newlines], global rows + newlines,
        view separator; shape (image_positions, hidden).

        Args:
            pixel_values: (1, 3, S, S) global view.
            pixel_values_local: (cols·rows, 3, T, T) crops in row-major order, or None.
            images_spatial_crop: (cols, rows) of the crops (tensor or pair); ignored without crops.
        """
        if pixel_values.shape[0] != 1:
            raise ValueError("DeepseekOcrV1Model encodes one image per call (batch size 1)")
        parts = []
        if pixel_values_local is not None and images_spatial_crop is not None:
            cols, rows = (int(v) for v in torch.as_tensor(images_spatial_crop).flatten()[:2])
            local = self.encode_views(pixel_values_local)
            side = math.isqrt(local.shape[1])
            hidden = local.shape[-1]
            grid = local.view(rows, cols, side, side, hidden).permute(0, 2, 1, 3, 4)
            grid = grid.reshape(rows * side, cols * side, hidden)
            parts.append(self._with_newlines(grid))
        glob = self.encode_views(pixel_values)[0]
        side = math.isqrt(glob.shape[0])
        parts.append(self._with_newlines(glob.view(side, side, -1)))
        parts.append(self.view_seperator[None, :].to(glob.dtype))
        return torch.cat(parts, dim=0)

    def _with_newlines(self, grid: torch.Tensor) -> torch.Tensor:
        """(rows, cols, hidden) → (rows·(cols + 1), hidden) with a newline after each row."""
        rows, _, hidden = grid.shape
        newline = self.image_newline[None, None, :].to(grid.dtype).expand(rows, 1, hidden)
        return torch.cat([grid, newline], dim=1).reshape(-1, hidden)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        pixel_values_local: torch.Tensor | None = None,
        images_spatial_crop: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        **kwargs: Any,
    ) -> BaseModelOutputWithPast:
        """Embed, place the image embeddings on the image-token positions, run the decoder."""
        if inputs_embeds is None:
            inputs_embeds = self.get_input_embeddings()(input_ids)
        if pixel_values is not None and input_ids is not None:
            features = self.get_image_features(
                pixel_values, pixel_values_local, images_spatial_crop
            )
            mask = (input_ids == self.config.image_token_id).unsqueeze(-1)
            inputs_embeds = inputs_embeds.masked_scatter(mask, features.to(inputs_embeds.dtype))
        output: BaseModelOutputWithPast = self.language_model(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            use_cache=use_cache,
            **kwargs,
        )
        return output


class DeepseekOcrV1ForConditionalGeneration(DeepseekOcrV1PreTrainedModel, GenerationMixin):
    """DeepSeek-OCR v1 with its untied lm_head; `generate` works with pixel inputs."""

    _tied_weights_keys: dict[str, str] = {  # noqa: RUF012
        "lm_head.weight": "model.language_model.embed_tokens.weight"
    }

    def __init__(self, config: DeepseekOcrV1Config) -> None:
        super().__init__(config)
        self.model = DeepseekOcrV1Model(config)
        text = config.sub("text_config", DeepseekOcr2TextConfig)
        self.lm_head = nn.Linear(text.hidden_size, text.vocab_size, bias=False)
        self.post_init()  # type: ignore[no-untyped-call]

    def get_input_embeddings(self) -> nn.Module:
        """The decoder's token embedding."""
        embed: nn.Module = self.model.get_input_embeddings()
        return embed

    def get_output_embeddings(self) -> nn.Module:
        """The lm_head."""
        head: nn.Module = self.lm_head
        return head

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        pixel_values_local: torch.Tensor | None = None,
        images_spatial_crop: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int = 0,
        **kwargs: Any,
    ) -> CausalLMOutputWithPast:
        """Decoder forward; the lm_head runs on the last `logits_to_keep` positions (0: all)."""
        outputs = self.model(
            input_ids=input_ids,
            pixel_values=pixel_values,
            pixel_values_local=pixel_values_local,
            images_spatial_crop=images_spatial_crop,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            **kwargs,
        )
        hidden = outputs.last_hidden_state[:, slice(-logits_to_keep, None), :]
        return CausalLMOutputWithPast(
            logits=self.lm_head(hidden), past_key_values=outputs.past_key_values
        )
