"""Categories on every committed trace: `other` stays small, and each stage's categories add up
to its kernel time exactly (integer ns)."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from llm_perf_opt.analysis import AnalyzeOptions, analyze_trace
from llm_perf_opt.kernels.categories import with_category
from llm_perf_opt.trace import open_trace
from tests.helpers.committed import OPTIONS, stem
from tests.helpers.paths import TRACES

TRACE_FILES = sorted([*TRACES.glob("*.sqlite.xz"), *TRACES.glob("*.pt.trace.json.gz")])
# Our calibration sleep (`at::cuda::<unnamed>::spin_kernel`): `other`, and outside the bound,
# since it computes nothing and runs outside the stages.
CALIBRATION_SLEEP = "spin_kernel"


@pytest.mark.parametrize("path", TRACE_FILES, ids=stem)
def test_other_is_at_most_a_tenth_of_kernel_time(path: Path) -> None:
    trace = open_trace(path)
    ops = trace.gpu_ops().filter(pl.col("kind") == "kernel")
    entries = ops.group_by("kind", "name_id").agg(
        count=pl.len(), total_ns=(pl.col("end_ns") - pl.col("start_ns")).sum()
    )
    names = trace.kernel_names()
    named = with_category(entries, names).join(names, on="name_id", how="left")
    counted = named.filter(~pl.col("name").str.contains(CALIBRATION_SLEEP))
    other = counted.filter(pl.col("category") == "other")["total_ns"].sum()
    assert counted["total_ns"].sum() > 0
    assert other <= 0.10 * counted["total_ns"].sum(), other


@pytest.mark.parametrize("path", TRACE_FILES, ids=stem)
def test_stage_categories_sum_to_kernel_time(path: Path) -> None:
    options = AnalyzeOptions(**OPTIONS.get(stem(path), {}))  # type: ignore[arg-type]
    report = analyze_trace(path, options).report
    assert report is not None
    for stage in report.stages.values():
        assert stage.categories
        assert sum(c.total_ns for c in stage.categories) == stage.kernel_sum_ns + stage.graph_sum_ns
        assert sum(c.n_kernels for c in stage.categories) == stage.n_kernels + stage.n_graph_ops
        assert len({c.category for c in stage.categories}) == len(stage.categories)
