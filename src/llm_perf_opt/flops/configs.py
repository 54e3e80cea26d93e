"""Architecture of DeepSeek-OCR (v1) and DeepSeek-OCR-2 as plain frozen dataclasses (no torch).

One description feeds both the analytic FLOP model (`llm_perf_opt.flops.analytic`) and the runner
that builds the torch modules with random weights, so the numbers we count and the model we time
cannot drift apart. Sources: the DeepSeek-OCR checkpoint's `config.json` / `deepencoder.py` (v1) and
transformers' `DeepseekOcr2Config` (OCR-2); the architecture numbers are in docs/flops.md.

Structure of one image view (square, `side_px` pixels):

    SAM ViT-B: patch conv (stride patch_size) → grid g×g tokens of `width`, + abs pos embed
      → `depth` blocks: LN, attention (windowed with padding to a multiple of `window_size`, or
        global for `global_attn_indexes`), decomposed relative positions, LN, GELU MLP
      → neck: conv1x1 width→out_chans, LN, conv3x3 out_chans→out_chans (pad 1), LN
      → compressor: conv3x3 stride 2 out_chans→downsample_channels[0], conv3x3 stride 2
        →downsample_channels[1] (both pad 1, no bias): grid ceil(ceil(g/2)/2)² tokens.
    v1: CLIP-L over [CLS] + SAM tokens (its patch conv is bypassed) → concat(CLIP tokens
        without CLS, SAM tokens) → projector Linear(2·clip width, text hidden).
    OCR-2: Qwen2-style encoder over SAM tokens + learned queries (bidirectional over SAM tokens,
        causal over queries) → the query outputs → projector Linear(encoder hidden, text hidden).

`ModelConfig.to_dict()` is JSON-able and `ModelConfig.from_dict()` inverts it exactly;
`load_config_json()` also reads a Hugging Face DeepSeek-OCR-2 or DeepSeek-OCR v1 `config.json`.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar, cast, get_args, get_origin, get_type_hints

from llm_perf_opt.errors import ConfigError
from llm_perf_opt.inputs.user_files import load_config_file
from llm_perf_opt.vocab import FAMILIES, MODEL_CONFIG_SCHEMA_ID, VISION_MODES, Family


def conv_out(size: int, kernel: int, stride: int, padding: int) -> int:
    """Output length of a convolution along one axis (PyTorch's floor rule)."""
    return (size + 2 * padding - kernel) // stride + 1


@dataclass(frozen=True)
class SamConfig:
    """SAM ViT-B image encoder, its neck and the 16× conv compressor.

    Attributes:
        image_size: pretraining side (px); the absolute position embedding is a
            (image_size/patch_size)² grid, bicubically resized for other inputs.
        patch_size: side of the patch-embedding conv kernel and its stride (px).
        num_channels: input image channels.
        width: token width of the transformer blocks (ViT-B: 768).
        depth: number of transformer blocks.
        num_heads: attention heads (head_dim = width / num_heads).
        mlp_dim: hidden width of the two-matmul GELU MLP.
        window_size: side of the attention windows of non-global blocks; the token grid is padded
            to a multiple of it (64×64 → 70×70 = 25 windows of 14×14 = 196 tokens).
        global_attn_indexes: blocks that attend over the whole grid instead of windows.
        out_chans: neck width (conv 1×1 width→out_chans, conv 3×3 out_chans→out_chans).
        downsample_channels: output channels of the two stride-2 3×3 compressor convs
            (v1: 512, 1024; OCR-2: 512, 896).
        qkv_bias: the fused qkv projection has a bias (the output projection always has one).
        use_rel_pos: decomposed relative-position terms are added to the attention scores.
        use_abs_pos: an absolute position embedding is added after the patch conv.
        layer_norm_eps: epsilon of every LayerNorm.
        hidden_act: MLP activation.
    """

    image_size: int
    patch_size: int
    num_channels: int
    width: int
    depth: int
    num_heads: int
    mlp_dim: int
    window_size: int
    global_attn_indexes: tuple[int, ...]
    out_chans: int
    downsample_channels: tuple[int, int]
    qkv_bias: bool = True
    use_rel_pos: bool = True
    use_abs_pos: bool = True
    layer_norm_eps: float = 1e-6
    hidden_act: str = "gelu"

    def __post_init__(self) -> None:
        _require_positive(
            "sam",
            image_size=self.image_size,
            patch_size=self.patch_size,
            num_channels=self.num_channels,
            width=self.width,
            depth=self.depth,
            num_heads=self.num_heads,
            mlp_dim=self.mlp_dim,
            window_size=self.window_size,
            out_chans=self.out_chans,
        )
        _require_divisible("sam.width", self.width, "sam.num_heads", self.num_heads)
        if len(self.downsample_channels) != 2 or min(self.downsample_channels) <= 0:
            raise ConfigError(
                f"sam.downsample_channels must be two positive ints, got "
                f"{list(self.downsample_channels)}; fix the model config"
            )
        bad = [i for i in self.global_attn_indexes if not 0 <= i < self.depth]
        if bad:
            raise ConfigError(
                f"sam.global_attn_indexes {bad} are outside 0..{self.depth - 1}; fix the config"
            )

    @property
    def head_dim(self) -> int:
        """Width of one attention head."""
        return self.width // self.num_heads

    def grid(self, side_px: int) -> int:
        """Patch grid side for a square view of `side_px` pixels."""
        return conv_out(side_px, self.patch_size, self.patch_size, 0)

    def output_grid(self, side_px: int) -> int:
        """Token grid side after the two stride-2 compressor convs (1024 px → 16)."""
        return conv_out(conv_out(self.grid(side_px), 3, 2, 1), 3, 2, 1)

    def output_tokens(self, side_px: int) -> int:
        """Vision tokens SAM hands on for one view (1024 px → 256)."""
        return self.output_grid(side_px) ** 2


@dataclass(frozen=True)
class ClipConfig:
    """CLIP-L/14 of v1, fed SAM's compressed tokens instead of its own patch embeddings.

    Attributes:
        width: token width (= sam.downsample_channels[1]).
        depth: transformer blocks.
        num_heads: attention heads.
        mlp_dim: hidden width of the two-matmul quick-GELU MLP.
        image_size: pretraining side (px); with patch_size it only sets the position-embedding
            grid ((224/14)² + CLS = 257 positions), resized for other token counts.
        patch_size: see image_size; the patch conv itself is bypassed.
        layer_norm_eps: epsilon of pre-LN and block LayerNorms.
        hidden_act: MLP activation.
    """

    width: int
    depth: int
    num_heads: int
    mlp_dim: int
    image_size: int = 224
    patch_size: int = 14
    layer_norm_eps: float = 1e-5
    hidden_act: str = "quick_gelu"

    def __post_init__(self) -> None:
        _require_positive(
            "clip",
            width=self.width,
            depth=self.depth,
            num_heads=self.num_heads,
            mlp_dim=self.mlp_dim,
            image_size=self.image_size,
            patch_size=self.patch_size,
        )
        _require_divisible("clip.width", self.width, "clip.num_heads", self.num_heads)

    @property
    def head_dim(self) -> int:
        """Width of one attention head."""
        return self.width // self.num_heads


@dataclass(frozen=True)
class QueryEncoderConfig:
    """OCR-2's Qwen2-style encoder over SAM tokens followed by learned query tokens.

    The attention mask is bidirectional among the SAM tokens and causal for the queries (each query
    sees every SAM token and the queries before it); only the query outputs are kept. q/k/v
    projections have a bias, o_proj has none; the MLP is SwiGLU; norms are RMSNorm.

    Attributes:
        hidden_size: token width (= sam.downsample_channels[1]).
        num_layers: decoder-style layers.
        num_heads: query heads; head_dim = hidden_size / num_heads.
        num_kv_heads: key/value heads (grouped-query attention).
        intermediate_size: SwiGLU hidden width.
        num_queries_global: learned queries of the global view (transformers'
            `query_1024_resolution`, 256).
        num_queries_crop: learned queries of a local crop (`query_768_resolution`, 144).
            transformers picks the crop set when a view has ≤ num_queries_crop SAM tokens and the
            global set otherwise; the runner and the FLOP model follow that rule.
        rope_theta: RoPE base.
        rms_norm_eps: epsilon of the RMSNorms.
        max_position_embeddings: RoPE table length (no FLOP effect).
        vocab_size: kept for the HF config (the encoder has no token embedding).
    """

    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int
    num_queries_global: int
    num_queries_crop: int
    rope_theta: float = 1_000_000.0
    rms_norm_eps: float = 1e-6
    max_position_embeddings: int = 32768
    vocab_size: int = 151936

    def __post_init__(self) -> None:
        _require_positive(
            "query_encoder",
            hidden_size=self.hidden_size,
            num_layers=self.num_layers,
            num_heads=self.num_heads,
            num_kv_heads=self.num_kv_heads,
            intermediate_size=self.intermediate_size,
            num_queries_global=self.num_queries_global,
            num_queries_crop=self.num_queries_crop,
        )
        _require_divisible(
            "query_encoder.hidden_size", self.hidden_size, "query_encoder.num_heads", self.num_heads
        )
        _require_divisible(
            "query_encoder.num_heads",
            self.num_heads,
            "query_encoder.num_kv_heads",
            self.num_kv_heads,
        )

    @property
    def head_dim(self) -> int:
        """Width of one attention head."""
        return self.hidden_size // self.num_heads

    def queries_for(self, n_sam_tokens: int) -> int:
        """Query tokens used for a view with `n_sam_tokens` SAM tokens (transformers' rule)."""
        if n_sam_tokens <= self.num_queries_crop:
            return self.num_queries_crop
        return self.num_queries_global


@dataclass(frozen=True)
class ProjectorConfig:
    """Linear map from vision features to the decoder width (with bias).

    Attributes:
        input_dim: v1: CLIP width + SAM channels (2048); OCR-2: encoder hidden (896).
        output_dim: decoder hidden size (1280).
    """

    input_dim: int
    output_dim: int

    def __post_init__(self) -> None:
        _require_positive("projector", input_dim=self.input_dim, output_dim=self.output_dim)


@dataclass(frozen=True)
class TextConfig:
    """The DeepSeek-V2-style MoE decoder (DeepSeek3B-MoE-A570M), plain multi-head attention.

    Attributes:
        hidden_size: residual width (1280).
        num_layers: decoder layers (12).
        num_heads: query heads (10).
        num_kv_heads: key/value heads (10: no GQA, no MLA).
        head_dim: width of one head; transformers forces hidden_size / num_heads, so it must match.
        intermediate_size: SwiGLU width of the dense layers (6848).
        mlp_layer_types: "dense" or "sparse" per layer (v1: one dense, then eleven sparse).
        moe_intermediate_size: SwiGLU width of one expert (896).
        n_routed_experts: routed experts per MoE layer (64).
        num_experts_per_tok: routed experts each token runs (top-6).
        n_shared_experts: shared experts, run for every token as one SwiGLU of width
            n_shared_experts·moe_intermediate_size (2).
        vocab_size: embedding and lm_head rows (129280).
        max_position_embeddings: the context window (8192).
        tie_word_embeddings: lm_head shares the embedding matrix (False: untied).
        attention_bias: q/k/v/o projections have biases.
        rope_theta: RoPE base.
        rms_norm_eps: epsilon of the RMSNorms.
        topk_method: router selection ("greedy": softmax then top-k).
        routed_scaling_factor: multiplier of the routed experts' weights.
    """

    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    mlp_layer_types: tuple[str, ...]
    moe_intermediate_size: int
    n_routed_experts: int
    num_experts_per_tok: int
    n_shared_experts: int
    vocab_size: int
    max_position_embeddings: int
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-6
    topk_method: str = "greedy"
    routed_scaling_factor: float = 1.0

    def __post_init__(self) -> None:
        _require_positive(
            "text",
            hidden_size=self.hidden_size,
            num_layers=self.num_layers,
            num_heads=self.num_heads,
            num_kv_heads=self.num_kv_heads,
            head_dim=self.head_dim,
            intermediate_size=self.intermediate_size,
            moe_intermediate_size=self.moe_intermediate_size,
            n_routed_experts=self.n_routed_experts,
            num_experts_per_tok=self.num_experts_per_tok,
            vocab_size=self.vocab_size,
            max_position_embeddings=self.max_position_embeddings,
        )
        if self.n_shared_experts < 0:
            raise ConfigError(
                f"text.n_shared_experts must be ≥ 0, got {self.n_shared_experts}; fix the config"
            )
        if self.head_dim * self.num_heads != self.hidden_size:
            raise ConfigError(
                f"text.head_dim ({self.head_dim}) × text.num_heads ({self.num_heads}) must equal "
                f"text.hidden_size ({self.hidden_size}); fix the model config"
            )
        _require_divisible("text.num_heads", self.num_heads, "text.num_kv_heads", self.num_kv_heads)
        if len(self.mlp_layer_types) != self.num_layers:
            raise ConfigError(
                f"text.mlp_layer_types has {len(self.mlp_layer_types)} entries but text.num_layers "
                f"is {self.num_layers}; give one 'dense' or 'sparse' per layer"
            )
        bad = sorted({t for t in self.mlp_layer_types if t not in ("dense", "sparse")})
        if bad:
            raise ConfigError(
                f"text.mlp_layer_types holds {bad}; each entry must be 'dense' or 'sparse'"
            )
        if self.num_experts_per_tok > self.n_routed_experts:
            raise ConfigError(
                f"text.num_experts_per_tok ({self.num_experts_per_tok}) exceeds "
                f"text.n_routed_experts ({self.n_routed_experts}); fix the model config"
            )

    @property
    def n_dense_layers(self) -> int:
        """Layers with the dense SwiGLU MLP."""
        return self.mlp_layer_types.count("dense")

    @property
    def n_moe_layers(self) -> int:
        """Layers with the routed + shared experts."""
        return self.mlp_layer_types.count("sparse")


@dataclass(frozen=True)
class ModeSpec:
    """How one preprocessing mode shapes an image into views.

    Attributes:
        name: tiny, small, base, large or gundam.
        image_size: side (px) of the square global view.
        resize: True: the image is resized to the square (v1 tiny/small); False: it is scaled to
            fit and padded (aspect kept), which does not change FLOPs.
        crop_size: side (px) of each local crop; None: no crops.
        min_crops: fewest crops a crop grid may have (0 without crops).
        max_crops: most crops a crop grid may have (0 without crops).
    """

    name: str
    image_size: int
    resize: bool
    crop_size: int | None = None
    min_crops: int = 0
    max_crops: int = 0

    def __post_init__(self) -> None:
        if self.name not in VISION_MODES:
            raise ConfigError(
                f"mode name {self.name!r} is unknown; use one of {', '.join(VISION_MODES)}"
            )
        _require_positive(f"modes.{self.name}", image_size=self.image_size)
        if self.crop_size is not None and not 0 < self.min_crops <= self.max_crops:
            raise ConfigError(
                f"modes.{self.name}: with crop_size set, need 0 < min_crops ≤ max_crops, got "
                f"{self.min_crops}..{self.max_crops}"
            )


@dataclass(frozen=True)
class ModelConfig:
    """A whole DeepSeek-OCR model: vision towers, projector, decoder and preprocessing modes.

    Attributes:
        family: "deepseek-ocr" (v1: SAM + CLIP-L) or "deepseek-ocr2" (SAM + query encoder).
        tiny: the small CPU-test variant (same structure, small sizes).
        sam: the SAM ViT-B tower (both families).
        clip: CLIP-L (v1 only, else None).
        query_encoder: the Qwen2-style encoder (OCR-2 only, else None).
        projector: vision → decoder linear map.
        text: the decoder.
        modes: the preprocessing modes this model supports.
        image_newline: v1 appends one learned newline embedding after each row of vision tokens
            (rows × (cols + 1) positions); OCR-2 does not.
        image_token_id: placeholder id of image positions in the prompt.
    """

    family: Family
    tiny: bool
    sam: SamConfig
    clip: ClipConfig | None
    query_encoder: QueryEncoderConfig | None
    projector: ProjectorConfig
    text: TextConfig
    modes: tuple[ModeSpec, ...]
    image_newline: bool
    image_token_id: int = 128815
    schema: str = field(default=MODEL_CONFIG_SCHEMA_ID)

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ConfigError(
                f"model family {self.family!r} is unknown; use one of {', '.join(FAMILIES)}"
            )
        if self.schema != MODEL_CONFIG_SCHEMA_ID:
            raise ConfigError(f"config schema {self.schema!r} is not {MODEL_CONFIG_SCHEMA_ID!r}")
        sam_out = self.sam.downsample_channels[1]
        if self.family == "deepseek-ocr":
            if self.clip is None or self.query_encoder is not None:
                raise ConfigError(
                    "a deepseek-ocr config needs a 'clip' section and no 'query_encoder'"
                )
            _require_equal("clip.width", self.clip.width, "sam.downsample_channels[1]", sam_out)
            _require_equal(
                "projector.input_dim",
                self.projector.input_dim,
                "clip.width + sam.downsample_channels[1]",
                self.clip.width + sam_out,
            )
        else:
            if self.query_encoder is None or self.clip is not None:
                raise ConfigError(
                    "a deepseek-ocr2 config needs a 'query_encoder' section and no 'clip'"
                )
            _require_equal(
                "query_encoder.hidden_size",
                self.query_encoder.hidden_size,
                "sam.downsample_channels[1]",
                sam_out,
            )
            _require_equal(
                "projector.input_dim",
                self.projector.input_dim,
                "query_encoder.hidden_size",
                self.query_encoder.hidden_size,
            )
        _require_equal(
            "projector.output_dim",
            self.projector.output_dim,
            "text.hidden_size",
            self.text.hidden_size,
        )
        names = [m.name for m in self.modes]
        if not names or len(set(names)) != len(names):
            raise ConfigError(f"modes must be a non-empty list of distinct names, got {names}")

    def mode(self, name: str) -> ModeSpec:
        """The mode called `name`.

        Raises:
            ConfigError: this model has no such mode.
        """
        for spec in self.modes:
            if spec.name == name:
                return spec
        known = ", ".join(m.name for m in self.modes)
        raise ConfigError(f"mode {name!r} is not available for {self.family}; use one of {known}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (tuples become lists); `from_dict` inverts it exactly."""
        return cast(dict[str, Any], _to_jsonable(self))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """Rebuild a config from `to_dict()` output.

        Raises:
            ConfigError: a key is missing, unknown or of the wrong type.
        """
        return _from_jsonable(cls, data, "config")


# --- built-in configs ---------------------------------------------------------------------------

_V1_CROPS = (2, 9)  # gundam crop grids in the v1 HF code: 2 ≤ w·h ≤ 9
_V2_CROPS = (2, 6)  # DeepseekOcr2ImageProcessor: min_patches 2, max_patches 6


def _text(tiny: bool) -> TextConfig:
    if tiny:
        return TextConfig(
            hidden_size=64,
            num_layers=3,
            num_heads=4,
            num_kv_heads=4,
            head_dim=16,
            intermediate_size=192,
            mlp_layer_types=("dense", "sparse", "sparse"),
            moe_intermediate_size=32,
            n_routed_experts=8,
            num_experts_per_tok=2,
            n_shared_experts=1,
            vocab_size=512,
            max_position_embeddings=1024,
        )
    return TextConfig(
        hidden_size=1280,
        num_layers=12,
        num_heads=10,
        num_kv_heads=10,
        head_dim=128,
        intermediate_size=6848,
        mlp_layer_types=("dense",) + ("sparse",) * 11,
        moe_intermediate_size=896,
        n_routed_experts=64,
        num_experts_per_tok=6,
        n_shared_experts=2,
        vocab_size=129280,
        max_position_embeddings=8192,
    )


def _sam(tiny: bool, downsample_channels: tuple[int, int]) -> SamConfig:
    if tiny:
        return SamConfig(
            image_size=256,
            patch_size=16,
            num_channels=3,
            width=32,
            depth=2,
            num_heads=2,
            mlp_dim=128,
            window_size=6,
            global_attn_indexes=(1,),
            out_chans=16,
            downsample_channels=downsample_channels,
        )
    return SamConfig(
        image_size=1024,
        patch_size=16,
        num_channels=3,
        width=768,
        depth=12,
        num_heads=12,
        mlp_dim=3072,
        window_size=14,
        global_attn_indexes=(2, 5, 8, 11),
        out_chans=256,
        downsample_channels=downsample_channels,
    )


def _v1_modes(scale: int) -> tuple[ModeSpec, ...]:
    lo, hi = _V1_CROPS
    return (
        ModeSpec("tiny", 512 // scale, resize=True),
        ModeSpec("small", 640 // scale, resize=True),
        ModeSpec("base", 1024 // scale, resize=False),
        ModeSpec("large", 1280 // scale, resize=False),
        ModeSpec(
            "gundam", 1024 // scale, False, crop_size=640 // scale, min_crops=lo, max_crops=hi
        ),
    )


def _v2_modes(scale: int) -> tuple[ModeSpec, ...]:
    lo, hi = _V2_CROPS
    return (
        ModeSpec("base", 1024 // scale, resize=False),
        ModeSpec(
            "gundam", 1024 // scale, False, crop_size=768 // scale, min_crops=lo, max_crops=hi
        ),
    )


def builtin_config(family: str, tiny: bool = False) -> ModelConfig:
    """The built-in architecture of `family`; `tiny=True` gives the CPU-test variant.

    Tiny configs keep every structural feature (windowed + global attention with padding and
    relative positions, neck and compressor convs, CLIP or query encoder with GQA, one dense then
    MoE layers with a shared expert, untied lm_head) at small widths, and their modes use images
    4× smaller (base 256 px, crops 160 / 192 px) so CPU tests stay fast.

    Raises:
        ConfigError: `family` is not one of FAMILIES.
    """
    scale = 4 if tiny else 1
    text = _text(tiny)
    if family == "deepseek-ocr":
        down = (32, 64) if tiny else (512, 1024)
        clip = (
            ClipConfig(width=64, depth=2, num_heads=4, mlp_dim=256, image_size=64, patch_size=16)
            if tiny
            else ClipConfig(width=1024, depth=24, num_heads=16, mlp_dim=4096)
        )
        return ModelConfig(
            family="deepseek-ocr",
            tiny=tiny,
            sam=_sam(tiny, down),
            clip=clip,
            query_encoder=None,
            projector=ProjectorConfig(input_dim=2 * down[1], output_dim=text.hidden_size),
            text=text,
            modes=_v1_modes(scale),
            image_newline=True,
        )
    if family == "deepseek-ocr2":
        down = (32, 48) if tiny else (512, 896)
        sam = _sam(tiny, down)
        query_encoder = QueryEncoderConfig(
            hidden_size=down[1],
            num_layers=2 if tiny else 24,
            num_heads=4 if tiny else 14,
            num_kv_heads=2,
            intermediate_size=128 if tiny else 4864,
            num_queries_global=sam.output_tokens(1024 // scale),
            num_queries_crop=sam.output_tokens(768 // scale),
        )
        return ModelConfig(
            family="deepseek-ocr2",
            tiny=tiny,
            sam=sam,
            clip=None,
            query_encoder=query_encoder,
            projector=ProjectorConfig(input_dim=down[1], output_dim=text.hidden_size),
            text=text,
            modes=_v2_modes(scale),
            image_newline=False,
        )
    raise ConfigError(f"model {family!r} is unknown; use one of {', '.join(FAMILIES)}")


# --- loading user configs ------------------------------------------------------------------------


def load_config_json(path: str | Path) -> ModelConfig:
    """Read a model config JSON file.

    Accepted forms: our `ModelConfig.to_dict()` (has a `schema` key); a Hugging Face
    DeepSeek-OCR-2 `config.json` (`vision_config` with `sam_config`/`encoder_config`, and
    `text_config`); a DeepSeek-OCR v1 `config.json` (`language_config`, optional
    `projector_config`; its vision towers are the fixed SAM ViT-B + CLIP-L of v1). In the HF forms,
    keys whose transformers default is the real DeepSeek value may be omitted (HF drops them); keys
    whose default is an unrelated placeholder (e.g. text hidden_size 4096) are required.

    Raises:
        ConfigError: the file is missing, not JSON, or lacks a required key.
    """
    p = Path(path)
    data = load_config_file(p)
    if not isinstance(data, dict):
        raise ConfigError(f"config file {p} must hold a JSON object, got {type(data).__name__}")
    return config_from_json_dict(data, source=str(p))


def config_from_json_dict(data: dict[str, Any], source: str = "config") -> ModelConfig:
    """Interpret a parsed config JSON object (see `load_config_json` for the accepted forms).

    Raises:
        ConfigError: the object matches no accepted form or lacks a required key.
    """
    if "schema" in data:
        return ModelConfig.from_dict(data)
    if "text_config" in data or "vision_config" in data:
        return _from_hf_ocr2(data, source)
    if "language_config" in data:
        return _from_hf_v1(data, source)
    raise ConfigError(
        f"{source}: not a recognised model config (no 'schema', 'text_config' or "
        "'language_config' key); pass our to_dict() JSON or a DeepSeek-OCR(-2) config.json"
    )


def _get(section: dict[str, Any], key: str, where: str, default: Any = ...) -> Any:
    """`section[key]`, or `default`; a missing key without default is a ConfigError."""
    if key in section and section[key] is not None:
        return section[key]
    if default is ...:
        raise ConfigError(f"{where} lacks required key '{key}'; add it to the config JSON")
    return default


def _section(data: dict[str, Any], key: str, where: str, required: bool = True) -> dict[str, Any]:
    value = data.get(key)
    if value is None and not required:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{where} lacks required object '{key}'; add it to the config JSON")
    return cast(dict[str, Any], value)


def _hf_text(text: dict[str, Any], where: str) -> TextConfig:
    """Decoder from an HF text/language config (DeepseekOcr2TextConfig or DeepseekV2Config)."""
    n_layers = int(_get(text, "num_hidden_layers", where))
    hidden = int(_get(text, "hidden_size", where))
    heads = int(_get(text, "num_attention_heads", where))
    if "mlp_layer_types" in text and text["mlp_layer_types"] is not None:
        layer_types = tuple(str(t) for t in text["mlp_layer_types"])
    else:
        first_dense = int(_get(text, "first_k_dense_replace", where))
        layer_types = tuple("dense" if i < first_dense else "sparse" for i in range(n_layers))
    # Without MoE layers the expert keys are irrelevant; 1 keeps the dataclass valid.
    moe_default: Any = ... if "sparse" in layer_types else 1
    rope = text.get("rope_parameters") or {}
    return _build(
        TextConfig,
        where,
        hidden_size=hidden,
        num_layers=n_layers,
        num_heads=heads,
        num_kv_heads=int(_get(text, "num_key_value_heads", where, heads)),
        head_dim=hidden // heads,
        intermediate_size=int(_get(text, "intermediate_size", where)),
        mlp_layer_types=layer_types,
        moe_intermediate_size=int(_get(text, "moe_intermediate_size", where, moe_default)),
        n_routed_experts=int(_get(text, "n_routed_experts", where, 64)),
        num_experts_per_tok=int(_get(text, "num_experts_per_tok", where, moe_default)),
        n_shared_experts=int(_get(text, "n_shared_experts", where, 2)),
        vocab_size=int(_get(text, "vocab_size", where)),
        max_position_embeddings=int(_get(text, "max_position_embeddings", where, 2048)),
        tie_word_embeddings=bool(_get(text, "tie_word_embeddings", where, False)),
        attention_bias=bool(_get(text, "attention_bias", where, False)),
        rope_theta=float(rope.get("rope_theta", text.get("rope_theta", 10000.0))),
        rms_norm_eps=float(_get(text, "rms_norm_eps", where, 1e-6)),
        topk_method=str(_get(text, "topk_method", where, "greedy")),
        routed_scaling_factor=float(_get(text, "routed_scaling_factor", where, 1.0)),
    )


def _from_hf_ocr2(data: dict[str, Any], source: str) -> ModelConfig:
    """DeepSeek-OCR-2 from a transformers `DeepseekOcr2Config` JSON."""
    vision = _section(data, "vision_config", source)
    text = _hf_text(_section(data, "text_config", source), f"{source}: text_config")
    sam_json = _section(vision, "sam_config", f"{source}: vision_config", required=False)
    where = f"{source}: vision_config.sam_config"
    width = int(_get(sam_json, "hidden_size", where, 768))
    mlp_ratio = float(_get(sam_json, "mlp_ratio", where, 4.0))
    down = tuple(int(c) for c in _get(sam_json, "downsample_channels", where, [512, 896]))
    sam = _build(
        SamConfig,
        where,
        image_size=int(_get(sam_json, "image_size", where, 1024)),
        patch_size=int(_get(sam_json, "patch_size", where, 16)),
        num_channels=int(_get(sam_json, "num_channels", where, 3)),
        width=width,
        depth=int(_get(sam_json, "num_hidden_layers", where, 12)),
        num_heads=int(_get(sam_json, "num_attention_heads", where, 12)),
        mlp_dim=int(_get(sam_json, "mlp_dim", where, int(width * mlp_ratio))),
        window_size=int(_get(sam_json, "window_size", where, 14)),
        global_attn_indexes=tuple(
            int(i) for i in _get(sam_json, "global_attn_indexes", where, [2, 5, 8, 11])
        ),
        out_chans=int(_get(sam_json, "output_channels", where, 256)),
        downsample_channels=down,
        qkv_bias=bool(_get(sam_json, "qkv_bias", where, True)),
        use_rel_pos=bool(_get(sam_json, "use_rel_pos", where, True)),
        use_abs_pos=bool(_get(sam_json, "use_abs_pos", where, True)),
        layer_norm_eps=float(_get(sam_json, "layer_norm_eps", where, 1e-6)),
        hidden_act=str(_get(sam_json, "hidden_act", where, "gelu")),
    )
    where = f"{source}: vision_config.encoder_config"
    enc = _section(vision, "encoder_config", f"{source}: vision_config")
    heads = int(_get(enc, "num_attention_heads", where))
    rope = enc.get("rope_parameters") or {}
    # transformers hard-codes the query tables: 144 (768 px crops) and 256 (1024 px global).
    encoder = _build(
        QueryEncoderConfig,
        where,
        hidden_size=int(_get(enc, "hidden_size", where)),
        num_layers=int(_get(enc, "num_hidden_layers", where)),
        num_heads=heads,
        num_kv_heads=int(_get(enc, "num_key_value_heads", where, heads)),
        intermediate_size=int(_get(enc, "intermediate_size", where)),
        num_queries_global=256,
        num_queries_crop=144,
        rope_theta=float(rope.get("rope_theta", enc.get("rope_theta", 1_000_000.0))),
        rms_norm_eps=float(_get(enc, "rms_norm_eps", where, 1e-6)),
        max_position_embeddings=int(_get(enc, "max_position_embeddings", where, 32768)),
        vocab_size=int(_get(enc, "vocab_size", where, 151936)),
    )
    return _build(
        ModelConfig,
        source,
        family="deepseek-ocr2",
        tiny=False,
        sam=sam,
        clip=None,
        query_encoder=encoder,
        projector=ProjectorConfig(input_dim=encoder.hidden_size, output_dim=text.hidden_size),
        text=text,
        modes=_v2_modes(1),
        image_newline=False,
        image_token_id=int(_get(data, "image_token_id", source, 128815)),
    )


def _from_hf_v1(data: dict[str, Any], source: str) -> ModelConfig:
    """DeepSeek-OCR v1 from its remote-code `config.json` (vision towers are fixed in code)."""
    text = _hf_text(_section(data, "language_config", source), f"{source}: language_config")
    base = builtin_config("deepseek-ocr")
    proj = _section(data, "projector_config", source, required=False)
    where = f"{source}: projector_config"
    projector = _build(
        ProjectorConfig,
        where,
        input_dim=int(_get(proj, "input_dim", where, base.projector.input_dim)),
        output_dim=int(_get(proj, "n_embed", where, text.hidden_size)),
    )
    return dataclasses.replace(base, text=text, projector=projector)


# --- helpers ------------------------------------------------------------------------------------

_T = TypeVar("_T")


def _build(cls: type[_T], where: str, **kwargs: Any) -> _T:
    """`cls(**kwargs)`, turning a constructor TypeError into a ConfigError that names `where`."""
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {exc}; fix the config JSON") from None


def _require_positive(where: str, **values: int) -> None:
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ConfigError(
                f"{where}.{name} must be a positive int, got {value!r}; fix the model config"
            )


def _require_divisible(a_name: str, a: int, b_name: str, b: int) -> None:
    if a % b:
        raise ConfigError(f"{a_name} ({a}) must be a multiple of {b_name} ({b}); fix the config")


def _require_equal(a_name: str, a: int, b_name: str, b: int) -> None:
    if a != b:
        raise ConfigError(f"{a_name} ({a}) must equal {b_name} ({b}); fix the model config")


def _to_jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _to_jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, tuple):
        return [_to_jsonable(v) for v in value]
    return value


def _from_jsonable(cls: type[_T], data: Any, where: str) -> _T:
    """Build dataclass `cls` from a JSON object, checking keys and types against its annotations."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a JSON object, got {type(data).__name__}")
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cast(Any, cls))}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{where} has unknown keys {unknown}; remove them or fix their spelling")
    kwargs: dict[str, Any] = {}
    for name, f in fields.items():
        if name not in data:
            has_default = (
                f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
            )
            if has_default:
                continue
            raise ConfigError(f"{where} lacks required key '{name}'; add it to the config JSON")
        kwargs[name] = _convert(hints[name], data[name], f"{where}.{name}")
    return _build(cls, where, **kwargs)


def _convert(hint: Any, value: Any, where: str) -> Any:
    origin = get_origin(hint)
    if origin in (types.UnionType, typing.Union):
        options = get_args(hint)
        if value is None and type(None) in options:
            return None
        (inner,) = [o for o in options if o is not type(None)]
        return _convert(inner, value, where)
    if origin is Literal:
        if value not in get_args(hint):
            raise ConfigError(f"{where} must be one of {list(get_args(hint))}, got {value!r}")
        return value
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where} must be a JSON list, got {type(value).__name__}")
        args = get_args(hint)
        item_hints = [args[0]] * len(value) if args[-1] is Ellipsis else list(args)
        if len(item_hints) != len(value):
            raise ConfigError(f"{where} must have {len(item_hints)} items, got {len(value)}")
        return tuple(
            _convert(h, v, f"{where}[{i}]")
            for i, (h, v) in enumerate(zip(item_hints, value, strict=True))
        )
    if dataclasses.is_dataclass(hint):
        return _from_jsonable(cast(type[Any], hint), value, where)
    if hint is float and isinstance(value, int | float) and not isinstance(value, bool):
        if not math.isfinite(value):
            raise ConfigError(f"{where} must be a finite number, got {value!r}")
        return float(value)
    if hint in (int, str, bool) and type(value) is hint:
        return value
    raise ConfigError(f"{where} must be {getattr(hint, '__name__', hint)}, got {value!r}")
