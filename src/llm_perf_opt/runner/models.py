"""Build DeepSeek-OCR models with random weights from `llm_perf_opt.flops.configs`, or load one.

One `ModelConfig` feeds both the FLOP model and the torch modules, so what is counted is what
runs. Random init is fast at full size: modules are allocated directly on the target device in
the target dtype with every initializer disabled (transformers' `no_init_weights`), then filled
in place (normal(0, 0.02), norms 1, biases 0) from one seed. FLOPs and kernel shapes depend on
shapes only; the values just have to be finite and deterministic.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

import torch
import transformers
from torch import nn
from transformers import CLIPVisionConfig, DeepseekOcr2Config, DeepseekOcr2ForConditionalGeneration
from transformers.initialization import no_init_weights
from transformers.modeling_outputs import BaseModelOutput
from transformers.models.deepseek_ocr2.configuration_deepseek_ocr2 import (
    DeepseekOcr2SamVisionConfig,
    DeepseekOcr2TextConfig,
    DeepseekOcr2VisionConfig,
    DeepseekOcr2VisionEncoderConfig,
)
from transformers.models.deepseek_ocr2.modeling_deepseek_ocr2 import DeepseekOcr2VisionModel

from llm_perf_opt.errors import ConfigError, LlmPerfOptError
from llm_perf_opt.flops.configs import ModelConfig, builtin_config, config_from_json_dict
from llm_perf_opt.runner.dsocr_v1 import DeepseekOcrV1Config, DeepseekOcrV1ForConditionalGeneration
from llm_perf_opt.vocab import FAMILIES, Family

INIT_STD: Final = 0.02
BOS_TOKEN_ID: Final = 0  # both checkpoints: <｜begin▁of▁sentence｜> = 0, EOS = 1
EOS_TOKEN_ID: Final = 1
V1_PINNED_TRANSFORMERS: Final = "4.46.3"  # what the v1 remote code on the Hub requires
AttnImplementation = Literal["sdpa", "eager"]
ExpertsImplementation = Literal["eager", "grouped_mm", "batched_mm"]


PreTrainedConfigLike = DeepseekOcr2Config | DeepseekOcrV1Config


class ModelLoadError(LlmPerfOptError):
    """A model name or path cannot be turned into a runnable model."""


@dataclass
class BuiltModel:
    """A ready-to-run model and the facts the runner records about it.

    Attributes:
        family: "deepseek-ocr" (v1) or "deepseek-ocr2".
        name: what the user asked for (family name or local path).
        model: the `...ForConditionalGeneration` module (an nn.Module; eval mode, no grad),
            typed Any because its submodules are reached by name (`model.model.vision_tower`).
        config: the architecture it was built from.
        config_dict: `config.to_dict()` (JSON-able; `ModelConfig.from_dict` inverts it).
        hf_config_dict: the transformers config's `to_dict()`.
        image_token_id: id of the image placeholder positions in the prompt.
        attn_implementation: attention backend the decoder and towers run with.
        experts_implementation: MoE expert backend ("eager" = per-expert loop, as the reference).
        random_weights: weights are random (built from config), not loaded.
    """

    family: Family
    name: str
    model: Any
    config: ModelConfig
    config_dict: dict[str, Any]
    hf_config_dict: dict[str, Any]
    image_token_id: int
    attn_implementation: str
    experts_implementation: str
    random_weights: bool

    @property
    def device(self) -> torch.device:
        """Device of the weights."""
        device: torch.device = next(self.model.parameters()).device
        return device

    @property
    def dtype(self) -> torch.dtype:
        """Dtype of the weights."""
        dtype: torch.dtype = next(self.model.parameters()).dtype
        return dtype

    @property
    def n_params(self) -> int:
        """Parameters instantiated (shared tensors once)."""
        return sum(p.numel() for p in self.model.parameters())


def build_model(
    family: str,
    *,
    tiny: bool = False,
    dtype: torch.dtype = torch.bfloat16,
    device: str | torch.device = "cpu",
    seed: int = 0,
    path: str | Path | None = None,
    attn_implementation: AttnImplementation = "sdpa",
    experts_implementation: ExpertsImplementation = "eager",
) -> BuiltModel:
    """Build `family` with random weights, or load the local snapshot at `path`.

    Args:
        family: "deepseek-ocr" or "deepseek-ocr2"; ignored with `path` (the snapshot's
            config.json decides).
        tiny: the small CPU-test config (random weights only).
        dtype: weight dtype.
        device: where to build ("meta" gives shapes without memory).
        seed: seeds the random weights.
        path: a local Hugging Face snapshot directory with real weights.
        attn_implementation: "sdpa" (default, transformers' default) or "eager".
        experts_implementation: "eager" (default: per-expert loop, as the reference remote code
            runs) or transformers' "grouped_mm"/"batched_mm".

    Raises:
        ConfigError: unknown family.
        ModelLoadError: `path` is not a loadable DeepSeek-OCR snapshot.
    """
    if path is not None:
        return load_local(Path(path), dtype, device, attn_implementation, experts_implementation)
    if family not in FAMILIES:
        raise ConfigError(
            f"model {family!r} is unknown; use {' or '.join(FAMILIES)} or a local snapshot path"
        )
    config = builtin_config(family, tiny=tiny)
    hf_config = hf_config_for(config)
    cls: Any = (
        DeepseekOcrV1ForConditionalGeneration
        if config.family == "deepseek-ocr"
        else DeepseekOcr2ForConditionalGeneration
    )
    with torch.device(device), no_init_weights():
        model = cls._from_config(
            hf_config,
            dtype=dtype,
            attn_implementation=attn_implementation,
            experts_implementation=experts_implementation,
        )
        if config.family == "deepseek-ocr2":
            _match_query_tables(model, config)
    if torch.device(device).type != "meta":
        random_init(model, seed)
    model.tie_weights()
    return _finish(model, config, config.family, config.family, random_weights=True)


def hf_config_for(config: ModelConfig) -> PreTrainedConfigLike:
    """The transformers config that builds `config`'s architecture."""
    text = config.text
    text_config = DeepseekOcr2TextConfig(
        vocab_size=text.vocab_size,
        hidden_size=text.hidden_size,
        intermediate_size=text.intermediate_size,
        num_hidden_layers=text.num_layers,
        num_attention_heads=text.num_heads,
        num_key_value_heads=text.num_kv_heads,
        max_position_embeddings=text.max_position_embeddings,
        rms_norm_eps=text.rms_norm_eps,
        tie_word_embeddings=text.tie_word_embeddings,
        attention_bias=text.attention_bias,
        rope_parameters={"rope_type": "default", "rope_theta": text.rope_theta},
        n_routed_experts=text.n_routed_experts,
        n_shared_experts=text.n_shared_experts,
        num_experts_per_tok=text.num_experts_per_tok,
        moe_intermediate_size=text.moe_intermediate_size,
        mlp_layer_types=list(text.mlp_layer_types),
        topk_method=text.topk_method,
        routed_scaling_factor=text.routed_scaling_factor,
        bos_token_id=BOS_TOKEN_ID,
        eos_token_id=EOS_TOKEN_ID,
    )
    sam = config.sam
    sam_config = DeepseekOcr2SamVisionConfig(
        hidden_size=sam.width,
        output_channels=sam.out_chans,
        num_hidden_layers=sam.depth,
        num_attention_heads=sam.num_heads,
        num_channels=sam.num_channels,
        image_size=sam.image_size,
        patch_size=sam.patch_size,
        hidden_act=sam.hidden_act,
        layer_norm_eps=sam.layer_norm_eps,
        qkv_bias=sam.qkv_bias,
        use_abs_pos=sam.use_abs_pos,
        use_rel_pos=sam.use_rel_pos,
        window_size=sam.window_size,
        global_attn_indexes=list(sam.global_attn_indexes),
        mlp_dim=sam.mlp_dim,
        downsample_channels=list(sam.downsample_channels),
    )
    image_token_id = placeholder_token_id(config)
    if config.clip is not None:
        clip = config.clip
        return DeepseekOcrV1Config(
            sam_config=sam_config,
            clip_config=CLIPVisionConfig(
                hidden_size=clip.width,
                intermediate_size=clip.mlp_dim,
                num_hidden_layers=clip.depth,
                num_attention_heads=clip.num_heads,
                image_size=clip.image_size,
                patch_size=clip.patch_size,
                hidden_act=clip.hidden_act,
                layer_norm_eps=clip.layer_norm_eps,
            ),
            text_config=text_config,
            projector_input_dim=config.projector.input_dim,
            image_token_id=image_token_id,
        )
    encoder = config.query_encoder
    if encoder is None:
        raise ConfigError("a deepseek-ocr2 config needs a query_encoder; fix the model config")
    vision_config = DeepseekOcr2VisionConfig(
        sam_config=sam_config,
        encoder_config=DeepseekOcr2VisionEncoderConfig(
            vocab_size=encoder.vocab_size,
            hidden_size=encoder.hidden_size,
            intermediate_size=encoder.intermediate_size,
            num_hidden_layers=encoder.num_layers,
            num_attention_heads=encoder.num_heads,
            num_key_value_heads=encoder.num_kv_heads,
            max_position_embeddings=encoder.max_position_embeddings,
            rms_norm_eps=encoder.rms_norm_eps,
            rope_parameters={"rope_type": "default", "rope_theta": encoder.rope_theta},
        ),
    )
    return DeepseekOcr2Config(
        vision_config=vision_config, text_config=text_config, image_token_id=image_token_id
    )


def placeholder_token_id(config: ModelConfig) -> int:
    """The image placeholder id, moved to the last vocabulary row when it lies outside the
    vocabulary (tiny configs keep the real 128815 but have 512 rows)."""
    if config.image_token_id < config.text.vocab_size:
        return config.image_token_id
    return config.text.vocab_size - 1


class _SizedQueryVisionModel(DeepseekOcr2VisionModel):  # type: ignore[no-untyped-call]
    """OCR-2's vision model with query tables sized by the config instead of 144/256.

    transformers hard-codes 144 crop and 256 global queries and picks the crop table when a view
    has ≤ 144 SAM tokens. Tiny configs have fewer SAM tokens per view; this keeps the rule with
    the config's counts (`QueryEncoderConfig.queries_for`). Full-size models use the real class.
    """

    def __init__(self, config: DeepseekOcr2VisionConfig, n_crop: int, n_global: int) -> None:
        super().__init__(config)
        encoder_config = config.encoder_config
        if not isinstance(encoder_config, DeepseekOcr2VisionEncoderConfig):
            raise TypeError("the OCR-2 vision config needs an encoder_config")
        hidden = encoder_config.hidden_size
        self.query_768_resolution = nn.Embedding(n_crop, hidden)
        self.query_1024_resolution = nn.Embedding(n_global, hidden)

    def forward(self, pixel_values: torch.Tensor, **kwargs: Any) -> BaseModelOutput:
        """Same as the parent, with the crop/global switch at the crop table size."""
        sam_out = self.sam_encoder(pixel_values, **kwargs)
        hidden = sam_out.last_hidden_state.flatten(2).transpose(1, 2)
        batch, num_patches, _ = hidden.shape
        crop, glob = self.query_768_resolution.weight, self.query_1024_resolution.weight
        queries = crop if num_patches <= crop.shape[0] else glob
        combined = torch.cat([hidden, queries.unsqueeze(0).expand(batch, -1, -1)], dim=1)
        encoded = self.vision_encoder(inputs_embeds=combined, num_patches=num_patches, **kwargs)
        return BaseModelOutput(last_hidden_state=encoded.last_hidden_state[:, num_patches:, :])


def _match_query_tables(model: Any, config: ModelConfig) -> None:
    """Swap in `_SizedQueryVisionModel` when the config's query counts are not 144/256."""
    encoder = config.query_encoder
    if encoder is None or (encoder.num_queries_crop, encoder.num_queries_global) == (144, 256):
        return
    base = model.model
    base.vision_tower = _SizedQueryVisionModel(
        base.vision_tower.config, encoder.num_queries_crop, encoder.num_queries_global
    )


@torch.no_grad()
def random_init(model: nn.Module, seed: int) -> None:
    """Fill every parameter in place: norms 1/0, biases 0, everything else normal(0, 0.02)."""
    torch.manual_seed(seed)
    for module in model.modules():
        is_norm = isinstance(module, nn.LayerNorm) or "Norm" in type(module).__name__
        for name, param in module.named_parameters(recurse=False):
            if is_norm:
                param.fill_(1.0 if name == "weight" else 0.0)
            elif name == "bias":
                param.zero_()
            else:
                param.normal_(0.0, INIT_STD)


def _finish(
    model: Any, config: ModelConfig, family: Family, name: str, *, random_weights: bool
) -> BuiltModel:
    model.eval()
    model.requires_grad_(False)
    hf_config = model.config
    return BuiltModel(
        family=family,
        name=name,
        model=model,
        config=config,
        config_dict=config.to_dict(),
        hf_config_dict=hf_config.to_dict(),
        image_token_id=int(hf_config.image_token_id),
        attn_implementation=str(hf_config._attn_implementation),
        experts_implementation=str(hf_config._experts_implementation),
        random_weights=random_weights,
    )


def load_local(
    path: Path,
    dtype: torch.dtype,
    device: str | torch.device,
    attn_implementation: AttnImplementation = "sdpa",
    experts_implementation: ExpertsImplementation = "eager",
) -> BuiltModel:
    """Load a local Hugging Face snapshot with real weights (no network).

    DeepSeek-OCR-2 loads through the native transformers class. DeepSeek-OCR v1 snapshots need
    their remote code, which pins transformers 4.46.3 — incompatible with this runner — so they
    are refused with a message saying so.

    Raises:
        ModelLoadError: no config.json, an unsupported model type, a v1 snapshot, or weights
            that do not load.
    """
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ModelLoadError(
            f"model {str(path)!r} is neither {' nor '.join(FAMILIES)} nor a directory with a "
            "config.json; pass a family name or a local Hugging Face snapshot"
        )
    try:
        data = json.loads(config_file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"{config_file} is not readable JSON ({exc}); fix the file") from None
    if "language_config" in data:
        raise ModelLoadError(
            f"{path} is a DeepSeek-OCR v1 snapshot: its remote code pins transformers=="
            f"{V1_PINNED_TRANSFORMERS}, but {transformers.__version__} is installed (this runner "
            "needs >=5.17); run it in the reference environment, or use --model deepseek-ocr "
            "for the same architecture with random weights"
        )
    if data.get("model_type") != "deepseek_ocr2":
        raise ModelLoadError(
            f"{config_file} has model_type {data.get('model_type')!r}, not deepseek_ocr2 or a "
            "DeepSeek-OCR v1 config; pass a DeepSeek-OCR(-2) snapshot"
        )
    config = config_from_json_dict(data, source=str(config_file))
    try:
        loaded: Any = DeepseekOcr2ForConditionalGeneration.from_pretrained(
            path,
            dtype=dtype,
            local_files_only=True,
            attn_implementation=attn_implementation,
            experts_implementation=experts_implementation,
        )
    except (OSError, ValueError, RuntimeError) as exc:
        raise ModelLoadError(f"cannot load weights from {path}: {exc}") from None
    model = loaded.to(device)  # not device_map=: that needs accelerate
    return _finish(model, config, "deepseek-ocr2", str(path), random_weights=False)
