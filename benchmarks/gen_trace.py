"""Synthetic Nsight Systems SQLite exports shaped like a profiled DeepSeek-OCR run, at any size.

Real captures of long runs hold millions of kernels but cannot be committed or made in CI, so the
speed benchmark (issue 7) and the tests run on exports written here. The file uses the exact table
schemas of a real nsys 2025.3 export (schema 3.20.3, `nsys_schema_3_20_3.sql`, copied from real
files) and the row shapes seen in real captures of our runner's NVTX layout:

- domain `llm_perf_opt` (create event, eventType 75) with registered names (`textId`), as the
  `nvtx` package writes them: `warmup` ⊃ `image` ⊃ `vision`, `prefill`, `decode` ⊃ `decode_step`,
  then per measured image `image` (int64 payload = index) ⊃ `vision`, `prefill`, `decode` ⊃
  `decode_step` (int64 payload = context length C);
- CCCL library ranges (domain `CCCL`) nested in prefill and decode steps: every `nonzero` of the
  eager MoE routing, as `cub::DeviceReduce::Sum`, a DtoH copy of the count and a stream sync,
  then `cub::DeviceSelect::Flagged`;
- a second launching thread with its own default-domain range (`text`) and its own stream,
  overlapping the vision stage; a start/end range (eventType 60) around model loading;
- a CUDA-graph replay per decode step: one `cudaGraphLaunch` whose correlationId is shared by
  several kernel rows with `graphNodeId` set (nsys `--cuda-graph-trace=node`), or with
  `graph_level` one `CUPTI_ACTIVITY_KIND_GRAPH_TRACE` row spanning those kernels instead (nsys's
  default `graph` mode); memcpy and memset rows; kernels outside any range;
- the run-metadata mark (eventType 34, JSON per docs/run-metadata.md, consistent with the ranges).

Every GPU op starts after its launch call starts, ops on one stream never overlap, syncing calls
return after the GPU work queued before them, correlation ids are unique in the process and follow
call order. Output is deterministic for a given seed.

Example:
    PYTHONPATH=src:. python3 benchmarks/gen_trace.py --kernels 1e6 --seed 0 -o /tmp/gen_1e6.sqlite
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

if __package__ in (None, ""):  # run as a script: import from the repo root and src/
    _ROOT = Path(__file__).resolve().parents[1]
    sys.path[:0] = [str(_ROOT), str(_ROOT / "src")]

from benchmarks.kernel_catalog import KERNEL_KINDS, KernelKind
from llm_perf_opt import __version__
from llm_perf_opt.flops.configs import builtin_config

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]

SCHEMA_SQL = Path(__file__).with_name("nsys_schema_3_20_3.sql")
GRAPH_TRACE_SQL = Path(__file__).with_name("nsys_schema_3_20_3_graph_trace.sql")

DOMAIN = "llm_perf_opt"
DOMAIN_ID = 1
CCCL_DOMAIN_ID = 2
PID = 41207
MAIN_TID = PID
BG_TID = PID + 37
GLOBAL_PID = (1 << 48) | (PID << 24)
MAIN_GTID = GLOBAL_PID | MAIN_TID
BG_GTID = GLOBAL_PID | BG_TID
MAIN_STREAM = 7
BG_STREAM = 14
SESSION_START_UTC_NS = 1_795_635_804_533_162_217
TRACE_START_NS = 5_000_000_000
GPU_NAME = "NVIDIA H100 80GB HBM3"
RANGE_COLOR = 255  # what the `nvtx` package stored for our ranges in a real capture
US = 1_000.0

# DeepSeek-OCR (v1) base mode: 1024 px, 256 vision tokens, 16 x (16 + 1) + 1 LLM positions.
IMAGE_SIDE_PX = 1024
VISION_TOKENS = 256
IMAGE_POSITIONS = 273
PROMPT_TEXT_TOKENS = 9  # BOS + the runner's 8 instruction ids
VOCAB_SIZE = 129_280
N_PARAMS = 3_336_106_240
WARMUP_ROUNDS = 1
WARMUP_NEW_TOKENS = 3
GRAPH_NODES = 3  # sampling kernels replayed from a CUDA graph in every decode step
FIXED_KERNELS = 10  # 3 before any range, 4 in the start/end `load_model` range, 3 at the end
BG_KERNELS_PER_IMAGE = 4  # 3 inside the second thread's range, 1 outside it
MAX_KERNELS_PER_STEP = 870  # eager MoE decode on the H100 (docs: ~870 kernels per token)
MIN_KERNELS_PER_STEP = 48  # enough for a layer's attention and two nonzero calls


@dataclass(frozen=True)
class TracePlan:
    """How many kernels go where; the sizes every other count derives from."""

    n_kernels: int
    kernels_per_step: int
    vision_kernels: int
    prefill_kernels: int
    n_images: int
    max_new_tokens: int
    extra_per_step: int
    extra_steps: int

    @property
    def decode_steps(self) -> int:
        """Decode steps per measured image (`max_new_tokens - 1`)."""
        return self.max_new_tokens - 1

    def step_kernels(self, measured_step: int) -> int:
        """Kernels in measured decode step number `measured_step` (counted over all images)."""
        extra = 1 if measured_step < self.extra_steps else 0
        return self.kernels_per_step + self.extra_per_step + extra


def plan_trace(n_kernels: int) -> TracePlan:
    """Split `n_kernels` into warmup, images, stages and decode steps (exact total).

    Raises:
        ValueError: `n_kernels` is too small to hold one warmup round and two images.
    """
    k = min(MAX_KERNELS_PER_STEP, max(MIN_KERNELS_PER_STEP, n_kernels // 60))
    vision = max(16, round(0.45 * k))
    prefill = k
    warmup = WARMUP_ROUNDS * (vision + prefill + (WARMUP_NEW_TOKENS - 1) * k)
    available = n_kernels - FIXED_KERNELS - warmup
    per_image_fixed = vision + prefill + BG_KERNELS_PER_IMAGE
    n_images = max(2, round(available / (per_image_fixed + 255 * k)))
    step_kernels = available - n_images * per_image_fixed
    steps_per_image = step_kernels // (n_images * k) if step_kernels > 0 else 0
    if steps_per_image < 1:
        minimum = FIXED_KERNELS + warmup + 2 * (per_image_fixed + k)
        raise ValueError(f"--kernels {n_kernels} is too small: use at least {minimum}")
    remainder = step_kernels - n_images * steps_per_image * k
    n_steps = n_images * steps_per_image
    return TracePlan(
        n_kernels=n_kernels,
        kernels_per_step=k,
        vision_kernels=vision,
        prefill_kernels=prefill,
        n_images=n_images,
        max_new_tokens=steps_per_image + 1,
        extra_per_step=remainder // n_steps,
        extra_steps=remainder % n_steps,
    )


KIND_KEYS = tuple(KERNEL_KINDS)
KIND_INDEX = {key: i for i, key in enumerate(KIND_KEYS)}
GRAPH_NODE_KINDS = ("softmax", "argmax", "fill")  # the sampling graph replayed per decode step
GRAPH_NODE_US = ((3.0, 5.0), (3.0, 6.0), (1.5, 2.5))
GRAPH_NODE_ID_BASE = 8_589_934_592  # 2 << 32: nodes of the instantiated (cloned) graph
GRAPH_ID, GRAPH_EXEC_ID = 2, 3  # the sampling graph and its executable (graph-level rows)

# Slot opcodes: one slot is one CUDA API call on one thread.
OP_NONE, OP_KERNEL, OP_MEMCPY, OP_MEMSET, OP_GRAPH = 0, 1, 2, 3, 4
COPY_HTOD, COPY_DTOH = 1, 2
MEM_PAGEABLE, MEM_PINNED, MEM_DEVICE = 0, 1, 2
API_CLASS = {"cuLaunchKernelEx": 1}  # driver calls; the rest are runtime (eventClass 0)


@dataclass(frozen=True)
class Slot:
    """One API call of a block: what it launches and its typical CPU/GPU durations."""

    api: str
    api_us: float
    gap_us: float
    op: int = OP_NONE
    kind: str = ""
    gpu_us: tuple[float, float] = (0.0, 0.0)
    nbytes: int = 0
    copy_kind: int = 0
    src_kind: int = 0
    dst_kind: int = 0
    sync: bool = False  # returns only when the GPU work queued before it is done


@dataclass(frozen=True)
class LibRange:
    """A library (CCCL) range around slots `first..last` of a block."""

    name: str
    first: int
    last: int


@dataclass
class BlockSpec:
    """A run of API calls on one thread and one stream, in call order."""

    slots: list[Slot] = field(default_factory=list)
    lib_ranges: list[LibRange] = field(default_factory=list)

    def kernel(self, kind: str, lo_us: float, hi_us: float, gap_us: float) -> None:
        """Append a kernel launch."""
        driver = KERNEL_KINDS[kind].driver_launch
        api = "cuLaunchKernelEx" if driver else "cudaLaunchKernel_v7000"
        self.slots.append(
            Slot(api, 8.0 if driver else 5.0, gap_us, OP_KERNEL, kind, (lo_us, hi_us))
        )

    def call(self, api: str, api_us: float, gap_us: float, *, sync: bool = False) -> None:
        """Append an API call without GPU work (`sync`: it waits for the GPU)."""
        self.slots.append(Slot(api, api_us, gap_us, sync=sync))

    def memcpy(
        self, nbytes: int, copy_kind: int, src: int, dst: int, us: tuple[float, float]
    ) -> None:
        """Append a cudaMemcpyAsync."""
        self.slots.append(
            Slot("cudaMemcpyAsync_v3020", 9.0, 12.0, OP_MEMCPY, "", us, nbytes, copy_kind, src, dst)
        )

    def memset(self, nbytes: int, gap_us: float) -> None:
        """Append a cudaMemsetAsync."""
        self.slots.append(
            Slot("cudaMemsetAsync_v3020", 5.0, gap_us, OP_MEMSET, "", (1.0, 1.5), nbytes)
        )

    def graph(self, gap_us: float) -> None:
        """Append a cudaGraphLaunch of the sampling graph."""
        self.call("cudaStreamIsCapturing_v10000", 1.5, gap_us)
        self.slots.append(Slot("cudaGraphLaunch_v10000", 25.0, 3.0, OP_GRAPH))

    def library(
        self, name: str, kernels: Sequence[tuple[str, float, float]], gap_us: float
    ) -> None:
        """Append a CCCL algorithm: a range around its launches (each after a name query)."""
        first = len(self.slots)
        for kind, lo, hi in kernels:
            self.call("cuKernelGetName", 0.4, 1.0)
            self.kernel(kind, lo, hi, gap_us * 0.3)
        self.slots[first] = Slot("cuKernelGetName", 0.4, gap_us)
        self.lib_ranges.append(LibRange(name, first, len(self.slots) - 1))

    def nonzero(self, us: tuple[float, float], gap_us: float) -> None:
        """`torch.nonzero` as a real capture shows it: count, copy the count home, select."""
        lo, hi = us
        self.library(
            "cub::DeviceReduce::Sum", [("nz_reduce", lo, hi), ("nz_reduce_tile", 1.3, 2.0)], gap_us
        )
        self.memcpy(4, COPY_DTOH, MEM_DEVICE, MEM_PAGEABLE, (1.3, 1.6))
        self.call("cudaStreamSynchronize_v3020", 3.0, 1.0, sync=True)
        self.library(
            "cub::DeviceSelect::Flagged",
            [("nz_compact_init", 1.0, 1.5), ("nz_select", lo, hi)],
            gap_us,
        )

    def finish(self, api: str) -> BlockSpec:
        """Close the block with a call that waits for the GPU (stream or device sync)."""
        self.call(api, 3.0, 4.0, sync=True)
        return self

    @property
    def n_kernels(self) -> int:
        """Kernel rows this block produces (graph launches expand to their nodes)."""
        plain = sum(1 for s in self.slots if s.op == OP_KERNEL)
        return plain + GRAPH_NODES * sum(1 for s in self.slots if s.op == OP_GRAPH)


NONZERO_KERNELS = 4
Unit = tuple[str, tuple[str, float, float] | None]


def _text_layer(stage: str) -> list[Unit]:
    """One MoE decoder layer as transformers' eager experts loop runs it: kernels and nonzeros.

    Routing calls `nonzero` once for the experts hit and once per hit expert (`torch.where`);
    each waits for the GPU to copy its count home.
    """
    d = stage == "decode"
    ew = (2.0, 3.5) if d else (8.0, 30.0)
    gemm = (4.0, 12.0) if d else (50.0, 500.0)
    small = (3.0, 6.0) if d else (50.0, 80.0)
    attn = (8.0, 20.0) if d else (100.0, 300.0)
    nz = (2.0, 6.0) if d else (5.0, 20.0)

    def k(kind: str, us: tuple[float, float]) -> Unit:
        return ("k", (kind, *us))

    nonzero: Unit = ("nonzero", ("", *nz))
    norm = [k("pow", ew), k("mean", ew), k("mul", ew)]
    proj = "gemm_small" if d else "gemm_mid"
    units = [
        *norm,
        *(k(proj, gemm) for _ in range(3)),
        k("neg", ew),
        k("cat", ew),
        k("mul", ew),
        k("add", ew),
        k("cat", ew),
        k("attn_decode" if d else "attn_prefill", attn),
        k(proj, gemm),
        k("add", ew),
        *norm,
        k("gemm_small", small),
        k("softmax", ew),
        k("topk", small),
        ("memset", None),
        k("one_hot", ew),
        k("expert_sum", ew),
        k("greater", ew),
        nonzero,
    ]
    for _ in range(6):  # top-6 routed experts, one after the other
        units += [k("index", ew), nonzero, k("index_select", ew), k(proj, gemm), k("silu", ew)]
        units += [k("mul", ew), k(proj, gemm), k("mul", ew), k("index_add", ew)]
    units += [k(proj, gemm), k("silu", ew), k("mul", ew), k(proj, gemm), k("add", ew)]
    return units


def _fill_layers(block: BlockSpec, stage: str, n_kernels: int, gap_us: float) -> None:
    """Append decoder layers until exactly `n_kernels` kernels are added."""
    units = _text_layer(stage)
    ew = (2.0, 3.5) if stage == "decode" else (8.0, 30.0)
    added, i = 0, 0
    while added < n_kernels:
        tag, body = units[i % len(units)]
        i += 1
        if tag == "memset":
            block.memset(8_192, gap_us)
        elif tag == "k" and body is not None:
            block.kernel(body[0], body[1], body[2], gap_us)
            added += 1
        elif body is not None and added + NONZERO_KERNELS <= n_kernels:
            block.nonzero((body[1], body[2]), gap_us)
            added += NONZERO_KERNELS
        else:  # a nonzero that does not fit: finish with plain elementwise kernels
            block.kernel("add", *ew, gap_us)
            added += 1


def decode_step_block(n_kernels: int) -> BlockSpec:
    """One decode step: embedding, layers, norm, lm_head, sampling graph, token copy, sync."""
    gap = 22.0
    b = BlockSpec()
    b.kernel("index_select", 2.0, 3.5, gap)
    _fill_layers(b, "decode", n_kernels - 1 - 4 - GRAPH_NODES, gap)
    for kind in ("pow", "mean", "mul"):
        b.kernel(kind, 2.0, 3.5, gap)
    b.kernel("gemm_small", 15.0, 20.0, gap)  # lm_head
    b.graph(gap)
    b.memcpy(8, COPY_DTOH, MEM_DEVICE, MEM_PAGEABLE, (1.3, 1.6))
    return b.finish("cudaDeviceSynchronize_v3020")  # the runner syncs inside each range


def prefill_block(n_kernels: int) -> BlockSpec:
    """The prefill forward: layers with long GEMMs, then the first token's copy and a sync."""
    gap = 14.0
    b = BlockSpec()
    b.kernel("index_select", 8.0, 20.0, gap)
    _fill_layers(b, "prefill", n_kernels - 1 - 4, gap)
    for kind in ("pow", "mean", "mul"):
        b.kernel(kind, 8.0, 20.0, gap)
    b.kernel("gemm_large", 60.0, 120.0, gap)  # lm_head on the last position
    b.memcpy(8, COPY_DTOH, MEM_DEVICE, MEM_PAGEABLE, (1.3, 1.6))
    return b.finish("cudaDeviceSynchronize_v3020")


