"""The generator's graph-level mode against its node mode: same seed, same times, and each CUDA
graph replay written as one `CUPTI_ACTIVITY_KIND_GRAPH_TRACE` row instead of its node kernels."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest
from benchmarks.gen_trace import Summary, generate

from llm_perf_opt.analysis import AnalyzeOptions, analyze_trace
from llm_perf_opt.attribution import RangeSelection, attribute
from llm_perf_opt.trace import open_trace
from tests.helpers.generated import TINY_KERNELS, Tiny

STAGES = RangeSelection(names=("vision", "prefill", "decode"), domains=("llm_perf_opt",))


@pytest.fixture(scope="module")
def graph_level(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Summary]:
    path = tmp_path_factory.mktemp("gen_graph") / "tiny_graph.sqlite"
    return path, generate(path, TINY_KERNELS, seed=0, graph_level=True)


def _replays(node_ops: pl.DataFrame) -> pl.DataFrame:
    """Each replay of the node-mode trace: its correlation id, first start, last end, kernels."""
    nodes = node_ops.filter(pl.col("graph_node_id").is_not_null())
    return (
        nodes.group_by("correlation_id")
        .agg(
            start_ns=pl.col("start_ns").min(),
            end_ns=pl.col("end_ns").max(),
            node_ns=(pl.col("end_ns") - pl.col("start_ns")).sum(),
            n_nodes=pl.len(),
        )
        .sort("correlation_id")
    )


def test_graph_rows_replace_the_node_kernels(tiny: Tiny, graph_level: tuple[Path, Summary]) -> None:
    path, summary = graph_level
    replays = _replays(open_trace(tiny.path).gpu_ops())
    ops = open_trace(path).gpu_ops()
    graphs = ops.filter(pl.col("kind") == "graph").sort("correlation_id")
    assert replays.height > 10 and graphs.height == replays.height == summary.n_graph_replays
    assert graphs.select("correlation_id", "start_ns", "end_ns").equals(
        replays.select("correlation_id", "start_ns", "end_ns")
    )
    assert summary.n_kernels == tiny.summary.n_kernels - int(replays["n_nodes"].sum())
    assert ops.filter(pl.col("kind") == "kernel")["graph_node_id"].null_count() == summary.n_kernels


def test_attribution_of_both_modes_differs_by_the_replays_alone(
    tiny: Tiny, graph_level: tuple[Path, Summary]
) -> None:
    node = attribute(open_trace(tiny.path), STAGES)
    graph = attribute(open_trace(graph_level[0]), STAGES)
    # per stage range: the node kernels it ran, and the gaps inside its replays
    replays = _replays(open_trace(tiny.path).gpu_ops()).join(
        node.ops.select("correlation_id", "range_id").unique(), on="correlation_id"
    )
    per_range = replays.group_by("range_id").agg(
        node_ns=pl.col("node_ns").sum(), gap_ns=(pl.col("end_ns") - pl.col("start_ns")).sum()
    )
    both = node.ranges.join(graph.ranges, on="range_id", suffix="_g").join(
        per_range, on="range_id", how="left"
    )
    both = both.with_columns(pl.col("node_ns", "gap_ns").fill_null(0))
    assert (both["n_gpu_ops"] == both["n_gpu_ops_g"]).all()
    assert (both["excl_n_gpu_ops"] == both["excl_n_gpu_ops_g"]).all()
    assert (both["excl_kernel_sum_ns"] - both["excl_kernel_sum_ns_g"] == both["node_ns"]).all()
    gaps = both["gap_ns"] - both["node_ns"]
    assert (both["excl_gpu_busy_ns_g"] - both["excl_gpu_busy_ns"] == gaps).all()
    assert int(gaps.sum()) > 0


def test_report_of_the_graph_level_trace(tiny: Tiny, graph_level: tuple[Path, Summary]) -> None:
    path, summary = graph_level
    graph = analyze_trace(path, AnalyzeOptions()).report
    node = analyze_trace(tiny.path, AnalyzeOptions()).report
    assert graph is not None and node is not None
    plan = summary.plan
    decode, node_decode = graph.stages["decode"], node.stages["decode"]
    assert decode.n_graph_ops == plan.n_images * plan.decode_steps
    assert node_decode.n_graph_ops == 0
    assert decode.n_gpu_ops == node_decode.n_gpu_ops
    assert 1.0 <= decode.gpu_busy_ns / node_decode.gpu_busy_ns < 1.1
    (entry,) = [k for k in decode.top_kernels if k.kind == "graph"]
    assert (entry.name, entry.count, entry.total_ns) == ("CUDA graph 2", decode.n_graph_ops,
                                                         decode.graph_sum_ns)  # fmt: skip
    assert sum("--cuda-graph-trace=node" in w for w in graph.warnings) == 1
    assert not any("--cuda-graph-trace=node" in w for w in node.warnings)
