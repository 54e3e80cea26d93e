"""A Hugging Face model as the analysis' FLOPs model, and its planning estimate for `mfu-flops`.

`HfFlops` satisfies `flops.model.FlopsModel` (vision, prefill, decode FLOPs and decode bytes) over
`decoders` and `vision_towers`; `estimate_hf_run` is the JSON-able breakdown `mfu-flops --config`
prints. `read_hf_config` tells a Hugging Face family config from our own and DeepSeek-OCR's forms.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from llm_perf_opt.errors import ConfigError
from llm_perf_opt.flops import decoders, vision_towers
from llm_perf_opt.flops.analytic import dtype_bytes
from llm_perf_opt.flops.context import check_length, context_lens
from llm_perf_opt.flops.hf import (
    COMPOSITE_TEXT,
    DECODER_TYPES,
    SUPPORTED_TYPES,
    VISION_TYPES,
    DecoderSpec,
    HfModel,
    VisionSpec,
    hf_model_from_dict,
    unsupported_type_error,
)
from llm_perf_opt.inputs.user_files import load_config_file
from llm_perf_opt.vocab import LmHeadPositions, parse_size

# Keys of our own config JSON and of DeepSeek-OCR's config.json (read by `flops.configs`).
_OWN_FORMS: Final = ("schema", "language_config")
_DEEPSEEK_OCR_PREFIX: Final = ("deepseek_ocr", "deepseek_vl")
_NO_LP: Final = "not given: pass --prefill-len N for prefill and decode totals"
# Keys of `estimate_hf_run` that need the prefill length.
_LENGTH_KEYS: Final = (
    "prefill_len",
    "prefill_logits",
    "prefill_flops",
    "prefill_flops_full_square",
    "decode_steps",
    "ctx_mode",
    "ctx_len_first_last",
    "ctx_len_used",
    "decode_flops_per_token",
    "decode_flops_total",
    "decode_bytes_per_step",
)


def read_hf_config(path: str | Path) -> HfModel | None:
    """The HF model a config file describes, or None for our own / a DeepSeek-OCR config.

    Raises:
        ConfigError: unreadable file, or a model_type no reader supports.
    """
    p = Path(path)
    data = load_config_file(p)
    if not isinstance(data, dict):
        raise ConfigError(f"config file {p} must hold a JSON object, got {type(data).__name__}")
    if _is_deepseek_ocr(data):
        return None
    if _is_hf_family(data):
        return hf_model_from_dict(data, str(p))
    raise unsupported_type_error(data, str(p))


def _is_deepseek_ocr(data: dict[str, Any]) -> bool:
    model_type = str(data.get("model_type") or "")
    vision = data.get("vision_config")
    return (
        any(key in data for key in _OWN_FORMS)
        or model_type.startswith(_DEEPSEEK_OCR_PREFIX)
        or (isinstance(vision, dict) and "sam_config" in vision)
    )


def _is_hf_family(data: dict[str, Any]) -> bool:
    if data.get("model_type") in SUPPORTED_TYPES:
        return True
    parts = [data.get("text_config"), data.get("vision_config")]
    return any(isinstance(p, dict) and p.get("model_type") is not None for p in parts)


@dataclass(frozen=True)
class HfFlops:
    """`FlopsModel` of a Hugging Face model (causal attention convention).

    Attributes:
        model: the parsed config.
        bytes_dtype: storage dtype of weights and KV cache (None: decode bytes unknown).
        lm_head_positions: prefill logits on the last position ("last") or on all ("all").
        image_hw: (height, width) px of each image; None: the tower's default.
    """

    model: HfModel
    bytes_dtype: str | None
    lm_head_positions: LmHeadPositions = "last"
    image_hw: tuple[int, int] | None = None

    @property
    def window(self) -> int:
        return self.model.text.max_position_embeddings if self.model.text else 0

    def vision_flops(self, mode: str, crop_grid: tuple[int, int] | None) -> float:
        tower = _vision(self.model)
        hw = self.image_hw or vision_towers.default_image_size(tower)
        return float(vision_towers.vision_flops(tower, hw).total_flops)

    def prefill_flops(self, prefill_len: int) -> float:
        spec = _text(self.model)
        blocks = decoders.prefill_flops(spec, prefill_len, "causal", self.lm_head_positions)
        return float(blocks.total_flops)

    def decode_flops(self, ctx_lens: Sequence[int]) -> float:
        return float(decoders.decode_flops_total(_text(self.model), ctx_lens).total_flops)

    def attention_flops(
        self,
        stage: str,
        mode: str,
        crop_grid: tuple[int, int] | None,
        prefill_len: int | None,
        ctx_lens: Sequence[int],
    ) -> float:
        if stage == "vision":
            tower = _vision(self.model)
            hw = self.image_hw or vision_towers.default_image_size(tower)
            return float(vision_towers.vision_flops(tower, hw).attention_flops)
        spec = _text(self.model)
        if stage == "prefill":
            assert prefill_len is not None
            blocks = decoders.prefill_flops(spec, prefill_len, "causal", self.lm_head_positions)
            return float(blocks.attention_flops)
        return float(decoders.decode_flops_total(spec, ctx_lens).attention_flops)

    def decode_bytes(self, ctx_lens: Sequence[int]) -> float | None:
        if self.bytes_dtype is None:
            return None
        spec, dtype = _text(self.model), self.bytes_dtype
        return float(
            sum(
                n * sum(decoders.decode_bytes_per_step(spec, c, dtype).values())
                for c, n in Counter(ctx_lens).items()
            )
        )


def _text(model: HfModel) -> DecoderSpec:
    if model.text is None:
        raise ConfigError(
            f"{model.source} ({model.model_type}) has no language model, so no prefill or "
            "decode FLOPs; pass the full model's config.json"
        )
    return model.text


def _vision(model: HfModel) -> VisionSpec:
    if model.vision is None:
        raise ConfigError(
            f"{model.source} ({model.model_type}) has no vision tower but the trace has a vision "
            "stage; pass the VLM's config.json or rename the range with --stage"
        )
    return model.vision


def parse_image_size(text: str) -> tuple[int, int]:
    """Parse "HxW" (or a single side "S" for a square) into (height, width) px.

    Raises:
        ConfigError: not of that form with positive integers.
    """
    return parse_size(text, "image size", "HxW", "448x448", square=True)


def supported_note() -> str:
    """One line naming the families `--config` reads, for help texts."""
    return (
        f"decoders {', '.join(DECODER_TYPES)}; vision towers {', '.join(VISION_TYPES)}; "
        f"VLMs {', '.join(COMPOSITE_TEXT)} or any text_config + vision_config of those"
    )


def estimate_hf_run(
    model: HfModel,
    *,
    prefill_len: int | None = None,
    decode_steps: int = 1,
    ctx_mode: str = "auto",
    ctx_len: int | None = None,
    dtype: str = "bfloat16",
    image_hw: tuple[int, int] | None = None,
    images: int = 1,
    lm_head_positions: LmHeadPositions = "last",
) -> dict[str, Any]:
    """Per-stage FLOPs and decode bytes of one request, as a JSON-able dict.

    Prefill covers `prefill_len` positions (default: the image tokens alone). A text-only model
    without it gets the per-token figures only (decode FLOPs at C = 0 and per C, parameters) and
    None for the prefill and decode totals; keys of a part the model lacks are None too.

    Raises:
        ConfigError: bad lengths, context mode or dtype.
    """
    dtype_bytes(dtype)
    if images < 0:
        raise ConfigError(f"images must be ≥ 0, got {images}")
    out: dict[str, Any] = {"model_type": model.model_type, "source": model.source}
    breakdown: dict[str, dict[str, int]] = {}
    tokens = 0
    if model.vision is not None:
        hw = image_hw or vision_towers.default_image_size(model.vision)
        vision = vision_towers.vision_flops(model.vision, hw).times(images)
        tokens = vision_towers.image_tokens(model.vision, hw) * images
        out |= {
            "image_size": list(hw),
            "images": images,
            "image_tokens": tokens,
            "vision_flops": vision.total_flops,
        }
        breakdown["vision"] = dict(vision.blocks)
    else:
        out |= {"image_size": None, "images": 0, "image_tokens": 0, "vision_flops": None}
    spec = model.text
    if spec is None:
        return out | {"stages": ["vision"], "breakdown": breakdown, "conventions": _notes()}
    slope = decoders.decode_flops_per_token(spec, 2).total_flops
    slope -= decoders.decode_flops_per_token(spec, 1).total_flops
    planning = {
        "decode_flops_at_c0": decoders.decode_flops_per_token(spec, 1).total_flops - slope,
        "decode_flops_per_ctx": slope,
        "kv_cache_bytes_per_position": decoders.kv_bytes_per_position(spec, dtype)
        * len(spec.layers),
        "active_params": sum(decoders.active_params(spec).values()),
        "matmul_params": sum(decoders.per_token_params(spec).values()),
        "tied_lm_head": spec.tie_word_embeddings,
        "dtype": dtype,
        "conventions": _notes(),
    }
    if prefill_len is None and tokens == 0:
        # a text-only model without Lp: the per-token figures, no prefill or decode totals
        missing = dict.fromkeys(_LENGTH_KEYS)
        return (
            out
            | missing
            | planning
            | {
                "stages": ["prefill", "decode"],
                "prefill_len_source": _NO_LP,
                "breakdown": breakdown,
            }
        )
    lp = tokens if prefill_len is None else prefill_len
    prefill = decoders.prefill_flops(spec, lp, "causal", lm_head_positions)
    lens = context_lens(ctx_mode, spec.max_position_embeddings, lp, decode_steps, ctx_len)
    for c in (lens[0], lens[-1]):
        check_length(spec.max_position_embeddings, c, "decode context length")
    decode_total = decoders.decode_flops_total(spec, lens)
    mean_c = round(sum(lens) / len(lens))
    bytes_step = decoders.decode_bytes_per_step(spec, mean_c, dtype)
    breakdown |= {
        "prefill": dict(prefill.blocks),
        "decode_per_token": {k: v // len(lens) for k, v in decode_total.blocks.items()},
        "decode_bytes_per_step": bytes_step,
    }
    return (
        out
        | planning
        | {
            "stages": ["vision", "prefill", "decode"] if model.vision else ["prefill", "decode"],
            "prefill_len": lp,
            "prefill_len_source": "given" if prefill_len is not None else "image tokens only",
            "prefill_logits": lm_head_positions,
            "prefill_flops": prefill.total_flops,
            "prefill_flops_full_square": decoders.prefill_flops(
                spec, lp, "full", lm_head_positions
            ).total_flops,
            "decode_steps": decode_steps,
            "ctx_mode": ctx_mode,
            "ctx_len_first_last": [lens[0], lens[-1]],
            "ctx_len_used": sum(lens) / len(lens),
            "decode_flops_per_token": decode_total.total_flops // len(lens),
            "decode_flops_total": decode_total.total_flops,
            "decode_bytes_per_step": sum(bytes_step.values()),
            "breakdown": breakdown,
        }
    )


def _notes() -> dict[str, str]:
    return {
        "flop": "1 multiply-accumulate = 2 FLOPs; matmuls and convs only",
        "attention": "causal: a query counts the keys its (sliding-window) mask allows, "
        "min(i, window); *_full_square: Lp² per layer, as dense kernels count it",
        "lm_head": "prefill: last position unless prefill_logits is 'all'; decode: every step",
        "mla": "DeepSeek latent attention: kv_b_proj expands the cached latent over every key "
        "position at each forward (transformers' implementation)",
        "decode_per_ctx": "decode FLOPs/token = decode_flops_at_c0 + decode_flops_per_ctx · C "
        "while C is below every sliding window",
        "bytes": "active weights of one token (top-k routed + shared experts, router, attention, "
        "dense MLP, norms, lm_head, one embedding row) + KV cache read over min(C, window) "
        "positions per layer + the new position's write; at the mean C; activations not counted",
    }
