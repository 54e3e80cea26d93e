"""The one attribution fold gives the analysis the same report and ranges however it reads the
trace: in one batch (a budget above the trace), in many small ones (the smallest budget), or from
the whole tables when they are not stored in start order; on every committed trace and on
generated ones. (The probes of tests/data are too small to stream at the smallest budget;
tests/fold holds the fold equal on them in tiny batches.)"""

from __future__ import annotations

import lzma
import shutil
from dataclasses import replace
from pathlib import Path

import polars as pl
import pytest
from benchmarks.gen_trace import generate
from polars.testing import assert_frame_equal

from llm_perf_opt.analysis import Analysis, AnalyzeOptions, analyze_trace
from llm_perf_opt.attribution import MIN_MEMORY_BUDGET_BYTES
from llm_perf_opt.inputs.stage_ranges import RangeRef
from llm_perf_opt.report import RENDERERS
from tests.helpers.mutate import mutated
from tests.helpers.paths import DATA, REPO
from tests.helpers.serve_export import StepLoop, write_export

LLAMA_1B = {"config_path": str(REPO / "traces/meta/llama_1b_shape.config.json"), "prefill_len": 512}
LLAMA_SMALL = {
    "config_path": str(REPO / "traces/meta/llama_1b_shape.config.json"),
    "prefill_len": 128,
}
CASES = [
    *((p, {}) for p in sorted((REPO / "traces").glob("dsocr*.sqlite.xz"))),
    (REPO / "traces" / "llama_1b_shape.sqlite.xz", LLAMA_1B),
    (REPO / "traces" / "llama_1b_serve.sqlite.xz", {}),  # engine steps, metadata alone
    (DATA / "llama_parquet", LLAMA_1B),
    (DATA / "llama_small" / "llama_small.sqlite.xz", LLAMA_SMALL),
]
HUGE = 1 << 40


def _both(path: Path, **options: object) -> tuple[Analysis, Analysis]:
    memory = analyze_trace(path, AnalyzeOptions(**options, memory_budget_bytes=HUGE))  # type: ignore[arg-type]
    streamed = analyze_trace(
        path,
        AnalyzeOptions(**options, memory_budget_bytes=MIN_MEMORY_BUDGET_BYTES),  # type: ignore[arg-type]
    )
    return memory, streamed


def _assert_same(memory: Analysis, streamed: Analysis) -> None:
    assert_frame_equal(streamed.ranges, memory.ranges)
    assert memory.report is not None and streamed.report is not None
    for fmt in ("json", "csv", "md"):
        assert RENDERERS[fmt](streamed.report) == RENDERERS[fmt](memory.report), fmt


def _assert_pruned_same(path: Path, memory: Analysis, **options: object) -> Analysis:
    """Without every range, the one pass sums only the report's ranges: same report, and those
    rows as the whole attribution has them."""
    pruned = analyze_trace(
        path,
        AnalyzeOptions(**options, memory_budget_bytes=MIN_MEMORY_BUDGET_BYTES, every_range=False),  # type: ignore[arg-type]
    )
    assert pruned.ranges.height <= memory.ranges.height
    ids = pruned.ranges["range_id"].implode()
    assert_frame_equal(pruned.ranges, memory.ranges.filter(pl.col("range_id").is_in(ids)))
    _assert_same(memory, replace(pruned, ranges=memory.ranges))
    return pruned


@pytest.mark.parametrize("case", CASES, ids=lambda c: c[0].name.split(".")[0])
def test_committed_traces_give_the_same_report(case: tuple[Path, dict[str, object]]) -> None:
    path, options = case
    memory, streamed = _both(path, **options)
    _assert_same(memory, streamed)
    _assert_pruned_same(path, memory, **options)


def test_warmup_and_short_top_lists_too() -> None:
    path = REPO / "traces" / "dsocr_v1_base.sqlite.xz"
    _assert_same(*_both(path, include_warmup=True, top_kernels=2, ctx_mode="max"))