def vision_block(n_kernels: int) -> BlockSpec:
    """SAM + CLIP + projector: pixel upload, a memset, transformer layers, a device sync."""
    gap = 15.0
    b = BlockSpec()
    b.memcpy(IMAGE_SIDE_PX * IMAGE_SIDE_PX * 3 * 4, COPY_HTOD, MEM_PINNED, MEM_DEVICE, (480, 560))
    b.memset(1 << 20, gap)
    layer = [
        ("layernorm", 10.0, 40.0),
        ("gemm_large", 80.0, 300.0),
        ("attn_vision", 100.0, 500.0),
        ("gemm_mid", 50.0, 150.0),
        ("add", 10.0, 30.0),
        ("layernorm", 10.0, 40.0),
        ("gemm_large", 100.0, 400.0),
        ("gelu", 20.0, 60.0),
        ("gemm_large", 100.0, 400.0),
        ("add", 10.0, 30.0),
    ]
    b.kernel("nchw2nhwc", 20.0, 60.0, gap)
    b.kernel("conv", 150.0, 400.0, gap)
    for i in range(n_kernels - 2):
        kind, lo, hi = layer[i % len(layer)]
        b.kernel(kind, lo, hi, gap)
    return b.finish("cudaDeviceSynchronize_v3020")


def _bg_blocks() -> tuple[BlockSpec, BlockSpec]:
    """The second thread's work per image: inside its range, then one kernel and a sync."""
    inside = BlockSpec()
    inside.memcpy(2 << 20, COPY_HTOD, MEM_PINNED, MEM_DEVICE, (80.0, 150.0))
    for _ in range(BG_KERNELS_PER_IMAGE - 1):
        inside.kernel("copy", 20.0, 60.0, 10.0)
    outside = BlockSpec()
    outside.kernel("add", 5.0, 10.0, 10.0)
    return inside, outside.finish("cudaStreamSynchronize_v3020")


