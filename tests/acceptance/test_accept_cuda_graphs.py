"""Decode through CUDA graphs, traced both ways on an H200: GPU busy and MFU of the
graph-level trace (nsys's default) against the node-level one of the same run.

`traces/dsocr_v1_base_cg_node` and `_cg_graph`: v1 base, `--cuda-graphs --experts-implementation
grouped_mm`, 3 pages of 7 decode steps; each step replays one graph of ~1,000 nodes.
`tests/attribution/test_cuda_graph_parity.py` checks their attribution against NVIDIA's.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Final

import polars as pl
import pytest

from llm_perf_opt.analysis import AnalyzeOptions, analyze_trace
from llm_perf_opt.attribution import attribute_frames
from llm_perf_opt.metrics.mfu import MfuReport
from llm_perf_opt.trace import open_trace
from tests.helpers.paths import TRACES

NODE, GRAPH = "dsocr_v1_base_cg_node", "dsocr_v1_base_cg_graph"
DECODE_STEPS: Final = 3 * 7  # 3 pages, 8 new tokens: prefill gives the first, 7 steps follow


def trace_path(name: str) -> Path:
    return TRACES / f"{name}.sqlite.xz"


@cache
def report(name: str) -> MfuReport:
    analysis = analyze_trace(trace_path(name), AnalyzeOptions())
    assert analysis.report is not None
    return analysis.report


def _replays_as_spans(name: str) -> int:
    """Decode busy of the node-mode trace had each replay been recorded as one row spanning its
    nodes (as graph mode records it): the measured stage ranges, exclusive busy."""
    trace = open_trace(trace_path(name))
    ops, calls = trace.gpu_ops(lean=True), trace.launch_calls()
    full = trace.gpu_ops().select("op_id", "graph_node_id")
    nodes = ops.join(full, on="op_id").filter(pl.col("graph_node_id").is_not_null())
    spans = nodes.group_by("global_pid", "correlation_id").agg(
        pl.col("op_id").min(), pl.col("device_id", "stream_id").first(),
        pl.col("start_ns").min(), pl.col("end_ns").max(),
    )  # fmt: skip
    collapsed = pl.concat(
        [
            ops.filter(~pl.col("op_id").is_in(nodes["op_id"].implode())),
            spans.with_columns(kind=pl.lit("graph"), name_id=None, graph_id=None).select(
                ops.columns
            ),
        ],
        how="vertical_relaxed",
    ).cast(dict(ops.schema))  # type: ignore[arg-type]
    ranges = attribute_frames(trace.nvtx_ranges(), collapsed, calls).ranges
    ids = [r.range_id for r in report(name).stages["decode"].instances]
    return int(ranges.filter(pl.col("range_id").is_in(ids))["gpu_busy_ns"].sum())


def test_decode_busy_of_graph_mode_is_the_replay_spans() -> None:
    """Graph rows span their nodes' gaps (~0.3 µs each, ~1,000 nodes a step), so graph-mode
    decode busy lies between node mode's kernel union and node mode's replay spans."""
    node, graph = report(NODE).stages["decode"], report(GRAPH).stages["decode"]
    assert graph.decode_steps == node.decode_steps == DECODE_STEPS
    assert (graph.n_graph_ops, node.n_graph_ops) == (DECODE_STEPS, 0)
    assert graph.n_gpu_ops == node.n_gpu_ops  # one op per launch, either way
    assert graph.kernel_sum_ns < 0.001 * graph.gpu_busy_ns  # what runs outside the graph
    assert graph.gpu_busy_ns == pytest.approx(graph.kernel_sum_ns + graph.graph_sum_ns, rel=1e-3)
    assert node.gpu_busy_ns < graph.gpu_busy_ns < _replays_as_spans(NODE)
    ratio = graph.gpu_busy_ns / node.gpu_busy_ns
    assert 1.0 < ratio < 1.12  # measured 1.114: the gaps inside the graph
    assert graph.top_kernels[0].kind == "graph" and graph.top_kernels[0].count == DECODE_STEPS


def test_decode_mfu_of_the_two_modes() -> None:
    """Same FLOPs, so MFU moves inversely to busy: graph mode's decode MFU is node mode's
    divided by the busy ratio (measured 0.898 of it)."""
    node, graph = report(NODE).stages["decode"], report(GRAPH).stages["decode"]
    assert graph.flops == node.flops
    assert graph.mfu_trace is not None and node.mfu_trace is not None
    assert graph.mfu_trace / node.mfu_trace == pytest.approx(node.gpu_busy_ns / graph.gpu_busy_ns)
    assert 0.88 < graph.mfu_trace / node.mfu_trace < 1.0
    for stage in ("vision", "prefill"):  # no graphs there: the two runs agree within 1 %
        a, b = report(NODE).stages[stage], report(GRAPH).stages[stage]
        assert a.gpu_busy_ns == pytest.approx(b.gpu_busy_ns, rel=0.01)


def test_only_the_graph_mode_report_prints_the_node_mode_hint() -> None:
    hint = "--cuda-graph-trace=node"
    assert sum(hint in w for w in report(GRAPH).warnings) == 1
    assert not any(hint in w for w in report(NODE).warnings)
