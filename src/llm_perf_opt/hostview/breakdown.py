"""Where a range's wall time goes: host (CPU) and GPU views of the same span.

Host view of a window (a range's CPU interval on its own thread): the time inside kernel/graph
launch calls, inside synchronizing calls, inside other CUDA API calls, and outside any CUDA call
(framework and Python code). CUDA runtime rows may contain driver rows of the same thread; the API
intervals of a thread are merged first, so nested time counts once, for the class of the call that
encloses it. The four parts sum to the window's span.

GPU view of the same window, over the ops the window launched, per device and summed over the
devices: busy (union of op intervals), and idle split into *starved* (the host had not yet called
the next op's launch when the previous op ended), *queued* (the launch call had started, the op
still waited: launch latency or a dependency) and *edge* (head and tail idle at the window's
ends). A gap before an op whose launch call started inside the gap is starved up to the call and
queued after it.

Pure functions over frames with the schemas below; no I/O. Vectorised: sorted searches and
running maxima over whole tables; loops only over threads and over owner ranges.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Final

import numpy as np
import polars as pl

from llm_perf_opt.attribution import intervals
from llm_perf_opt.attribution.gpu_view import (
    GPU_PARTS,
    STEP_GROUP,
    WINDOWS_SCHEMA,
    GpuView,
)

# API call classes (`cls` of `classify_names`).
OTHER, LAUNCH, SYNC = 0, 1, 2
LAUNCH_PREFIXES: Final = ("cudaLaunchKernel", "cuLaunchKernel", "cudaGraphLaunch", "cuGraphLaunch")
SYNC_PREFIXES: Final = (
    "cudaStreamSynchronize",
    "cudaDeviceSynchronize",
    "cudaEventSynchronize",
    "cuStreamSynchronize",
    "cuCtxSynchronize",
    "cuEventSynchronize",
)
MEMCPY_PREFIXES: Final = ("cudaMemcpy", "cuMemcpy")
# A stream waiting on an event stalls the GPU queue, not the host: never a host sync, even when
# CUPTI records a synchronization row for it.
GPU_SIDE_WAIT: Final = "StreamWaitEvent"

HOST_PARTS: Final = ("launch_ns", "sync_ns", "other_api_ns", "outside_api_ns")
COUNTS: Final = ("n_launches", "n_syncs", "n_memcpy", "n_gpu_ops")
# `host_view` output, beside `window_id`.
HOST_SCHEMA: Final = pl.Schema(
    {"span_ns": pl.Float64, **dict.fromkeys((*HOST_PARTS, *COUNTS[:3]), pl.Float64)}
)
# Output: one row per window (and, in `Breakdown.groups`, per group).
VIEW_SCHEMA: Final = pl.Schema(
    {
        "span_ns": pl.Float64,
        **dict.fromkeys(HOST_PARTS, pl.Float64),
        **dict.fromkeys(COUNTS, pl.Float64),
        "gpu_window_ns": pl.Float64,
        **dict.fromkeys(GPU_PARTS, pl.Float64),
        "launch_latency_median_ns": pl.Float64,
    }
)


@dataclass(frozen=True)
class HostGpuView:
    """Host and GPU view of one window, the sum over a group, or the median over a group."""

    span_ns: float
    launch_ns: float
    sync_ns: float
    other_api_ns: float
    outside_api_ns: float
    n_launches: float
    n_syncs: float
    n_memcpy: float
    n_gpu_ops: float
    gpu_window_ns: float
    busy_ns: float
    starved_ns: float
    queued_ns: float
    edge_ns: float
    launch_latency_median_ns: float | None

    @property
    def host_per_gpu_op_ns(self) -> float | None:
        """CPU time of the span per GPU op it launched: above the ops' mean duration the GPU
        must wait for the host."""
        return self.span_ns / self.n_gpu_ops if self.n_gpu_ops else None

    @classmethod
    def from_row(cls, row: Mapping[str, float | None]) -> HostGpuView:
        return cls(**{f.name: row[f.name] for f in fields(cls)})  # type: ignore[arg-type]


@dataclass(frozen=True)
class Breakdown:
    """`windows`: `window_id` + `VIEW_SCHEMA` per window; `groups`: `group` + `VIEW_SCHEMA`,
    parts and counts summed and the launch latency median taken over the group's ops."""

    windows: pl.DataFrame
    groups: pl.DataFrame

    def window(self, window_id: int) -> HostGpuView:
        return HostGpuView.from_row(self.windows.row(_index(self.windows, "window_id", window_id),
                                                    named=True))  # fmt: skip

    def group(self, group: str) -> HostGpuView | None:
        rows = self.groups.filter(pl.col("group") == group)
        return HostGpuView.from_row(rows.row(0, named=True)) if rows.height else None

    def median(self, window_ids: list[int]) -> HostGpuView | None:
        """Column-wise median over the given windows (a typical decode step)."""
        rows = self.windows.filter(pl.col("window_id").is_in(window_ids))
        if rows.is_empty():
            return None
        return HostGpuView.from_row(
            rows.select(pl.exclude("window_id").median()).row(0, named=True)
        )


