"""The facts FLOPs and MFU need besides the trace: run metadata and flags, and the rules that
combine them (docs/mfu-math.md, docs/configuration.md).

- Each measured instance takes the metadata of its image (by image index, else by order); warmup
  rounds run the first image's shapes. Flags override the metadata.
- Context policy: `--ctx-mode fixed` and `max` give every decode step one C; `auto` takes the
  decode_step payloads, else the metadata's `decode_context_lens`, else Lp + k (the C of each
  mode is `flops.context.context_lens`).
- Wall time: the runner's synchronized clock when the metadata has it, else the range's span
  (CPU start → the later of its CPU end and its last GPU op end).
- The peak column (`--dtype`, else the run's dtype, else bf16), the storage dtype of decode bytes
  and the GPU the attributed work ran on.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import polars as pl

from llm_perf_opt.errors import AnalysisError, ConfigError, MissingInputError
from llm_perf_opt.flops.context import context_lens
from llm_perf_opt.inputs.run_meta import ImageMeta, RunMeta
from llm_perf_opt.inputs.stage_ranges import Instance
from llm_perf_opt.vocab import (
    DEFAULT_PEAK_DTYPE,
    DEFAULT_VISION_MODE,
    PEAK_DTYPE_OF,
    STORAGE_DTYPE_OF,
    STORAGE_DTYPES,
    PeakDtype,
)

# GPU memory bandwidth a trace may report: HBM3e parts reach 8 TB/s; far above is a damaged row.
MAX_TRACE_BANDWIDTH_BPS: Final = 100e12


@dataclass(frozen=True)
class StageInputs:
    """Facts FLOPs need that a trace without metadata lacks; flags override metadata."""

    meta: RunMeta | None = None
    prefill_len: int | None = None
    decode_tokens: int | None = None
    mode: str | None = None
    crop_grid: tuple[int, int] | None = None


@dataclass(frozen=True)
class ContextChoice:
    """How decode FLOPs pick the context length C of each step."""

    mode: str = "auto"
    ctx_len: int | None = None


@dataclass(frozen=True)
class InstanceFacts:
    """The FLOP and wall-clock facts of one instance, flags applied over the metadata."""

    mode: str
    crop_grid: tuple[int, int] | None
    prefill_len: int | None
    wall_s: Mapping[str, float]
    step_wall_s: tuple[float, ...]
    meta_ctx_lens: tuple[int, ...]
    meta_steps: int | None


@dataclass(frozen=True)
class DecodeContext:
    """The decode steps of one instance and the C each attends to, with where C came from."""

    decode_steps: int
    source: str
    ctx_lens: tuple[int, ...]


def choose_context(
    ctx_mode: str | None, ctx_len: int | None, meta: RunMeta | None, warnings: list[str]
) -> ContextChoice:
    """`--ctx-mode`, else fixed when `--ctx-len` is given, else the run's mode, else auto; the C
    of fixed from `--ctx-len`, else the run's."""
    if ctx_len is not None and ctx_mode not in (None, "fixed"):
        warnings.append(f"--ctx-len is used only with --ctx-mode fixed; ignored in {ctx_mode}")
    implied = "fixed" if ctx_len is not None else None
    return ContextChoice(
        mode=ctx_mode or implied or (meta.context_len_mode if meta else "auto"),
        ctx_len=ctx_len if ctx_len is not None else (meta.context_len_fixed if meta else None),
    )


def instance_facts(
    instances: Sequence[Instance],
    inputs: StageInputs,
    warnings: list[str],
    has_vision: bool = True,
) -> list[InstanceFacts]:
    """Match instances to metadata images (by image index, else order) and apply flag overrides.

    Raises:
        AnalysisError: the trace and the metadata disagree on the number of images.
    """
    meta = inputs.meta
    measured = [pos for pos, inst in enumerate(instances) if not inst.warmup]
    image_of: dict[int, ImageMeta] = {}
    if meta is not None:
        if len(measured) != len(meta.images):
            raise AnalysisError(
                f"the trace holds {len(measured)} measured image instance(s) but the run metadata "
                f"({meta.source}) lists {len(meta.images)} image(s); was the capture cut short?"
            )
        by_index = {img.index: img for img in meta.images}
        for order, pos in enumerate(measured):
            index = instances[pos].image_index
            img = by_index.get(index) if index is not None else None
            image_of[pos] = img if img is not None else meta.images[order]
    if inputs.mode is None and meta is None and has_vision:
        warnings.append(f"vision mode not given: assumed '{DEFAULT_VISION_MODE}' (pass --mode)")
    facts = []
    for pos in range(len(instances)):
        img = image_of.get(pos)
        # warmup rounds run the shapes of the first image (run-metadata.md)
        shape = img if img is not None else (meta.images[0] if meta and meta.images else None)
        facts.append(
            InstanceFacts(
                mode=inputs.mode or (shape.mode if shape else DEFAULT_VISION_MODE),
                crop_grid=inputs.crop_grid or (shape.crop_grid if shape else None),
                prefill_len=inputs.prefill_len or (shape.prefill_len if shape else None),
                wall_s=img.wall_s if img is not None else {},
                step_wall_s=img.decode_step_wall_s if img is not None else (),
                meta_ctx_lens=img.decode_context_lens if img is not None else (),
                meta_steps=img.decode_steps if img is not None else None,
            )
        )
    return facts


