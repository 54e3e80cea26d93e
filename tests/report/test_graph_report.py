"""Reports of CUDA-graph decode: the same run traced node by node and traced whole.

Each decode step replays one graph of two 10 µs kernels 10 µs apart. In node mode the replay is
two kernel rows sharing the `cudaGraphLaunch` correlation id; in graph mode it is one graph row
spanning both (30 µs, the gap included), as nsys records it by default.
"""

from __future__ import annotations

import csv
import io
import json

import pytest
from rich.console import Console

from llm_perf_opt.cli.terminal import render_table
from llm_perf_opt.inputs.facts import ContextChoice, StageInputs
from llm_perf_opt.inputs.run_meta import parse_meta
from llm_perf_opt.inputs.stage_ranges import default_refs
from llm_perf_opt.metrics.mfu import MfuReport, compute_mfu
from llm_perf_opt.report import to_csv, to_json_text, to_markdown
from tests.helpers.mfu_inputs import synth_inputs
from tests.helpers.synth import DOMAIN, GLOBAL_PID, PEAK, LinearFlops, SynthTrace, meta_dict

GRAPH_ID = 7
STEPS = 3
KERNEL_NS = 10_000


def _replay(tr: SynthTrace, launch_ns: int, start: int, level: str) -> None:
    """One graph launch: two node kernel rows (node mode) or one graph row (graph mode)."""
    if level == "graph":
        tr.op(launch_ns, start, start + 3 * KERNEL_NS, kind="graph")
        tr.ops[-1] |= {"graph_id": GRAPH_ID, "name_id": None}
        return
    tr.op(launch_ns, start, start + KERNEL_NS, name_id=5)
    second = dict(tr.ops[-1])
    second |= {"op_id": len(tr.ops) + 1, "start_ns": start + 2 * KERNEL_NS,
               "end_ns": start + 3 * KERNEL_NS, "name_id": 6}  # fmt: skip
    tr.ops.append(second)


def graph_decode_trace(level: str, sampling: bool = True) -> SynthTrace:
    """Two images: vision and prefill one eager kernel each; decode one graph replay per step
    plus (`sampling`) one eager sampling kernel."""
    tr = SynthTrace()
    for image in range(2):
        t0 = 1_000_000 + image * 30_000_000
        tr.push("image", t0, t0 + 20_000_000, image)
        tr.push("vision", t0 + 100, t0 + 5_000_000)
        tr.op(t0 + 1_000, t0 + 1_000_000, t0 + 2_000_000, name_id=1)
        tr.push("prefill", t0 + 5_000_100, t0 + 10_000_000)
        tr.op(t0 + 5_001_000, t0 + 5_100_000, t0 + 6_100_000, name_id=2)
        tr.push("decode", t0 + 10_000_100, t0 + 19_000_000)
        for k in range(1, STEPS + 1):
            s0 = t0 + 10_000_000 + k * 1_000_000
            tr.push("decode_step", s0, s0 + 900_000, 300 + k)
            _replay(tr, s0 + 10, s0 + 100_000, level)
            if sampling:
                tr.op(s0 + 20, s0 + 200_000, s0 + 205_000, name_id=3)
    return tr


def report_of(level: str, sampling: bool = True) -> MfuReport:
    refs = default_refs(DOMAIN)
    ranges, ops = synth_inputs(graph_decode_trace(level, sampling), refs)
    return compute_mfu(
        ranges,
        ops,
        refs=refs,
        inputs=StageInputs(meta=parse_meta(meta_dict(), "test")),
        flops_model=LinearFlops(),
        peak=PEAK,
        ctx=ContextChoice("auto"),
        kernel_names=None,
    )


@pytest.fixture(scope="module")
def node() -> MfuReport:
    return report_of("node")


@pytest.fixture(scope="module")
def graph() -> MfuReport:
    return report_of("graph")


def test_graph_mode_decode_counts_graph_executions_apart_from_kernels(
    node: MfuReport, graph: MfuReport
) -> None:
    n_steps = 2 * STEPS
    dn, dg = node.stages["decode"], graph.stages["decode"]
    # node mode: 2 graph kernels + 1 sampling kernel per step, all of them kernels
    assert (dn.n_kernels, dn.n_graph_ops, dn.graph_sum_ns) == (3 * n_steps, 0, 0)
    assert dn.kernel_sum_ns == dn.gpu_busy_ns == n_steps * (2 * KERNEL_NS + 5_000)
    # graph mode: 1 sampling kernel per step; the replays are graph executions of 30 µs
    assert (dg.n_kernels, dg.n_graph_ops) == (n_steps, n_steps)
    assert dg.kernel_sum_ns == n_steps * 5_000
    assert dg.graph_sum_ns == n_steps * 3 * KERNEL_NS
    assert dg.gpu_busy_ns == dg.kernel_sum_ns + dg.graph_sum_ns
    assert dn.n_gpu_ops == dg.n_gpu_ops == 2 * n_steps  # one op per launch call, as NVIDIA counts
    assert dg.mfu_trace == pytest.approx(dg.flops / (PEAK.peak_flops * dg.gpu_busy_ns * 1e-9))
    assert [i.n_graph_ops for i in dg.instances] == [STEPS, STEPS]
    for stage in ("vision", "prefill"):
        assert graph.stages[stage] == node.stages[stage]


