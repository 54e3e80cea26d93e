"""Each rule of the attribution fold on hand-built frames: in batches equal to the whole tables
folded at once (`attribute_frames`) where the input allows batches, StreamOrderError where it
does not; the whole tables then still fold."""

from __future__ import annotations

from typing import Any

import polars as pl
import pytest

from llm_perf_opt.attribution import (
    CALL_BATCH_SCHEMA,
    OP_BATCH_SCHEMA,
    StreamBudget,
    StreamOrderError,
    attribute_stream,
    attribute_whole,
    range_frame,
)
from llm_perf_opt.errors import ConfigError, CorruptTraceError
from tests.helpers.fold_compare import assert_same
from tests.helpers.frames import gtid, ops_and_calls, ranges

STAGE = ranges(
    {"id": 1, "name": "decode", "start": 0, "end": 10_000, "domain": "llm_perf_opt"},
    {"id": 2, "name": "decode_step", "start": 100, "end": 900, "domain": "llm_perf_opt"},
    {"id": 3, "name": "cub::Scan", "start": 200, "end": 300, "domain": "CCCL"},
)


def _stream(raw: pl.DataFrame, ops: pl.DataFrame, calls: pl.DataFrame, **options: Any) -> None:
    """Run the engine on `ops` and `calls` as given (one row per batch), no sorting."""
    attribute_stream(
        range_frame(raw),
        (ops.select(OP_BATCH_SCHEMA.names()).slice(i, 1) for i in range(ops.height)),
        (calls.select(CALL_BATCH_SCHEMA.names()).slice(i, 1) for i in range(calls.height)),
        **options,
    )


@pytest.mark.parametrize("rows", [1, 2, 3, 100])
def test_graph_row_with_node_rows_counts_once_across_batch_borders(rows: int) -> None:
    graph = {"kind": "graph", "graph": 4, "name_id": None, "corr": 20, "launch": 150}
    ops, calls = ops_and_calls(
        {"start": 1_000, "end": 1_100, "launch": 120, "corr": 10},
        {**graph, "start": 1_200, "end": 1_900},  # the replay, traced whole...
        *(
            {"start": 1_200 + 250 * i, "end": 1_400 + 250 * i, "launch": 150, "corr": 20}
            for i in range(3)
        ),
        {**graph, "start": 2_000, "end": 2_500, "corr": 30, "launch": 160},  # ...and one only so
        {"start": 2_100, "end": 2_200, "launch": 170, "corr": 40},
    )
    result = assert_same(STAGE, ops, calls, None, rows=rows)
    step = result.ranges.filter(pl.col("range_id") == 2).row(0, named=True)
    assert step["n_gpu_ops"] == 4  # one per launch: the node rows' launch counts once
    assert step["n_op_rows"] == 6  # the covered graph-level row is gone
    assert result.op_kinds.filter(pl.col("kind") == "graph")["n_ops"].item() == 1


def test_a_graph_row_and_a_node_row_of_equal_start_meet_in_any_batch_order() -> None:
    graph = {"kind": "graph", "graph": 4, "name_id": None, "corr": 20, "launch": 150}
    node = {"start": 1_200, "end": 1_400, "launch": 150, "corr": 20}
    for first, second in ((node, graph), (graph, node)):
        ops, calls = ops_and_calls(
            {"start": 1_000, "end": 1_100, "launch": 120, "corr": 10},
            {**first, "start": 1_200, "end": 1_400},
            {**second, "start": 1_200, "end": 1_400},
            {"start": 1_500, "end": 1_600, "launch": 170, "corr": 40},
        )
        result = assert_same(STAGE, ops, calls, None, rows=1)
        assert result.op_kinds["kind"].cast(pl.String).to_list() == ["kernel"]


