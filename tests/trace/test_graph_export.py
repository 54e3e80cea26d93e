"""CUDA graph executions read from a hand-written export in the real nsys 2025.3 schema.

The tables come from `benchmarks/nsys_schema_3_20_3.sql` and, for
`CUPTI_ACTIVITY_KIND_GRAPH_TRACE`, `benchmarks/nsys_schema_3_20_3_graph_trace.sql`. Every expected
number is arithmetic on this page.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import polars as pl
import pytest

from llm_perf_opt.attribution import attribute
from llm_perf_opt.trace import open_trace
from tests.helpers.export import GPID, MAIN, SCHEMA, insert, kernel

GRAPH_TRACE_SQL = SCHEMA.with_name("nsys_schema_3_20_3_graph_trace.sql")

# cudaLaunchKernel (corr 1), three cudaGraphLaunch calls (corr 2, 3 inside `decode`; 4 after it)
CALLS = [(100, 1, 4), (200, 2, 5), (300, 3, 5), (2_000, 4, 5)]
# (start, end, stream, correlationId, graphId)
REPLAYS = [(1_100, 1_400, 7, 2, 5), (1_300, 1_800, 8, 3, 5), (2_100, 2_200, 7, 4, 6)]


def graph_trace_row(start: int, end: int, stream: int, corr: int, graph: int) -> dict[str, object]:
    return {
        "start": start, "end": end, "deviceId": 0, "contextId": 1, "greenContextId": None,
        "streamId": stream, "correlationId": corr, "globalPid": GPID, "graphId": graph,
        "graphExecId": graph + 100,
    }  # fmt: skip


@pytest.fixture
def graph_export(tmp_path: Path) -> Path:
    path = tmp_path / "graphs.sqlite"
    with sqlite3.connect(path) as db:
        db.executescript(SCHEMA.read_text())
        db.executescript(GRAPH_TRACE_SQL.read_text())
        strings = ["llm_perf_opt", "decode", "my_kernel", "cudaLaunchKernel", "cudaGraphLaunch"]
        insert(db, "StringIds", [{"id": i, "value": v} for i, v in enumerate(strings, 1)])
        event = ("start", "end", "eventType", "text", "textId", "domainId", "globalTid")
        insert(
            db,
            "NVTX_EVENTS",
            [
                dict(zip(event, (0, None, 75, "llm_perf_opt", None, 1, MAIN), strict=True)),
                dict(zip(event, (10, 1_000, 59, None, 2, 1, MAIN), strict=True)),  # decode
            ],
        )
        insert(
            db,
            "CUPTI_ACTIVITY_KIND_RUNTIME",
            [
                {"start": t, "end": t + 5, "eventClass": 1, "correlationId": corr,
                 "nameId": name, "returnValue": 0, "globalTid": MAIN}
                for t, corr, name in CALLS
            ],
        )  # fmt: skip
        insert(db, "CUPTI_ACTIVITY_KIND_KERNEL", [kernel(1_000, 1_100, 1)])
        insert(db, "CUPTI_ACTIVITY_KIND_GRAPH_TRACE", [graph_trace_row(*r) for r in REPLAYS])
    path.chmod(0o444)
    return path


def test_reader_returns_graph_executions_as_ops(graph_export: Path) -> None:
    trace = open_trace(graph_export)
    ops = trace.gpu_ops().sort("start_ns")
    assert ops["kind"].cast(pl.String).to_list() == ["kernel", "graph", "graph", "graph"]
    graphs = ops.filter(pl.col("kind") == "graph")
    assert graphs["name_id"].null_count() == 3
    assert graphs["graph_id"].to_list() == [5, 5, 6]
    assert graphs["correlation_id"].to_list() == [2, 3, 4]
    assert ops.filter(pl.col("kind") == "kernel")["graph_id"].to_list() == [None]
    assert trace.gpu_ops(lean=True)["graph_id"].drop_nulls().to_list() == [5, 5, 6]
    assert trace.trace_end_ns == 2_200  # the last replay ends the trace


def test_graph_executions_are_attributed_and_busy(graph_export: Path) -> None:
    attr = attribute(open_trace(graph_export))
    decode = attr.ranges.filter(pl.col("name") == "decode").row(0, named=True)
    assert decode["n_gpu_ops"] == 3
    assert decode["kernel_sum_ns"] == 100
    # [1000, 1100) ∪ [1100, 1400) ∪ [1300, 1800): one interval of 800 ns
    assert decode["gpu_busy_ns"] == 800
    assert (decode["proj_start_ns"], decode["proj_duration_ns"]) == (1_000, 800)
    free = attr.unattributed().row(0, named=True)
    assert (free["reason"], free["n_gpu_ops"], free["duration_sum_ns"]) == (
        "outside_any_range",
        1,
        100,
    )


def test_export_with_only_graph_executions(graph_export: Path, tmp_path: Path) -> None:
    copy = tmp_path / "only_graphs.sqlite"
    copy.write_bytes(graph_export.read_bytes())
    with sqlite3.connect(copy) as db:
        db.execute("DROP TABLE CUPTI_ACTIVITY_KIND_KERNEL")
    decode = attribute(open_trace(copy)).ranges.filter(pl.col("name") == "decode")
    assert decode.select("n_gpu_ops", "kernel_sum_ns", "gpu_busy_ns").row(0) == (2, 0, 700)


def test_absent_graph_table_gives_no_graph_ops(tmp_path: Path) -> None:
    path = tmp_path / "plain.sqlite"
    with sqlite3.connect(path) as db:
        db.executescript(SCHEMA.read_text())
        insert(db, "CUPTI_ACTIVITY_KIND_KERNEL", [kernel(1_000, 1_100, 1)])
    trace = open_trace(path)
    assert "CUPTI_ACTIVITY_KIND_GRAPH_TRACE" not in trace.tables
    ops = trace.gpu_ops()
    assert ops["kind"].cast(pl.String).to_list() == ["kernel"]
    assert ops["graph_id"].to_list() == [None]