def _init_blocks() -> tuple[BlockSpec, BlockSpec, BlockSpec]:
    """Before any range (3 kernels), model loading (start/end range), the run's tail (3)."""
    before = BlockSpec()
    before.call("cudaMalloc_v3020", 120.0, 50.0)
    for _ in range(3):
        before.kernel("fill", 2.0, 4.0, 30.0)
    before.call("cudaMalloc_v3020", 110.0, 40.0)
    load = BlockSpec()
    for _ in range(8):
        load.memcpy(64 << 20, COPY_HTOD, MEM_PINNED, MEM_DEVICE, (2_500.0, 2_900.0))
    for _ in range(4):
        load.kernel("copy", 50.0, 200.0, 20.0)
    load.call("cudaStreamBeginCapture_v10000", 12.0, 30.0)
    load.call("cudaStreamEndCapture_v10000", 150.0, 40.0)
    load.call("cudaGraphInstantiateWithFlags_v11040", 900.0, 20.0)
    tail = BlockSpec()
    for _ in range(3):
        tail.kernel("fill", 2.0, 4.0, 30.0)
    device_sync = "cudaDeviceSynchronize_v3020"
    return before, load.finish(device_sync), tail.finish(device_sync)


class Strings:
    """The StringIds table: one id per distinct string, in order of first use."""

    def __init__(self) -> None:
        self.ids: dict[str, int] = {}

    def id(self, value: str) -> int:
        """The id of `value`, registering it on first use."""
        found = self.ids.get(value)
        if found is None:
            found = self.ids[value] = len(self.ids) + 1
        return found


@dataclass(frozen=True)
class Block:
    """A `BlockSpec` compiled to arrays, with per-slot base durations drawn once.

    Syncing calls cut the block into segments; a segment ends with its sync (the last one may
    have none). After a sync the stream is idle, so each segment's timing is relative to its start.
    """

    api_name: IntArray
    api_class: IntArray
    gap_ns: FloatArray
    api_ns: FloatArray
    slot_segment: IntArray
    seg_first: IntArray  # first slot of each segment
    seg_last: IntArray  # last slot of each segment
    seg_sync: npt.NDArray[np.bool_]  # the segment ends with a syncing call
    device_sync_last: bool  # the block ends with cudaDeviceSynchronize (waits for all streams)
    op_slot: IntArray  # one entry per GPU op; graph launches expand to one per node
    op_code: IntArray
    op_kind: IntArray  # KIND_INDEX or -1
    op_node: IntArray  # graph node index or -1
    op_lo_ns: FloatArray
    op_hi_ns: FloatArray
    op_base_ns: FloatArray
    op_bytes: IntArray
    op_copy: IntArray
    op_src: IntArray
    op_dst: IntArray
    lib_first: IntArray
    lib_last: IntArray
    lib_name: IntArray
    n_kernels: int


