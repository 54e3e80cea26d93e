"""Attribute GPU operations to the NVTX ranges that launched them.

The rule, in one place:

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
exclusive ops. All work is columnar: sorted searches and joins over whole tables, no Python loop
per op or per range.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Final

import numpy as np
import polars as pl

from llm_perf_opt.errors import SelectionError
from llm_perf_opt.intervals import chunk_bounds, first_match, sorted_by, union_parts
from llm_perf_opt.nesting import (
    ancestor_members,
    innermost_containing,
    selected_chain,
    with_structure,
)
from llm_perf_opt.trace import (
    GPU_OPS_SCHEMA,
    NVTX_RANGES_SCHEMA,
    Trace,
    pid_of,
    process_key,
    tid_of,
)

# What attribution needs of an op, in launch order (`row`: its position in the ops frame).
LAUNCH_COLUMNS: Final = (
    "row", "launch_tid", "launch_ns", "global_pid", "device_id", "start_ns", "end_ns", "kind",
    "is_kernel", "first_of_launch",
)  # fmt: skip

# What per-range statistics need of an op; `first_of_launch` marks the first op of each launching
# call (ops are sorted by launch, so a CUDA graph's node kernels sit together).
STATS_COLUMNS: Final = (
    "range_id",
    "device_id",
    "start_ns",
    "end_ns",
    "is_kernel",
    "first_of_launch",
)

# (range, op) pairs expanded at once when computing inclusive statistics: bounds peak memory.
MEMBER_CHUNK_ROWS: Final = 2_000_000

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


@dataclass(frozen=True)
class Attribution:
    """Result of `attribute`: per-range statistics and the per-op assignment."""

    ranges: pl.DataFrame
    ops: pl.DataFrame

    def unattributed(self) -> pl.DataFrame:
        """Ops with no selected range, counted and timed by reason (`reason, n_gpu_ops,
        kernel_sum_ns, duration_sum_ns`)."""
        free = self.ops.filter(pl.col("range_id").is_null())
        return (
            free.group_by("unattributed_reason")
            .agg(
                n_gpu_ops=pl.len(),
                kernel_sum_ns=pl.when(pl.col("kind") == "kernel")
                .then(pl.col("end_ns") - pl.col("start_ns"))
                .sum(),
                duration_sum_ns=(pl.col("end_ns") - pl.col("start_ns")).sum(),
            )
            .select(
                pl.col("unattributed_reason").cast(pl.String).alias("reason"),
                pl.exclude("unattributed_reason"),
            )
            .sort("reason")
        )

    def ranges_out(self) -> pl.DataFrame:
        """The `--ranges-out` contract: exactly `RANGES_OUT_COLUMNS`, in order."""
        return self.ranges.select(RANGES_OUT_COLUMNS)


def attribute(
    trace: Trace, selection: RangeSelection | None = None, *, other_threads: bool = False
) -> Attribution:
    """Attribute every GPU op of `trace` to NVTX ranges (see the module docstring for the rule).

    Args:
        trace: an open export.
        selection: ranges that take ops in exclusive attribution (default: all ranges).
        other_threads: also attribute launches from range-less threads by time containment.

    Returns:
        Attribution with one row per range instance and one row per GPU op.

    Raises:
        NoNvtxEventsError, NoGpuOpsError: the export lacks ranges or GPU ops.
        SelectionError: the selection matches no range.
    """
    trace.prefetch_gpu_work()  # overlaps the NVTX read below
    ranges = trace.nvtx_ranges()
    return attribute_frames(ranges, *trace.take_gpu_work(), selection, other_threads=other_threads)


def attribute_frames(
    ranges: pl.DataFrame,
    ops: pl.DataFrame,
    calls: pl.DataFrame,
    selection: RangeSelection | None = None,
    *,
    other_threads: bool = False,
) -> Attribution:
    """`attribute` on frames shaped like `Trace.nvtx_ranges()`, `gpu_ops()` and `api_calls()`."""
    selection = selection or RangeSelection()
    ranges = with_structure(ranges)
    ranges = ranges.with_columns(selected=selection.expr())
    if selection != RangeSelection() and not ranges["selected"].any():
        raise SelectionError(
            f"no NVTX range matches the selection (names={selection.names}, "
            f"domains={selection.domains}); names present: "
            f"{', '.join(sorted(set(ranges['name'].to_list()))[:20])}"
        )
    ops, launched = _join_launches(without_covered_graph_rows(ops), calls)
    del calls  # millions of rows, no longer needed
    lean = launched.select(STATS_COLUMNS[1:])
    lo, hi, by_thread = launch_slices(ranges, launched)
    excl = _exclusive_ranges(ranges, launched)
    extra = None
    if other_threads:
        guessed = _other_thread_ranges(ranges, launched, has_own_range=by_thread)
        excl = excl.with_columns(
            attributed_by=pl.when(pl.col("range_id").is_not_null())
            .then(pl.col("attributed_by"))
            .otherwise(
                pl.when(guessed.is_not_null()).then(pl.lit("other_thread_time", ATTRIBUTED_BY))
            ),
            range_id=pl.coalesce(pl.col("range_id"), guessed),
        )
        extra = ancestor_members(ranges, lean, guessed)
    op_table = _op_table(ops, excl, by_thread)
    del ops
    inclusive = _inclusive_stats(ranges, lean, lo, hi, extra)
    exclusive = _range_stats(
        excl.filter(pl.col("range_id").is_not_null()).select(STATS_COLUMNS), prefix=EXCLUSIVE
    )
    stats = (
        ranges.join(inclusive, on="range_id", how="left")
        .join(exclusive, on="range_id", how="left")
        .with_columns(
            pl.col(*RANGE_STATS, *(f"{EXCLUSIVE}{c}" for c in RANGE_STATS)).fill_null(0),
            proj_duration_ns=pl.col("proj_end_ns") - pl.col("proj_start_ns"),
        )
        .drop("proj_end_ns")
        .sort("range_id")
    )
    return Attribution(ranges=conformed(stats, RANGES_SCHEMA), ops=op_table)


def conformed(
    frame: pl.DataFrame, schema: pl.Schema, optional: tuple[str, ...] = ()
) -> pl.DataFrame:
    """`frame` as `schema` declares it: its columns in that order (an `optional` one only where
    present), each cast to its type; a column missing is an error of this module."""
    names = [c for c in schema.names() if c not in optional or c in frame.columns]
    return frame.select(names).cast({c: schema[c] for c in names})


def without_covered_graph_rows(ops: pl.DataFrame) -> pl.DataFrame:
    """`ops` less the graph-level rows whose launch (globalPid, correlationId) also has node rows,
    so a replay traced both ways counts its GPU time once (rule 1). Only the few graph rows and
    the ops sharing their correlation ids are compared: no join over the whole table."""
    is_graph = pl.col("kind") == "graph"
    graphs = ops.filter(is_graph).select("op_id", "global_pid", "correlation_id")
    if graphs.is_empty():
        return ops
    nodes = (
        ops.filter(~is_graph, pl.col("correlation_id").is_in(graphs["correlation_id"].implode()))
        .select("global_pid", "correlation_id")
        .unique()
    )
    covered = graphs.join(nodes, on=["global_pid", "correlation_id"], how="semi")["op_id"]
    if covered.is_empty():
        return ops
    return ops.filter(~(is_graph & pl.col("op_id").is_in(covered.implode())))


def _join_launches(ops: pl.DataFrame, calls: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Join each op to its launching call: `launch_tid` (globalTid) and `launch_ns` (call start).

    Returns the ops with those two columns, in their own order, and a lean copy of what the
    attribution needs (`LAUNCH_COLUMNS`, `row` = position in the first) sorted by (launch thread,
    launch time, op_id), ops without a call last; only the lean copy is sorted, to save memory.

    Correlation ids repeat across processes, so the join is done per process; within one, ids
    are dense counters, so a lookup table indexed by id replaces a hash join (a sorted search
    when ids are too sparse for a table). Where one id has several calls, the first counts."""
    op_pid = ops["global_pid"].to_numpy()
    op_corr = ops["correlation_id"].fill_null(-1).to_numpy()
    call_pid = (calls["global_tid"].to_numpy() >> 24) << 24  # globalPid of the calling thread
    call_corr = calls["correlation_id"].fill_null(-1).to_numpy()
    pids = pl.Series(op_pid).unique().to_list()
    if len(pids) == 1 and bool(np.all(call_pid == pids[0])):  # one process: no per-process copies
        call_of_op = first_match(call_corr, None, op_corr)
    else:
        call_of_op = np.full(len(op_pid), -1, dtype=np.int64)
        for pid in pids:
            op_rows = np.flatnonzero(op_pid == pid)
            call_rows = np.flatnonzero(call_pid == pid)
            call_of_op[op_rows] = first_match(call_corr[call_rows], call_rows, op_corr[op_rows])
    del op_pid, op_corr, call_pid, call_corr
    picked = np.where(call_of_op >= 0, call_of_op, 0)
    empty = np.zeros(len(picked), np.int64)
    tids = calls["global_tid"].to_numpy()[picked] if len(calls) else empty
    starts = calls["start_ns"].to_numpy()[picked] if len(calls) else empty
    found = pl.Series(call_of_op >= 0)
    ops = ops.with_columns(
        launch_tid=pl.when(found).then(pl.Series(tids, dtype=pl.Int64)),
        launch_ns=pl.when(found).then(pl.Series(starts, dtype=pl.Int64)),
    )
    order = ops.select(
        pl.arg_sort_by("launch_tid", "launch_ns", "op_id", nulls_last=True)
    ).to_series()
    call = pl.Series(call_of_op).gather(order)
    launched = (
        ops.select(LAUNCH_COLUMNS[1:-2])
        .gather(order)
        .with_columns(
            row=order.cast(pl.Int64),
            is_kernel=pl.col("kind") == "kernel",
            first_of_launch=(call != call.shift(1)).fill_null(True),
        )
    )
    return ops, launched.select(LAUNCH_COLUMNS)


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


