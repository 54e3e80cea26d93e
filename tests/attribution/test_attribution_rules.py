"""Each clause of the attribution rule, and each number we add beyond NVIDIA, on hand-built data."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from llm_perf_opt.attribution import (
    OPS_SCHEMA,
    RANGES_OUT_COLUMNS,
    RANGES_SCHEMA,
    RangeSelection,
    attribute,
    attribute_frames,
)
from llm_perf_opt.attribution.rule import conformed
from llm_perf_opt.errors import SelectionError
from llm_perf_opt.trace import open_trace
from tests.helpers.frames import ops_and_calls, ranges


def row(result: pl.DataFrame, name: str) -> dict[str, object]:
    return result.filter(pl.col("name") == name).row(0, named=True)


STAGE_AND_LIB = ranges(
    {"id": 1, "name": "stage", "start": 0, "end": 1000, "domain": "llm_perf_opt"},
    {"id": 2, "name": "cub::Scan", "start": 100, "end": 200, "domain": "CCCL"},
)


def test_busy_is_the_union_of_overlapping_ops() -> None:
    ops, calls = ops_and_calls(
        {"start": 300, "end": 400, "launch": 10, "stream": 7},
        {"start": 350, "end": 500, "launch": 20, "stream": 8},  # overlaps the first by 50
        {"start": 600, "end": 650, "launch": 30, "kind": "memcpy"},
    )
    stage = row(attribute_frames(STAGE_AND_LIB, ops, calls).ranges, "stage")
    assert stage["kernel_sum_ns"] == 100 + 150  # memcpy is not a kernel
    assert stage["gpu_busy_ns"] == 200 + 50  # [300, 500) ∪ [600, 650)
    assert stage["proj_start_ns"] == 300 and stage["proj_duration_ns"] == 350


def test_busy_is_per_device_and_summed() -> None:
    ops, calls = ops_and_calls(
        {"start": 300, "end": 400, "launch": 10, "device": 0},
        {"start": 300, "end": 400, "launch": 20, "device": 1},
    )
    stage = row(attribute_frames(STAGE_AND_LIB, ops, calls).ranges, "stage")
    assert stage["gpu_busy_ns"] == 200  # two devices busy 100 ns each
    assert stage["proj_duration_ns"] == 100


def test_inclusive_counts_every_range_on_the_stack_exclusive_only_the_innermost() -> None:
    ops, calls = ops_and_calls(
        {"start": 300, "end": 310, "launch": 150},  # inside cub::Scan inside stage
        {"start": 320, "end": 330, "launch": 500},  # inside stage only
    )
    everything = attribute_frames(STAGE_AND_LIB, ops, calls).ranges
    assert row(everything, "stage")["n_gpu_ops"] == 2
    assert row(everything, "cub::Scan")["n_gpu_ops"] == 1
    assert row(everything, "stage")["excl_n_gpu_ops"] == 1
    assert row(everything, "cub::Scan")["excl_n_gpu_ops"] == 1
    ours = attribute_frames(
        STAGE_AND_LIB, ops, calls, RangeSelection(domains=("llm_perf_opt",))
    ).ranges
    assert row(ours, "stage")["excl_n_gpu_ops"] == 2
    assert row(ours, "stage")["excl_kernel_sum_ns"] == 20
    assert row(ours, "cub::Scan")["excl_n_gpu_ops"] == 0
    assert row(ours, "cub::Scan")["depth"] == 1 and row(ours, "cub::Scan")["parent_id"] == 1


def test_unattributed_ops_are_kept_with_their_reason() -> None:
    ops, calls = ops_and_calls(
        {"start": 300, "end": 310, "launch": 150},  # in cub::Scan only (not selected)
        {"start": 2000, "end": 2100, "launch": 1500},  # after every range
        {"start": 2200, "end": 2250, "launch": None},  # no launch call in the trace
        {"start": 320, "end": 330, "launch": 500},  # in stage
    )
    result = attribute_frames(STAGE_AND_LIB, ops, calls, RangeSelection(names=("cub::Scan",)))
    reasons = {r["reason"]: r for r in result.unattributed().iter_rows(named=True)}
    assert reasons["outside_selected_ranges"]["n_gpu_ops"] == 1
    assert reasons["outside_any_range"]["kernel_sum_ns"] == 100
    assert reasons["no_launch_call"]["kernel_sum_ns"] == 50
    assert result.ops.height == 4  # nothing dropped


def test_graph_launch_counts_once_like_nvidia_but_every_node_runs() -> None:
    ops, calls = ops_and_calls(
        *({"start": 300 + 20 * i, "end": 310 + 20 * i, "launch": 500, "corr": 9} for i in range(3))
    )
    stage = row(attribute_frames(STAGE_AND_LIB, ops, calls).ranges, "stage")
    assert stage["n_gpu_ops"] == 1 and stage["n_op_rows"] == 3
    assert stage["kernel_sum_ns"] == 30


def test_correlation_ids_are_per_process() -> None:
    two = ranges(
        {"id": 1, "name": "stage", "start": 0, "end": 1000, "pid": 1},
        {"id": 2, "name": "stage", "start": 0, "end": 1000, "pid": 2},
    )
    ops, calls = ops_and_calls(
        {"start": 300, "end": 310, "launch": 100, "corr": 5, "pid": 1},
        {"start": 300, "end": 400, "launch": 100, "corr": 5, "pid": 2},
    )
    result = attribute_frames(two, ops, calls).ranges.sort("pid")
    assert result["kernel_sum_ns"].to_list() == [10, 100]


def test_other_thread_launches_are_opt_in_and_labelled() -> None:
    nested = ranges(
        {"id": 1, "name": "image", "start": 0, "end": 1000},
        {"id": 2, "name": "decode", "start": 10, "end": 900},
    )
    ops, calls = ops_and_calls(
        {"start": 300, "end": 310, "launch": 100, "tid": 1},
        {"start": 400, "end": 450, "launch": 200, "tid": 2},  # a worker thread, no ranges
    )
    plain = attribute_frames(nested, ops, calls)
    assert row(plain.ranges, "decode")["n_gpu_ops"] == 1
    assert plain.unattributed()["reason"].to_list() == ["outside_any_range"]
    guessed = attribute_frames(nested, ops, calls, other_threads=True)
    assert row(guessed.ranges, "decode")["excl_n_gpu_ops"] == 2
    assert row(guessed.ranges, "image")["n_gpu_ops"] == 2  # ancestors see it too
    assert row(guessed.ranges, "image")["gpu_busy_ns"] == 60
    labels = guessed.ops.sort("op_id")["attributed_by"].to_list()
    assert labels == ["launch_thread", "other_thread_time"]


def test_selection_matching_nothing_is_an_error() -> None:
    ops, calls = ops_and_calls({"start": 300, "end": 310, "launch": 150})
    with pytest.raises(SelectionError, match="names present: cub::Scan, stage"):
        attribute_frames(STAGE_AND_LIB, ops, calls, RangeSelection(names=("vision",)))


def test_ranges_out_has_exactly_the_contract_columns() -> None:
    ops, calls = ops_and_calls({"start": 300, "end": 310, "launch": 150})
    out = attribute_frames(STAGE_AND_LIB, ops, calls).ranges_out()
    assert tuple(out.columns) == RANGES_OUT_COLUMNS


@pytest.mark.parametrize("offset", [0, 1 << 40])  # dense ids use a table, sparse ones a search
def test_launch_lookup_first_call_wins_and_misses_are_minus_one(offset: int) -> None:
    import numpy as np

    from llm_perf_opt.attribution.intervals import first_match

    keys = np.array([5, 3, 5, 9, -1]) + np.array([offset] * 4 + [0])
    values = np.array([10, 11, 12, 13, 14])
    queries = np.array([5, 9, 4, -1, 3]) + np.array([offset, offset, offset, 0, offset])
    assert first_match(keys, values, queries).tolist() == [10, 13, -1, -1, 11]


def test_outputs_have_the_declared_schemas(probe_trace: Path) -> None:
    """Both frames leave `attribute` as RANGES_SCHEMA and OPS_SCHEMA declare them; the reader's
    optional op columns appear only where it gave them."""
    traced = attribute(open_trace(probe_trace))  # the reader's lean ops: no node id, no bytes
    assert traced.ranges.schema == RANGES_SCHEMA
    lean = [c for c in OPS_SCHEMA.names() if c not in ("graph_node_id", "bytes")]
    assert traced.ops.schema == pl.Schema({c: OPS_SCHEMA[c] for c in lean})
    ops, calls = ops_and_calls({"start": 300, "end": 400, "launch": 10})
    assert attribute_frames(STAGE_AND_LIB, ops, calls).ops.schema == OPS_SCHEMA
    with pytest.raises(pl.exceptions.ColumnNotFoundError):
        conformed(traced.ranges.drop("path"), RANGES_SCHEMA)
