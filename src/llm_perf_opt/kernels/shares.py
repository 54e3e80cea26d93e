"""What the stage ranges launched, by kind: kernel and CUDA-graph counts per range, the kernels
with the most GPU time, and what a trace of graphs traced whole cannot show.

A CUDA graph traced whole (nsys `--cuda-graph-trace=graph`) is one op per execution: its kernels
are not in the trace, so graph executions are counted and timed apart from the kernels, and one
graph's executions are one top-kernel entry, `CUDA graph <graphId>`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import polars as pl

from llm_perf_opt.kernels.categories import with_category
from llm_perf_opt.kernels.names import short_names


@dataclass(frozen=True)
class KernelShare:
    """One kernel name's (or one CUDA graph's executions') share of a stage's kernel time."""

    name: str
    count: int
    total_ns: int
    mean_ns: float
    share: float
    kind: str = "kernel"
    category: str = "other"
    # the short, distinct name a table shows (kernelnames.short_names over one table)
    label: str = ""


@dataclass(frozen=True)
class CategoryShare:
    """One category's part of a stage's kernel time (kernels and graph executions)."""

    category: str
    total_ns: int
    n_kernels: int
    share: float
    # GEMM and attention: the stage's FLOPs of that category, over its kernel time, and that
    # rate as a fraction of the peak in use (None elsewhere, or without FLOPs)
    flops: float | None = None
    achieved_flops_per_s: float | None = None
    peak_fraction: float | None = None


@dataclass(frozen=True)
class LaunchKinds:
    """What one range launched, by kind: kernels, and CUDA graphs traced whole (their kernels
    are not in the trace, so they are counted and timed apart from the kernels)."""

    n_kernels: int = 0
    n_graph_ops: int = 0
    graph_sum_ns: int = 0


def launch_kinds_of(counted: pl.DataFrame, range_ids: Sequence[int]) -> dict[int, LaunchKinds]:
    """`LaunchKinds` of `range_ids` from a frame of `range_id, n_kernels, n_graph_ops,
    graph_sum_ns` (ranges without a row launched nothing)."""
    rows = counted.filter(pl.col("range_id").is_in(list(range_ids)))
    return {
        int(r["range_id"]): LaunchKinds(
            int(r["n_kernels"]), int(r["n_graph_ops"]), int(r["graph_sum_ns"])
        )
        for r in rows.iter_rows(named=True)
    }


def category_shares(entries: pl.DataFrame, names: pl.DataFrame | None) -> tuple[CategoryShare, ...]:
    """Time, share and count per category of kernel entries (`kind, name_id, graph_key, count,
    total_ns`, as the attribution fold sums them), in the order of
    `categories.CATEGORIES`; the times are integer sums, so they add up to the entries' time."""
    if entries.is_empty():
        return ()
    total = int(entries["total_ns"].sum())
    per = (
        with_category(entries, names)
        .group_by("category")
        .agg(total_ns=pl.col("total_ns").sum(), n=pl.col("count").sum())
        .sort("category")  # an Enum: in the order of `CATEGORIES`
    )
    return tuple(
        CategoryShare(
            category=str(r["category"]),
            total_ns=int(r["total_ns"]),
            n_kernels=int(r["n"]),
            share=r["total_ns"] / total if total else 0.0,
        )
        for r in per.iter_rows(named=True)
    )


def kernel_shares(
    entries: pl.DataFrame, names: pl.DataFrame | None, k: int
) -> tuple[KernelShare, ...]:
    """The `k` entries (`kind, name_id, graph_key, count, total_ns`: one per kernel name or
    graph traced whole) with the most time, as shares of all the entries' time."""
    if k <= 0 or entries.is_empty():
        return ()
    total = int(entries["total_ns"].sum())
    grouped = entries.sort(
        "total_ns", "name_id", "graph_key", descending=[True, False, False]
    ).head(k)
    grouped = with_category(grouped, names)
    if names is not None:
        grouped = grouped.join(names, on="name_id", how="left", maintain_order="left")
    else:
        grouped = grouped.with_columns(name=pl.lit(None, pl.String))
    rows = grouped.to_dicts()
    labels = short_names([_entry_name(row) for row in rows])
    return tuple(
        KernelShare(
            name=_entry_name(row),
            count=int(row["count"]),
            total_ns=int(row["total_ns"]),
            mean_ns=row["total_ns"] / row["count"],
            share=row["total_ns"] / total if total else 0.0,
            kind=str(row["kind"]),
            category=str(row["category"]),
            label=label,
        )
        for row, label in zip(rows, labels, strict=True)
    )


def _entry_name(row: Mapping[str, Any]) -> str:
    """A top-kernel entry's name: the kernel's, or `CUDA graph <id>` for a graph's executions."""
    if row["kind"] == "graph":
        return f"CUDA graph {row['graph_key']}"
    return row["name"] if row["name"] is not None else f"<kernel name id {row['name_id']}>"


def graph_level_note(n_graph: int) -> list[str]:
    """One line for a trace with `n_graph` CUDA graph executions traced whole: what the report
    cannot see."""
    if n_graph == 0:
        return []
    return [
        f"{n_graph:,} CUDA graph executions were traced whole (nsys --cuda-graph-trace=graph, "
        "its default): their kernels are not in the trace, so each execution counts as one "
        "entry in graph_ops/graph_s and the top kernels; capture with --cuda-graph-trace=node "
        "for the per-kernel view"
    ]
