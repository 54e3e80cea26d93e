"""Assemble, validate and emit the run metadata (`llm_perf_opt.run_meta/1`, docs/run-metadata.md).

The same JSON goes into one NVTX mark (compact) and `run.meta.json` (pretty), and it is checked
against the shipped JSON Schema first so the analyzer never reads a malformed record.
"""

from __future__ import annotations

import json
import platform
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Final

import torch
import transformers

import llm_perf_opt
from llm_perf_opt.inputs.run_meta import check_serve
from llm_perf_opt.runner.models import BuiltModel
from llm_perf_opt.runner.nvtx_marks import Annotator
from llm_perf_opt.runner.nvtx_stages import PreparedImage
from llm_perf_opt.schemas import check_run_meta
from llm_perf_opt.vocab import NVTX_DOMAIN, RUN_META_SCHEMA_ID

META_FILENAME: Final = "run.meta.json"


@dataclass(frozen=True)
class ImageTiming:
    """What running one image measured.

    Attributes:
        vision_s: wall seconds of the vision stage (between synchronizations).
        prefill_s: wall seconds of the prefill stage.
        decode_s: wall seconds of the whole decode stage.
        decode_step_s: wall seconds of each decode step.
        decode_context_lens: C of each decode step (keys it attends to, itself included).
        token_ids: generated tokens, the first from prefill.
    """

    vision_s: float
    prefill_s: float
    decode_s: float
    decode_step_s: tuple[float, ...]
    decode_context_lens: tuple[int, ...]
    token_ids: tuple[int, ...]


@dataclass(frozen=True)
class RunFacts:
    """Run-level settings recorded in the metadata besides the model and images."""

    run_id: str
    mode: str | None
    max_new_tokens: int
    warmup_rounds: int
    warmup_synthetic: bool
    warmup_max_new_tokens: int
    context_len_mode: str
    context_len_fixed: int | None
    nvtx_enabled: bool
    seed: int
    sdpa_cudnn: bool


def image_entry(index: int, prepared: PreparedImage, timing: ImageTiming) -> dict[str, Any]:
    """`images[index]` of the metadata."""
    grid = prepared.layout.crop_grid
    return {
        "index": index,
        "source": prepared.source,
        "width": prepared.width,
        "height": prepared.height,
        "mode": prepared.mode,
        "crop_grid": None if grid is None else list(grid),
        "n_crops": prepared.layout.n_crops,
        "vision_tokens": prepared.layout.vision_tokens,
        "image_positions": prepared.layout.image_positions,
        "prefill_len": prepared.prefill_len,
        "decode_steps": len(timing.decode_step_s),
        "decode_context_lens": list(timing.decode_context_lens),
        "wall_s": {
            "vision": timing.vision_s,
            "prefill": timing.prefill_s,
            "decode": timing.decode_s,
        },
        "decode_step_wall_s": list(timing.decode_step_s),
        "generated_token_ids": list(timing.token_ids),
    }


def build_run_meta(
    built: BuiltModel,
    facts: RunFacts,
    images: list[dict[str, Any]],
    prompt_text_tokens: int,
    *,
    decode_backend: dict[str, Any] | None = None,
    calibration: dict[str, Any] | None = None,
    serve: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The whole metadata object, validated against `run_meta.schema.json`.

    `decode_backend`, `calibration` (`--calibrate`) and `serve` (`--serve`: the schedule) are
    included when given.

    Raises:
        MetaError: the record does not match the schema.
    """
    model = {
        "name": built.name,
        "family": built.family,
        "tiny": built.config.tiny,
        "config": built.config_dict,
        "hf_config": built.hf_config_dict,
        "n_params": built.n_params,
        "random_weights": built.random_weights,
        "attn_implementation": built.attn_implementation,
        "experts_implementation": built.experts_implementation,
        "sdpa_cudnn": facts.sdpa_cudnn,
    }
    return assemble_run_meta(
        model, built.dtype, built.device, facts, images, prompt_text_tokens,
        decode_backend=decode_backend, calibration=calibration, serve=serve,
    )  # fmt: skip


def assemble_run_meta(
    model: dict[str, Any],
    dtype: torch.dtype,
    device: torch.device,
    facts: RunFacts,
    images: list[dict[str, Any]],
    prompt_text_tokens: int,
    *,
    decode_backend: dict[str, Any] | None = None,
    calibration: dict[str, Any] | None = None,
    serve: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The metadata around a ready `model` block (a DeepSeek-OCR model's or, with `--serve
    --decoder-config`, a Hugging Face decoder's), validated against the schema.

    Raises:
        MetaError: the record does not match the schema (or the schedule is inconsistent).
    """
    meta: dict[str, Any] = {
        "schema": RUN_META_SCHEMA_ID,
        "run_id": facts.run_id,
        "tool_version": llm_perf_opt.__version__,
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "nvtx_domain": NVTX_DOMAIN,
        "nvtx_enabled": facts.nvtx_enabled,
        "model": model,
        "dtype": str(dtype).removeprefix("torch."),
        "device": {
            "type": device.type,
            "name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        },
        "mode": facts.mode,
        "context": {
            "context_len_mode": facts.context_len_mode,
            "context_len_fixed": facts.context_len_fixed,
        },
        "warmup": {
            "rounds": facts.warmup_rounds,
            "synthetic": facts.warmup_synthetic,
            "max_new_tokens": facts.warmup_max_new_tokens,
        },
        "max_new_tokens": facts.max_new_tokens,
        "prompt_text_tokens": prompt_text_tokens,
        "seed": facts.seed,
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
        },
        "images": images,
    }
    if decode_backend is not None:
        meta["decode_backend"] = decode_backend
    if calibration is not None:
        meta["calibration"] = calibration
    if serve is not None:
        meta["serve"] = serve
    check_run_meta(meta)
    if serve is not None:
        check_serve(meta)
    return meta


def emit(meta: dict[str, Any], annotator: Annotator, out_dir: Path) -> Path:
    """Emit the NVTX mark (compact JSON) and write `out_dir/run.meta.json`; returns its path."""
    annotator.mark(json.dumps(meta, separators=(",", ":"), sort_keys=True))
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / META_FILENAME
    path.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return path