def compile_block(spec: BlockSpec, strings: Strings, rng: np.random.Generator) -> Block:
    """Turn a block spec into arrays (string ids resolved, typical durations drawn)."""
    slots = spec.slots
    ops: list[tuple[int, int, int, int, float, float, int, int, int, int]] = []
    for i, s in enumerate(slots):
        if s.op == OP_GRAPH:
            nodes = zip(GRAPH_NODE_KINDS, GRAPH_NODE_US, strict=True)
            for node, (kind, (lo, hi)) in enumerate(nodes):
                ops.append((i, OP_KERNEL, KIND_INDEX[kind], node, lo, hi, 0, 0, 0, 0))
        elif s.op != OP_NONE:
            index = KIND_INDEX[s.kind] if s.op == OP_KERNEL else -1
            lo, hi = s.gpu_us
            ops.append((i, s.op, index, -1, lo, hi, s.nbytes, s.copy_kind, s.src_kind, s.dst_kind))
    cols = list(zip(*ops, strict=True))
    lo_ns = np.asarray(cols[4], dtype=np.float64) * US
    hi_ns = np.asarray(cols[5], dtype=np.float64) * US
    is_sync = np.asarray([s.sync for s in slots], dtype=bool)
    segment = np.concatenate([[0], np.cumsum(is_sync)[:-1]]).astype(np.int64)
    seg_ids = np.arange(int(segment[-1]) + 1)
    seg_last = np.searchsorted(segment, seg_ids, side="right") - 1
    return Block(
        api_name=np.asarray([strings.id(s.api) for s in slots], dtype=np.int64),
        api_class=np.asarray([API_CLASS.get(s.api, 0) for s in slots], dtype=np.int64),
        gap_ns=np.asarray([s.gap_us for s in slots], dtype=np.float64) * US,
        api_ns=np.asarray([s.api_us for s in slots], dtype=np.float64) * US,
        slot_segment=segment,
        seg_first=np.searchsorted(segment, seg_ids, side="left"),
        seg_last=seg_last,
        seg_sync=is_sync[seg_last],
        device_sync_last=bool(is_sync[-1]) and slots[-1].api == "cudaDeviceSynchronize_v3020",
        op_slot=np.asarray(cols[0], dtype=np.int64),
        op_code=np.asarray(cols[1], dtype=np.int64),
        op_kind=np.asarray(cols[2], dtype=np.int64),
        op_node=np.asarray(cols[3], dtype=np.int64),
        op_lo_ns=lo_ns,
        op_hi_ns=hi_ns,
        op_base_ns=rng.uniform(lo_ns, hi_ns),
        op_bytes=np.asarray(cols[6], dtype=np.int64),
        op_copy=np.asarray(cols[7], dtype=np.int64),
        op_src=np.asarray(cols[8], dtype=np.int64),
        op_dst=np.asarray(cols[9], dtype=np.int64),
        lib_first=np.asarray([r.first for r in spec.lib_ranges], dtype=np.int64),
        lib_last=np.asarray([r.last for r in spec.lib_ranges], dtype=np.int64),
        lib_name=np.asarray([strings.id(r.name) for r in spec.lib_ranges], dtype=np.int64),
        n_kernels=spec.n_kernels,
    )


@dataclass
class Run:
    """One simulated instance of a block on a thread and stream."""

    block: Block
    gtid: int
    stream: int
    api_start: IntArray
    api_end: IntArray
    op_start: IntArray
    op_end: IntArray


SEGMENT_SHIFT = 1 << 42  # ns; larger than twice any segment's span, so cummax restarts per segment


def _segmented_schedule(earliest: FloatArray, busy: FloatArray, segment: IntArray) -> IntArray:
    """In-order ops per segment: start_i = max(earliest_i, start_{i-1} + busy_{i-1}).

    Segments restart the recurrence (the stream is idle after a sync). Times are relative to
    each op's segment start.
    """
    total = np.cumsum(busy)
    before = total - busy
    first = np.searchsorted(segment, segment, side="left")  # index of each op's segment's first op
    before -= before[first]
    lead = np.round(earliest - before).astype(np.int64) + segment * SEGMENT_SHIFT
    return np.round(before).astype(np.int64) + np.maximum.accumulate(lead) - segment * SEGMENT_SHIFT


