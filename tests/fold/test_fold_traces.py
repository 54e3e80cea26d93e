"""The attribution fold in batches equals the whole tables folded at once (and its sums the
whole-frame references) on every committed trace and on generated ones, whatever the batch
size."""

from __future__ import annotations

from pathlib import Path

import pytest
from benchmarks.gen_trace import generate

from llm_perf_opt.attribution import StreamBudget
from llm_perf_opt.trace import open_trace
from tests.helpers.fold_compare import assert_same, stage_selection
from tests.helpers.paths import REPO

COMMITTED = sorted((REPO / "traces").glob("*.sqlite.xz"))
SMALL = [
    REPO / "tests" / "data" / "h100_probe_toy" / "h100_probe_nsys2025.sqlite",
    REPO / "tests" / "data" / "h100_probes" / "probe_threads.sqlite",
    REPO / "tests" / "data" / "h100_probes" / "probe_2proc.sqlite",
]


def _frames(path: Path):  # type: ignore[no-untyped-def]
    trace = open_trace(path)
    return trace.nvtx_ranges(), trace.gpu_ops(lean=True), trace.launch_calls()


@pytest.mark.parametrize("path", COMMITTED, ids=lambda p: p.name.split(".")[0])
def test_committed_traces(path: Path) -> None:
    raw, ops, calls = _frames(path)
    selection = stage_selection(raw.rename({"event_id": "range_id"}))
    for rows in (997, 1 << 20):
        assert_same(raw, ops, calls, selection, rows=rows)
    assert_same(raw, ops, calls, None, rows=4093)


@pytest.mark.parametrize("path", SMALL, ids=lambda p: p.stem)
@pytest.mark.parametrize("rows", [1, 7, 64])
def test_small_traces_in_tiny_batches(path: Path, rows: int) -> None:
    raw, ops, calls = _frames(path)
    assert_same(raw, ops, calls, None, rows=rows)
    assert_same(raw, ops, calls, None, rows=rows, other_threads=True)


@pytest.fixture(scope="module", params=[False, True], ids=["node", "graph"])
def generated(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 20,000-kernel generated trace, CUDA graph replays node by node or whole."""
    path = tmp_path_factory.mktemp("gen") / "gen.sqlite"
    generate(path, 20_000, seed=3, graph_level=request.param)
    return path


def test_generated_traces(generated: Path) -> None:
    raw, ops, calls = _frames(generated)
    selection = stage_selection(raw.rename({"event_id": "range_id"}))
    assert_same(raw, ops, calls, selection, rows=5000, other_threads=True)
    assert_same(raw, ops, calls, None, rows=1 << 20)


def test_a_small_budget_slides_the_call_window_over_the_trace(generated: Path) -> None:
    raw, ops, calls = _frames(generated)
    selection = stage_selection(raw.rename({"event_id": "range_id"}))
    # 2 MiB keep 8,192 calls of the trace's 27,000; a batch of ops is cut to 1,048 rows
    result = assert_same(raw, ops, calls, selection, rows=5000, budget=2 << 20)
    assert result.stats.calls_evicted > 0
    budget = StreamBudget.of(2 << 20)  # the window may pass its size by one piece of calls
    assert result.stats.call_rows_live_max <= budget.live_calls + budget.call_batch_rows


def test_tiny_generated_trace_in_tiny_batches(tmp_path: Path) -> None:
    path = tmp_path / "tiny.sqlite"
    generate(path, 2_000, seed=1, graph_level=True)
    raw, ops, calls = _frames(path)
    selection = stage_selection(raw.rename({"event_id": "range_id"}))
    assert_same(raw, ops, calls, selection, rows=7, other_threads=True)
