"""Blocks compiled to arrays and simulated in time: calls back to back, GPU ops queued per stream.

Syncing calls return only after the GPU work queued before them; the whole simulation is numpy
over a block's slots, with durations drawn from the generator's one random stream.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from benchmarks.gen_trace.plan import BG_STREAM, MAIN_STREAM, US
from benchmarks.gen_trace.workload import (
    API_CLASS,
    GRAPH_NODE_KINDS,
    GRAPH_NODE_US,
    KIND_INDEX,
    OP_GRAPH,
    OP_KERNEL,
    OP_NONE,
    BlockSpec,
)

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]


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