class Timeline:
    """The time each stream's queue drains, in trace ns, and the simulation of blocks."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng
        self.stream_free: dict[int, float] = {MAIN_STREAM: 0.0, BG_STREAM: 0.0}

    def run(self, block: Block, t0: float, gtid: int, stream: int) -> Run:
        """Simulate `block` from CPU time `t0`: calls back to back, GPU ops queued on `stream`,
        each syncing call held until the GPU work before it is done."""
        rng = self.rng
        n, m = len(block.api_ns), len(block.op_slot)
        gap = np.maximum(block.gap_ns * rng.lognormal(0.0, 0.3, n), 800.0)
        dur = np.maximum(block.api_ns * rng.lognormal(0.0, 0.2, n), 300.0)
        step = gap + dur
        total = np.cumsum(step)
        seg = block.slot_segment
        rel_end = total - (total - step)[block.seg_first][seg]  # from the segment's start
        rel_start = rel_end - dur
        gpu = np.round(
            np.clip(block.op_base_ns * rng.lognormal(0.0, 0.08, m), block.op_lo_ns, block.op_hi_ns)
        )
        chained = block.op_node > 0  # later graph nodes follow the previous node directly
        earliest = rel_end[block.op_slot] + rng.uniform(200.0, 1_500.0, m)
        earliest[chained] = 0.0
        op_seg = seg[block.op_slot]
        busy_until = self.stream_free[stream] - t0  # the stream may be busy from an earlier block
        if m and op_seg[0] == 0:
            earliest[0] = max(earliest[0], busy_until)
        busy = np.asarray(gpu + np.where(chained, 96, rng.integers(300, 1_200, m)), np.float64)
        op_start = _segmented_schedule(earliest, busy, op_seg)
        gpu_done = np.full(len(block.seg_last), -np.inf)
        np.maximum.at(gpu_done, op_seg, op_start + gpu)
        gpu_done[0] = max(gpu_done[0], busy_until)
        seg_end = rel_end[block.seg_last]
        waited = np.maximum(seg_end, gpu_done + rng.uniform(1_000.0, 4_000.0, len(seg_end)))
        seg_end = np.where(block.seg_sync, waited, seg_end)
        rel_end[block.seg_last] = seg_end  # a syncing call returns when its wait is over
        seg_start = t0 + np.cumsum(seg_end) - seg_end
        api_start = np.round(seg_start[seg] + rel_start).astype(np.int64)
        api_end = np.round(seg_start[seg] + rel_end).astype(np.int64)
        op_start_abs = np.round(seg_start[op_seg]).astype(np.int64) + op_start
        op_end = op_start_abs + gpu.astype(np.int64)
        if m:
            self.stream_free[stream] = max(self.stream_free[stream], float(op_end[-1]) + 500.0)
        if block.device_sync_last:
            done = max(self.stream_free.values()) + rng.uniform(1_000.0, 4_000.0)
            api_end[-1] = max(int(api_end[-1]), round(done))
        return Run(block, gtid, stream, api_start, api_end, op_start_abs, op_end)


def _nvtx_row(
    start: int,
    end: int | None,
    event_type: int,
    gtid: int,
    *,
    text: str | None = None,
    text_id: int | None = None,
    domain: int = 0,
    color: int | None = None,
    payload: int | None = None,
    range_id: int | None = None,
) -> tuple[Any, ...]:
    """One NVTX_EVENTS row in the column order of the real table."""
    return (
        start,
        end,
        event_type,
        range_id,
        None,
        color,
        text,
        gtid,
        None,
        text_id,
        domain,
        None,
        payload,
        None,
        None,
        None,
        None,
        None,
        None,
        None,
    )


@dataclass
class Summary:
    """What a generation wrote: counts for the README/benchmark and the run metadata."""

    path: Path
    plan: TracePlan
    n_kernels: int = 0
    n_memcpy: int = 0
    n_memset: int = 0
    n_graph_replays: int = 0  # graph-level rows (`graph_level`); their kernels have no rows
    n_api: int = 0
    n_nvtx: int = 0
    duration_ns: int = 0
    seconds: float = 0.0
    meta: dict[str, Any] = field(default_factory=dict)


class Writer:
    """Streams simulated runs into the SQLite file, one chunk (an image) at a time."""

    def __init__(
        self,
        con: sqlite3.Connection,
        summary: Summary,
        kind_columns: IntArray,
        graph_level: bool = False,
    ) -> None:
        self.con = con
        self.summary = summary
        self.kind_columns = kind_columns
        self.graph_level = graph_level
        self.runs: list[Run] = []
        self.next_correlation = 1_000
        self.next_grid_id = 1

    def add(self, run: Run) -> Run:
        """Queue a run for the next flush."""
        self.runs.append(run)
        return run

    def flush(self) -> None:
        """Assign correlation ids in call order and insert API calls and GPU ops."""
        if not self.runs:
            return
        runs, self.runs = self.runs, []
        api_start = np.concatenate([r.api_start for r in runs])
        api_offsets = np.cumsum([0] + [len(r.api_start) for r in runs[:-1]])
        order = np.argsort(api_start, kind="stable")
        correlation = np.empty(len(order), dtype=np.int64)
        correlation[order] = self.next_correlation + np.arange(len(order))
        self.next_correlation += len(order)
        self._insert_api(runs, order, correlation)
        self._insert_ops(runs, api_offsets, correlation)

    def _insert_api(self, runs: list[Run], order: IntArray, correlation: IntArray) -> None:
        cols = [
            np.concatenate([r.api_start for r in runs])[order],
            np.concatenate([r.api_end for r in runs])[order],
            np.concatenate([r.block.api_class for r in runs])[order],
            np.concatenate([np.full(len(r.api_start), r.gtid) for r in runs])[order],
            correlation[order],
            np.concatenate([r.block.api_name for r in runs])[order],
        ]
        rows = zip(*(c.tolist() for c in cols), strict=True)
        self.con.executemany(
            "INSERT INTO CUPTI_ACTIVITY_KIND_RUNTIME VALUES (?, ?, ?, ?, ?, ?, 0, NULL)", rows
        )
        self.summary.n_api += len(order)

    def _insert_ops(self, runs: list[Run], api_offsets: IntArray, correlation: IntArray) -> None:
        def cat(attr: str) -> IntArray:
            return np.concatenate([getattr(r.block, attr) for r in runs])

        start = np.concatenate([r.op_start for r in runs])
        end = np.concatenate([r.op_end for r in runs])
        stream = np.concatenate([np.full(len(r.op_start), r.stream) for r in runs])
        api_index = np.concatenate(
            [r.block.op_slot + off for r, off in zip(runs, api_offsets, strict=True)]
        )
        corr = correlation[api_index]
        code, kind, node = cat("op_code"), cat("op_kind"), cat("op_node")
        order = np.argsort(start, kind="stable")
        start, end, stream, corr = start[order], end[order], stream[order], corr[order]
        code, kind, node = code[order], kind[order], node[order]
        nbytes, copy = cat("op_bytes")[order], cat("op_copy")[order]
        src, dst = cat("op_src")[order], cat("op_dst")[order]
        kernels = code == OP_KERNEL
        if self.graph_level:
            replayed = kernels & (node >= 0)
            self._insert_graph_replays(start[replayed], end[replayed], stream[replayed],
                                       corr[replayed])  # fmt: skip
            kernels &= ~replayed
        self._insert_kernels(kernels, start, end, stream, corr, kind, node)
        m = code == OP_MEMCPY
        rows = zip(
            *(c.tolist() for c in (start[m], end[m], stream[m], corr[m], nbytes[m], copy[m])),
            src[m].tolist(),
            dst[m].tolist(),
            strict=True,
        )
        self.con.executemany(
            "INSERT INTO CUPTI_ACTIVITY_KIND_MEMCPY VALUES (?, ?, 0, 1, 0, ?, ?, "
            f"{GLOBAL_PID}, ?, ?, NULL, ?, ?, NULL, NULL, NULL, NULL, NULL, NULL, NULL, 1)",
            rows,
        )
        self.summary.n_memcpy += int(m.sum())
        m = code == OP_MEMSET
        rows = zip(
            *(c.tolist() for c in (start[m], end[m], stream[m], corr[m], nbytes[m])), strict=True
        )
        self.con.executemany(
            "INSERT INTO CUPTI_ACTIVITY_KIND_MEMSET VALUES "
            f"(?, ?, 0, 1, 0, ?, ?, {GLOBAL_PID}, 0, ?, NULL, {MEM_DEVICE})",
            rows,
        )
        self.summary.n_memset += int(m.sum())

    def _insert_graph_replays(
        self, start: IntArray, end: IntArray, stream: IntArray, corr: IntArray
    ) -> None:
        """One graph-level row per replay (the node kernels sharing a correlation id): first
        node start to last node end, as nsys's default `--cuda-graph-trace=graph` records it."""
        if len(corr) == 0:
            return
        order = np.argsort(corr, kind="stable")
        corr, start, end, stream = corr[order], start[order], end[order], stream[order]
        heads = np.flatnonzero(np.r_[True, corr[1:] != corr[:-1]])
        rows = zip(
            np.minimum.reduceat(start, heads).tolist(),
            np.maximum.reduceat(end, heads).tolist(),
            stream[heads].tolist(),
            corr[heads].tolist(),
            strict=True,
        )
        self.con.executemany(
            "INSERT INTO CUPTI_ACTIVITY_KIND_GRAPH_TRACE VALUES "
            f"(?, ?, 0, 1, NULL, ?, ?, {GLOBAL_PID}, {GRAPH_ID}, {GRAPH_EXEC_ID})",
            rows,
        )
        self.summary.n_graph_replays += len(heads)

    def _insert_kernels(
        self,
        mask: npt.NDArray[np.bool_],
        start: IntArray,
        end: IntArray,
        stream: IntArray,
        corr: IntArray,
        kind: IntArray,
        node: IntArray,
    ) -> None:
        kind, node = kind[mask], node[mask]
        n = len(kind)
        grid_id = np.empty(n, dtype=np.int64)
        plain = node < 0
        grid_id[plain] = self.next_grid_id + np.arange(int(plain.sum()))
        grid_id[~plain] = 1_000_000 + node[~plain]
        self.next_grid_id += int(plain.sum())
        per_kind = [column[kind].tolist() for column in self.kind_columns]
        graph_node = [None if g < 0 else GRAPH_NODE_ID_BASE + g for g in node.tolist()]
        rows = zip(
            start[mask].tolist(),
            end[mask].tolist(),
            stream[mask].tolist(),
            corr[mask].tolist(),
            *per_kind,
            grid_id.tolist(),
            graph_node,
            strict=True,
        )
        self.con.executemany(KERNEL_INSERT, rows)
        self.summary.n_kernels += n


