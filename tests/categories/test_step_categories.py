"""The median decode step's categories on every committed trace with decode steps: the step is
a lower median of the steps' GPU busy times as the JSON lists them, and its kernel categories add
up exactly (integer ns) to the kernel time the attribution gives the step's range."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from llm_perf_opt.analysis import AnalyzeOptions, analyze_trace
from llm_perf_opt.report import RENDERERS
from llm_perf_opt.report.jsondoc import to_json
from tests.helpers.committed import OPTIONS, stem
from tests.helpers.paths import TRACES

SQLITE = sorted(TRACES.glob("*.sqlite.xz"))


@pytest.mark.parametrize("path", SQLITE, ids=stem)
def test_median_step_categories(path: Path) -> None:
    options = AnalyzeOptions(**OPTIONS.get(stem(path), {}))  # type: ignore[arg-type]
    analysis = analyze_trace(path, options)
    report = analysis.report
    assert report is not None
    doc = to_json(report)
    steps = doc["decode_steps"]
    chosen = doc["decode_step_categories"]
    if not steps:
        assert chosen is None and report.step_categories is None
        return
    busy = sorted(s["gpu_busy_s"] for s in steps)
    assert chosen["gpu_busy_s"] == busy[(len(busy) - 1) // 2]
    which = ("instance", "step", "range_id", "gpu_busy_s")
    assert {k: chosen[k] for k in which} in [{k: s[k] for k in which} for s in steps]

    d = report.step_categories
    assert d is not None and d.categories
    step_range = analysis.ranges.filter(pl.col("range_id") == d.range_id).row(0, named=True)
    kernels = [c for c in d.categories if c.category != "graph"]
    assert sum(c.total_ns for c in kernels) == step_range["kernel_sum_ns"]
    graphs = [c for c in d.categories if c.category == "graph"]
    assert sum(c.n_kernels for c in d.categories) <= step_range["n_op_rows"]
    assert len(graphs) <= 1 and all(g.total_ns > 0 for g in graphs)
    assert sum(c.share for c in d.categories) == pytest.approx(1.0)
    assert list(chosen["categories"]) == [c.category for c in d.categories]
    title = f"median decode step (step {d.step}, instance {d.instance}"
    assert title in RENDERERS["md"](report)
