"""Each clause of the host/GPU breakdown on hand-built frames (llm_perf_opt.hostview.breakdown)."""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from llm_perf_opt.attribution import RangeSelection, attribute_frames
from llm_perf_opt.attribution.gpu_view import GpuView
from llm_perf_opt.attribution.sweep import WindowTotals
from llm_perf_opt.hostview.breakdown import HostGpuView, breakdown, stage_windows
from llm_perf_opt.metrics.verdict import NO_BREAKDOWN, UnitCounts, Verdict, classify
from tests.helpers.frames import gpid, gtid, ops_and_calls, ranges
from tests.helpers.perop import CALLS_SCHEMA, OPS_SCHEMA, SYNCS_SCHEMA, host_view
from tests.helpers.perop import gpu_view as reference_gpu_view

MAIN, WORKER = gtid(1), gtid(2)


def calls(*rows: tuple[int, str, int, int] | tuple[int, str, int, int, int]) -> pl.DataFrame:
    """API calls as (global_tid, name, start, end[, correlation id])."""
    out = [
        {
            "global_tid": r[0],
            "global_pid": gpid(),
            "correlation_id": r[4] if len(r) == 5 else 1000 + i,
            "start_ns": r[2],
            "end_ns": r[3],
            "name": r[1],
        }
        for i, r in enumerate(rows)
    ]
    return pl.DataFrame(out, schema=CALLS_SCHEMA)


def windows(*rows: tuple[int, int, int], tid: int = MAIN, group: str = "decode") -> pl.DataFrame:
    """Windows as (window/owner id, start, end) on one thread."""
    return pl.DataFrame(
        [
            {
                "window_id": w,
                "owner_id": w,
                "group": group,
                "global_tid": tid,
                "start_ns": a,
                "end_ns": b,
            }
            for w, a, b in rows
        ]
    )


def ops(*rows: tuple[int, int, int, int]) -> pl.DataFrame:
    """Attributed ops as (range id, launch call start, start, end) on device 0."""
    return pl.DataFrame(
        [
            {"range_id": r, "launch_ns": lc, "device_id": 0, "start_ns": a, "end_ns": b}
            for r, lc, a, b in rows
        ],
        schema=OPS_SCHEMA,
    )


def syncs(*correlation_ids: int) -> pl.DataFrame:
    return pl.DataFrame(
        [{"global_pid": gpid(), "correlation_id": c} for c in correlation_ids], schema=SYNCS_SCHEMA
    )


NO_OPS = ops()


def gpu_view(win: pl.DataFrame, ops: pl.DataFrame) -> GpuView:
    """The attribution fold's GPU view (`attribution.sweep.WindowTotals`) of attributed ops,
    given in start order as the fold gives them; equal to the whole-frame reference."""
    ordered = ops.filter(pl.col("launch_ns").is_not_null()).sort("start_ns", maintain_order=True)
    totals = WindowTotals(win, latency_rows=1 << 20)
    totals.add(
        ordered["range_id"].fill_null(-1).to_numpy(),
        *(ordered[c].to_numpy() for c in ("launch_ns", "device_id", "start_ns", "end_ns")),
        np.arange(ordered.height, dtype=np.int64),
    )
    folded = GpuView(*totals.frames())
    reference = reference_gpu_view(win, ops)
    assert_frame_equal(folded.windows, reference.windows)
    assert_frame_equal(folded.groups, reference.groups)
    return folded


def view(win: pl.DataFrame, api: pl.DataFrame, sync: pl.DataFrame | None = None,
         gpu: pl.DataFrame = NO_OPS, window_id: int = 1) -> HostGpuView:  # fmt: skip
    return breakdown(win, host_view(win, api, sync), gpu_view(win, gpu)).window(window_id)


def host_parts(v: HostGpuView) -> tuple[float, ...]:
    return (v.launch_ns, v.sync_ns, v.other_api_ns, v.outside_api_ns)