def decode_context(
    inst: Instance,
    facts: InstanceFacts,
    steps: Sequence[Mapping[str, Any]],
    inputs: StageInputs,
    ctx: ContextChoice,
    window: int,
    warnings: list[str],
) -> DecodeContext:
    """Number of decode steps and the C of each, per the context mode.

    Raises:
        MissingInputError: the step count or a length the mode needs is unknown.
        ConfigError: prefill plus decode steps exceed the model window.
    """
    if steps:
        n_steps = len(steps)
        if inputs.decode_tokens is not None and inputs.decode_tokens != n_steps:
            warnings.append(
                f"instance {inst.image_index if inst.image_index is not None else '?'}: "
                f"--decode-tokens {inputs.decode_tokens} but the trace has {n_steps} nested "
                f"decode steps; using {n_steps}"
            )
    elif inputs.decode_tokens is not None:
        n_steps = inputs.decode_tokens
    elif facts.meta_steps is not None:
        n_steps = facts.meta_steps
    else:
        raise MissingInputError(
            "decode FLOPs need the number of decode steps: pass --decode-tokens T "
            "(or nest one range per step inside decode, see --stage decode_step=NAME)"
        )
    if n_steps + (facts.prefill_len or 0) > window:  # checked before any per-step list exists
        raise ConfigError(
            f"{n_steps:,} decode steps after a prefill of {facts.prefill_len or 0} positions "
            f"exceed the model window of {window} positions; check --decode-tokens (or the run "
            "metadata's decode_steps)"
        )
    if ctx.mode == "fixed" and ctx.ctx_len is None:
        raise MissingInputError("--ctx-mode fixed needs the context length: pass --ctx-len N")
    payloads = [s.get("payload_int") for s in steps]
    if ctx.mode == "auto" and steps and all(p is not None for p in payloads):
        lens = tuple(int(p) for p in payloads if p is not None)
        return DecodeContext(n_steps, "decode_step payloads", lens)
    if ctx.mode == "auto" and len(facts.meta_ctx_lens) == n_steps > 0:
        return DecodeContext(n_steps, "metadata decode_context_lens", facts.meta_ctx_lens)
    if ctx.mode == "auto" and facts.prefill_len is None:
        raise MissingInputError(
            "decode FLOPs in --ctx-mode auto need the prefill length (C = Lp + k): "
            "pass --prefill-len N, or --ctx-mode fixed --ctx-len N"
        )
    fixed = ctx.ctx_len if ctx.mode == "fixed" else None
    lp = facts.prefill_len or 0
    every = context_lens(ctx.mode, window, lp, n_steps, fixed) if n_steps else []
    sources = {"fixed": f"fixed --ctx-len {ctx.ctx_len}", "max": f"max: model window {window}"}
    return DecodeContext(n_steps, sources.get(ctx.mode, "Lp + k"), tuple(every))


def wall_of(runner_s: float | None, row: Mapping[str, Any]) -> tuple[float, str]:
    """Wall nanoseconds of a range (a row of the ranges frame) and their source: `runner_s`, the
    runner's seconds, when known, else the range's span."""
    if runner_s is not None:
        return runner_s * 1e9, "runner"
    end = row["cpu_start_ns"] + row["cpu_duration_ns"]
    if row.get("proj_start_ns") is not None and row.get("proj_duration_ns") is not None:
        end = max(end, row["proj_start_ns"] + row["proj_duration_ns"])
    return float(end - row["cpu_start_ns"]), "range"


def peak_dtype(flag: str | None, meta: RunMeta | None) -> PeakDtype:
    """--dtype, else the run's dtype from the metadata, else bf16.

    Raises:
        ConfigError: the run's dtype has no peak column.
    """
    if flag is not None:
        return PEAK_DTYPE_OF[flag]
    if meta is not None:
        dtype = PEAK_DTYPE_OF.get(meta.dtype)
        if dtype is None:
            raise ConfigError(f"run metadata dtype {meta.dtype!r} has no peak column; pass --dtype")
        return dtype
    return DEFAULT_PEAK_DTYPE


def bytes_dtype(dtype: PeakDtype, meta: RunMeta | None, warnings: list[str]) -> str | None:
    """Storage dtype of weights and KV cache: the run's, else the one the peak column implies."""
    if meta is not None and meta.dtype in STORAGE_DTYPES:
        return meta.dtype
    storage = STORAGE_DTYPE_OF.get(dtype)
    if storage is None:
        warnings.append(f"no storage dtype known for {dtype}: decode MBU not computed")
    return storage


def gpu_of(
    info: pl.DataFrame, devices: pl.DataFrame, meta: RunMeta | None
) -> tuple[str | None, float | None]:
    """Name and bandwidth of the GPU that ran the attributed work (most ops: `devices` is
    `OpFacts.devices()`), from the trace; the metadata's device name when the trace has no GPU
    table."""
    if not info.is_empty():
        used = devices.filter(pl.col("n_ops") == pl.col("n_ops").max())["device_id"]
        row = info.filter(pl.col("device_id").is_in(used.to_list()))
        pick = (row if not row.is_empty() else info).row(0, named=True)
        bw = pick.get("memory_bandwidth_Bps")
        # a bandwidth no memory has (≤ 0, or beyond 100 TB/s) is a damaged row: no MBU from it
        if bw is None or not 0 < bw <= MAX_TRACE_BANDWIDTH_BPS:
            return pick["name"], None
        return pick["name"], float(bw)
    if meta is not None and meta.device_name and meta.device_name != "cpu":
        return meta.device_name, None
    return None, None
