"""The attribution fold in batches against the whole tables folded at once (`attribute_frames`,
with the per-op frame), and its sums against the whole-frame references of `perop`."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import polars as pl
import pytest
from benchmarks.bench_onepass import STAGES, stage_inputs
from polars.testing import assert_frame_equal

from llm_perf_opt.attribution import (
    Attribution,
    RangeSelection,
    StreamResult,
    attribute_frames,
    attribute_stream,
    range_frame,
)
from llm_perf_opt.hostview.breakdown import HOST_SCHEMA, breakdown
from tests.helpers.perop import gpu_view, launch_kinds, top_kernels

GPU_COLUMNS = ("gpu_window_ns", "busy_ns", "starved_ns", "queued_ns", "edge_ns", "n_gpu_ops",
               "launch_latency_median_ns")  # fmt: skip


def batches(frame: pl.DataFrame, rows: int) -> Iterator[pl.DataFrame]:
    """`frame` in start order (ties in their own order), `rows` rows at a time."""
    ordered = frame.sort("start_ns", maintain_order=True)
    return (ordered.slice(offset, rows) for offset in range(0, ordered.height, rows))


def stage_selection(ranges: pl.DataFrame) -> RangeSelection | None:
    """The analysis's stage selection where the trace has all three stages, else None."""
    if all(ranges.filter(pl.col("name") == s).height for s in STAGES):
        return RangeSelection(names=STAGES)
    return None


def groups_and_windows(base: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """What the analysis would ask for: per stage its ranges and their decode steps (owned by
    their decode range); without stages every range, its own group, and nested ranges as windows
    of their top-level ancestor."""
    if stage_selection(base) is not None:
        return stage_inputs(base)
    top = base.select("range_id", "parent_id", "depth")
    root = top.select("range_id", root="range_id")
    lookup = dict(zip(top["range_id"].to_list(), top["parent_id"].to_list(), strict=True))
    roots = []
    for rid in top["range_id"].to_list():
        up = rid
        while lookup[up] is not None:
            up = lookup[up]
        roots.append(up)
    root = root.with_columns(owner=pl.Series(roots, dtype=pl.Int64))
    windows = base.join(root.select("range_id", "owner"), on="range_id").select(
        window_id="range_id",
        owner_id="owner",
        group=pl.when(pl.col("depth") == 0).then(pl.lit("top")).otherwise(pl.lit("nested")),
        global_tid="global_tid",
        start_ns="start_ns",
        end_ns="end_ns",
    )
    return base.select("range_id", group="name"), windows


def run_stream(
    raw: pl.DataFrame,
    ops: pl.DataFrame,
    calls: pl.DataFrame,
    selection: RangeSelection | None,
    *,
    rows: int,
    other_threads: bool = False,
    budget: int | None = None,
) -> tuple[StreamResult, pl.DataFrame, pl.DataFrame]:
    base = range_frame(raw, selection)
    groups, windows = groups_and_windows(base)
    extra = {} if budget is None else {"memory_budget_bytes": budget}
    result = attribute_stream(
        base,
        batches(ops.select(pl.exclude("graph_node_id", "bytes")), rows),
        batches(calls.select("global_tid", "correlation_id", "start_ns"), rows),
        other_threads=other_threads,
        groups=groups,
        windows=windows,
        **extra,  # type: ignore[arg-type]
    )
    return result, groups, windows


def assert_same(
    raw: pl.DataFrame,
    ops: pl.DataFrame,
    calls: pl.DataFrame,
    selection: RangeSelection | None,
    *,
    rows: int,
    other_threads: bool = False,
    budget: int | None = None,
) -> StreamResult:
    """Every output of the engine equals the in-memory attribution's (or what the analysis
    derives from `Attribution.ops`)."""
    memory = attribute_frames(raw, ops, calls, selection, other_threads=other_threads)
    result, groups, windows = run_stream(
        raw, ops, calls, selection, rows=rows, other_threads=other_threads, budget=budget
    )
    assert_frame_equal(result.ranges, memory.ranges)
    assert_frame_equal(result.unattributed, memory.unattributed())
    assert_derived(result, memory, groups, windows)
    return result


def assert_derived(
    result: StreamResult, memory: Attribution, groups: pl.DataFrame, windows: pl.DataFrame
) -> None:
    ops = memory.ops
    attributed = ops.filter(pl.col("range_id").is_not_null())
    ids = groups["range_id"].to_list()
    expected_kinds = launch_kinds(ops, memory.ranges["range_id"].to_list())
    got_kinds = {
        int(r["range_id"]): (r["n_kernels"], r["n_graph_ops"], r["graph_sum_ns"])
        for r in result.launch_kinds.iter_rows(named=True)
    }
    assert got_kinds == {
        k: (v.n_kernels, v.n_graph_ops, v.graph_sum_ns) for k, v in expected_kinds.items()
    }
    assert set(launch_kinds(ops, ids)) <= set(got_kinds)
    for name, members in groups.group_by("group"):
        group = str(name[0])
        expected = top_kernels(ops, members["range_id"].to_list(), None, k=1 << 30)
        mine = result.top_kernels.filter(pl.col("group") == group)
        total = int(mine["total_ns"].sum())
        got = [
            (
                int(r["count"]),
                int(r["total_ns"]),
                str(r["kind"]),
                r["graph_key"] if r["kind"] == "graph" else r["name_id"],
            )
            for r in mine.iter_rows(named=True)
        ]
        want = [
            (
                s.count,
                s.total_ns,
                s.kind,
                int(s.name.removeprefix("CUDA graph "))
                if s.kind == "graph"
                else int(s.name.removeprefix("<kernel name id ").removesuffix(">")),
            )
            for s in expected
        ]
        assert got == want
        shares = [s.share for s in expected]
        assert shares == pytest.approx([c / total for _, c, _k, _n in got], rel=1e-12)
    devices = attributed.group_by("device_id").agg(n_ops=pl.len().cast(pl.Int64)).sort("device_id")
    assert_frame_equal(result.devices, devices)
    kinds = ops.group_by("kind").agg(n_ops=pl.len().cast(pl.Int64)).sort("kind")
    assert_frame_equal(result.op_kinds, kinds)
    host = windows.select("window_id").with_columns(
        [pl.lit(0.0).alias(c) for c in HOST_SCHEMA.names()]
    )
    view = breakdown(windows, host, gpu_view(windows, ops))
    assert result.gpu_windows is not None and result.gpu_groups is not None
    assert_frame_equal(result.gpu_windows, view.windows.select("window_id", *GPU_COLUMNS))
    assert_frame_equal(result.gpu_groups, view.groups.select("group", "launch_latency_median_ns"))
    assert np.all(result.gpu_windows["busy_ns"].to_numpy() >= 0)