def _inclusive_stats(
    ranges: pl.DataFrame,
    lean: pl.DataFrame,
    lo: np.ndarray,
    hi: np.ndarray,
    extra: pl.DataFrame | None,
) -> pl.DataFrame:
    """Inclusive statistics per range from its launch slice (plus `extra` (range, op) pairs).

    The (range, op) pairs are expanded chunk by chunk, at most `MEMBER_CHUNK_ROWS` at a time, so
    memory stays bounded however deep the nesting or long the trace."""
    lengths = hi - lo
    range_ids = ranges["range_id"].to_numpy()
    bounds = chunk_bounds(lengths, MEMBER_CHUNK_ROWS)
    parts = []
    for a, b in itertools.pairwise(bounds):
        chunk_len = lengths[a:b]
        total = int(chunk_len.sum())
        offsets = np.cumsum(chunk_len) - chunk_len
        op_index = np.arange(total, dtype=np.int64) - np.repeat(offsets - lo[a:b], chunk_len)
        members = lean[op_index].with_columns(
            range_id=pl.Series(np.repeat(range_ids[a:b], chunk_len), dtype=pl.Int64)
        )
        if extra is not None:
            wanted = extra.filter(pl.col("range_id").is_in(range_ids[a:b].tolist()))
            members = pl.concat([members, wanted.select(members.columns)])
        parts.append(_range_stats(members, prefix=""))
    return pl.concat(parts)