def _index(frame: pl.DataFrame, column: str, value: int) -> int:
    hits = np.flatnonzero(frame[column].to_numpy() == value)
    if hits.size == 0:
        raise KeyError(f"no {column} {value}")
    return int(hits[0])


def classify_names(names: pl.Series) -> pl.DataFrame:
    """`name, cls, is_memcpy, gpu_side_wait` for each distinct API name: its class (launch,
    sync: the blocking calls and the synchronous, non-Async copies; or other), whether it copies,
    and whether it is a stream's wait on an event."""
    distinct = pl.DataFrame({"name": names.unique()})

    def starts(prefixes: tuple[str, ...]) -> pl.Expr:
        expr = pl.lit(False)
        for prefix in prefixes:
            expr = expr | pl.col("name").str.starts_with(prefix)
        return expr.fill_null(False)

    memcpy = starts(MEMCPY_PREFIXES)
    blocking_copy = memcpy & ~pl.col("name").str.contains("Async").fill_null(False)
    return distinct.select(
        "name",
        cls=pl.when(starts(LAUNCH_PREFIXES))
        .then(LAUNCH)
        .when(starts(SYNC_PREFIXES) | blocking_copy)
        .then(SYNC)
        .otherwise(OTHER)
        .cast(pl.Int8),
        is_memcpy=memcpy,
        gpu_side_wait=pl.col("name").str.contains(GPU_SIDE_WAIT).fill_null(False),
    )


def breakdown(windows: pl.DataFrame, host: pl.DataFrame, gpu: GpuView) -> Breakdown:
    """Host and GPU views of every window (`WINDOWS_SCHEMA`), from their `host_view` and their
    `gpu_view` (either may hold more windows)."""
    windows = windows.select(WINDOWS_SCHEMA.names()).cast(dict(WINDOWS_SCHEMA))  # type: ignore[arg-type]
    per_window = (
        windows.select("window_id", "group")
        .join(host, on="window_id", how="left", maintain_order="left")
        .join(gpu.windows, on="window_id", how="left", maintain_order="left")
    )
    sums = per_window.group_by("group", maintain_order=True).agg(
        pl.exclude("window_id", "launch_latency_median_ns").sum()
    )
    groups = sums.join(gpu.groups, on="group", how="left", maintain_order="left")
    return Breakdown(
        windows=per_window.select("window_id", *VIEW_SCHEMA.names()).cast(dict(VIEW_SCHEMA)),  # type: ignore[arg-type]
        groups=groups.select("group", *VIEW_SCHEMA.names()).cast(dict(VIEW_SCHEMA)),  # type: ignore[arg-type]
    )


# --- host view ---------------------------------------------------------------------------------


# What `add_thread_parts` sums per window: the three API parts and the three counts.
SUMMED: Final = (*HOST_PARTS[:3], *COUNTS[:3])


def host_zeros(n: int) -> dict[str, np.ndarray]:
    """The sums of `add_thread_parts` for n windows, all zero."""
    return {c: np.zeros(n, dtype=np.float64) for c in SUMMED}


def sync_counts(syncs: pl.DataFrame | None) -> pl.DataFrame | None:
    """`global_pid, correlation_id, n`: the synchronization rows of each API call (None when
    there are none, and the synchronizing calls are told by name alone)."""
    if syncs is None or syncs.height == 0:
        return None
    return syncs.group_by("global_pid", "correlation_id").agg(n=pl.len())


def call_flags(
    calls: pl.DataFrame, kinds: pl.DataFrame, key: str, per_call: pl.DataFrame | None
) -> pl.DataFrame:
    """Calls with their name's `cls, is_memcpy, gpu_side_wait` in place of `key` (`kinds`: those
    columns by `name` (`classify_names`) or by `name_id`; an unclassified call is OTHER), made
    final: a call with synchronization rows is a sync (unless a stream waits on an event) and
    `n_sync_rows` counts them (where `per_call`, of `sync_counts`, is given). Calls keep their
    order. Eager frames: a lazy query costs more to plan than a small batch costs to join."""
    calls = calls.join(kinds, on=key, how="left", maintain_order="left").drop(key)
    calls = calls.with_columns(pl.col("cls").fill_null(OTHER))
    if per_call is None:
        return calls
    if per_call.is_empty():
        return calls.with_columns(n_sync_rows=pl.lit(0, pl.Int64))
    calls = calls.join(per_call, on=["global_pid", "correlation_id"], how="left",
                       maintain_order="left")  # fmt: skip
    synced = pl.col("n").is_not_null() & ~pl.col("gpu_side_wait")
    return calls.with_columns(
        cls=pl.when(synced).then(pl.lit(SYNC, pl.Int8)).otherwise("cls"),
        n_sync_rows=pl.when(synced).then(pl.col("n")).otherwise(0).cast(pl.Int64),
    ).drop("n")


def sort_calls(calls: pl.DataFrame) -> pl.DataFrame:
    """Calls by thread, then start, an enclosing call before the calls it encloses (longer first
    at equal starts), equal calls in their order; not sorted again when they already are
    (exports usually list a thread's calls by start)."""
    if _calls_sorted(calls):
        return calls
    return calls.sort(
        "global_tid", "start_ns", "end_ns", descending=[False, False, True], maintain_order=True
    )


