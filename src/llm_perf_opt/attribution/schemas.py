"""What the attribution fold takes and returns: declared frames, its error, its memory budget."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import polars as pl

from llm_perf_opt.attribution.rule import ATTRIBUTED_BY, UNATTRIBUTED_REASON
from llm_perf_opt.errors import ConfigError, TraceError
from llm_perf_opt.trace import (
    API_CALL_BATCH_SCHEMA,
    API_CALLS_SCHEMA,
    GPU_OPS_SCHEMA,
    LEAN_DROPS,
    OP_KINDS,
)

# Inputs: batches of `Trace.gpu_ops(lean=True)` and `Trace.launch_calls()`, each in start order.
OP_BATCH_SCHEMA: Final = pl.Schema({k: v for k, v in GPU_OPS_SCHEMA.items() if k not in LEAN_DROPS})
CALL_BATCH_SCHEMA: Final = pl.Schema(
    {k: API_CALLS_SCHEMA[k] for k in ("global_tid", "correlation_id", "start_ns")}
)
# Input of `HostViewStream`: batches of `Trace.api_call_batches`, in start order.
HOST_CALL_BATCH_SCHEMA: Final = API_CALL_BATCH_SCHEMA
# Which group of ranges each range's exclusive kernels count for in `top_kernels` (a stage: its
# instance ranges). A range belongs to one group at most.
GROUPS_SCHEMA: Final = pl.Schema({"range_id": pl.Int64, "group": pl.String})

# Outputs beside the ranges frame (`rule.RANGES_SCHEMA`).
# `Attribution.unattributed()`: ops with no selected range, by reason.
UNATTRIBUTED_SCHEMA: Final = pl.Schema(
    {
        "reason": pl.String,
        "n_gpu_ops": pl.UInt32,
        "kernel_sum_ns": pl.Int64,
        "duration_sum_ns": pl.Int64,
    }
)
# Per range with exclusive kernels or graph executions (what `mfu._kernel_stats` counts).
LAUNCH_KINDS_SCHEMA: Final = pl.Schema(
    {
        "range_id": pl.Int64,
        "n_kernels": pl.Int64,
        "n_graph_ops": pl.Int64,
        "graph_sum_ns": pl.Int64,
    }
)
# Per group and kernel name (or CUDA graph traced whole, `graph_key`): what `mfu._top_kernels`
# ranks, every entry (a group's share denominator is the sum of its `total_ns`).
TOP_KERNELS_SCHEMA: Final = pl.Schema(
    [
        ("group", pl.String),
        *((c, GPU_OPS_SCHEMA[c]) for c in ("kind", "name_id")),
        ("graph_key", GPU_OPS_SCHEMA["graph_id"]),
        ("count", pl.Int64),
        ("total_ns", pl.Int64),
    ]
)
# Per decode-step window (`gpu_view.STEP_GROUP`) and kernel name or graph: the kernel entries
# of the window's ops, for a step's kernel categories.
STEP_KERNELS_SCHEMA: Final = pl.Schema(
    [("window_id", pl.Int64), *((k, v) for k, v in TOP_KERNELS_SCHEMA.items() if k != "group")]
)
# Every op of the trace per kernel name, graph or copy/memset kind: the whole-trace view's entries.
TRACE_KERNELS_SCHEMA: Final = pl.Schema(
    [(k, v) for k, v in TOP_KERNELS_SCHEMA.items() if k != "group"]
)
# Ops with a range, per device (the GPU that ran most of the attributed work names the peak).
DEVICE_OPS_SCHEMA: Final = pl.Schema({"device_id": pl.Int32, "n_ops": pl.Int64})
# Every op counted, by kind (graph executions traced whole get a report line).
KIND_OPS_SCHEMA: Final = pl.Schema({"kind": OP_KINDS, "n_ops": pl.Int64})  # type: ignore[arg-type]
# The GPU view per window and group: `gpu_view.GPU_WINDOWS_SCHEMA`, `gpu_view.GPU_GROUPS_SCHEMA`.

# Each op's assignment (`attribute_stream(..., keep_ops=True)`): what `Attribution.ops` adds to
# the reader's op columns. Covered graph-level rows are left out (rule 1).
OP_ASSIGNMENT_SCHEMA: Final = pl.Schema(
    {  # type: ignore[arg-type]  # mypy widens the mixed dtype values to object
        "op_id": pl.Int64,
        "launch_tid": pl.Int64,
        "launch_ns": pl.Int64,
        "range_id": pl.Int64,
        "attributed_by": ATTRIBUTED_BY,
        "unattributed_reason": UNATTRIBUTED_REASON,
    }
)

# Per-op labels, as `Attribution.ops` has them.
REASONS: Final = tuple(UNATTRIBUTED_REASON.categories.to_list())
ATTRIBUTED_BY_LABELS: Final = tuple(ATTRIBUTED_BY.categories.to_list())

# Working set of one op row through a pass (the batch, its launch columns, the (range, op) pairs
# of a few nesting levels and their sort), and of one call row (its batch and its place in the
# window of live calls), measured on generated traces (benchmarks/bench_onepass.py).
BYTES_PER_OP_ROW: Final = 1_000
BYTES_PER_CALL_ROW: Final = 100
BYTES_PER_LIVE_CALL: Final = 64
BYTES_PER_LATENCY_ROW: Final = 48  # (window, latency, count) and its copy when summed
# (range, op) pairs summed at once, per op of a batch: a few nesting levels; reading whole
# tables, pairs are summed this many at a time.
PAIRS_PER_OP: Final = 4
WHOLE_PAIR_ROWS: Final = 2_000_000
DEFAULT_MEMORY_BUDGET_BYTES: Final = 256 << 20
MIN_MEMORY_BUDGET_BYTES: Final = 1 << 20
# The smallest --memory-budget the CLI uses (a smaller one is raised to it, with a note): below
# it batches are so small that per-batch work dominates (a 10^6-kernel trace: 85 s at 1 MiB,
# 19-30 s from 4 MiB to 256 MiB on the shared 2-core machine, the same JSON).
MEMORY_BUDGET_FLOOR_BYTES: Final = 16 << 20
# The most op rows (and call rows) a batch holds, whatever the budget: larger batches only cost
# memory (a 10^7-kernel trace in one batch: 53 s and 7.5 GB, against 29 s and 0.57 GB in batches
# of a 256 MiB budget, benchmarks/bench_analysis.py).
MAX_BATCH_ROWS: Final = 1 << 20


class StreamOrderError(TraceError):
    """The GPU ops or CUDA API calls cannot be folded in batches (out of order, or a launch call
    that the window of recent calls no longer holds); `attribute_whole` can fold them."""


@dataclass(frozen=True)
class StreamBudget:
    """Rows held at once, from a memory budget in bytes: half for an op batch and its pairs, a
    sixteenth for a piece of call batch (each at most `MAX_BATCH_ROWS`), a quarter for the window
    of recent launch calls (six pieces), an eighth for ops that wait (a CUDA graph row until its
    replay ends, ops without a call yet), an eighth for the launch latencies of open windows
    before they are summed."""

    op_batch_rows: int
    call_batch_rows: int
    live_calls: int
    waiting_ops: int
    latency_rows: int
    # (range, op) pairs summed at once: a few nesting levels per op of a batch
    pair_rows: int

    @classmethod
    def of(cls, memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET_BYTES) -> StreamBudget:
        """The budget split into rows (at least a few of each).

        Raises:
            ConfigError: a budget below `MIN_MEMORY_BUDGET_BYTES`.
        """
        if memory_budget_bytes < MIN_MEMORY_BUDGET_BYTES:
            raise ConfigError(
                f"a memory budget of {memory_budget_bytes} bytes is too small: give at least "
                f"{MIN_MEMORY_BUDGET_BYTES} bytes (1 MiB)"
            )
        op_rows = min(memory_budget_bytes // 2 // BYTES_PER_OP_ROW, MAX_BATCH_ROWS)
        return cls(
            op_batch_rows=op_rows,
            call_batch_rows=min(memory_budget_bytes // 16 // BYTES_PER_CALL_ROW, MAX_BATCH_ROWS),
            live_calls=memory_budget_bytes // 4 // BYTES_PER_LIVE_CALL,
            waiting_ops=memory_budget_bytes // 8 // BYTES_PER_OP_ROW,
            latency_rows=memory_budget_bytes // 8 // BYTES_PER_LATENCY_ROW,
            pair_rows=op_rows * PAIRS_PER_OP,
        )

    @classmethod
    def whole(cls, ops: int, calls: int) -> StreamBudget:
        """Whole tables of `ops` and `calls` rows in one batch each, nothing evicted; (range,
        op) pairs still summed `WHOLE_PAIR_ROWS` at a time."""
        ops, calls = max(ops, 1), max(calls, 1)
        return cls(ops, calls, calls, ops, ops, WHOLE_PAIR_ROWS)