def _exclusive_ranges(ranges: pl.DataFrame, launched: pl.DataFrame) -> pl.DataFrame:
    """`launched` with `range_id` (innermost selected range on the own thread) and
    `attributed_by`."""
    chain = selected_chain(ranges)
    queries = launched.select(q_by="launch_tid", t="launch_ns")
    innermost = innermost_containing(chain, queries, "global_tid")
    return launched.with_columns(
        range_id=innermost,
        attributed_by=pl.when(innermost.is_not_null()).then(pl.lit("launch_thread", ATTRIBUTED_BY)),
    )


def _other_thread_ranges(
    ranges: pl.DataFrame, launched: pl.DataFrame, has_own_range: pl.Series
) -> pl.Series:
    """Heuristic range for ops whose launching thread has no range around the call."""
    chain = (
        selected_chain(ranges)
        .join(ranges.select("range_id", "pid"), on="range_id")
        .with_columns(global_pid=process_key(pl.col("global_tid")))
    )
    queries = launched.select(
        q_by=pl.when(~has_own_range).then(pl.col("global_pid")), t="launch_ns"
    )
    return innermost_containing(chain, queries, "global_pid")


def _op_table(ops: pl.DataFrame, excl: pl.DataFrame, has_own_range: pl.Series) -> pl.DataFrame:
    """Per-op result, in the ops' own order, with the reason for every unattributed op.
    `excl` and `has_own_range` are in launch order; `excl.row` maps them back."""
    inverse = np.empty(excl.height, dtype=np.int64)
    inverse[excl["row"].to_numpy()] = np.arange(excl.height)
    back = pl.Series(inverse)
    assigned = excl.select("range_id", "attributed_by").with_columns(has_own_range=has_own_range)
    table = pl.concat([ops, assigned.gather(back)], how="horizontal").with_columns(
        pid=pid_of(pl.col("global_pid")).cast(pl.Int32),
        tid=tid_of(pl.col("launch_tid")).cast(pl.Int32),
        unattributed_reason=pl.when(pl.col("range_id").is_not_null())
        .then(None)
        .when(pl.col("launch_ns").is_null())
        .then(pl.lit("no_launch_call", UNATTRIBUTED_REASON))
        .when(~pl.col("has_own_range"))
        .then(pl.lit("outside_any_range", UNATTRIBUTED_REASON))
        .otherwise(pl.lit("outside_selected_ranges", UNATTRIBUTED_REASON)),
    )
    return conformed(table, OPS_SCHEMA, OPS_OPTIONAL)