KERNEL_INSERT = (
    "INSERT INTO CUPTI_ACTIVITY_KIND_KERNEL (start, end, streamId, correlationId, demangledName, "
    "shortName, mangledName, cacheConfig, registersPerThread, gridX, gridY, gridZ, blockX, blockY, "
    "blockZ, staticSharedMemory, dynamicSharedMemory, sharedMemoryExecuted, "
    "sharedMemoryLimitConfig, gridId, graphNodeId, deviceId, contextId, greenContextId, "
    "globalPid, launchType, localMemoryPerThread, localMemoryTotal) VALUES "
    "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0, 1, 0, "
    f"{GLOBAL_PID}, 1, 0, 250871808)"
)


def _mangled(kind: KernelKind) -> str:
    """A stand-in Itanium-style mangled name (nvjet kernels are not mangled)."""
    if kind.short.startswith(("nvjet", "sm90_")):
        return kind.short
    return f"_ZN2at6native{len(kind.short)}{kind.short}IJEEEvv"


def _kind_columns(strings: Strings) -> IntArray:
    """Per-kind kernel columns, one row each, in `KERNEL_INSERT` order (names ... limit config)."""
    cols = []
    for kind in KERNEL_KINDS.values():
        big = kind.dynamic_smem > 48 * 1024
        cols.append(
            [
                strings.id(kind.demangled),
                strings.id(kind.short),
                strings.id(_mangled(kind)),
                2 if big else 1,
                kind.registers,
                *kind.grid,
                *kind.block,
                kind.static_smem,
                kind.dynamic_smem,
                233_472 if big else 32_768,
                1 if big else 0,
            ]
        )
    return np.asarray(cols, dtype=np.int64).T.copy()


@dataclass
class ImageTiming:
    """Wall-clock facts of one image for the run metadata (CPU range durations, seconds)."""

    wall_s: dict[str, float]
    decode_step_wall_s: list[float]


