"""Reference computations over whole frames: what the fold and `HostViewStream` sum as ops and
calls arrive, computed at once from `Attribution.ops` and the whole CUDA API table (the GPU and
host views of windows, launch kinds, kernel entries). Tests hold the engine's answers equal to
these on real and generated traces."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

import numpy as np
import polars as pl

from llm_perf_opt.attribution import intervals
from llm_perf_opt.attribution.gpu_view import (
    GPU_GROUPS_SCHEMA,
    GPU_PARTS,
    GPU_WINDOWS_SCHEMA,
    WINDOWS_SCHEMA,
    GpuView,
)
from llm_perf_opt.hostview.breakdown import (
    HOST_SCHEMA,
    add_thread_parts,
    call_arrays,
    call_flags,
    classify_names,
    host_columns,
    host_zeros,
    sort_calls,
    sync_counts,
)
from llm_perf_opt.kernels.shares import KernelShare, LaunchKinds, kernel_shares, launch_kinds_of

# `Trace.api_calls(with_names=True)`.
CALLS_SCHEMA: Final = pl.Schema(
    {
        "global_tid": pl.Int64,
        "global_pid": pl.Int64,
        "correlation_id": pl.Int64,
        "start_ns": pl.Int64,
        "end_ns": pl.Int64,
        "name": pl.String,
    }
)
# What is used of `Trace.sync_events()`.
SYNCS_SCHEMA: Final = pl.Schema({"global_pid": pl.Int64, "correlation_id": pl.Int64})
# What the GPU view reads of `Attribution.ops`.
OPS_SCHEMA: Final = pl.Schema(
    {
        "range_id": pl.Int64,
        "launch_ns": pl.Int64,
        "device_id": pl.Int32,
        "start_ns": pl.Int64,
        "end_ns": pl.Int64,
    }
)


def launch_kinds(ops: pl.DataFrame, range_ids: Sequence[int]) -> dict[int, LaunchKinds]:
    """Kernel and graph-execution counts, and graph time, per (exclusively attributed) range."""
    is_graph = pl.col("kind") == "graph"
    counted = (
        ops.filter(
            pl.col("kind").is_in(["kernel", "graph"]), pl.col("range_id").is_in(list(range_ids))
        )
        .group_by("range_id")
        .agg(
            n_kernels=(~is_graph).sum(),
            n_graph_ops=is_graph.sum(),
            graph_sum_ns=pl.when(is_graph).then(pl.col("end_ns") - pl.col("start_ns")).sum(),
        )
    )
    return launch_kinds_of(counted, range_ids)


def top_kernels(
    ops: pl.DataFrame, range_ids: Sequence[int], names: pl.DataFrame | None, k: int
) -> tuple[KernelShare, ...]:
    """The `k` kernel names with the most GPU time among ops attributed to `range_ids`; the
    executions of one CUDA graph traced whole count as one entry, `CUDA graph <graphId>`."""
    if k <= 0:
        return ()
    return kernel_shares(kernel_entries(ops, range_ids), names, k)


def kernel_entries(ops: pl.DataFrame, range_ids: Sequence[int]) -> pl.DataFrame:
    """`kind, name_id, graph_key, count, total_ns` per kernel name (or graph traced whole) of
    the ops attributed to `range_ids`: what top kernels and categories are drawn from."""
    kernels = ops.filter(
        pl.col("kind").is_in(["kernel", "graph"]), pl.col("range_id").is_in(list(range_ids))
    ).with_columns(graph_key=pl.when(pl.col("kind") == "graph").then(pl.col("graph_id")))
    return kernels.group_by("kind", "name_id", "graph_key").agg(
        count=pl.len(), total_ns=(pl.col("end_ns") - pl.col("start_ns")).sum()
    )


def gpu_view(windows: pl.DataFrame, ops: pl.DataFrame) -> GpuView:
    """The GPU view of every window (`WINDOWS_SCHEMA`) from the attributed ops (`OPS_SCHEMA`;
    extra columns are ignored): the parts per window, launch latency medians per window and
    per group of windows (over the group's ops, not a median of medians)."""
    windows = windows.select(WINDOWS_SCHEMA.names()).cast(dict(WINDOWS_SCHEMA))  # type: ignore[arg-type]
    gpu, latency = _gpu_view(windows, ops)
    names, group_code = np.unique(windows["group"].to_numpy(), return_inverse=True)
    win = latency["window"].to_numpy()
    latency = latency.with_columns(group=pl.Series(group_code[win], dtype=pl.Int64))
    per_window = windows.select("window_id").with_columns(
        *gpu, launch_latency_median_ns=_medians(latency, "window", windows.height)
    )
    groups = pl.DataFrame(
        {
            "group": names.astype(str),
            "launch_latency_median_ns": _medians(latency, "group", len(names)),
        }
    )
    return GpuView(
        windows=per_window.select(GPU_WINDOWS_SCHEMA.names()).cast(dict(GPU_WINDOWS_SCHEMA)),  # type: ignore[arg-type]
        groups=groups.cast(dict(GPU_GROUPS_SCHEMA)),  # type: ignore[arg-type]
    )


def _medians(latency: pl.DataFrame, by: str, n: int) -> pl.Series:
    """Median latency for each code 0..n-1 of column `by` (null where it has no ops)."""
    per = latency.group_by(by).agg(m=pl.col("latency_ns").median())
    values = np.full(n, np.nan)
    values[per[by].to_numpy()] = per["m"].to_numpy()
    return pl.Series("launch_latency_median_ns", values).fill_nan(None)


def _gpu_view(windows: pl.DataFrame, ops: pl.DataFrame) -> tuple[list[pl.Series], pl.DataFrame]:
    """Per window: its GPU window length, busy, starved, queued, edge and op count; and the
    launch → start latency of every (window, op) pair."""
    n = windows.height
    out: dict[str, np.ndarray] = {
        k: np.zeros(n, dtype=np.float64) for k in ("gpu_window_ns", *GPU_PARTS, "n_gpu_ops")
    }
    # the owners' ops by (owner, launch time); numpy: the ops usually come nearly in that order
    op_owner = ops["range_id"].fill_null(-1).to_numpy()
    op_launch = ops["launch_ns"].fill_null(-1).to_numpy()
    keep = np.flatnonzero(np.isin(op_owner, windows["owner_id"].to_numpy()) & (op_launch >= 0))
    keep = keep[np.lexsort((op_launch[keep], op_owner[keep]))]
    owner, launch = op_owner[keep], op_launch[keep]
    op_dev, op_start, op_end = (
        ops[c].to_numpy()[keep] for c in ("device_id", "start_ns", "end_ns")
    )
    # each window's ops: a slice of its owner's ops, by launch time
    w_owner = windows["owner_id"].to_numpy()
    w_start = windows["start_ns"].to_numpy()
    w_end = windows["end_ns"].to_numpy()
    seg_lo = np.searchsorted(owner, w_owner, side="left")
    seg_hi = np.searchsorted(owner, w_owner, side="right")
    lo = seg_lo + intervals.searchsorted_in(launch, seg_lo, seg_hi, w_start, "left")
    hi = seg_lo + intervals.searchsorted_in(launch, seg_lo, seg_hi, w_end, "right")
    lengths = np.maximum(hi - lo, 0)
    total = int(lengths.sum())
    empty_latency = pl.DataFrame(schema={"window": pl.Int64, "latency_ns": pl.Int64})
    if total == 0:
        out["gpu_window_ns"] = (w_end - w_start).astype(np.float64)
        out["edge_ns"] = out["gpu_window_ns"].copy()
        return [pl.Series(k, v) for k, v in out.items()], empty_latency
    offsets = np.cumsum(lengths) - lengths
    member = np.arange(total, dtype=np.int64) - np.repeat(offsets - lo, lengths)
    win = np.repeat(np.arange(n, dtype=np.int64), lengths)
    dev = op_dev[member].astype(np.int64)
    m_launch = launch[member]
    raw_start = op_start[member]
    # an op cannot start before its window (only clock skew makes it look so)
    m_start = np.maximum(raw_start, w_start[win])
    m_end = np.maximum(op_end[member], m_start)
    order = _order_by_window_device_start(win, dev, m_start - w_start[win])
    if order is not None:
        win, dev, m_start, m_end, m_launch, raw_start = (
            a[order] for a in (win, dev, m_start, m_end, m_launch, raw_start)
        )
    # the GPU window: from the range's CPU start to the later of its CPU end and its last op end
    last_end = np.full(n, np.iinfo(np.int64).min)
    win_heads = np.flatnonzero(np.r_[True, win[1:] != win[:-1]])  # members run by window
    last_end[win[win_heads]] = np.maximum.reduceat(m_end, win_heads)
    g_end = np.maximum(w_end, last_end)
    out["gpu_window_ns"] = (g_end - w_start).astype(np.float64)
    new_seg = np.r_[True, (win[1:] != win[:-1]) | (dev[1:] != dev[:-1])]
    covered, busy = intervals.union_parts(m_start, m_end, new_seg)
    gap = np.where(new_seg, 0, np.clip(m_start - covered, 0, None))
    starved = np.where(new_seg, 0, np.clip(m_launch - covered, 0, gap))
    head = np.where(new_seg, m_start - w_start[win], 0)
    seg_heads = np.flatnonzero(new_seg)
    seg_end = np.maximum.reduceat(m_end, seg_heads)
    tail = g_end[win[seg_heads]] - seg_end
    out["busy_ns"] = np.bincount(win, busy, minlength=n)
    out["starved_ns"] = np.bincount(win, starved, minlength=n)
    out["queued_ns"] = np.bincount(win, gap - starved, minlength=n)
    out["edge_ns"] = np.bincount(win, head, minlength=n)
    out["edge_ns"] += np.bincount(win[seg_heads], tail, minlength=n)
    out["n_gpu_ops"] = lengths.astype(np.float64)
    # device-less windows (no ops) are all edge
    idle = out["gpu_window_ns"] - out["busy_ns"]
    out["edge_ns"] = np.where(lengths == 0, idle, out["edge_ns"])
    latency = pl.DataFrame({"window": win, "latency_ns": raw_start - m_launch})
    return [pl.Series(k, v) for k, v in out.items()], latency


def _order_by_window_device_start(
    win: np.ndarray, dev: np.ndarray, offset: np.ndarray
) -> np.ndarray | None:
    """The permutation that sorts members by (window, device, start), or None when they already
    are (one stream per device: launch order is start order). One int64 key and a stable sort,
    which is fast on the nearly sorted rows, instead of a lexsort over three keys."""
    n_dev = int(dev.max()) + 1
    bits = max(int(offset.max()).bit_length(), 1)
    if bits + (int(win.max()) * n_dev + n_dev).bit_length() < 63:
        key = ((win * n_dev + dev) << bits) + offset
        if bool(np.all(key[1:] >= key[:-1])):
            return None
        order: np.ndarray = np.argsort(key, kind="stable")
        return order
    if intervals.sorted_by(win, dev, offset):
        return None
    return np.lexsort((offset, dev, win))


def host_view(
    windows: pl.DataFrame, calls: pl.DataFrame, syncs: pl.DataFrame | None
) -> pl.DataFrame:
    """The host view of each window: `window_id` + `HOST_SCHEMA` (windows need `window_id,
    global_tid, start_ns, end_ns`; calls and syncs are frames of `CALLS_SCHEMA` and
    `SYNCS_SCHEMA`; extra columns are ignored). It needs no attribution, so it can run while
    the attribution does, and the API table can go before the GPU view starts.

    `n_syncs` counts the synchronization rows whose API call starts in the window; where
    `syncs` is None or empty (older exports, or no rows), the synchronizing calls."""
    windows = windows.select("window_id", "global_tid", "start_ns", "end_ns").cast(pl.Int64)
    columns = _host_view(windows, calls, syncs)
    return windows.select("window_id").with_columns(*columns).cast(dict(HOST_SCHEMA))  # type: ignore[arg-type]


def _host_view(
    windows: pl.DataFrame, calls: pl.DataFrame, syncs: pl.DataFrame | None
) -> list[pl.Series]:
    """Per window: span, the four host parts and the three host counts."""
    out = host_zeros(windows.height)
    calls = calls.select(CALLS_SCHEMA.names()).filter(
        pl.col("global_tid").is_in(windows["global_tid"].unique().to_list())
    )
    calls = call_flags(calls, classify_names(calls["name"]), "name", sync_counts(syncs))
    calls = sort_calls(calls)
    tid, start, end, cls, memcpy, sync_rows = call_arrays(calls)
    w_tid = windows["global_tid"].to_numpy()
    w_start = windows["start_ns"].to_numpy()
    w_end = windows["end_ns"].to_numpy()
    if len(tid):
        new_seg = np.r_[True, tid[1:] != tid[:-1]]
        covered = intervals.segmented_prev_max(end, new_seg)
        bounds = np.r_[np.flatnonzero(new_seg), len(tid)]
        for a, b in zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True):
            rows = np.flatnonzero(w_tid == tid[a])
            if rows.size == 0:
                continue
            seg = slice(a, b)
            add_thread_parts(
                out,
                rows,
                (start[seg], end[seg], covered[seg], cls[seg], memcpy[seg]),
                None if sync_rows is None else sync_rows[seg],
                w_start[rows],
                w_end[rows],
            )
    return host_columns(windows, out)