def test_graph_and_node_rows_without_a_call_meet_at_an_equal_start() -> None:
    graph = {"kind": "graph", "graph": 4, "name_id": None, "corr": 99, "launch": None}
    ops, calls = ops_and_calls(
        {"start": 1_000, "end": 1_100, "launch": 120, "corr": 10},
        {"start": 1_200, "end": 1_400, "launch": None, "corr": 99},
        {**graph, "start": 1_200, "end": 1_400},
        {"start": 1_500, "end": 1_600, "launch": 170, "corr": 40},
    )
    result = assert_same(STAGE, ops, calls, None, rows=1)
    assert result.unattributed["n_gpu_ops"].to_list() == [1]


def test_the_gap_before_ops_of_equal_start_goes_to_the_earliest_launch() -> None:
    """The idle gap before two ops starting together is split at the earlier launch (starved
    100 ns, queued 800), whichever of them arrives first."""
    ops, calls = ops_and_calls(
        {"start": 1_000, "end": 1_100, "launch": 950, "corr": 10},
        {"start": 2_000, "end": 2_100, "launch": 1_500, "corr": 12, "stream": 8},
        {"start": 2_000, "end": 2_050, "launch": 1_200, "corr": 11},
    )
    for rows in (1, 2, 3):
        result = assert_same(STAGE, ops, calls, None, rows=rows)
        assert result.gpu_windows is not None
        decode = result.gpu_windows.filter(pl.col("window_id") == 1).row(0, named=True)
        assert (decode["starved_ns"], decode["queued_ns"]) == (100.0, 800.0)


def test_a_node_row_before_its_graph_row_still_drops_it() -> None:
    graph = {"kind": "graph", "graph": 4, "name_id": None, "corr": 20, "launch": 150}
    ops, calls = ops_and_calls(
        {"start": 1_000, "end": 1_100, "launch": 150, "corr": 20},  # a node row, released first
        {"start": 1_150, "end": 1_180, "launch": 160, "corr": 30},
        {**graph, "start": 1_200, "end": 1_300},
        {"start": 1_400, "end": 1_500, "launch": 170, "corr": 40},
    )
    result = assert_same(STAGE, ops, calls, None, rows=1)
    assert result.op_kinds["kind"].cast(pl.String).to_list() == ["kernel"]


def test_a_node_row_after_its_graph_row_ended_is_an_error() -> None:
    graph = {"kind": "graph", "graph": 4, "name_id": None, "corr": 20, "launch": 150}
    ops, calls = ops_and_calls(
        {**graph, "start": 1_200, "end": 1_300},
        {"start": 1_400, "end": 1_500, "launch": 160, "corr": 30},
        {"start": 1_600, "end": 1_700, "launch": 150, "corr": 20},  # a node row of that replay
    )
    with pytest.raises(StreamOrderError, match="node rows after its graph-level row ended"):
        _stream(STAGE, ops, calls)


def test_ops_without_a_launch_call_are_kept_with_their_reason() -> None:
    ops, calls = ops_and_calls(
        {"start": 1_000, "end": 1_100, "launch": None, "corr": 3},  # before the first call
        {"start": 1_050, "end": 1_150, "launch": 120, "corr": 10},
        {"start": 1_200, "end": 1_300, "launch": None, "corr": 11},  # between two calls
        {"start": 1_300, "end": 1_350, "launch": 130, "corr": 12},
        {"start": 1_400, "end": 1_500, "launch": None, "corr": 99},  # after every call
        {"start": 1_600, "end": 1_700, "launch": None, "corr": None},
    )
    for rows in (1, 2, 6):
        result = assert_same(STAGE, ops, calls, None, rows=rows)
        assert result.unattributed.row(0, named=True) == {
            "reason": "no_launch_call",
            "n_gpu_ops": 4,
            "kernel_sum_ns": 400,
            "duration_sum_ns": 400,
        }


