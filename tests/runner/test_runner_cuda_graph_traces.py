"""The committed `--cuda-graphs` H200 captures: what nsys records in node and in graph mode.

Both are the same run (v1 base, grouped_mm experts, 1 warmup round of 4 tokens + 3 pages of 8):
every decode step is one `cudaGraphLaunch` of one graph captured once. Node mode keeps every
kernel of a replay in CUPTI_ACTIVITY_KIND_KERNEL (with graphNodeId); graph mode (nsys's default)
keeps one CUPTI_ACTIVITY_KIND_GRAPH_TRACE row per replay and none of its kernels.
"""

from __future__ import annotations

import json
import statistics
from typing import Any

import pytest

from llm_perf_opt.trace import Trace, open_trace
from tests.helpers.paths import TRACES

KERNELS_PER_REPLAY = 937  # the captured decode step of v1 with grouped_mm experts


@pytest.fixture(scope="module")
def node() -> Trace:
    return open_trace(TRACES / "dsocr_v1_base_cg_node.sqlite.xz")


@pytest.fixture(scope="module")
def graph() -> Trace:
    return open_trace(TRACES / "dsocr_v1_base_cg_graph.sqlite.xz")


def decode_steps(name: str) -> int:
    meta: dict[str, Any] = json.loads((TRACES / "meta" / f"{name}.run.meta.json").read_text())
    backend = meta["decode_backend"]
    assert backend["graph_replay"] and backend["graph_captures"] == 1
    assert meta["model"]["experts_implementation"] == "grouped_mm"
    warmup = meta["warmup"]["rounds"] * (meta["warmup"]["max_new_tokens"] - 1)
    return warmup + sum(image["decode_steps"] for image in meta["images"])


def launches_in_decode_steps(trace: Trace) -> list[tuple[Any, ...]]:
    """(correlationId, launch call name) of every graph launch inside a decode_step range."""
    return trace._sql(
        """
        SELECT r.correlationId, s.value FROM CUPTI_ACTIVITY_KIND_RUNTIME r
        JOIN StringIds s ON s.id = r.nameId
        JOIN NVTX_EVENTS n ON n.globalTid = r.globalTid AND r.start >= n.start AND r.end <= n.end
        WHERE s.value LIKE 'cudaGraphLaunch%'
          AND (n.text = 'decode_step' OR n.textId IN
               (SELECT id FROM StringIds WHERE value = 'decode_step'))
        """
    )


def test_node_mode_records_every_kernel_of_every_replay(node: Trace) -> None:
    steps = decode_steps("dsocr_v1_base_cg_node")
    assert "CUPTI_ACTIVITY_KIND_GRAPH_TRACE" not in node.tables
    per_launch = node._sql(
        "SELECT correlationId, COUNT(*) FROM CUPTI_ACTIVITY_KIND_KERNEL "
        "WHERE graphNodeId IS NOT NULL GROUP BY correlationId"
    )
    assert len(per_launch) == steps == 24
    assert {count for _, count in per_launch} == {KERNELS_PER_REPLAY}
    launches = launches_in_decode_steps(node)
    assert {c for c, _ in launches} == {c for c, _ in per_launch}


def test_graph_mode_records_one_row_per_replay_and_no_graph_kernels(
    graph: Trace, node: Trace
) -> None:
    steps = decode_steps("dsocr_v1_base_cg_graph")
    rows = graph._sql(
        "SELECT correlationId, end - start FROM CUPTI_ACTIVITY_KIND_GRAPH_TRACE ORDER BY start"
    )
    assert len(rows) == steps == 24
    assert graph._sql("SELECT COUNT(graphNodeId) FROM CUPTI_ACTIVITY_KIND_KERNEL") == [(0,)]
    launches = launches_in_decode_steps(graph)
    assert {c for c, _ in launches} == {c for c, _ in rows}
    assert {name for _, name in launches} == {"cudaGraphLaunch_v10000"}
    # the replay's GPU span is the same work in both modes (node tracing adds a few %)
    spans = node._sql(
        "SELECT MAX(end) - MIN(start) FROM CUPTI_ACTIVITY_KIND_KERNEL "
        "WHERE graphNodeId IS NOT NULL GROUP BY correlationId"
    )
    ratio = statistics.median(d for _, d in rows) / statistics.median(s for (s,) in spans)
    assert 0.9 <= ratio <= 1.0
