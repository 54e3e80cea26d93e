"""A Hugging Face `config.json`, read as plain JSON, as a small typed description for FLOPs.

Only what FLOPs and decode bytes depend on is kept: per decoder layer its attention (grouped-query
or DeepSeek's multi-head latent attention), its sliding window and its MLP (dense or mixture of
experts); for a vision tower its ViT shape. Families are recognised by `model_type`; a composite
VLM config (`text_config` + `vision_config`) is split into its parts. transformers is never
imported: the numbers are the config's, with transformers' defaults where HF omits a key.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Literal, TypeVar, cast

from llm_perf_opt.errors import ConfigError

DECODER_TYPES: Final = (
    "llama",
    "mistral",
    "qwen2",
    "qwen3",
    "gemma",
    "gemma2",
    "gemma3_text",
    "mixtral",
    "qwen2_moe",
    "qwen3_moe",
    "deepseek_v2",
    "deepseek_v3",
)
VISION_TYPES: Final = ("clip_vision_model", "siglip_vision_model", "qwen2_vl", "qwen2_5_vl")
# Composite VLM types whose text part is a decoder family above (the Qwen-VL text is Qwen2's).
COMPOSITE_TEXT: Final = {"qwen2_vl": "qwen2", "qwen2_5_vl": "qwen2"}
SUPPORTED_TYPES: Final = (*DECODER_TYPES, *VISION_TYPES)
# Sub-config model_types transformers writes for the parts of a composite config.
_PART_ALIASES: Final = {
    "qwen2_vl_text": "qwen2",
    "qwen2_5_vl_text": "qwen2",
    "clip_vision_model": "clip_vision_model",
    "siglip_vision_model": "siglip_vision_model",
    "qwen2_vl_vision": "qwen2_vl",
    "qwen2_5_vl_vision": "qwen2_5_vl",
}
_GEMMA: Final = ("gemma", "gemma2", "gemma3_text")
_QWEN_MOE: Final = ("qwen2_moe", "qwen3_moe")
_DEEPSEEK: Final = ("deepseek_v2", "deepseek_v3")


# Bounds on config numbers, checked before anything per layer is built: the largest published
# models have ~130 layers and dimensions, heads, experts and vocabularies far below 2^30.
MAX_LAYERS: Final = 10_000
MAX_CONFIG_INT: Final = 1 << 30


@dataclass(frozen=True)
class GqaAttention:
    """Grouped-query attention (MHA when kv heads = heads, MQA when 1)."""

    num_heads: int
    num_kv_heads: int
    head_dim: int

    def __post_init__(self) -> None:
        if self.num_heads % self.num_kv_heads:
            raise ConfigError(
                f"num_key_value_heads ({self.num_kv_heads}) must divide num_attention_heads "
                f"({self.num_heads}) (each kv head serves a group of query heads); fix the config"
            )


@dataclass(frozen=True)
class MlaAttention:
    """DeepSeek multi-head latent attention; `q_lora_rank` None means a plain q projection.

    The cache holds the latent (kv_lora_rank + qk_rope_head_dim per position and layer);
    transformers expands it with `kv_b_proj` over every cached position at each forward.
    """

    num_heads: int
    q_lora_rank: int | None
    kv_lora_rank: int
    qk_nope_head_dim: int
    qk_rope_head_dim: int
    v_head_dim: int


@dataclass(frozen=True)
class DenseMlp:
    """Gated MLP (gate, up, down) of width `intermediate_size`."""

    intermediate_size: int


@dataclass(frozen=True)
class MoeMlp:
    """Routed experts (gated MLPs) with a d×E router, optional shared experts and shared gate.

    `shared_intermediate_size` is the total width of the shared experts (0: none);
    `shared_gate` is Qwen2-MoE's d×1 sigmoid gate on the shared expert.
    """

    num_experts: int
    top_k: int
    expert_intermediate_size: int
    shared_intermediate_size: int = 0
    shared_gate: bool = False

    def __post_init__(self) -> None:
        if self.top_k > self.num_experts:
            raise ConfigError(
                f"num_experts_per_tok ({self.top_k}) exceeds the experts ({self.num_experts}); "
                "a token cannot be routed to more experts than exist. Fix the config"
            )
        if self.shared_intermediate_size < 0:
            raise ConfigError(
                f"the shared experts' width ({self.shared_intermediate_size}) must be ≥ 0; "
                "fix the config"
            )


@dataclass(frozen=True)
class DecoderLayer:
    """One decoder layer: its MLP and its sliding window (None: full causal attention)."""

    mlp: DenseMlp | MoeMlp
    window: int | None = None


@dataclass(frozen=True)
class DecoderSpec:
    """A decoder-only LM as FLOPs see it."""

    model_type: str
    hidden_size: int
    vocab_size: int
    attention: GqaAttention | MlaAttention
    layers: tuple[DecoderLayer, ...]
    tie_word_embeddings: bool
    max_position_embeddings: int


VisionKind = Literal["vit", "qwen_vl"]


@dataclass(frozen=True)
class VisionSpec:
    """A ViT vision tower.

    Attributes:
        kind: "vit" (CLIP/SigLIP: square image, patch conv, pre-norm blocks with q/k/v/o and a
            two-layer MLP) or "qwen_vl" (Qwen2-VL / Qwen2.5-VL: 3-D patch conv, fused qkv,
            optional windowed attention, 2×2 patch merger).
        width: hidden size of the blocks.
        intermediate_size: MLP width.
        gated_mlp: gate/up/down MLP (Qwen2.5-VL) instead of fc1/fc2.
        image_size: the square side the processor resizes to (vit) or None (qwen_vl: any size).
        class_token: CLIP prepends a [CLS] token.
        attention_pool: SigLIP's multi-head attention pooling head (`vision_use_head`).
        window_px: Qwen2.5-VL window side in pixels (None: every block attends globally).
        full_attention_blocks: Qwen2.5-VL blocks that attend over the whole image.
        out_hidden_size: width the patch merger projects to (the LLM's hidden size).
    """

    model_type: str
    kind: VisionKind
    width: int
    depth: int
    num_heads: int
    intermediate_size: int
    gated_mlp: bool
    patch_size: int
    in_channels: int
    image_size: int | None = None
    class_token: bool = False
    attention_pool: bool = False
    temporal_patch_size: int = 1
    spatial_merge_size: int = 1
    window_px: int | None = None
    full_attention_blocks: tuple[int, ...] = ()
    out_hidden_size: int = 0


@dataclass(frozen=True)
class HfModel:
    """A Hugging Face model: its decoder, its vision tower, or both (a VLM)."""

    source: str
    model_type: str
    text: DecoderSpec | None
    vision: VisionSpec | None


def unsupported_type_error(data: dict[str, Any], source: str) -> ConfigError:
    """The one error for a config whose model_type this package cannot count."""
    return ConfigError(
        f"{source}: model_type {data.get('model_type')!r} is not supported; supported: "
        f"{', '.join(SUPPORTED_TYPES)} (or a DeepSeek-OCR(-2) config.json, or our to_dict() JSON)"
    )


def hf_model_from_dict(data: dict[str, Any], source: str = "config") -> HfModel:
    """Interpret a parsed HF config; composite configs give both parts.

    Raises:
        ConfigError: a model_type outside SUPPORTED_TYPES or a missing key.
    """
    model_type = data.get("model_type")
    if model_type in DECODER_TYPES:
        return HfModel(source, str(model_type), decoder_spec(data, str(model_type), source), None)
    if model_type in ("clip_vision_model", "siglip_vision_model"):
        return HfModel(source, str(model_type), None, vision_spec(data, str(model_type), source))
    if model_type in COMPOSITE_TEXT:
        text = _section(data, "text_config", source) or data
        vision = _section(data, "vision_config", source)
        if vision is None:
            raise ConfigError(f"{source} lacks 'vision_config'; pass the model's full config.json")
        return HfModel(
            source,
            str(model_type),
            decoder_spec(text, COMPOSITE_TEXT[str(model_type)], f"{source}: text_config"),
            vision_spec(vision, str(model_type), f"{source}: vision_config"),
        )
    text_part = _section(data, "text_config", source)
    vision_part = _section(data, "vision_config", source)
    if text_part is not None or vision_part is not None:
        return HfModel(
            source,
            str(model_type),
            _part(text_part, DECODER_TYPES, "text_config", source, decoder_spec),
            _part(vision_part, VISION_TYPES, "vision_config", source, vision_spec),
        )
    raise unsupported_type_error(data, source)


_Part = TypeVar("_Part", DecoderSpec, VisionSpec)


def _part(
    section: dict[str, Any] | None,
    allowed: tuple[str, ...],
    key: str,
    source: str,
    build: Callable[[dict[str, Any], str, str], _Part],
) -> _Part | None:
    """One part of a generic composite config, by the part's own model_type."""
    if section is None:
        return None
    part_type = _PART_ALIASES.get(str(section.get("model_type")), section.get("model_type"))
    if part_type not in allowed:
        raise ConfigError(
            f"{source}: {key}.model_type {section.get('model_type')!r} is not supported; "
            f"supported: {', '.join(allowed)}"
        )
    return build(section, str(part_type), f"{source}: {key}")


# --- decoders -------------------------------------------------------------------------------------


def decoder_spec(data: dict[str, Any], family: str, where: str) -> DecoderSpec:
    """The decoder of one family from its (text) config.

    Raises:
        ConfigError: a required key is missing or a value is not a positive integer.
    """
    d = _int(data, "hidden_size", where)
    layers = _int(data, "num_hidden_layers", where, high=MAX_LAYERS)
    heads = _int(data, "num_attention_heads", where)
    attention: GqaAttention | MlaAttention
    if family in _DEEPSEEK:
        q_lora = data.get("q_lora_rank")
        attention = MlaAttention(
            num_heads=heads,
            q_lora_rank=None if q_lora is None else _int(data, "q_lora_rank", where),
            kv_lora_rank=_int(data, "kv_lora_rank", where),
            qk_nope_head_dim=_int(data, "qk_nope_head_dim", where),
            qk_rope_head_dim=_int(data, "qk_rope_head_dim", where),
            v_head_dim=_int(data, "v_head_dim", where),
        )
    else:
        head_dim = data.get("head_dim") or d // heads
        attention = GqaAttention(
            num_heads=heads,
            num_kv_heads=_int(data, "num_key_value_heads", where, heads),
            head_dim=_positive(head_dim, f"{where}.head_dim"),
        )
    windows = _windows(data, family, layers, where)
    mlps = _mlps(data, family, layers, where)
    return DecoderSpec(
        model_type=family,
        hidden_size=d,
        vocab_size=_int(data, "vocab_size", where),
        attention=attention,
        layers=tuple(DecoderLayer(m, w) for m, w in zip(mlps, windows, strict=True)),
        tie_word_embeddings=bool(data.get("tie_word_embeddings", family in _GEMMA)),
        max_position_embeddings=_int(data, "max_position_embeddings", where, 2048),
    )


def _windows(data: dict[str, Any], family: str, layers: int, where: str) -> list[int | None]:
    """Sliding window of each layer: `layer_types` when given, else the family's rule."""
    window = data.get("sliding_window")
    if not window:
        return [None] * layers
    window = _positive(window, f"{where}.sliding_window")
    types = data.get("layer_types")
    if types is not None:
        if len(types) != layers:
            raise ConfigError(
                f"{where}.layer_types has {len(types)} entries for {layers} layers; fix the config"
            )
        return [window if t == "sliding_attention" else None for t in types]
    if family in ("mistral", "mixtral"):
        return [window] * layers
    if family == "gemma2":
        return [window if i % 2 == 0 else None for i in range(layers)]
    if family == "gemma3_text":
        pattern = _positive(
            data.get("sliding_window_pattern", data.get("_sliding_window_pattern", 6)),
            f"{where}.sliding_window_pattern",
        )
        return [None if (i + 1) % pattern == 0 else window for i in range(layers)]
    if family.startswith("qwen") and data.get("use_sliding_window"):
        first = _count(data, "max_window_layers", where, layers)
        return [window if i >= first else None for i in range(layers)]
    return [None] * layers


def _mlps(data: dict[str, Any], family: str, layers: int, where: str) -> list[DenseMlp | MoeMlp]:
    """MLP of each layer: dense, or MoE by the family's placement rule."""
    if family == "mixtral":
        moe = MoeMlp(
            num_experts=_int(data, "num_local_experts", where, 8),
            top_k=_int(data, "num_experts_per_tok", where, 2),
            expert_intermediate_size=_int(data, "intermediate_size", where),
        )
        return [moe] * layers
    if family in _QWEN_MOE:
        experts = data.get("num_experts", data.get("num_local_experts"))
        moe = MoeMlp(
            num_experts=_positive(experts, f"{where}.num_experts"),
            top_k=_int(data, "num_experts_per_tok", where),
            expert_intermediate_size=_int(data, "moe_intermediate_size", where),
            shared_intermediate_size=_count(data, "shared_expert_intermediate_size", where, 0)
            if family == "qwen2_moe"
            else 0,
            shared_gate=family == "qwen2_moe" and bool(data.get("shared_expert_intermediate_size")),
        )
        dense_only = set(data.get("mlp_only_layers") or [])
        step = _int(data, "decoder_sparse_step", where, 1)
        is_moe = [i not in dense_only and (i + 1) % step == 0 for i in range(layers)]
        if all(is_moe):
            return [moe] * layers
        dense = DenseMlp(_int(data, "intermediate_size", where))
        return [moe if m else dense for m in is_moe]
    if family in _DEEPSEEK:
        routed = _int(data, "n_routed_experts", where)
        moe_width = _int(data, "moe_intermediate_size", where)
        moe = MoeMlp(
            num_experts=routed,
            top_k=_int(data, "num_experts_per_tok", where),
            expert_intermediate_size=moe_width,
            shared_intermediate_size=_count(data, "n_shared_experts", where, 0) * moe_width,
        )
        first_dense = _count(data, "first_k_dense_replace", where, 0)
        freq = _int(data, "moe_layer_freq", where, 1)
        dense = DenseMlp(_int(data, "intermediate_size", where))
        return [moe if i >= first_dense and i % freq == 0 else dense for i in range(layers)]
    return [DenseMlp(_int(data, "intermediate_size", where))] * layers


# --- vision towers --------------------------------------------------------------------------------


def vision_spec(data: dict[str, Any], model_type: str, where: str) -> VisionSpec:
    """A vision tower from its (vision_config) JSON.

    Raises:
        ConfigError: a required key is missing or not a positive integer.
    """
    if model_type in ("clip_vision_model", "siglip_vision_model"):
        siglip = model_type == "siglip_vision_model"
        return VisionSpec(
            model_type=model_type,
            kind="vit",
            width=_int(data, "hidden_size", where, 768),
            depth=_int(data, "num_hidden_layers", where, 12, high=MAX_LAYERS),
            num_heads=_int(data, "num_attention_heads", where, 12),
            intermediate_size=_int(data, "intermediate_size", where, 3072),
            gated_mlp=False,
            patch_size=_int(data, "patch_size", where, 16 if siglip else 32),
            in_channels=_int(data, "num_channels", where, 3),
            image_size=_int(data, "image_size", where, 224),
            class_token=not siglip,
            attention_pool=siglip and bool(data.get("vision_use_head", True)),
        )
    qwen25 = model_type == "qwen2_5_vl"
    width = _int(data, "hidden_size" if qwen25 else "embed_dim", where, 1280)
    mlp_width = (
        _int(data, "intermediate_size", where, 3420)
        if qwen25
        else int(width * float(data.get("mlp_ratio", 4)))
    )
    return VisionSpec(
        model_type=model_type,
        kind="qwen_vl",
        width=width,
        depth=_int(data, "depth", where, 32),
        num_heads=_int(data, "num_heads", where, 16),
        intermediate_size=mlp_width,
        gated_mlp=qwen25,
        patch_size=_int(data, "patch_size", where, 14),
        in_channels=_int(data, "in_channels", where, int(data.get("in_chans", 3))),
        temporal_patch_size=_int(data, "temporal_patch_size", where, 2),
        spatial_merge_size=_int(data, "spatial_merge_size", where, 2),
        window_px=_int(data, "window_size", where, 112) if qwen25 else None,
        full_attention_blocks=tuple(int(i) for i in data.get("fullatt_block_indexes") or ())
        if qwen25
        else (),
        out_hidden_size=_int(data, "out_hidden_size" if qwen25 else "hidden_size", where, 3584),
    )


# --- helpers --------------------------------------------------------------------------------------


def _section(data: dict[str, Any], key: str, where: str) -> dict[str, Any] | None:
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ConfigError(f"{where}.{key} must be a JSON object; fix the config")
    return cast(dict[str, Any], value)


def _int(
    data: dict[str, Any],
    key: str,
    where: str,
    default: int | None = None,
    high: int = MAX_CONFIG_INT,
) -> int:
    value = data.get(key)
    if value is None:
        if default is None:
            raise ConfigError(f"{where} lacks required key '{key}'; add it to the config JSON")
        return default
    return _positive(value, f"{where}.{key}", high)


def _count(data: dict[str, Any], key: str, where: str, default: int) -> int:
    """An optional int that may be 0 (null counts as 0), at most `MAX_CONFIG_INT`."""
    value = data.get(key)
    if value is None or value == 0:
        return 0 if value == 0 else default
    return _positive(value, f"{where}.{key}")


def _positive(value: Any, where: str, high: int = MAX_CONFIG_INT) -> int:
    """A positive int at most `high`, checked before anything is built per layer or head."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"{where} must be a positive integer, got {value!r}; fix the config")
    if value > high:
        raise ConfigError(
            f"{where} is {value:,}, more than the {high:,} any real model has; fix the config"
        )
    return value
