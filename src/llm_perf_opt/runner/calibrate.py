"""Achievable rates measured on the run's own device: dense GEMM TFLOP/s and copy bandwidth.

`--calibrate` runs this before the workload, inside its own `calibrate` NVTX range, and records
the result as the metadata's `calibration` object (docs/run-metadata.md). Each measurement runs
warm-up calls, then `repeats` timed samples, and keeps the median time per call. A sample times
`inner` back-to-back calls, chosen so a sample lasts about `SAMPLE_TARGET_S`: a GEMM of a few µs
would otherwise measure launch latency. On CUDA the samples are timed with CUDA events behind a
sleep kernel, so the host has queued the whole sample before the GPU reaches it.

GEMMs: one large square product, and the model's own matmul shapes per stage — decode
[1, d] × [d, n], prefill [Lp, d] × [d, n] (routed experts with their average Lp·top_k/E rows),
vision on the global view (SAM patch embedding, qkv and MLP, the second tower's, the projector).
Copy: one device-to-device copy of a large buffer; bytes moved count read + written.
"""

from __future__ import annotations

import math
import statistics
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from time import perf_counter
from typing import Any, Final, Protocol

import torch

from llm_perf_opt.flops.configs import ModelConfig
from llm_perf_opt.runner.models import BuiltModel

SAMPLE_TARGET_S: Final = 2e-4
MAX_INNER: Final = 64
WARMUP_CALLS: Final = 3
SLEEP_CYCLES_PER_CALL: Final = 40_000  # ~20 µs of GPU sleep per queued call at ~2 GHz
DTYPE_NAMES: Final = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}


class Timer(Protocol):
    """Seconds that `inner` back-to-back calls of `fn` take on the device."""

    def __call__(self, fn: Callable[[], object], inner: int) -> float: ...


@dataclass(frozen=True)
class CalibrationSizes:
    """How big and how often: the square GEMM side, the copy buffer, samples per measurement."""

    square: int
    copy_bytes: int
    repeats: int
    shape_repeats: int


CUDA_SIZES: Final = CalibrationSizes(square=8192, copy_bytes=4 << 30, repeats=20, shape_repeats=50)
CPU_SIZES: Final = CalibrationSizes(square=256, copy_bytes=8 << 20, repeats=20, shape_repeats=20)


@dataclass(frozen=True)
class GemmShape:
    """One [m, k] × [k, n] product; `stage` is vision, prefill, decode or None (synthetic)."""

    label: str
    stage: str | None
    m: int
    n: int
    k: int