def test_an_op_that_starts_before_its_launch_call_is_an_error() -> None:
    ops, calls = ops_and_calls(
        {"start": 1_000, "end": 1_100, "launch": 120, "corr": 10},
        {"start": 1_150, "end": 1_200, "launch": 1_300, "corr": 12},  # its call comes later
        {"start": 1_400, "end": 1_500, "launch": 1_250, "corr": 11},
    )
    assert assert_same(STAGE, ops, calls, None, rows=100).ranges.height == 3  # in one batch: fine
    with pytest.raises(StreamOrderError, match="starts before its launch call"):
        _stream(STAGE, ops.sort("start_ns"), calls.sort("start_ns"))
    last, _ = ops_and_calls(  # the late call comes after the last op
        {"start": 1_000, "end": 1_100, "launch": 120, "corr": 10},
        {"start": 1_150, "end": 1_200, "launch": 1_300, "corr": 12},
    )
    _, between = ops_and_calls({"start": 1_250, "end": 1_260, "launch": 1_250, "corr": 11})
    with pytest.raises(StreamOrderError, match="starts before its launch call"):
        _stream(STAGE, last, pl.concat([calls.filter(pl.col("correlation_id") != 11), between])
                .sort("start_ns"))  # fmt: skip


def test_ops_out_of_start_order_are_an_error() -> None:
    ops, calls = ops_and_calls(
        {"start": 2_000, "end": 2_100, "launch": 120, "corr": 10},
        {"start": 1_000, "end": 1_100, "launch": 130, "corr": 11},
    )
    with pytest.raises(StreamOrderError, match="GPU ops are not in start order"):
        _stream(STAGE, ops, calls)


def test_calls_out_of_start_order_are_an_error() -> None:
    ops, calls = ops_and_calls(
        {"start": 2_000, "end": 2_100, "launch": 130, "corr": 10},
        {"start": 2_200, "end": 2_300, "launch": 120, "corr": 11},
    )
    with pytest.raises(StreamOrderError, match="CUDA API calls are not in start order"):
        _stream(STAGE, ops, calls)


def test_correlation_ids_that_fall_as_calls_start_are_an_error() -> None:
    ops, calls = ops_and_calls(
        {"start": 2_000, "end": 2_100, "launch": 120, "corr": 11},
        {"start": 2_200, "end": 2_300, "launch": 130, "corr": 10},
    )
    with pytest.raises(StreamOrderError, match="correlation ids"):
        _stream(STAGE, ops, calls)


def test_a_repeated_correlation_id_keeps_its_first_call_as_attribute_does() -> None:
    ops, _ = ops_and_calls({"start": 2_000, "end": 2_100, "launch": 150, "corr": 10})
    calls = pl.DataFrame(
        {"global_tid": [gtid(1), gtid(2)], "correlation_id": [10, 10], "start_ns": [150, 5_000]}
    )
    two_threads = pl.concat([STAGE, ranges({"id": 9, "name": "other", "start": 0,
                                            "end": 9_000, "tid": 2})])  # fmt: skip
    result = assert_same(two_threads, ops, calls, None, rows=1)
    assert result.ranges.filter(pl.col("range_id") == 2)["n_gpu_ops"].item() == 1


def test_correlation_ids_are_per_process() -> None:
    two = ranges(
        {"id": 1, "name": "stage", "start": 0, "end": 1000, "pid": 1},
        {"id": 2, "name": "stage", "start": 0, "end": 1000, "pid": 2},
    )
    ops, calls = ops_and_calls(
        {"start": 300, "end": 310, "launch": 100, "corr": 5, "pid": 1},
        {"start": 300, "end": 400, "launch": 110, "corr": 5, "pid": 2},
        {"start": 500, "end": 600, "launch": 120, "corr": 6, "pid": 1},
    )
    result = assert_same(two, ops, calls, None, rows=1)
    assert result.ranges.sort("pid")["kernel_sum_ns"].to_list() == [110, 100]


def test_other_threads_and_nested_ranges_in_tiny_batches() -> None:
    nested = ranges(
        {"id": 1, "name": "image", "start": 0, "end": 1000},
        {"id": 2, "name": "decode", "start": 10, "end": 900},
        {"id": 3, "name": "step", "start": 20, "end": 200},
    )
    ops, calls = ops_and_calls(
        {"start": 300, "end": 310, "launch": 100, "tid": 1},
        {"start": 305, "end": 450, "launch": 150, "tid": 2, "stream": 9},  # a worker thread
        {"start": 400, "end": 420, "launch": 160, "tid": 1},
        {"start": 430, "end": 470, "launch": 1_500, "tid": 2},  # after every range
    )
    for rows in (1, 3):
        for other_threads in (False, True):
            assert_same(nested, ops, calls, None, rows=rows, other_threads=other_threads)


