"""Reading the GPU ops and launch calls in bounded batches: on every committed trace and both
backends the batches are the whole frames in start order; a table out of start order, or a
view, stops the read with UnorderedTableError; impossible rows are left out as in the frames."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Final

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from llm_perf_opt.errors import UnorderedTableError
from llm_perf_opt.trace import Trace, open_trace
from tests.helpers.committed import PROBE, SQLITE_TRACES
from tests.helpers.mutate import mutated
from tests.helpers.paths import DATA

LLAMA_PARQUET: Final = DATA / "llama_parquet"
KERNELS: Final = "CUPTI_ACTIVITY_KIND_KERNEL"


def assert_batches_are_the_frames(trace: Trace) -> None:
    """Concatenated batches equal the whole frames sorted by start, for a size giving ≥ 10."""
    ops = trace.gpu_ops(lean=True).sort("start_ns", "op_id", maintain_order=True)
    calls = trace.launch_calls().sort("start_ns", maintain_order=True)
    for frame, batches in ((ops, trace.gpu_op_batches), (calls, trace.launch_call_batches)):
        rows = max(3, frame.height // 10)
        parts = list(batches(rows))
        assert len(parts) >= 10 and all(0 < p.height <= rows for p in parts)
        assert_frame_equal(pl.concat(parts), frame)
    assert trace.warnings == []


@pytest.mark.parametrize("name", list(SQLITE_TRACES))
def test_batches_on_both_backends(name: str, parquet_twins: dict[str, Path]) -> None:
    sqlite, parquet = open_trace(SQLITE_TRACES[name]), open_trace(parquet_twins[name])
    for trace in (sqlite, parquet):
        assert_batches_are_the_frames(trace)
    assert_frame_equal(parquet.gpu_ops(), sqlite.gpu_ops())
    assert_frame_equal(parquet.launch_calls(), sqlite.launch_calls())


def test_batches_of_real_table_exports(llama_small: dict[str, Path]) -> None:
    kinds = set()
    for path in (LLAMA_PARQUET, llama_small["arrow"], llama_small["arrowdir"]):
        trace = open_trace(path)
        assert_batches_are_the_frames(trace)
        kinds |= set(trace.gpu_ops()["kind"])
    assert kinds == {"kernel", "memcpy", "memset"}


def test_graph_replays_merge_with_the_kernels(parquet_twins: dict[str, Path]) -> None:
    trace = open_trace(parquet_twins["dsocr_v1_base_cg_graph"])
    kinds = pl.concat(trace.gpu_op_batches(1000))["kind"]
    assert set(kinds) == {"kernel", "memcpy", "memset", "graph"}


def test_an_inversion_stops_the_read(tmp_path: Path, parquet_twins: dict[str, Path]) -> None:
    later = "start = start + 10000000000, end = end + 10000000000"
    late = mutated(PROBE, tmp_path / "t.sqlite", f"UPDATE {KERNELS} SET {later} WHERE rowid = 30")
    with pytest.raises(UnorderedTableError, match=f"table {KERNELS} is not stored in start order"):
        list(open_trace(late).gpu_op_batches(1000))
    assert open_trace(late).gpu_ops().height == 74  # the whole frame still reads
    shuffled = tmp_path / "p"
    shutil.copytree(parquet_twins["probe_threads"], shuffled)
    calls = shuffled / "CUPTI_ACTIVITY_KIND_RUNTIME.parquet"
    pl.read_parquet(calls).reverse().write_parquet(calls)
    with pytest.raises(UnorderedTableError, match="CUPTI_ACTIVITY_KIND_RUNTIME is not stored"):
        list(open_trace(shuffled).launch_call_batches(1_000_000))


def test_a_view_has_no_row_order(tmp_path: Path) -> None:
    runtime = "CUPTI_ACTIVITY_KIND_RUNTIME"
    view = mutated(
        PROBE,
        tmp_path / "v.sqlite",
        f"ALTER TABLE {runtime} RENAME TO rt_old",
        f"CREATE VIEW {runtime} AS SELECT * FROM rt_old",
    )
    with pytest.raises(UnorderedTableError, match=f"{runtime} is a view"):
        list(open_trace(view).launch_call_batches(100))


def test_impossible_rows_are_left_out_with_one_warning(tmp_path: Path) -> None:
    damaged = mutated(
        PROBE,
        tmp_path / "t.sqlite",
        f"UPDATE {KERNELS} SET start = NULL WHERE rowid % 3 = 0",
        f"UPDATE {KERNELS} SET end = start - 1 WHERE rowid % 7 = 1",
        loosen=[KERNELS],
    )
    whole, batched = open_trace(damaged), open_trace(damaged)
    ops = whole.gpu_ops(lean=True).sort("start_ns", "op_id", maintain_order=True)
    assert_frame_equal(pl.concat(batched.gpu_op_batches(5)), ops)
    assert batched.warnings == whole.warnings
    assert len(whole.warnings) == 2