def call_arrays(
    calls: pl.DataFrame,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """`tid, start, end, cls, is_memcpy` and `n_sync_rows` (None without synchronization rows)
    of calls made by `call_flags`, as numpy arrays; an end before its start is the start."""
    start = calls["start_ns"].to_numpy()
    end = np.maximum(calls["end_ns"].to_numpy(), start)
    sync_rows = calls["n_sync_rows"].to_numpy() if "n_sync_rows" in calls.columns else None
    return (
        calls["global_tid"].to_numpy(),
        start,
        end,
        calls["cls"].to_numpy(),
        calls["is_memcpy"].to_numpy(),
        sync_rows,
    )


def add_thread_parts(
    out: dict[str, np.ndarray],
    rows: np.ndarray,
    thread: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    sync_rows: np.ndarray | None,
    w_start: np.ndarray,
    w_end: np.ndarray,
) -> None:
    """Add to `out[...][rows]` (`host_zeros`) what some calls of one thread give the windows
    `[w_start, w_end]` of `rows` on that thread.

    `thread` is `start, end, covered, cls, is_memcpy` of the calls by start (longer first at
    equal starts), `covered` the latest end of the thread's earlier calls (int64 min for none),
    which may lie in an earlier batch. Nested API intervals count once: a call's piece starts at
    `covered`, so the pieces are disjoint and sorted, and each window gets their length inside it
    per class. A call is outermost when it starts at or after `covered`; the outermost launch and
    memcpy calls starting in the window are counted, and the synchronization rows of every call
    starting in it (`sync_rows`; without them the outermost synchronizing calls)."""
    start, end, covered, cls, memcpy = thread
    outermost = start >= covered
    piece_start = np.maximum(start, covered)
    keep = end > piece_start
    ps, pe, pc = piece_start[keep], end[keep], cls[keep]
    for c, key in ((LAUNCH, "launch_ns"), (SYNC, "sync_ns"), (OTHER, "other_api_ns")):
        out[key][rows] += intervals.covered_between(ps, pe, pc == c, w_start, w_end)
    starts = start[outermost]
    lo = np.searchsorted(starts, w_start, side="left")
    hi = np.searchsorted(starts, w_end, side="right")
    out["n_launches"][rows] += intervals.count_in(cls[outermost] == LAUNCH, lo, hi)
    out["n_memcpy"][rows] += intervals.count_in(memcpy[outermost], lo, hi)
    if sync_rows is not None:
        # a synchronization row counts wherever its call sits, nested or not
        all_lo = np.searchsorted(start, w_start, side="left")
        all_hi = np.searchsorted(start, w_end, side="right")
        out["n_syncs"][rows] += intervals.count_in(sync_rows, all_lo, all_hi)
    else:
        out["n_syncs"][rows] += intervals.count_in(cls[outermost] == SYNC, lo, hi)


def host_columns(windows: pl.DataFrame, out: dict[str, np.ndarray]) -> list[pl.Series]:
    """`HOST_SCHEMA`'s columns from the windows and their sums."""
    span = (windows["end_ns"] - windows["start_ns"]).to_numpy().astype(np.float64)
    outside = span - out["launch_ns"] - out["sync_ns"] - out["other_api_ns"]
    return [
        pl.Series("span_ns", span),
        *(pl.Series(k, out[k]) for k in HOST_PARTS[:3]),
        pl.Series("outside_api_ns", outside),
        *(pl.Series(k, out[k]) for k in COUNTS[:3]),
    ]


def _calls_sorted(calls: pl.DataFrame) -> bool:
    """True when calls run by thread, then start, an enclosing call before the calls it
    encloses (longer first at equal starts)."""
    tid, start, end = (np.diff(calls[c].to_numpy()) for c in ("global_tid", "start_ns", "end_ns"))
    return bool(np.all((tid > 0) | ((tid == 0) & ((start > 0) | ((start == 0) & (end <= 0))))))


# --- stages ------------------------------------------------------------------------------------


def stage_windows(
    ranges: pl.DataFrame,
    stage_ranges: Mapping[str, list[int]],
    decode_steps: list[tuple[int, int]],
) -> pl.DataFrame:
    """Windows (`WINDOWS_SCHEMA`) of the stage ranges (group = stage) and of the decode steps
    (group `decode_step`, owner = their decode range), from the attribution's ranges frame."""
    keys = [(rid, rid, stage) for stage, ids in stage_ranges.items() for rid in ids]
    keys += [(step, owner, STEP_GROUP) for owner, step in decode_steps]
    wanted = pl.DataFrame(
        keys, schema={"window_id": pl.Int64, "owner_id": pl.Int64, "group": pl.String}, orient="row"
    )
    found = ranges.select(pl.col("range_id").alias("window_id"), "global_tid", "start_ns", "end_ns")
    return wanted.join(found, on="window_id", how="inner", maintain_order="left").select(
        WINDOWS_SCHEMA.names()
    )