def test_nested_runtime_and_driver_rows_count_once_for_the_outer_call() -> None:
    api = calls(
        (MAIN, "cudaLaunchKernel_v7000", 100, 200),
        (MAIN, "cuLaunchKernel", 120, 180),  # the driver call inside the runtime call
        (MAIN, "cudaMalloc_v3020", 300, 400),
        (MAIN, "cuMemAlloc_v2", 310, 390),
        (MAIN, "cuLaunchKernelEx", 500, 520),  # a driver launch of its own (cuBLASLt)
    )
    v = view(windows((1, 0, 1000)), api)
    assert host_parts(v) == (120, 0, 100, 780)
    assert v.span_ns == 1000
    assert (v.n_launches, v.n_syncs, v.n_memcpy) == (2, 0, 0)
    # clipped to a window that cuts both nested pairs
    cut = view(windows((1, 150, 350)), api)
    assert host_parts(cut) == (50, 0, 50, 100)
    # a driver call sticking out of its runtime call: only the part outside counts again
    partial = calls((MAIN, "cudaLaunchKernel", 100, 200), (MAIN, "cuKernelGetName", 150, 260))
    assert host_parts(view(windows((1, 0, 1000)), partial)) == (100, 0, 60, 840)


def test_other_threads_calls_are_not_in_the_windows_host_view() -> None:
    api = calls((MAIN, "cudaLaunchKernel", 100, 110), (WORKER, "cudaLaunchKernel", 100, 600))
    v = view(windows((1, 0, 1000)), api)
    assert host_parts(v) == (10, 0, 0, 990) and v.n_launches == 1


def test_a_sync_spanning_a_kernel_is_sync_time_and_the_kernel_is_busy() -> None:
    api = calls(
        (MAIN, "cudaLaunchKernel_v7000", 100, 110, 1),
        (MAIN, "cudaStreamSynchronize_v3020", 115, 505, 2),
    )
    gpu = ops((1, 100, 120, 500))
    v = view(windows((1, 0, 600)), api, syncs(2), gpu)
    assert host_parts(v) == (10, 390, 0, 200)
    assert (v.n_launches, v.n_syncs, v.n_gpu_ops) == (1, 1, 1)
    assert (v.busy_ns, v.starved_ns, v.queued_ns, v.edge_ns) == (380, 0, 0, 220)
    assert v.gpu_window_ns == 600 and v.launch_latency_median_ns == 20
    # without the synchronization table the blocking call itself is counted
    assert view(windows((1, 0, 600)), api, None, gpu).n_syncs == 1


def test_a_copy_then_a_stream_sync_is_one_sync_and_one_memcpy() -> None:
    api = calls(
        (MAIN, "cudaMemcpyAsync_v3020", 100, 110, 1),
        (MAIN, "cudaStreamSynchronize_v3020", 110, 150, 2),
    )
    with_table = view(windows((1, 0, 200)), api, syncs(2))
    without = view(windows((1, 0, 200)), api)
    for v in (with_table, without):
        assert (v.n_syncs, v.n_memcpy) == (1, 1)
        assert host_parts(v) == (0, 40, 10, 150)


def test_synchronous_copies_are_syncs_and_stream_waits_are_not() -> None:
    api = calls(
        (MAIN, "cudaMemcpy_v3020", 100, 150, 1),  # not Async: the host blocks
        (MAIN, "cudaStreamWaitEvent_v3020", 200, 210, 2),  # the GPU waits, the host does not
    )
    v = view(windows((1, 0, 300)), api, syncs(2))
    assert host_parts(v) == (0, 50, 10, 240)
    assert (v.n_syncs, v.n_memcpy) == (0, 1)
    assert view(windows((1, 0, 300)), api).n_syncs == 1
    # a synchronization row marks its call as a sync whatever its name
    other = calls((MAIN, "cuMemcpyDtoHAsync_v2", 100, 150, 7))
    assert host_parts(view(windows((1, 0, 300)), other, syncs(7, 7))) == (0, 50, 0, 250)
    assert view(windows((1, 0, 300)), other, syncs(7, 7)).n_syncs == 2  # one per row