class Generator:
    """Builds the whole trace: the runner's control flow over compiled blocks."""

    def __init__(
        self,
        plan: TracePlan,
        seed: int,
        con: sqlite3.Connection,
        summary: Summary,
        graph_level: bool = False,
    ):
        self.plan = plan
        self.seed = seed
        self.rng = np.random.default_rng(seed)
        self.strings = Strings()
        self.timeline = Timeline(self.rng)
        self.writer = Writer(con, summary, _kind_columns(self.strings), graph_level)
        self.nvtx: list[tuple[Any, ...]] = []
        self.cccl_created = False
        self.measured_step = 0
        self.names = {n: self.strings.id(n) for n in ("warmup", "image", "vision", "prefill")}
        self.names |= {n: self.strings.id(n) for n in ("decode", "decode_step")}
        self.vision = compile_block(vision_block(plan.vision_kernels), self.strings, self.rng)
        self.prefill = compile_block(prefill_block(plan.prefill_kernels), self.strings, self.rng)
        self.steps: dict[int, Block] = {}
        before, load, tail = _init_blocks()
        self.before = compile_block(before, self.strings, self.rng)
        self.load = compile_block(load, self.strings, self.rng)
        self.tail = compile_block(tail, self.strings, self.rng)
        bg_in, bg_out = _bg_blocks()
        self.bg_in = compile_block(bg_in, self.strings, self.rng)
        self.bg_out = compile_block(bg_out, self.strings, self.rng)

    def step_block(self, n_kernels: int) -> Block:
        """The compiled decode step with `n_kernels` kernels (a few sizes only)."""
        if n_kernels not in self.steps:
            spec = decode_step_block(n_kernels)
            self.steps[n_kernels] = compile_block(spec, self.strings, self.rng)
        return self.steps[n_kernels]

    def gap(self, lo_us: float = 1.0, hi_us: float = 3.0) -> float:
        """CPU time between a range push/pop and the next event."""
        return float(np.round(self.rng.uniform(lo_us * US, hi_us * US)))

    def ours(self, start: float, end: float, name: str, payload: int | None = None) -> None:
        """A push/pop range of ours: registered name, our domain, as the `nvtx` package writes."""
        self.nvtx.append(
            _nvtx_row(
                int(start),
                int(end),
                59,
                MAIN_GTID,
                text_id=self.names[name],
                domain=DOMAIN_ID,
                color=RANGE_COLOR,
                payload=payload,
            )
        )

    def run_main(self, block: Block, t0: float) -> Run:
        """Simulate a main-thread block and record its CCCL ranges."""
        run = self.writer.add(self.timeline.run(block, t0, MAIN_GTID, MAIN_STREAM))
        if len(block.lib_first):
            self._library_ranges(run)
        return run

    def _library_ranges(self, run: Run) -> None:
        b = run.block
        n = len(b.lib_first)
        push = run.api_start[b.lib_first] - self.rng.integers(300, 900, n)
        pop = run.api_end[b.lib_last] + self.rng.integers(300, 900, n)
        if not self.cccl_created:
            self.cccl_created = True
            self.nvtx.append(
                _nvtx_row(
                    int(push[0]) - 2_000, None, 75, MAIN_GTID, text="CCCL", domain=CCCL_DOMAIN_ID
                )
            )
        for s, e, name in zip(push.tolist(), pop.tolist(), b.lib_name.tolist(), strict=True):
            self.nvtx.append(_nvtx_row(s, e, 59, MAIN_GTID, text_id=name, domain=CCCL_DOMAIN_ID))

    def image(
        self, t: float, payload: int, n_steps: int, context0: int, measured: bool
    ) -> tuple[float, ImageTiming]:
        """One image: vision, prefill, decode steps; returns the CPU time after its pop."""
        image_start = t
        t += self.gap()
        vision_start = t
        if measured:  # first, so that the vision stage's device sync waits for it too
            self.background(vision_start + self.gap(50.0, 200.0))
        vision = self.run_main(self.vision, t + self.gap())
        t = float(vision.api_end[-1]) + self.gap()
        self.ours(vision_start, t, "vision")
        walls = {"vision": (t - vision_start) / 1e9}
        t += self.gap()
        prefill_start = t
        prefill = self.run_main(self.prefill, t + self.gap())
        t = float(prefill.api_end[-1]) + self.gap()
        self.ours(prefill_start, t, "prefill")
        walls["prefill"] = (t - prefill_start) / 1e9
        t += self.gap()
        decode_start = t
        step_walls = []
        for k in range(1, n_steps + 1):
            if measured:
                n_kernels = self.plan.step_kernels(self.measured_step)
                self.measured_step += 1
            else:
                n_kernels = self.plan.kernels_per_step
            step_start = t + self.gap()
            run = self.run_main(self.step_block(n_kernels), step_start + self.gap())
            t = float(run.api_end[-1]) + self.gap()
            self.ours(step_start, t, "decode_step", payload=context0 + k)
            step_walls.append((t - step_start) / 1e9)
        t += self.gap()
        self.ours(decode_start, t, "decode")
        walls["decode"] = (t - decode_start) / 1e9
        t += self.gap()
        self.ours(image_start, t, "image", payload=payload)
        return t + self.gap(), ImageTiming(walls, step_walls)

    def background(self, t: float) -> None:
        """The second thread: its own range and stream, overlapping the vision stage."""
        inside = self.writer.add(self.timeline.run(self.bg_in, t + self.gap(), BG_GTID, BG_STREAM))
        end = float(inside.api_end[-1]) + self.gap()
        self.nvtx.append(_nvtx_row(int(t), int(end), 59, BG_GTID, text="prefetch_next_image"))
        self.writer.add(self.timeline.run(self.bg_out, end + self.gap(), BG_GTID, BG_STREAM))

    def generate(self) -> dict[str, Any]:
        """Write every row; returns the run metadata that the mark carries."""
        plan = self.plan
        lp = IMAGE_POSITIONS + PROMPT_TEXT_TOKENS
        t = float(TRACE_START_NS)
        before = self.run_main(self.before, t)
        t = float(before.api_end[-1]) + self.gap(20.0, 40.0)
        load_start = t
        load = self.run_main(self.load, t + self.gap())
        t = float(load.api_end[-1]) + self.gap()
        self.nvtx.append(
            _nvtx_row(int(load_start), int(t), 60, MAIN_GTID, text="load_model", range_id=1)
        )
        t += self.gap(50.0, 100.0)
        self.nvtx.append(_nvtx_row(int(t), None, 75, MAIN_GTID, text=DOMAIN, domain=DOMAIN_ID))
        t += self.gap()
        for r in range(WARMUP_ROUNDS):
            warmup_start = t
            t, _ = self.image(t + self.gap(), r, WARMUP_NEW_TOKENS - 1, lp, measured=False)
            self.ours(warmup_start, t, "warmup")
            t += self.gap()
        self.writer.flush()
        images = []
        for i in range(plan.n_images):
            t, timing = self.image(t, i, plan.decode_steps, lp, measured=True)
            images.append(timing)
            self.writer.flush()
        meta = self.run_meta(images, t)
        mark_id = self.strings.id(json.dumps(meta, separators=(",", ":")))
        self.nvtx.append(
            _nvtx_row(
                int(t), None, 34, MAIN_GTID, text_id=mark_id, domain=DOMAIN_ID, color=RANGE_COLOR
            )
        )
        tail = self.run_main(self.tail, t + self.gap(10.0, 20.0))
        self.writer.flush()
        t = float(tail.api_end[-1]) + self.gap(100.0, 200.0)
        self.nvtx.append(_nvtx_row(int(t), None, 76, MAIN_GTID, domain=DOMAIN_ID))
        self.nvtx.sort(key=lambda row: row[0])
        self.writer.con.executemany(
            f"INSERT INTO NVTX_EVENTS VALUES ({', '.join('?' * 20)})", self.nvtx
        )
        self.writer.summary.n_nvtx = len(self.nvtx)
        self.writer.summary.duration_ns = int(t) - TRACE_START_NS
        return meta

    def run_meta(self, images: list[ImageTiming], end_ns: float) -> dict[str, Any]:
        """The `llm_perf_opt.run_meta/1` JSON, consistent with the ranges just written."""
        plan = self.plan
        lp = IMAGE_POSITIONS + PROMPT_TEXT_TOKENS
        created = datetime.fromtimestamp((SESSION_START_UTC_NS + end_ns) / 1e9, tz=UTC)
        config = builtin_config("deepseek-ocr").to_dict()
        return {
            "schema": "llm_perf_opt.run_meta/1",
            "run_id": str(uuid.UUID(bytes=self.rng.bytes(16), version=4)),
            "tool_version": __version__,
            "created_utc": created.isoformat(timespec="seconds").replace("+00:00", "Z"),
            "nvtx_domain": DOMAIN,
            "nvtx_enabled": True,
            "model": {
                "name": "deepseek-ocr",
                "family": "deepseek-ocr",
                "tiny": False,
                "config": config,
                "hf_config": {  # stand-in: the real one is transformers' to_dict()
                    "model_type": "deepseek_vl_v2",
                    "sam_config": config["sam"],
                    "clip_config": config["clip"],
                    "text_config": config["text"],
                },
                "n_params": N_PARAMS,
                "random_weights": True,
                "attn_implementation": "sdpa",
                "experts_implementation": "eager",
                "sdpa_cudnn": False,
            },
            "dtype": "bfloat16",
            "device": {"type": "cuda", "name": GPU_NAME},
            "mode": "base",
            "context": {"context_len_mode": "auto", "context_len_fixed": None},
            "warmup": {
                "rounds": WARMUP_ROUNDS,
                "synthetic": True,
                "max_new_tokens": WARMUP_NEW_TOKENS,
            },
            "max_new_tokens": plan.max_new_tokens,
            "prompt_text_tokens": PROMPT_TEXT_TOKENS,
            "seed": self.seed,
            "versions": {"python": "3.12.3", "torch": "2.11.0+cu130", "transformers": "5.17.0"},
            "images": [
                {
                    "index": i,
                    "source": "synthetic",
                    "width": IMAGE_SIDE_PX,
                    "height": IMAGE_SIDE_PX,
                    "mode": "base",
                    "crop_grid": None,
                    "n_crops": 0,
                    "vision_tokens": VISION_TOKENS,
                    "image_positions": IMAGE_POSITIONS,
                    "prefill_len": lp,
                    "decode_steps": plan.decode_steps,
                    "decode_context_lens": [lp + k for k in range(1, plan.decode_steps + 1)],
                    "wall_s": timing.wall_s,
                    "decode_step_wall_s": timing.decode_step_wall_s,
                    "generated_token_ids": self.rng.integers(
                        0, VOCAB_SIZE, plan.max_new_tokens
                    ).tolist(),
                }
                for i, timing in enumerate(images)
            ],
        }