@pytest.mark.parametrize("graph_level", [False, True], ids=["node", "graph"])
def test_generated_traces_give_the_same_report(tmp_path: Path, graph_level: bool) -> None:
    path = tmp_path / "gen.sqlite"
    generate(path, 30_000, seed=5, graph_level=graph_level)
    memory, streamed = _both(path)
    _assert_same(memory, streamed)
    pruned = _assert_pruned_same(path, memory)
    assert pruned.ranges.height < memory.ranges.height / 10  # the library ranges are left out


def test_a_missing_stage_still_gives_every_range() -> None:
    path = REPO / "traces" / "llama_1b_shape.sqlite.xz"
    named = {"stages": {"vision": RangeRef("no_such_range")}}
    memory = analyze_trace(
        path, AnalyzeOptions(**named, memory_budget_bytes=HUGE), require_mfu=False
    )  # type: ignore[arg-type]
    streamed = analyze_trace(
        path,
        AnalyzeOptions(**named, memory_budget_bytes=MIN_MEMORY_BUDGET_BYTES),  # type: ignore[arg-type]
        require_mfu=False,
    )
    assert streamed.report is None
    assert streamed.skipped_reason == memory.skipped_reason
    assert "no_such_range" in (memory.skipped_reason or "")
    assert_frame_equal(streamed.ranges, memory.ranges)


def test_tables_out_of_start_order_are_folded_whole(tmp_path: Path) -> None:
    """Kernel and CUDA API tables stored latest first cannot be read in start-ordered batches;
    the fold then reads them whole, sorted, and gives the same report, with a note."""
    ordered = tmp_path / "ordered.sqlite"
    with lzma.open(REPO / "traces" / "dsocr_v1_base.sqlite.xz") as src, ordered.open("wb") as dst:
        shutil.copyfileobj(src, dst)
    reversed_tables = [
        statement
        for table in ("CUPTI_ACTIVITY_KIND_KERNEL", "CUPTI_ACTIVITY_KIND_RUNTIME")
        for statement in (
            f"CREATE TABLE latest_first AS SELECT * FROM {table} ORDER BY start DESC",
            f"DELETE FROM {table}",
            f"INSERT INTO {table} SELECT * FROM latest_first",
            "DROP TABLE latest_first",
        )
    ]
    shuffled = mutated(ordered, tmp_path / "shuffled.sqlite", *reversed_tables)
    batched = analyze_trace(ordered, AnalyzeOptions())
    whole = analyze_trace(shuffled, AnalyzeOptions())
    assert batched.report is not None and whole.report is not None
    added = [w for w in whole.report.warnings if w not in batched.report.warnings]
    assert len(added) == 1
    assert added[0].startswith("attributed from the whole tables, sorted, not in batches: ")
    assert "table CUPTI_ACTIVITY_KIND_KERNEL is not stored in start order" in added[0]
    assert_frame_equal(whole.ranges, batched.ranges)
    _assert_same(
        replace(batched, report=replace(batched.report, warnings=(), trace_path="")),
        replace(whole, report=replace(whole.report, warnings=(), trace_path="")),
    )


def _serve_loop() -> StepLoop:
    """A vLLM step loop long enough to stream at the smallest budget: prefill chunks, mixed and
    decode steps, a zero-token step, async overlap, CUDA graph replays, a worker process."""
    names = ["execute_context_1(512)_generation_0(0)", "execute_context_1(300)_generation_1(1)"]
    names += [f"execute_context_0(0)_generation_{b}({b})" for b in (2, 2, 3, 4) * 14]
    names += ["execute_context_0(0)_generation_0(0)", "execute_context_2(100)_generation_3(3)"]
    return StepLoop(
        names,
        kernels=[30 + k % 5 for k in range(len(names))],
        lag_ns=120_000,
        graph_steps=frozenset(range(4, len(names), 3)),
        worker=True,
    )


def test_engine_steps_give_the_same_report(tmp_path: Path) -> None:
    """Per-step and per-phase numbers of a served model's steps: byte-identical reports."""
    path = write_export(tmp_path / "serve.sqlite", _serve_loop())
    options = {"config_path": LLAMA_1B["config_path"]}
    memory, streamed = _both(path, **options)
    assert memory.report is not None and memory.report.engine is not None
    assert len(memory.report.engine.steps) == 60
    _assert_same(memory, streamed)
    _assert_pruned_same(path, memory, **options)