def test_gap_is_starved_until_the_launch_call_and_queued_after_it() -> None:
    gpu = ops(
        (1, 50, 100, 200),  # A
        (1, 300, 310, 400),  # B: launched 100 ns after A ended → starved 100, queued 10
        (1, 320, 450, 500),  # C: launched while B ran → its 50 ns gap is queued
    )
    v = view(windows((1, 0, 500)), calls(), None, gpu)
    assert (v.busy_ns, v.starved_ns, v.queued_ns, v.edge_ns) == (240, 100, 60, 100)
    assert v.busy_ns + v.starved_ns + v.queued_ns + v.edge_ns == v.gpu_window_ns
    assert v.launch_latency_median_ns == 50  # latencies 50, 10, 130


def test_ops_past_the_cpu_end_extend_the_gpu_window_and_overlaps_count_once() -> None:
    gpu = ops((1, 10, 100, 300), (1, 20, 150, 250), (1, 30, 400, 900))
    v = view(windows((1, 0, 500)), calls(), None, gpu)
    assert v.gpu_window_ns == 900 and v.span_ns == 500
    assert (v.busy_ns, v.starved_ns, v.queued_ns, v.edge_ns) == (700, 0, 100, 100)


def test_window_without_ops_is_all_edge() -> None:
    v = view(windows((1, 0, 500)), calls((MAIN, "cudaFree", 10, 20)), None, NO_OPS)
    assert (v.busy_ns, v.edge_ns, v.n_gpu_ops, v.launch_latency_median_ns) == (0, 500, 0, None)


def _attributed(*op_rows: dict[str, Any]) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    nvtx = ranges(
        {"id": 1, "name": "decode", "start": 0, "end": 1000},
        {"id": 2, "name": "decode_step", "start": 0, "end": 500},
        {"id": 3, "name": "decode_step", "start": 500, "end": 1000},
    )
    gpu, launch = ops_and_calls(*op_rows)
    # as the MFU analysis does: only the stage range takes ops, steps are windows on them
    result = attribute_frames(
        nvtx, gpu, launch, RangeSelection(names=("decode",)), other_threads=True
    )
    # every launch call as a launch API row lasting 5 ns, on its own thread
    api = launch.select(
        "global_tid", "global_pid", "correlation_id", "start_ns", end_ns=pl.col("start_ns") + 5,
        name=pl.lit("cudaLaunchKernel_v7000"),
    )  # fmt: skip
    return result.ranges, result.ops, api


def test_multi_thread_launches_count_in_the_gpu_view_and_only_own_calls_on_the_host() -> None:
    nvtx, attributed, api = _attributed(
        {"start": 120, "end": 200, "launch": 100, "tid": 1},
        {"start": 320, "end": 400, "launch": 300, "tid": 2},  # a worker thread's launch
        {"start": 610, "end": 700, "launch": 600, "tid": 1},
    )
    assert attributed["range_id"].to_list() == [1, 1, 1]
    win = stage_windows(nvtx, {"decode": [1]}, [(1, 2), (1, 3)])
    b = breakdown(win, host_view(win, api, None), gpu_view(win, attributed))
    stage = b.window(1)
    assert stage.n_gpu_ops == 3 and stage.n_launches == 2  # the worker's call is not this thread's
    assert stage.launch_ns == 10
    # the worker launched B after A ended: 100 ns starved before its call, 20 queued after
    assert (stage.busy_ns, stage.starved_ns, stage.queued_ns) == (250, 100 + 200, 20 + 10)
    assert stage.edge_ns == 120 + 300
    first, second = b.window(2), b.window(3)
    assert (first.n_gpu_ops, second.n_gpu_ops) == (2, 1)
    assert first.busy_ns + second.busy_ns == stage.busy_ns
    total = b.group("decode")
    assert total is not None and total.busy_ns == 250
    steps = b.group("decode_step")
    assert steps is not None and steps.n_gpu_ops == 3 and steps.span_ns == 1000
    typical = b.median([2, 3])
    assert typical is not None and typical.n_gpu_ops == 1.5