def _metadata_rows(con: sqlite3.Connection, path: Path, duration_ns: int, strings: Strings) -> None:
    """Export/capture metadata, device, process and thread tables, as a real export has them."""
    export = [
        ("EXPORT_PRODUCT_NAME", "NVIDIA Nsight Systems"),
        ("EXPORT_PRODUCT_VERSION", "2025.3.2.0"),
        ("EXPORT_PRODUCT_DATE", "2025.3"),
        ("EXPORT_SCHEMA_VERSION", "3.20.3"),
        ("EXPORT_SCHEMA_VERSION_MAJOR", "3"),
        ("EXPORT_SCHEMA_VERSION_MINOR", "20"),
        ("EXPORT_SCHEMA_VERSION_MICRO", "3"),
        ("EXPORT_SCHEMA_VERSION_CKSUM", "4021079525 170230"),
        ("EXPORT_PLATFORM", "linux-desktop"),
        ("EXPORT_ARCH", "x64"),
        ("EXPORT_HOST", "llm_perf_opt-gen_trace"),
        ("EXPORT_USER", ""),
        ("EXPORT_PARAM_INPUT_FILE", path.with_suffix(".nsys-rep").name),
        ("EXPORT_PARAM_OUTPUT_FILE", path.name),
        ("EXPORT_PARAM_LAZY", "true"),
        ("EXPORT_PARAM_TIME_NORMALIZE", "false"),
        ("EXPORT_PARAM_TIME_SHIFT", "0"),
    ]
    con.executemany("INSERT INTO META_DATA_EXPORT VALUES (?, ?)", export)
    capture = [
        ("DEVICE_ID", "Local (CLI)"),
        ("CAPTURE_EVENT_TYPE", "NvtxEvents"),
        ("CAPTURE_EVENT_TYPE", "Cuda"),
        ("PROCESS_0:COMMAND", "python3"),
        ("PROCESS_0:ARGUMENT_0", "scripts/run_dsocr.py"),
        ("PROCESS_0:COLLECT_NVTX_TRACE", "true"),
        ("PROCESS_0:COLLECT_CUDA_TRACE", "true"),
        ("PROCESS_0:CUDA_GRAPH_TRACE_OPTIONS:MODE", "Node"),
    ]
    con.executemany("INSERT INTO META_DATA_CAPTURE VALUES (?, ?)", capture)
    vm = 1 << 48
    start_ns = TRACE_START_NS - 600_000_000
    stop_ns = TRACE_START_NS + duration_ns + 100_000_000
    con.execute(
        "INSERT INTO ANALYSIS_DETAILS VALUES (?, ?, ?, ?)",
        (vm, stop_ns - start_ns, start_ns, stop_ns),
    )
    utc = datetime.fromtimestamp(SESSION_START_UTC_NS / 1e9, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S")
    con.execute(
        "INSERT INTO TARGET_INFO_SESSION_START_TIME VALUES (?, ?, ?)",
        (SESSION_START_UTC_NS, utc, utc),
    )
    con.execute(
        "INSERT INTO TARGET_INFO_GPU VALUES (?, 0, ?, '0000:00:06.0', 1, 52428800, 85017493504, "
        "3352320000000, 1980000000, 132, 0, 'd8081a7a-935c-5a61-2362-e5b3aa0a0403', 0, 'GH100', "
        "0, '', '', 161, 0, 65536, 0, 65536, 49152, 232448, 233472, 65536, 32, 3, 64, 32, 1024, "
        "1024, 1024, 64, 2147483647, 65535, 65535, 9, 0, 9, 0)",
        (vm, GPU_NAME),
    )
    con.execute("INSERT INTO TARGET_INFO_CUDA_DEVICE VALUES (0, 0, ?)", (PID,))
    con.execute(
        "INSERT INTO TARGET_INFO_CUDA_CONTEXT_INFO VALUES (?, 0, 1, ?, 0, 1, 0, 0)",
        (MAIN_STREAM, PID),
    )
    con.executemany(
        "INSERT INTO TARGET_INFO_CUDA_STREAM VALUES (?, 0, 1, ?, 1, ?, ?)",
        [(MAIN_STREAM, PID, 0, 3), (BG_STREAM, PID, 0, 2)],
    )
    others = [(PID - 12, "nsys-launcher"), (PID - 3, "nsys"), (PID - 2, "timeout")]
    con.executemany(
        "INSERT INTO PROCESSES VALUES (?, ?, ?)",
        [(GLOBAL_PID, PID, "python3")] + [((1 << 48) | (p << 24), p, n) for p, n in others],
    )
    threads = [
        (strings.id("python3"), 20, MAIN_GTID),
        (strings.id("[NSys]"), 10, GLOBAL_PID | (PID + 10)),
        (strings.id("CUPTI worker thread"), 10, GLOBAL_PID | (PID + 29)),
        (strings.id("python3"), 20, BG_GTID),
    ]
    con.executemany("INSERT INTO ThreadNames VALUES (?, ?, ?)", threads)
    node_name = strings.id("Graph Node Creation")
    graph_events: list[tuple[int, int, int, int, int, int, int | None]] = []
    for node in range(GRAPH_NODES):
        t = TRACE_START_NS + 1_000_000 + node * 40_000
        graph_events.append((t, t, 77, MAIN_GTID, node_name, (1 << 32) + node, None))
        graph_events.append(
            (
                t + 5_000_000,
                t + 5_000_000,
                77,
                MAIN_GTID,
                node_name,
                GRAPH_NODE_ID_BASE + node,
                (1 << 32) + node,
            )
        )
    con.executemany("INSERT INTO CUDA_GRAPH_NODE_EVENTS VALUES (?, ?, ?, ?, ?, ?, ?)", graph_events)


def generate(
    path: str | Path, n_kernels: int, seed: int = 0, *, graph_level: bool = False
) -> Summary:
    """Write an nsys-schema SQLite export with exactly `n_kernels` kernel rows to `path`.

    With `graph_level` the CUDA-graph replays are written as graph-level rows instead of their
    node kernels (same seed, same times otherwise), so the file has fewer kernel rows. The file
    is built next to `path` and renamed into place when complete.

    Raises:
        ValueError: `n_kernels` is too small for the trace's structure.
    """
    began = time.perf_counter()
    path = Path(path)
    plan = plan_trace(n_kernels)
    partial = path.with_name(path.name + ".partial")
    partial.unlink(missing_ok=True)
    summary = Summary(path=path, plan=plan)
    con = sqlite3.connect(partial, isolation_level=None)
    try:
        con.execute("PRAGMA journal_mode=OFF")
        con.execute("PRAGMA synchronous=OFF")
        con.execute("PRAGMA cache_size=-262144")
        con.executescript(SCHEMA_SQL.read_text(encoding="utf-8"))
        if graph_level:
            con.executescript(GRAPH_TRACE_SQL.read_text(encoding="utf-8"))
        con.execute("BEGIN")
        gen = Generator(plan, seed, con, summary, graph_level)
        summary.meta = gen.generate()
        _metadata_rows(con, path, summary.duration_ns, gen.strings)
        con.executemany(
            "INSERT INTO StringIds VALUES (?, ?)", ((i, s) for s, i in gen.strings.ids.items())
        )
        con.execute("COMMIT")
    finally:
        con.close()
    os.replace(partial, path)
    summary.seconds = time.perf_counter() - began
    return summary


def parse_count(text: str) -> int:
    """Parse `1e6`, `1000000` or `1_000_000`."""
    value = float(text.replace("_", ""))
    if value != int(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"not a positive whole number: {text}")
    return int(value)


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: generate one trace and print what was written."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kernels", type=parse_count, required=True, help="kernel rows, e.g. 1e6")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--cuda-graph-trace",
        choices=("node", "graph"),
        default="node",
        help="how graph replays are recorded, as nsys's option of that name (default: node)",
    )
    parser.add_argument("-o", "--output", type=Path, required=True, help="the .sqlite to write")
    args = parser.parse_args(argv)
    try:
        summary = generate(
            args.output, args.kernels, args.seed, graph_level=args.cuda_graph_trace == "graph"
        )
    except ValueError as exc:
        parser.error(str(exc))
    size_mb = summary.path.stat().st_size / 1e6
    plan = summary.plan
    print(
        f"{summary.path}: {summary.n_kernels} kernels, {summary.n_memcpy} memcpy, "
        f"{summary.n_memset} memset, {summary.n_graph_replays} graph-level replays, "
        f"{summary.n_api} API calls, {summary.n_nvtx} NVTX events; "
        f"{plan.n_images} images x {plan.decode_steps} decode steps of ~{plan.kernels_per_step} "
        f"kernels; {summary.duration_ns / 1e9:.1f} s of trace, {size_mb:.0f} MB, "
        f"written in {summary.seconds:.1f} s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
