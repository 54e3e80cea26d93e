"""Hand-built runner-like traces (frames in the reader's shapes) and a linear FLOPs model.

Every time is chosen here, so tests derive expected busy/wall/MFU from these numbers alone,
independently of the attribution and MFU code under test.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from llm_perf_opt.attribution import Attribution, RangeSelection, attribute_frames
from llm_perf_opt.flops.configs import builtin_config
from llm_perf_opt.peaks.table import PeakChoice
from llm_perf_opt.trace import API_CALLS_SCHEMA, GPU_OPS_SCHEMA, NVTX_RANGES_SCHEMA
from tests.helpers.frames import PID, call_row, gpid, gtid, op_row, range_row

TID = 100
GLOBAL_PID = gpid(PID)
GLOBAL_TID = gtid(TID, PID)
DOMAIN = "llm_perf_opt"
LP = 300  # prefill length of every synthetic image
# 1 PFLOP/s and 2 TB/s: round numbers to recompute MFU and MBU by hand
PEAK = PeakChoice(
    gpu_name="Test GPU",
    dtype="bf16",
    peak_flops=1e15,
    peak_source="test",
    table_row=None,
    peak_bandwidth_Bps=2e12,
    bandwidth_source="test",
)


def union_ns(intervals: Sequence[tuple[int, int]]) -> int:
    """Length of the union of [start, end) intervals (the test's own busy-time oracle)."""
    total, cur_start, cur_end = 0, None, None
    for start, end in sorted(intervals):
        if cur_end is None or start > cur_end:
            if cur_end is not None and cur_start is not None:
                total += cur_end - cur_start
            cur_start, cur_end = start, end
        else:
            cur_end = max(cur_end, end)
    if cur_end is not None and cur_start is not None:
        total += cur_end - cur_start
    return total


@dataclass
class SynthTrace:
    """Append ranges and GPU ops on one thread, as frames in the reader's shapes; `attribution()`
    attributes them."""

    ranges: list[dict[str, Any]] = field(default_factory=list)
    ops: list[dict[str, Any]] = field(default_factory=list)
    calls: list[dict[str, Any]] = field(default_factory=list)

    def push(
        self, name: str, start: int, end: int, payload: int | None = None, domain: str = DOMAIN
    ) -> None:
        self.ranges.append(
            range_row(
                len(self.ranges) + 1,
                name,
                start,
                end,
                domain=domain,
                tid=TID,
                pid=PID,
                payload=payload,
            )
        )

    def op(self, launch_ns: int, start: int, end: int, name_id: int = 1, kind: str = "kernel",
           stream: int = 7) -> None:  # fmt: skip
        corr = len(self.calls) + 1
        self.calls.append(call_row(corr, launch_ns, launch_ns + 5, tid=TID, pid=PID))
        self.ops.append(
            op_row(
                len(self.ops) + 1,
                start,
                end,
                corr,
                kind=kind,
                stream=stream,
                pid=PID,
                name_id=name_id if kind == "kernel" else None,
            )
        )

    def attribution(self, names: tuple[str, ...] = ("vision", "prefill", "decode")) -> Attribution:
        return attribute_frames(
            pl.DataFrame(self.ranges, schema=NVTX_RANGES_SCHEMA),
            pl.DataFrame(self.ops, schema=GPU_OPS_SCHEMA),
            pl.DataFrame(self.calls, schema=API_CALLS_SCHEMA),
            RangeSelection(names=names, domains=(DOMAIN,)),
        )


def _image(
    tr: SynthTrace, t0: int, payload: int, steps: int = 3
) -> dict[str, list[tuple[int, int]]]:
    """One image: image ⊃ vision, prefill, decode ⊃ steps; returns each stage's op intervals."""
    out: dict[str, list[tuple[int, int]]] = {"vision": [], "prefill": [], "decode": []}
    tr.push("image", t0, t0 + 20_000_000, payload)
    # vision: two overlapping kernels on two streams + a memcpy; a nested CCCL range with a kernel
    tr.push("vision", t0 + 100, t0 + 5_000_000)
    for launch, start, end, stream in (
        (t0 + 1_000, t0 + 1_001_000, t0 + 1_501_000, 7),
        (t0 + 2_000, t0 + 1_301_000, t0 + 1_801_000, 8),
    ):
        tr.op(launch, start, end, name_id=1, stream=stream)
        out["vision"].append((start, end))
    tr.op(t0 + 3_000, t0 + 1_900_000, t0 + 1_950_000, kind="memcpy")
    out["vision"].append((t0 + 1_900_000, t0 + 1_950_000))
    tr.push("cub::DeviceScan", t0 + 4_000, t0 + 6_000, domain="CCCL")
    tr.op(t0 + 5_000, t0 + 2_000_000, t0 + 2_100_000, name_id=2)
    out["vision"].append((t0 + 2_000_000, t0 + 2_100_000))
    # prefill: 4 back-to-back kernels of 300 µs
    tr.push("prefill", t0 + 5_000_100, t0 + 10_000_000)
    for k in range(4):
        start = t0 + 5_100_000 + k * 400_000
        tr.op(t0 + 5_000_200 + k, start, start + 300_000, name_id=3)
        out["prefill"].append((start, start + 300_000))
    # decode: `steps` steps of 2 kernels of 10 µs each, payload C = LP + k
    tr.push("decode", t0 + 10_000_100, t0 + 19_000_000)
    for k in range(1, steps + 1):
        s0 = t0 + 10_000_000 + k * 1_000_000
        tr.push("decode_step", s0, s0 + 900_000, LP + k)
        for j in range(2):
            start = s0 + 100_000 + j * 20_000
            tr.op(s0 + 10 + j, start, start + 10_000, name_id=4)
            out["decode"].append((start, start + 10_000))
    return out


def runner_like_trace(
    n_images: int = 2, warmup: bool = True
) -> tuple[SynthTrace, list[dict[str, list[tuple[int, int]]]]]:
    """warmup ⊃ image (payload 0), then `n_images` measured images; plus one stray kernel."""
    tr = SynthTrace()
    tr.op(10, 50, 60, name_id=9)  # launched outside every range
    warm = None
    if warmup:
        tr.push("warmup", 1_000, 30_000_000)
        warm = _image(tr, 2_000_000, 0)
    measured = [_image(tr, 50_000_000 + i * 30_000_000, i) for i in range(n_images)]
    return tr, ([warm] if warm else []) + measured


def meta_dict(n_images: int = 2, **overrides: Any) -> dict[str, Any]:
    """Run metadata for `runner_like_trace`, valid under the run-metadata schema."""
    images = [
        {
            "index": i,
            "source": "synthetic",
            "width": 1024,
            "height": 1024,
            "mode": "base",
            "crop_grid": None,
            "n_crops": 0,
            "vision_tokens": 256,
            "image_positions": 273,
            "prefill_len": LP,
            "decode_steps": 3,
            "decode_context_lens": [LP + 1, LP + 2, LP + 3],
            "wall_s": {"vision": 0.006 + i * 1e-3, "prefill": 0.0055, "decode": 0.0095},
            "decode_step_wall_s": [0.001, 0.0011, 0.0012],
            "generated_token_ids": [1, 2, 3, 4],
        }
        for i in range(n_images)
    ]
    meta: dict[str, Any] = {
        "schema": "llm_perf_opt.run_meta/1",
        "run_id": "00000000-0000-0000-0000-000000000000",
        "tool_version": "0.1.0",
        "created_utc": "2025-01-01T00:00:00Z",
        "nvtx_domain": DOMAIN,
        "nvtx_enabled": True,
        "model": {
            "name": "deepseek-ocr",
            "family": "deepseek-ocr",
            "tiny": False,
            "config": builtin_config("deepseek-ocr").to_dict(),
            "hf_config": {},
            "n_params": 1,
            "random_weights": True,
            "attn_implementation": "sdpa",
            "experts_implementation": "eager",
            "sdpa_cudnn": False,
        },
        "dtype": "bfloat16",
        "device": {"type": "cuda", "name": "NVIDIA H100 80GB HBM3"},
        "mode": "base",
        "context": {"context_len_mode": "auto", "context_len_fixed": None},
        "warmup": {"rounds": 1, "synthetic": True, "max_new_tokens": 4},
        "max_new_tokens": 4,
        "prompt_text_tokens": 27,
        "seed": 0,
        "versions": {"python": "3.12.3", "torch": "2.11.0", "transformers": "5.17.0"},
        "images": images,
    }
    meta.update(overrides)
    return meta


@dataclass(frozen=True)
class LinearFlops:
    """A FLOPs model simple enough to recompute by hand: constants, linear in Lp and C."""

    window: int = 1000
    vision_per_view: float = 2e11
    prefill_per_position: float = 1e9
    decode_base: float = 5e8
    decode_per_key: float = 1e5
    bytes_base: float = 1e9
    bytes_per_key: float = 6e4

    def vision_flops(self, mode: str, crop_grid: tuple[int, int] | None) -> float:
        crops = crop_grid[0] * crop_grid[1] if crop_grid else 0
        return self.vision_per_view * (1 + crops)

    def prefill_flops(self, prefill_len: int) -> float:
        return self.prefill_per_position * prefill_len

    def decode_flops(self, ctx_lens: Sequence[int]) -> float:
        return sum(self.decode_base + self.decode_per_key * c for c in ctx_lens)

    def decode_bytes(self, ctx_lens: Sequence[int]) -> float | None:
        return sum(self.bytes_base + self.bytes_per_key * c for c in ctx_lens)

    def attention_flops(
        self,
        stage: str,
        mode: str,
        crop_grid: tuple[int, int] | None,
        prefill_len: int | None,
        ctx_lens: Sequence[int],
    ) -> float:
        return sum(self.decode_per_key * c for c in ctx_lens)
