"""The per-op frame, an opt-in output of the fold: which range took each GPU op, and why none did.

The analysis never needs it (the report asks its questions of the fold's sums,
`attribution.facts`); notebooks, `--ranges-out` checks and the tests against NVIDIA's reports do.
`attribute` folds the whole tables (`fold.attribute_whole`) with `keep_ops` and joins each op's
assignment back to the reader's op columns.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from llm_perf_opt.attribution.fold import attribute_whole
from llm_perf_opt.attribution.rule import (
    OPS_OPTIONAL,
    OPS_SCHEMA,
    RANGES_OUT_COLUMNS,
    RangeSelection,
    conformed,
    range_frame,
)
from llm_perf_opt.trace import Trace, pid_of, tid_of


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
    """Attribute every GPU op of `trace` to NVTX ranges (the rule: `attribution.rule`).

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
    """`attribute` on frames shaped like `Trace.nvtx_ranges()`, `gpu_ops()` and `api_calls()`,
    in any order; the ops keep theirs, less the graph-level rows their node rows cover."""
    folded = attribute_whole(
        range_frame(ranges, selection), ops, calls, other_threads=other_threads, keep_ops=True
    )
    assert folded.ops is not None
    table = ops.join(folded.ops, on="op_id", how="inner", maintain_order="left").with_columns(
        pid=pid_of(pl.col("global_pid")).cast(pl.Int32),
        tid=tid_of(pl.col("launch_tid")).cast(pl.Int32),
    )
    return Attribution(folded.ranges, conformed(table, OPS_SCHEMA, OPS_OPTIONAL))
