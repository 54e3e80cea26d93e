"""The words the runner, the analysis and the CLIs share, each spelled once.

Stage and role names, context modes, model families, vision modes, dtypes, the NVTX domain and
the schema ids; click's choices, the runner's settings checks and the analysis all import them
from here (the JSON Schema in `schemas/` spells the same enums, and a test holds them equal).
`parse_size` is the one reader of `WxH` sizes (crop grids, page and image sizes).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Final, Literal, get_args

from llm_perf_opt.errors import ConfigError

Stage = Literal["vision", "prefill", "decode"]
STAGES: Final[tuple[Stage, ...]] = get_args(Stage)
# Range roles a user may rename with `--stage ROLE=NAME[@DOMAIN]`.
ROLES: Final = (*STAGES, "decode_step", "image")
# A range under one whose name starts with this belongs to a warmup round.
WARMUP_PREFIX: Final = "warmup"

# How decode FLOPs pick the context length C of a step: the real Lp + k, the model window, or
# one given C.
CtxMode = Literal["auto", "max", "fixed"]
CTX_MODES: Final[tuple[CtxMode, ...]] = get_args(CtxMode)

Family = Literal["deepseek-ocr", "deepseek-ocr2"]
FAMILIES: Final[tuple[Family, ...]] = get_args(Family)
# The run metadata's family of a `--serve --decoder-config` run: model.config is then that
# Hugging Face config.json (not a --model choice).
HF_DECODER_FAMILY: Final = "hf-decoder"
# DeepSeek-OCR's image preprocessing modes (OCR-2 has base and gundam of them).
VISION_MODES: Final = ("tiny", "small", "base", "large", "gundam")
DEFAULT_VISION_MODE: Final = "base"

# Storage dtypes as torch names them (the runner's `--dtype`, the metadata's `dtype`).
StorageDtype = Literal["bfloat16", "float16", "float32"]
STORAGE_DTYPES: Final[tuple[StorageDtype, ...]] = get_args(StorageDtype)
# Columns of the peak table, the arithmetic MFU divides by.
PeakDtype = Literal["bf16", "fp16", "tf32", "fp32", "fp8"]
PEAK_DTYPES: Final[tuple[PeakDtype, ...]] = get_args(PeakDtype)
DEFAULT_PEAK_DTYPE: Final[PeakDtype] = "bf16"
# A dtype in either spelling → its peak column.
PEAK_DTYPE_OF: Final[Mapping[str, PeakDtype]] = {
    "bfloat16": "bf16",
    "float16": "fp16",
    "float32": "fp32",
    **{d: d for d in PEAK_DTYPES},
}
# A peak column → the storage dtype of weights and KV cache it implies (decode bytes).
STORAGE_DTYPE_OF: Final[Mapping[str, StorageDtype]] = {
    "bf16": "bfloat16",
    "fp16": "float16",
    "fp32": "float32",
    "tf32": "float32",
}

# Prefill applies lm_head to the last position (generate's logits_to_keep=1) or to all.
LmHeadPositions = Literal["last", "all"]
LM_HEAD_POSITIONS: Final[tuple[LmHeadPositions, ...]] = get_args(LmHeadPositions)

# Serving engines whose step names the analysis reads (`--engine`; engines.py holds the formats),
# and the phase of an engine step: context only, generation only, both, neither.
Engine = Literal["auto", "vllm", "sglang", "trtllm", "none"]
ENGINES: Final[tuple[Engine, ...]] = get_args(Engine)
StepPhase = Literal["prefill", "decode", "mixed", "idle"]
STEP_PHASES: Final[tuple[StepPhase, ...]] = get_args(StepPhase)

NVTX_DOMAIN: Final = "llm_perf_opt"
# An engine step's range name in vLLM V1's format (`compute_iteration_details`, vllm/v1/utils.py):
# requests still in their prompt (context) and in generation, and the tokens each group runs.
VLLM_STEP_NAME: Final = (
    "execute_context_{ctx_reqs}({ctx_tokens})_generation_{gen_reqs}({gen_tokens})"
)
# A request's phase in an engine step: in its prompt (a chunk), or generating one token.
ServePhase = Literal["context", "generation"]
SERVE_PHASES: Final[tuple[ServePhase, ...]] = get_args(ServePhase)
# vLLM's `VLLM_NVTX_SCOPES_FOR_PROFILING=1` scopes inside a step, in the order they run.
SERVE_SCOPES: Final = (
    "gpu_model_runner: preprocess",
    "gpu_model_runner: forward",
    "gpu_model_runner: postprocess",
    "gpu_model_runner: sample",
)
RUN_META_SCHEMA_ID: Final = "llm_perf_opt.run_meta/1"
# top-level key of the run metadata in a PyTorch profiler trace (`add_metadata_json`)
RUN_META_TRACE_KEY: Final = "llm_perf_opt.run_meta"
STATIC_COMPUTE_SCHEMA_ID: Final = "llm_perf_opt.static_compute/1"
MODEL_CONFIG_SCHEMA_ID: Final = "llm_perf_opt.model_config/1"

_SIZE_RE: Final = re.compile(r"^\s*(\d+)\s*[xX×]\s*(\d+)\s*$")


def parse_size(
    text: str, what: str, form: str = "WxH", example: str = "3x2", *, square: bool = False
) -> tuple[int, int]:
    """Two positive integers written `AxB` (also `AXB`, `A×B`), in the order written.

    Args:
        text: the value as given.
        what: its name in the error, e.g. `crop grid`.
        form: what the two numbers are, for the error (`WxH`, `HxW`).
        example: a valid value, for the error.
        square: also accept one integer `S` for `SxS`.

    Raises:
        ConfigError: not of that form with positive integers.
    """
    match = _SIZE_RE.match(f"{text}x{text}" if square and text.strip().isdigit() else text)
    if match is None or int(match[1]) <= 0 or int(match[2]) <= 0:
        raise ConfigError(f"{what} {text!r} is not {form} with positive integers, e.g. {example}")
    return int(match[1]), int(match[2])