def model_gemm_shapes(
    config: ModelConfig, prefill_len: int, global_view_px: int
) -> list[GemmShape]:
    """The model's own matmul shapes per stage, for a prompt of `prefill_len` positions and a
    global view of `global_view_px` pixels (SAM tokens = (px / patch)², 16× fewer after its
    compressor)."""
    text = config.text
    d, hd = text.hidden_size, text.head_dim
    moe_ff = text.moe_intermediate_size
    expert_rows = max(1, math.ceil(prefill_len * text.num_experts_per_tok / text.n_routed_experts))
    per_token = [
        ("attn_q", text.num_heads * hd, d),
        ("attn_kv", text.num_kv_heads * hd, d),
        ("attn_o", d, text.num_heads * hd),
        ("dense_up", text.intermediate_size, d),
        ("dense_down", d, text.intermediate_size),
        ("shared_up", moe_ff * text.n_shared_experts, d),
        ("moe_gate_up", 2 * moe_ff, d),
        ("moe_down", d, moe_ff),
    ]
    shapes = [GemmShape(f"decode_{name}", "decode", 1, n, k) for name, n, k in per_token]
    shapes.append(GemmShape("decode_lm_head", "decode", 1, text.vocab_size, d))
    for name, n, k in per_token:
        m = expert_rows if name.startswith("moe_") else prefill_len
        shapes.append(GemmShape(f"prefill_{name}", "prefill", m, n, k))
    sam = config.sam
    sam_tokens = (global_view_px // sam.patch_size) ** 2
    compressed = max(1, sam_tokens // 16)
    vision = [
        ("sam_patch_embed", sam_tokens, sam.width, sam.num_channels * sam.patch_size**2),
        ("sam_qkv", sam_tokens, 3 * sam.width, sam.width),
        ("sam_mlp_up", sam_tokens, sam.mlp_dim, sam.width),
    ]
    if config.clip is not None:
        clip = config.clip
        vision += [
            ("clip_qkv", compressed + 1, 3 * clip.width, clip.width),
            ("clip_mlp_up", compressed + 1, clip.mlp_dim, clip.width),
        ]
    if config.query_encoder is not None:
        enc = config.query_encoder
        rows = compressed + enc.num_queries_global
        vision.append(("query_mlp_up", rows, enc.intermediate_size, enc.hidden_size))
    vision.append(
        ("projector", compressed, config.projector.output_dim, config.projector.input_dim)
    )
    shapes += [GemmShape(f"vision_{name}", "vision", m, n, k) for name, m, n, k in vision]
    return [s for s in shapes if min(s.m, s.n, s.k) > 0]  # e.g. no shared experts


def cuda_timer(device: torch.device) -> Timer:
    """CUDA events around `inner` calls queued behind a sleep kernel."""

    def time(fn: Callable[[], object], inner: int) -> float:
        start = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
        end = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
        with torch.cuda.device(device):
            torch.cuda._sleep(SLEEP_CYCLES_PER_CALL * inner)  # type: ignore[no-untyped-call]
            start.record()
            for _ in range(inner):
                fn()
            end.record()
            end.synchronize()
        return float(start.elapsed_time(end)) / 1e3

    return time


def wall_timer(fn: Callable[[], object], inner: int) -> float:
    """perf_counter around `inner` calls (CPU devices)."""
    start = perf_counter()
    for _ in range(inner):
        fn()
    return perf_counter() - start


def median_call_s(fn: Callable[[], object], timer: Timer, repeats: int) -> float:
    """Median seconds per call over `repeats` samples, after `WARMUP_CALLS` untimed calls."""
    for _ in range(WARMUP_CALLS):
        fn()
    first = max(timer(fn, 1), 1e-9)
    inner = max(1, min(MAX_INNER, round(SAMPLE_TARGET_S / first)))
    return statistics.median(timer(fn, inner) / inner for _ in range(repeats))


def read_clocks(device: torch.device) -> dict[str, Any] | None:
    """Current SM and memory clocks from nvidia-smi, or None where it cannot be read."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    query = [
        "nvidia-smi",
        f"--id={index}",
        "--query-gpu=clocks.sm,clocks.mem",
        "--format=csv,noheader,nounits",
    ]
    try:
        out = subprocess.run(query, capture_output=True, text=True, timeout=10, check=True)
        sm, mem = (int(v) for v in out.stdout.strip().splitlines()[0].split(","))
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None
    return {"sm_mhz": sm, "mem_mhz": mem, "source": "nvidia-smi"}


def calibrate(
    built: BuiltModel,
    prefill_len: int,
    global_view_px: int,
    *,
    sizes: CalibrationSizes | None = None,
    timer: Timer | None = None,
    clocks: Callable[[torch.device], dict[str, Any] | None] = read_clocks,
) -> dict[str, Any]:
    """The `calibration` object: GEMM rates in the model's dtype, copy bandwidth, clocks.

    `sizes` and `timer` default by device: CUDA events and `CUDA_SIZES` on CUDA, wall clock and
    `CPU_SIZES` elsewhere; `clocks` is read on CUDA only (null on CPU).
    """
    device, dtype = built.device, built.dtype
    on_cuda = device.type == "cuda"
    sizes = sizes or (CUDA_SIZES if on_cuda else CPU_SIZES)
    timer = timer or (cuda_timer(device) if on_cuda else wall_timer)
    square = GemmShape(f"square_{sizes.square}", None, sizes.square, sizes.square, sizes.square)
    shapes = [square, *model_gemm_shapes(built.config, prefill_len, global_view_px)]
    gemms: list[dict[str, Any]] = []
    with torch.inference_mode():
        for shape in shapes:
            repeats = sizes.repeats if shape.stage is None else sizes.shape_repeats
            seconds = _gemm_seconds(shape, dtype, device, timer, repeats)
            gemms.append(
                {
                    "label": shape.label,
                    "stage": shape.stage,
                    "m": shape.m,
                    "n": shape.n,
                    "k": shape.k,
                    "median_s": seconds,
                    "tflops": 2 * shape.m * shape.n * shape.k / seconds / 1e12,
                    "repeats": repeats,
                }
            )
        copy = _copy_entry(sizes, device, timer)
    return {
        "dtype": DTYPE_NAMES[dtype],
        "device_name": torch.cuda.get_device_name(device) if on_cuda else "cpu",
        "gemms": gemms,
        "peak_tflops": max(float(g["tflops"]) for g in gemms),
        "copy": copy,
        "peak_bandwidth_TBps": copy["tbps"],
        "clocks": clocks(device) if on_cuda else None,
    }


def _gemm_seconds(
    shape: GemmShape, dtype: torch.dtype, device: torch.device, timer: Timer, repeats: int
) -> float:
    generator = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(shape.m, shape.k, dtype=dtype, device=device, generator=generator)
    b = torch.randn(shape.k, shape.n, dtype=dtype, device=device, generator=generator)
    out = torch.empty(shape.m, shape.n, dtype=dtype, device=device)
    return median_call_s(lambda: torch.mm(a, b, out=out), timer, repeats)


def _copy_entry(sizes: CalibrationSizes, device: torch.device, timer: Timer) -> dict[str, Any]:
    src = torch.ones(sizes.copy_bytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    seconds = median_call_s(lambda: dst.copy_(src), timer, sizes.repeats)
    moved = 2 * sizes.copy_bytes
    return {
        "bytes_moved": moved,
        "median_s": seconds,
        "tbps": moved / seconds / 1e12,
        "repeats": sizes.repeats,
    }
