"""The attribution rule, and the frames it declares: which NVTX ranges a GPU op belongs to.

`attribution.fold` applies the rule to ops in start order (one pass over batches, or the whole
tables at once); this module says what it computes:

1. A GPU op (kernel, memcpy, memset, or a CUDA graph execution traced whole) is joined to its
   launching CUDA API call on `(globalPid, correlationId)`; CUDA-graph node kernels and the
   graph-level row of a replay share their `cudaGraphLaunch` call. A graph-level row whose launch
   also has node rows (kernel, memcpy or memset of the same `(globalPid, correlationId)`) is
   dropped: the node rows are the finer record of the same GPU time, which must count once.
2. **Inclusive**: the op belongs to every NVTX range on the launching thread whose CPU interval
   `[start, end]` contains the call's start — the whole push/pop stack, as NVIDIA's `nvtxgpuproj`
   and `nvtxkernsum` count it. Open ranges end at the end of the trace.
3. **Exclusive**: the op belongs only to the innermost *selected* range among those (the one that
   started last; nested push/pop ranges make this the deepest). Library ranges left out of the
   selection (CCCL, `aten::`) therefore do not take kernels away from the stage around them.
4. Ops with no launch call, launched on a thread outside every range, or outside every selected
   range, keep a null `range_id`: they are reported as unattributed, never dropped.
5. Opt-in heuristic (`other_threads=True`): an op launched on a thread where no range contains the
   call is given to the innermost selected range of *another* thread of the same process that
   contains the call's start in time. This is a guess (a worker thread launching on behalf of the
   main thread) and is labelled as such in `ops.attributed_by`.

Per range: `n_gpu_ops` (launching calls with GPU work, NVIDIA's `NumGPUOps`: a CUDA graph launch
counts once; `n_op_rows` counts every op row), projected start (first op start)
and duration (last op end − first op start: a span, idle gaps included), `kernel_sum_ns`
(kernels only, as `nvtxkernsum`; graph executions not), `gpu_busy_ns` (the union of all op
intervals per device, graph executions included,
summed over devices, so overlapping ops are not counted twice), and the same three sums for
exclusive ops. All work is columnar: sorted searches over whole batches, no Python loop per op
or per range.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import numpy as np
import polars as pl

from llm_perf_opt.attribution.nesting import (
    with_structure,
)
from llm_perf_opt.errors import SelectionError
from llm_perf_opt.trace import (
    GPU_OPS_SCHEMA,
    NVTX_RANGES_SCHEMA,
)

# Per-op labels as enums: one byte-sized code per op instead of a string.
ATTRIBUTED_BY: Final = pl.Enum(["launch_thread", "other_thread_time"])
UNATTRIBUTED_REASON: Final = pl.Enum(
    ["no_launch_call", "outside_any_range", "outside_selected_ranges"]
)

# Per range: launching calls with GPU work, op rows, kernel time, busy union; inclusive, and with
# this prefix exclusive.
RANGE_STATS: Final = ("n_gpu_ops", "n_op_rows", "kernel_sum_ns", "gpu_busy_ns")
EXCLUSIVE: Final = "excl_"
# `Attribution.ranges`: the reader's range columns (`event_id` as `range_id`), the nesting, and
# the statistics.
RANGES_SCHEMA: Final = pl.Schema(
    {  # type: ignore[arg-type]  # mypy widens the mixed dtype values to object
        "range_id": pl.Int64,
        **{c: t for c, t in NVTX_RANGES_SCHEMA.items() if c != "event_id"},
        "cpu_start_ns": pl.Int64,
        "cpu_duration_ns": pl.Int64,
        "depth": pl.Int64,
        "parent_id": pl.Int64,
        "path": pl.String,
        "selected": pl.Boolean,
        **dict.fromkeys(RANGE_STATS, pl.Int64),
        "proj_start_ns": pl.Int64,
        **dict.fromkeys((f"{EXCLUSIVE}{c}" for c in RANGE_STATS), pl.Int64),
        "proj_duration_ns": pl.Int64,
    }
)
# `Attribution.ops`: the reader's op columns (the last three only where the reader gave them),
# the launching thread and call, and the assignment.
READER_OP_COLUMNS: Final = (
    "op_id", "kind", "device_id", "stream_id", "start_ns", "end_ns", "name_id", "correlation_id",
    "graph_id", "graph_node_id", "bytes",
)  # fmt: skip
OPS_SCHEMA: Final = pl.Schema(
    {  # type: ignore[arg-type]  # mypy widens the mixed dtype values to object
        **{c: GPU_OPS_SCHEMA[c] for c in READER_OP_COLUMNS},
        "pid": pl.Int32,
        "tid": pl.Int32,
        "launch_ns": pl.Int64,
        "range_id": pl.Int64,
        "attributed_by": ATTRIBUTED_BY,
        "unattributed_reason": UNATTRIBUTED_REASON,
    }
)
OPS_OPTIONAL: Final = ("graph_id", "graph_node_id", "bytes")

RANGES_OUT_COLUMNS: Final = (
    "name",
    "domain",
    "style",
    "pid",
    "tid",
    "depth",
    "range_id",
    "parent_id",
    "cpu_start_ns",
    "cpu_duration_ns",
    "n_gpu_ops",
    "proj_start_ns",
    "proj_duration_ns",
    "kernel_sum_ns",
    "gpu_busy_ns",
    "excl_n_gpu_ops",
    "excl_kernel_sum_ns",
    "excl_gpu_busy_ns",
)


@dataclass(frozen=True)
class RangeSelection:
    """Which ranges take ops in exclusive attribution: a name list and/or a domain list.

    A range is selected when its name is in `names` (or `names` is None) and its domain is in
    `domains` (or `domains` is None). Names are matched without the domain prefix.
    """

    names: tuple[str, ...] | None = None
    domains: tuple[str, ...] | None = None

    def expr(self) -> pl.Expr:
        """Boolean expression over a ranges frame: true for selected ranges."""
        expr = pl.lit(True)
        if self.names is not None:
            expr = expr & pl.col("name").is_in(list(self.names))
        if self.domains is not None:
            expr = expr & pl.col("domain").is_in(list(self.domains))
        return expr


def range_frame(ranges: pl.DataFrame, selection: RangeSelection | None = None) -> pl.DataFrame:
    """`RANGES_SCHEMA` before any op is counted (structure, `path`, `selected`; every count 0,
    spans null): what the fold fills, and what the windows and groups it sums are chosen from.

    Raises:
        SelectionError: the selection matches no range.
    """
    selection = selection or RangeSelection()
    ranges = with_structure(ranges).with_columns(selected=selection.expr())
    if selection != RangeSelection() and not ranges["selected"].any():
        raise SelectionError(
            f"no NVTX range matches the selection (names={selection.names}, "
            f"domains={selection.domains}); names present: "
            f"{', '.join(sorted(set(ranges['name'].to_list()))[:20])}"
        )
    zeros = (*RANGE_STATS, *(f"{EXCLUSIVE}{c}" for c in RANGE_STATS))
    return conformed(
        ranges.with_columns(
            *(pl.lit(0, pl.Int64).alias(c) for c in zeros),
            proj_start_ns=pl.lit(None, pl.Int64),
            proj_duration_ns=pl.lit(None, pl.Int64),
        ).sort("range_id"),
        RANGES_SCHEMA,
    )


def conformed(
    frame: pl.DataFrame, schema: pl.Schema, optional: tuple[str, ...] = ()
) -> pl.DataFrame:
    """`frame` as `schema` declares it: its columns in that order (an `optional` one only where
    present), each cast to its type; a column missing is an error of this module."""
    names = [c for c in schema.names() if c not in optional or c in frame.columns]
    return frame.select(names).cast({c: schema[c] for c in names})


def launch_slices(
    ranges: pl.DataFrame, launched: pl.DataFrame
) -> tuple[np.ndarray, np.ndarray, pl.Series]:
    """Per range, the slice `[lo, hi)` of `launched` (sorted by thread, launch time) holding the
    ops it contains, found by two binary searches per range; and per op whether any range on its
    own thread contains it."""
    tids = launched["launch_tid"].fill_null(-1).to_numpy()
    times = launched["launch_ns"].fill_null(-1).to_numpy()
    valid = ~launched["launch_tid"].is_null().to_numpy()
    lo = np.zeros(ranges.height, dtype=np.int64)
    hi = np.zeros(ranges.height, dtype=np.int64)
    range_tids = ranges["global_tid"].to_numpy()
    starts = ranges["start_ns"].to_numpy()
    ends = ranges["end_ns"].to_numpy()
    # thread segments of the sorted launches: a loop over threads, not over ranges or ops
    uniq, first = np.unique(tids[valid], return_index=True)
    last = np.append(first[1:], int(valid.sum()))[: len(first)]
    for tid, a, b in zip(uniq.tolist(), first.tolist(), last.tolist(), strict=True):
        rows = np.flatnonzero(range_tids == tid)
        if rows.size == 0:
            continue
        seg = times[a:b]
        lo[rows] = a + np.searchsorted(seg, starts[rows], side="left")
        hi[rows] = a + np.searchsorted(seg, ends[rows], side="right")
    hi = np.maximum(hi, lo)
    covered = np.zeros(launched.height + 1, dtype=np.int64)
    np.add.at(covered, lo, 1)
    np.add.at(covered, hi, -1)
    has_range = np.cumsum(covered)[:-1] > 0
    return lo, hi, pl.Series("has_own_range", has_range)
