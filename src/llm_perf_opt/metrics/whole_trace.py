"""The whole trace at a glance, whatever its ranges: GPU busy time, time per kernel category
and the kernels with the most time, over every GPU op (attributed or not).

The attribution fold sums every op it reads, attributed or not, per kernel name (or graph, or
copy/memset kind) and as one busy union per device (`StreamResult.trace_kernels`,
`trace_busy_ns`); this module turns those sums into the report's view. A CUDA graph replay traced
both whole and by node counts once (its node rows), as everywhere else.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from llm_perf_opt.kernels.shares import CategoryShare, KernelShare, category_shares, kernel_shares


@dataclass(frozen=True)
class TraceView:
    """Every GPU op of the trace: busy time (union of op intervals, summed over devices), the
    summed op time (kernels, graphs, copies, memsets), per category and the top kernels."""

    gpu_busy_ns: int
    op_sum_ns: int
    n_ops: int
    categories: tuple[CategoryShare, ...]
    top_kernels: tuple[KernelShare, ...]


def trace_view(
    entries: pl.DataFrame, busy_ns: int, names: pl.DataFrame | None, k: int
) -> TraceView:
    """`TraceView` of the fold's whole-trace sums: `entries` (`TRACE_KERNELS_SCHEMA`: count and
    time per kernel name, graph or copy/memset kind) and the busy union `busy_ns`."""
    if entries.is_empty():
        return TraceView(0, 0, 0, (), ())
    kernels = entries.filter(pl.col("kind").is_in(["kernel", "graph"]))
    return TraceView(
        gpu_busy_ns=busy_ns,
        op_sum_ns=int(entries["total_ns"].sum()),
        n_ops=int(entries["count"].sum()),
        categories=category_shares(entries, names),
        top_kernels=kernel_shares(kernels, names, k),
    )