def _range_stats(members: pl.DataFrame, prefix: str) -> pl.DataFrame:
    """Count, projected span, kernel-time sum and per-device busy union per range.

    Columnar numpy over the whole member table: sort by (range, device, start) unless already so,
    a segmented running maximum of end times gives each op's newly covered time, and `reduceat`
    sums per range. `members` has `STATS_COLUMNS`."""
    names = [f"{prefix}{n}" for n in RANGE_STATS]
    extra = [] if prefix else ["proj_start_ns", "proj_end_ns"]
    if members.is_empty():
        return pl.DataFrame(schema=dict.fromkeys(["range_id", *names, *extra], pl.Int64))
    rid, dev, start, end = (members[c].to_numpy() for c in STATS_COLUMNS[:4])
    kernel = members["is_kernel"].to_numpy()
    first = members["first_of_launch"].to_numpy()
    if not sorted_by(rid, dev, start):
        order = np.lexsort((start, dev, rid))
        rid, dev, start, end, kernel, first = (
            a[order] for a in (rid, dev, start, end, kernel, first)
        )
    n = len(rid)
    new_seg = np.ones(n, dtype=bool)
    new_seg[1:] = (rid[1:] != rid[:-1]) | (dev[1:] != dev[:-1])
    _, busy_part = union_parts(start, end, new_seg)
    heads = np.flatnonzero(np.r_[True, rid[1:] != rid[:-1]])
    columns = {
        "range_id": rid[heads],
        names[0]: np.add.reduceat(first.astype(np.int64), heads),
        names[1]: np.diff(np.r_[heads, n]),
        names[2]: np.add.reduceat(np.where(kernel, end - start, 0), heads),
        names[3]: np.add.reduceat(busy_part, heads),
    }
    if not prefix:
        columns["proj_start_ns"] = np.minimum.reduceat(start, heads)
        columns["proj_end_ns"] = np.maximum.reduceat(end, heads)
    return pl.DataFrame(columns).cast(pl.Int64)
