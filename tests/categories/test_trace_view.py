"""The whole-trace view: any trace, also one without stage ranges (the H100 probes carry only
their own ranges), through the CLI; the fold's whole-trace sums are the same in any batch size
and equal a direct computation over every op."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from click.testing import CliRunner

from llm_perf_opt.analysis import AnalyzeOptions, analyze_trace
from llm_perf_opt.attribution import attribute_stream, attribute_whole, range_frame
from llm_perf_opt.cli.analyze import main as analyze_cli
from llm_perf_opt.metrics.whole_trace import trace_view
from llm_perf_opt.trace import open_trace
from tests.helpers.paths import DATA, TRACES

PROBES = sorted((DATA / "h100_probes").glob("*.sqlite"))


@pytest.mark.parametrize("probe", PROBES, ids=lambda p: p.stem)
def test_a_trace_without_stage_ranges_gets_the_whole_trace_view(
    probe: Path, tmp_path: Path
) -> None:
    runner = CliRunner()
    table = runner.invoke(analyze_cli, [str(probe)])
    assert table.exit_code == 0, table.output
    assert "Whole trace: GPU busy" in table.output and "Top kernels: whole trace" in table.output
    out = tmp_path / "r.json"
    result = runner.invoke(analyze_cli, [str(probe), "--format", "json", "-o", str(out)])
    assert result.exit_code == 0, result.output
    doc = json.loads(out.read_text())
    assert doc["stages"] == {} and doc["trace"] == str(probe)
    cats = doc["trace_categories"]
    assert cats and sum(c["n_kernels"] for c in cats.values()) == doc["trace_view"]["n_ops"]
    assert 0 < doc["trace_view"]["gpu_busy_s"] <= doc["trace_view"]["op_sum_s"]
    ops = open_trace(probe).gpu_ops()
    assert doc["trace_view"]["n_ops"] == ops.height
    copies = ops.filter(pl.col("kind").is_in(["memcpy", "memset"]))
    assert cats["memory"]["n_kernels"] >= copies.height


def _busy(ops: pl.DataFrame) -> int:
    """The union of the op intervals per device, summed: sorted ends against a running max."""
    total = 0
    for _, part in ops.sort("start_ns", "end_ns").group_by("device_id"):
        start, end = part["start_ns"].to_numpy(), part["end_ns"].to_numpy()
        reach = np.maximum.accumulate(end)
        gaps = np.maximum(start[1:] - reach[:-1], 0).sum()
        total += int(reach[-1] - start[0] - gaps)
    return total


@pytest.mark.parametrize("trace", [TRACES / "dsocr_v1_base_h200.sqlite.xz", *PROBES], ids=str)
def test_busy_time_and_sums_whatever_the_batch_size(trace: Path) -> None:
    opened = open_trace(trace)
    names = opened.kernel_names()
    rows = 7 if trace in PROBES else 1013  # batch borders everywhere, in a bounded time
    base = range_frame(opened.nvtx_ranges())
    batched = attribute_stream(base, opened.gpu_op_batches(rows), opened.launch_call_batches(rows))
    folded = attribute_whole(base, opened.gpu_ops(lean=True), opened.launch_calls())
    small = trace_view(batched.trace_kernels, batched.trace_busy_ns, names, 5)
    whole = trace_view(folded.trace_kernels, folded.trace_busy_ns, names, 5)
    assert small == whole
    ops = opened.gpu_ops()
    assert whole.gpu_busy_ns == _busy(ops)
    assert whole.op_sum_ns == int((ops["end_ns"] - ops["start_ns"]).sum())
    assert sum(c.total_ns for c in whole.categories) == whole.op_sum_ns


def test_a_staged_report_carries_the_trace_view() -> None:
    report = analyze_trace(TRACES / "dsocr_v1_base_h200.sqlite.xz", AnalyzeOptions()).report
    assert report is not None and report.trace_view is not None
    staged = sum(s.kernel_sum_ns + s.graph_sum_ns for s in report.stages.values())
    assert staged <= report.trace_view.op_sum_ns