def test_top_kernels_list_a_graph_as_one_entry(node: MfuReport, graph: MfuReport) -> None:
    top = graph.stages["decode"].top_kernels
    assert (top[0].name, top[0].kind, top[0].count) == (f"CUDA graph {GRAPH_ID}", "graph", 6)
    assert top[0].total_ns == 6 * 3 * KERNEL_NS
    assert top[1].kind == "kernel" and top[1].count == 6
    assert sum(k.share for k in top) == pytest.approx(1.0)
    assert all(k.kind == "kernel" for k in node.stages["decode"].top_kernels)


def test_one_line_tells_graph_mode_traces_how_to_see_kernels(
    node: MfuReport, graph: MfuReport
) -> None:
    notes = [w for w in graph.warnings if "--cuda-graph-trace=node" in w]
    assert len(notes) == 1 and notes[0].startswith("6 CUDA graph executions")
    assert not any("CUDA graph" in w for w in node.warnings)
    console = Console(width=400, record=True)
    render_table(graph, console)
    text = console.export_text()
    assert text.count("--cuda-graph-trace=node") == 1
    assert "3 + 6 graph" not in text and "6 + 6 graph" in text  # kernels column
    assert "(+ 6 CUDA graph executions)" in text
    assert "CUDA graph 7" in to_markdown(graph)
    plain = Console(width=400, record=True)
    render_table(node, plain)
    assert " graph" not in plain.export_text()


def test_json_and_csv_carry_graph_ops_and_graph_s(node: MfuReport, graph: MfuReport) -> None:
    doc = json.loads(to_json_text(graph))
    decode = doc["stages"]["decode"]
    assert decode["graph_ops"] == 6
    assert decode["graph_s"] == pytest.approx(6 * 3 * KERNEL_NS / 1e9)
    assert decode["kernel_sum_s"] == pytest.approx(6 * 5_000 / 1e9)
    assert decode["instances"][0]["graph_ops"] == STEPS
    assert decode["top_kernels"][0] | {"total_s": None, "mean_us": None, "share": None} == {
        "name": "CUDA graph 7", "kind": "graph", "category": "graph", "count": 6, "total_s": None,
        "mean_us": None, "share": None,
    }  # fmt: skip
    assert decode["categories"]["graph"]["n_kernels"] == 6
    assert json.loads(to_json_text(node))["stages"]["decode"]["graph_ops"] == 0
    rows = list(csv.DictReader(io.StringIO(to_csv(graph))))
    stage = next(r for r in rows if r["level"] == "stage" and r["stage"] == "decode")
    assert (stage["graph_ops"], float(stage["graph_s"])) == ("6", pytest.approx(1.8e-4))


def test_graph_launch_without_a_call_is_unattributed_not_lost() -> None:
    tr = graph_decode_trace("graph")
    tr.ops.append(
        {"op_id": len(tr.ops) + 1, "kind": "graph", "device_id": 0, "stream_id": 7,
         "start_ns": 10, "end_ns": 20, "global_pid": GLOBAL_PID, "correlation_id": 10**6,
         "name_id": None, "graph_id": 9, "graph_node_id": None, "bytes": None}
    )  # fmt: skip
    free = tr.attribution().unattributed().row(0, named=True)
    assert (free["reason"], free["n_gpu_ops"], free["duration_sum_ns"]) == ("no_launch_call", 1, 10)


def test_graph_executions_alone_still_give_gpu_time() -> None:
    """Decode of graph replays alone: no kernel rows, yet the GPU was busy."""
    decode = report_of("graph", sampling=False).stages["decode"]
    assert (decode.n_kernels, decode.kernel_sum_ns, decode.mean_kernel_ns) == (0, 0, None)
    assert decode.gpu_busy_ns == decode.graph_sum_ns == 6 * 3 * KERNEL_NS
    assert decode.idle_fraction is not None and decode.idle_fraction > 0.5
