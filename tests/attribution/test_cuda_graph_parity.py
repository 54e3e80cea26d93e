"""Attribution parity on CUDA-graph decode traced both ways on an H200.

The same run of v1 base with `--cuda-graphs --experts-implementation grouped_mm`, captured with
`--cuda-graph-trace=node` and with `--cuda-graph-trace=graph` (nsys's default); NVIDIA's CSVs from
nsys 2025.3 on that machine. In graph mode each decode step is one
`CUPTI_ACTIVITY_KIND_GRAPH_TRACE` row spanning the ~1,000 nodes of the captured step; in node mode
those nodes are kernel/memcpy/memset rows sharing the `cudaGraphLaunch` correlation id. NVIDIA's
`nvtx_gpu_proj_trace` leaves graph-level rows out.
"""

from __future__ import annotations

import lzma
import sqlite3
from functools import cache
from pathlib import Path
from typing import Final

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from llm_perf_opt.attribution import Attribution, attribute, attribute_frames
from llm_perf_opt.trace import open_trace
from tests.helpers.oracles import (
    kernel_sums,
    outside_kernel_time,
    projection_mismatches,
    read_projection,
)
from tests.helpers.paths import TRACES

NODE, GRAPH = "dsocr_v1_base_cg_node", "dsocr_v1_base_cg_graph"
GRAPH_SQL: Final = TRACES.parent / "benchmarks" / "nsys_schema_3_20_3_graph_trace.sql"
REPLAYS: Final = 3 * 7 + 3  # 3 pages of 7 decode steps, and the warmup round's 3


def trace_path(name: str) -> Path:
    return TRACES / f"{name}.sqlite.xz"


def oracle(name: str, report: str) -> Path:
    return TRACES / "oracle" / f"{name}_nsys2025_{report}.csv.xz"


@cache
def attributed(name: str) -> Attribution:
    return attribute(open_trace(trace_path(name)))


@pytest.fixture(scope="module")
def graph_db(tmp_path_factory: pytest.TempPathFactory) -> sqlite3.Connection:
    path = tmp_path_factory.mktemp("cg") / f"{GRAPH}.sqlite"
    path.write_bytes(lzma.decompress(trace_path(GRAPH).read_bytes()))
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True)


def test_each_mode_holds_what_nsys_documents(graph_db: sqlite3.Connection) -> None:
    node_ops = open_trace(trace_path(NODE)).gpu_ops()
    assert "CUPTI_ACTIVITY_KIND_GRAPH_TRACE" not in open_trace(trace_path(NODE)).tables
    replays = node_ops.filter(pl.col("graph_node_id").is_not_null())
    graph_ops = open_trace(trace_path(GRAPH)).gpu_ops()
    graphs = graph_ops.filter(pl.col("kind") == "graph")
    # one graph; its node rows in no table of the graph-level export
    assert replays["correlation_id"].n_unique() == graphs.height == REPLAYS
    assert graphs["graph_id"].n_unique() == 1 and graphs["name_id"].null_count() == graphs.height
    assert graph_ops["graph_node_id"].drop_nulls().is_empty()
    real = graph_db.execute(
        "SELECT sql FROM sqlite_master WHERE name = 'CUPTI_ACTIVITY_KIND_GRAPH_TRACE'"
    ).fetchone()[0]
    committed = GRAPH_SQL.read_text()
    assert real == committed[committed.index("CREATE TABLE") :].rstrip().removesuffix(";")


def test_node_mode_matches_nvidia_on_every_range() -> None:
    ours = attributed(NODE)
    bad = projection_mismatches(ours, oracle(NODE, "nvtx_gpu_proj_trace"))
    assert bad.is_empty(), bad
    assert_frame_equal(*kernel_sums(ours, oracle(NODE, "nvtx_kern_sum")))
    outside = ours.unattributed().filter(pl.col("reason") == "outside_any_range")
    assert int(outside["kernel_sum_ns"].sum()) == outside_kernel_time(oracle(NODE, "nvtx_kern_sum"))


def test_graph_mode_matches_nvidia_which_counts_no_graph_rows(graph_db: sqlite3.Connection) -> None:
    """NVIDIA's projection of a graph-level trace is ours without the graph rows, range by range;
    ours counts each graph launch once more, in the ranges around its `cudaGraphLaunch` call."""
    trace = open_trace(trace_path(GRAPH))
    ops, calls = trace.gpu_ops(lean=True), trace.launch_calls()
    nvidia_view = attribute_frames(
        trace.nvtx_ranges(), ops.filter(pl.col("kind") != "graph"), calls
    )
    bad = projection_mismatches(nvidia_view, oracle(GRAPH, "nvtx_gpu_proj_trace"))
    assert bad.is_empty(), bad
    # graph launches per range, straight from SQLite: the call on the range's thread, inside it
    launches = graph_db.execute(
        "SELECT e.rowid, count(*) FROM CUPTI_ACTIVITY_KIND_GRAPH_TRACE g "
        "JOIN CUPTI_ACTIVITY_KIND_RUNTIME r ON r.correlationId = g.correlationId "
        "AND (r.globalTid >> 24) = (g.globalPid >> 24) "
        "JOIN NVTX_EVENTS e ON e.globalTid = r.globalTid AND e.eventType = 59 "
        "AND r.start >= e.start AND r.start <= e.end GROUP BY e.rowid"
    ).fetchall()
    expected = pl.DataFrame(launches, schema={"range_id": pl.Int64, "n": pl.Int64}, orient="row")
    ours = attributed(GRAPH).ranges.join(
        read_projection(oracle(GRAPH, "nvtx_gpu_proj_trace")),
        left_on="range_id",
        right_on="RangeId",
    )
    extra = ours.join(expected, on="range_id", how="left").with_columns(pl.col("n").fill_null(0))
    assert (extra["n_gpu_ops"] - extra["NumGPUOps"] == extra["n"]).all()
    assert int(extra.filter(pl.col("name") == "decode_step")["n"].sum()) == REPLAYS
    assert_frame_equal(*kernel_sums(attributed(GRAPH), oracle(GRAPH, "nvtx_kern_sum")))
