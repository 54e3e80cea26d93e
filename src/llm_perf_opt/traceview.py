"""The whole trace at a glance, whatever its ranges: GPU busy time, time per kernel category
and the kernels with the most time, over every GPU op (attributed or not).

Read in start-ordered batches (`Trace.gpu_op_batches`), so it costs one bounded pass over the
op tables for either attribution engine: per batch the ops are summed per kernel name (or graph,
or copy/memset kind), and the busy time is the union of the op intervals per device, carried
across batch borders as each device's latest end so far.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from llm_perf_opt.kernels import CategoryShare, KernelShare, category_shares, kernel_shares
from llm_perf_opt.trace import Trace

_KEYS = ("kind", "name_id", "graph_key")


@dataclass(frozen=True)
class TraceView:
    """Every GPU op of the trace: busy time (union of op intervals, summed over devices), the
    summed op time (kernels, graphs, copies, memsets), per category and the top kernels."""

    gpu_busy_ns: int
    op_sum_ns: int
    n_ops: int
    categories: tuple[CategoryShare, ...]
    top_kernels: tuple[KernelShare, ...]


def trace_view(trace: Trace, batch_rows: int, names: pl.DataFrame | None, k: int) -> TraceView:
    """`TraceView` of `trace`, reading `batch_rows` ops at a time."""
    parts: list[pl.DataFrame] = []
    carry: dict[int, int] = {}
    busy = 0
    for batch in trace.gpu_op_batches(batch_rows):
        if batch.is_empty():
            continue
        parts.append(
            batch.with_columns(
                graph_key=pl.when(pl.col("kind") == "graph").then(pl.col("graph_id"))
            )
            .group_by(*_KEYS)
            .agg(
                count=pl.len().cast(pl.Int64),
                total_ns=(pl.col("end_ns") - pl.col("start_ns")).sum(),
            )
        )
        for (device,), ops in batch.group_by("device_id"):  # a few devices, not the ops
            key = int(device)
            starts, ends = ops["start_ns"].to_numpy(), ops["end_ns"].to_numpy()
            added, carry[key] = _union_parts(starts, ends, carry.get(key))
            busy += added
        if len(parts) > 64:
            parts = [_sum(pl.concat(parts))]
    entries = _sum(pl.concat(parts)) if parts else pl.DataFrame()
    if entries.is_empty():
        return TraceView(0, 0, 0, (), ())
    kernels = entries.filter(pl.col("kind").is_in(["kernel", "graph"]))
    return TraceView(
        gpu_busy_ns=busy,
        op_sum_ns=int(entries["total_ns"].sum()),
        n_ops=int(entries["count"].sum()),
        categories=category_shares(entries, names),
        top_kernels=kernel_shares(kernels, names, k),
    )


def _sum(entries: pl.DataFrame) -> pl.DataFrame:
    return entries.group_by(*_KEYS).agg(pl.col("count").sum(), pl.col("total_ns").sum())


def _union_parts(start: np.ndarray, end: np.ndarray, latest: int | None) -> tuple[int, int]:
    """Time the start-ordered intervals add to a union whose latest end so far is `latest`,
    and the new latest end."""
    prev = np.maximum.accumulate(end)
    before = np.concatenate(([latest if latest is not None else start[0]], prev[:-1]))
    if latest is not None:
        before = np.maximum(before, latest)
    added = np.maximum(end - np.maximum(start, before), 0)
    return int(added.sum()), int(max(prev[-1], latest if latest is not None else prev[-1]))