def test_a_launch_call_older_than_the_window_is_an_error() -> None:
    live = StreamBudget.of(1 << 20).live_calls
    n = live + 2_000
    calls = pl.DataFrame(
        {"global_tid": [gtid(1)] * n, "correlation_id": range(n), "start_ns": range(10, n + 10)},
        schema=CALL_BATCH_SCHEMA,
    )
    ops, _ = ops_and_calls(
        {"start": n + 100, "end": n + 200, "launch": 10, "corr": n - 1},
        {"start": n + 300, "end": n + 400, "launch": 10, "corr": 0},  # launched n calls ago
    )
    wide = ranges({"id": 1, "name": "run", "start": 0, "end": 2 * n})
    with pytest.raises(StreamOrderError, match="raise the memory budget"):
        attribute_stream(
            range_frame(wide), [ops.drop("graph_node_id", "bytes")], [calls],
            memory_budget_bytes=1 << 20,
        )  # fmt: skip
    result = assert_same(wide, ops, calls, None, rows=1_000, budget=64 << 20)
    assert result.ranges["n_gpu_ops"].item() == 2


def test_a_launch_latency_beyond_nine_minutes_is_an_error() -> None:
    late = (1 << 39) + 150
    ops, calls = ops_and_calls({"start": late, "end": late + 10, "launch": 150, "corr": 10})
    long_stage = ranges({"id": 1, "name": "decode", "start": 0, "end": 1_000})
    with pytest.raises(CorruptTraceError, match="more than 9 minutes away from its launch call"):
        assert_same(long_stage, ops, calls, None, rows=1)
    windows = pl.DataFrame(
        {"window_id": [1], "owner_id": [1], "group": ["decode"], "global_tid": [gtid(1)],
         "start_ns": [0], "end_ns": [1_000]}
    )  # fmt: skip
    with pytest.raises(CorruptTraceError, match="more than 9 minutes away"):
        attribute_whole(range_frame(long_stage), ops, calls, windows=windows)


def test_what_batches_cannot_read_the_whole_tables_can() -> None:
    """Ops and calls out of start order, ids that fall as calls start, an op before its call:
    `attribute_whole` sorts the tables and reads every call first."""
    ops, calls = ops_and_calls(
        {"start": 2_000, "end": 2_100, "launch": 150, "corr": 11},
        {"start": 1_000, "end": 1_100, "launch": 250, "corr": 10},  # ids fall as calls start
        {"start": 1_150, "end": 1_200, "launch": 1_300, "corr": 12},  # starts before its call
    )
    result = attribute_whole(range_frame(STAGE), ops, calls.reverse(), keep_ops=True)
    step = result.ranges.filter(pl.col("range_id") == 2).row(0, named=True)
    assert (step["n_gpu_ops"], step["kernel_sum_ns"]) == (2, 200)  # the two launched in 100-900
    decode = result.ranges.filter(pl.col("range_id") == 1).row(0, named=True)
    assert (decode["n_gpu_ops"], decode["excl_n_gpu_ops"]) == (3, 1)
    assert result.ops is not None
    assert result.ops.sort("op_id")["range_id"].to_list() == [2, 3, 1]  # 250: inside cub::Scan


def test_a_trace_without_ops_gives_the_bare_ranges() -> None:
    ops, calls = ops_and_calls()
    result = assert_same(STAGE, ops, calls, None, rows=1)
    assert result.ranges["n_gpu_ops"].to_list() == [0, 0, 0]
    assert result.unattributed.is_empty() and result.top_kernels.is_empty()


def test_a_memory_budget_below_the_minimum_is_refused() -> None:
    with pytest.raises(ConfigError, match="too small: give at least 1048576 bytes"):
        StreamBudget.of(1000)
