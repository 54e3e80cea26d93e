"""CUDA graphs traced whole (`CUPTI_ACTIVITY_KIND_GRAPH_TRACE`): one clause of the rule per test.

Hand-built frames in the reader's shapes; every expected number is arithmetic on this page.
"""

from __future__ import annotations

import polars as pl

from llm_perf_opt.attribution import RangeSelection, attribute_frames
from tests.helpers.frames import ops_and_calls, ranges

STAGE = {"id": 1, "name": "decode", "start": 0, "end": 1_000}
STEP = {"id": 2, "name": "decode_step", "start": 50, "end": 400}


def _range(result: pl.DataFrame, range_id: int) -> dict[str, object]:
    return result.filter(pl.col("range_id") == range_id).row(0, named=True)


def test_graph_op_is_attributed_to_the_range_of_its_launch_call() -> None:
    ops, calls = ops_and_calls(
        # a replay launched in the step, running after the range closed on the CPU
        {"start": 2_000, "end": 2_500, "launch": 100, "kind": "graph", "graph": 7, "name_id": None},
        # a replay launched after the step, still inside decode
        {"start": 2_600, "end": 2_900, "launch": 500, "kind": "graph", "graph": 7, "name_id": None},
        # a replay launched outside every range
        {"start": 3_000, "end": 3_100, "launch": 1_500, "kind": "graph", "graph": 8},
    )
    attr = attribute_frames(ranges(STAGE, STEP), ops, calls, RangeSelection(names=("decode",)))
    step, decode = _range(attr.ranges, 2), _range(attr.ranges, 1)
    assert (step["n_gpu_ops"], step["gpu_busy_ns"], step["kernel_sum_ns"]) == (1, 500, 0)
    assert (decode["n_gpu_ops"], decode["gpu_busy_ns"], decode["kernel_sum_ns"]) == (2, 800, 0)
    assert decode["excl_gpu_busy_ns"] == 800 and step["excl_gpu_busy_ns"] == 0
    assert (decode["proj_start_ns"], decode["proj_duration_ns"]) == (2_000, 900)
    placed = attr.ops.sort("op_id")
    assert placed["range_id"].to_list() == [1, 1, None]
    assert placed["kind"].cast(pl.String).to_list() == ["graph"] * 3
    assert placed["graph_id"].to_list() == [7, 7, 8]
    assert placed["unattributed_reason"].cast(pl.String).to_list()[2] == "outside_any_range"
    free = attr.unattributed().row(0, named=True)
    assert (free["n_gpu_ops"], free["kernel_sum_ns"], free["duration_sum_ns"]) == (1, 0, 100)


def test_busy_union_per_device_includes_graph_executions() -> None:
    ops, calls = ops_and_calls(
        {"start": 1_000, "end": 2_000, "launch": 100, "kind": "graph", "graph": 1},
        {"start": 1_500, "end": 2_500, "launch": 110, "stream": 9},  # overlaps the replay
        {"start": 1_200, "end": 1_400, "launch": 120, "device": 1},  # another GPU
    )
    decode = _range(attribute_frames(ranges(STAGE), ops, calls).ranges, 1)
    assert decode["gpu_busy_ns"] == (2_500 - 1_000) + 200
    assert decode["kernel_sum_ns"] == 1_000 + 200  # the graph execution is not a kernel
    assert decode["n_gpu_ops"] == 3


def test_graph_row_and_node_rows_of_one_launch_count_once() -> None:
    """A replay recorded both whole and node by node: the node rows stay, the graph row goes."""
    ops, calls = ops_and_calls(
        {"start": 1_000, "end": 1_600, "launch": 100, "corr": 5, "kind": "graph", "graph": 3},
        {"start": 1_000, "end": 1_100, "launch": 100, "corr": 5},
        {"start": 1_200, "end": 1_300, "launch": 100, "corr": 5},
        {"start": 1_500, "end": 1_600, "launch": 100, "corr": 5, "kind": "memset"},
        # another replay, traced whole only: kept
        {"start": 2_000, "end": 2_400, "launch": 200, "corr": 6, "kind": "graph", "graph": 3},
    )
    attr = attribute_frames(ranges(STAGE), ops, calls)
    decode = _range(attr.ranges, 1)
    assert decode["n_gpu_ops"] == 2  # two cudaGraphLaunch calls, as NVIDIA counts
    assert decode["n_op_rows"] == 4
    assert decode["gpu_busy_ns"] == 100 + 100 + 100 + 400  # not the 600 ns span of the first
    assert decode["kernel_sum_ns"] == 200
    kinds = attr.ops.sort("op_id")["kind"].cast(pl.String).to_list()
    assert kinds == ["kernel", "kernel", "memset", "graph"]
    assert attr.ops.filter(pl.col("kind") == "graph")["correlation_id"].to_list() == [6]


def test_node_rows_of_another_process_do_not_hide_a_graph_row() -> None:
    """Correlation ids repeat across processes: only the same (pid, correlationId) covers."""
    ops, calls = ops_and_calls(
        {"start": 1_000, "end": 1_600, "launch": 100, "corr": 5, "kind": "graph", "graph": 3},
        {"start": 1_000, "end": 1_100, "launch": 100, "corr": 5, "pid": 101},
    )
    attr = attribute_frames(ranges(STAGE), ops, calls)
    assert attr.ops.height == 2
    assert _range(attr.ranges, 1)["gpu_busy_ns"] == 600


def test_frames_without_graph_rows_are_unchanged() -> None:
    ops, calls = ops_and_calls(
        {"start": 1_000, "end": 1_100, "launch": 100},
        {"start": 1_200, "end": 1_300, "launch": 150, "kind": "memcpy"},
    )
    attr = attribute_frames(ranges(STAGE), ops, calls)
    assert attr.ops.height == 2
    assert _range(attr.ranges, 1)["gpu_busy_ns"] == 200