FEW_SYNCS = UnitCounts("step", syncs=9, copies=0, launches=100)


@pytest.mark.parametrize(
    ("parts", "counts", "mbu", "label"),
    [
        # the GPU busy half its window: its own limit, told apart by MBU against MFU (0.1)
        ({"busy_ns": 600, "starved_ns": 300, "queued_ns": 100}, FEW_SYNCS, 0.2, "memory-bound"),
        ({"busy_ns": 500, "starved_ns": 400, "queued_ns": 100}, FEW_SYNCS, 0.05, "compute-bound"),
        ({"busy_ns": 600, "starved_ns": 400, "sync_ns": 900},
         UnitCounts("step", syncs=500, copies=0, launches=500), None, "compute-bound"),
        # the host late: its largest part, or the syncs first when there are many
        ({"busy_ns": 100, "starved_ns": 300, "queued_ns": 600}, FEW_SYNCS, None, "queue-bound"),
        ({"busy_ns": 100, "starved_ns": 800, "queued_ns": 100, "sync_ns": 500}, FEW_SYNCS, None,
         "sync-bound"),
        ({"busy_ns": 100, "starved_ns": 800, "queued_ns": 100, "launch_ns": 500}, FEW_SYNCS, None,
         "launch-bound"),
        ({"busy_ns": 100, "starved_ns": 800, "queued_ns": 100, "outside_api_ns": 500},
         FEW_SYNCS, None, "framework-bound"),
        ({"busy_ns": 100, "starved_ns": 800, "queued_ns": 100, "other_api_ns": 500},
         FEW_SYNCS, None, "api-bound"),
        ({"busy_ns": 100, "starved_ns": 800, "queued_ns": 100, "outside_api_ns": 500},
         UnitCounts("step", syncs=10, copies=10, launches=200), None, "sync-bound"),
        ({"busy_ns": 100, "starved_ns": 800, "queued_ns": 100, "outside_api_ns": 500},
         UnitCounts("instance", syncs=10, copies=10, launches=201), None, "framework-bound"),
        ({"busy_ns": 100, "starved_ns": 100, "queued_ns": 800, "outside_api_ns": 500},
         UnitCounts("instance", syncs=10, copies=10, launches=200), None, "sync-bound"),
    ],
)  # fmt: skip
def test_verdict_follows_the_breakdown(
    parts: dict[str, float], counts: UnitCounts, mbu: float | None, label: str
) -> None:
    base = dict.fromkeys(HostGpuView.__dataclass_fields__, 0.0) | {"gpu_window_ns": 1000.0}
    view = HostGpuView(**(base | parts))  # type: ignore[arg-type]
    assert classify(view, counts, 0.1, mbu) == Verdict.of(label)


def test_no_breakdown_no_verdict() -> None:
    assert classify(None, None, 0.5, 0.9) == NO_BREAKDOWN
    assert NO_BREAKDOWN.label == "n/a"


def test_unit_counts_are_per_step_in_decode_and_per_instance_elsewhere() -> None:
    base = dict.fromkeys(HostGpuView.__dataclass_fields__, 0.0)
    total = HostGpuView(**(base | {"n_syncs": 30.0, "n_memcpy": 33.0, "n_launches": 300.0}))  # type: ignore[arg-type]
    step = HostGpuView(**(base | {"n_syncs": 2.0, "n_memcpy": 3.0, "n_launches": 20.0}))  # type: ignore[arg-type]
    assert UnitCounts.of(total, None, 3) == UnitCounts("instance", 10.0, 11.0, 100.0)
    assert UnitCounts.of(total, step, 3) == UnitCounts("step", 2.0, 3.0, 20.0)
