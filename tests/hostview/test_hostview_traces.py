"""The host/GPU breakdown on the committed real H100 traces, against the report's own numbers
and an independent count in SQL."""

from __future__ import annotations

import lzma
import shutil
import sqlite3
from pathlib import Path
from typing import Final

import pytest

from llm_perf_opt.analysis import AnalyzeOptions, analyze_trace
from llm_perf_opt.metrics.mfu import MfuReport
from llm_perf_opt.report import to_json, to_markdown
from llm_perf_opt.report.plots import write_plots
from tests.helpers.paths import REPO

# Host syncs per decode step: the eager per-expert loop syncs after every routing `nonzero`
# (hundreds a step); grouped_mm experts (the H200 `gmm` capture) only a few.
SYNCS_PER_STEP: Final = {
    "dsocr_v1_base": (100, 1000),
    "dsocr2_base": (100, 1000),
    "dsocr_v1_base_h200": (100, 1000),
    "dsocr_v1_base_gmm": (1, 10),
}
NAMES: Final = tuple(SYNCS_PER_STEP)
HOST_KEYS: Final = {
    "span_s", "launch_s", "sync_s", "other_api_s", "outside_api_s", "n_launches", "n_syncs",
    "n_memcpy",
}  # fmt: skip
LAUNCH_SQL: Final = (
    "s.value LIKE 'cudaLaunchKernel%' OR s.value LIKE 'cuLaunchKernel%' "
    "OR s.value LIKE 'cudaGraphLaunch%' OR s.value LIKE 'cuGraphLaunch%'"
)


@pytest.fixture(scope="module", params=NAMES)
def analyzed(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[
    MfuReport, Path, str
]:  # fmt: skip
    """The report of one committed trace, and its decompressed SQLite for the SQL checks."""
    name = request.param
    plain = tmp_path_factory.mktemp(name) / f"{name}.sqlite"
    with lzma.open(REPO / "traces" / f"{name}.sqlite.xz") as src, plain.open("wb") as dst:
        shutil.copyfileobj(src, dst)
    report = analyze_trace(plain, AnalyzeOptions()).report
    assert report is not None
    return report, plain, name


def test_host_parts_sum_to_the_span(analyzed: tuple[MfuReport, Path, str]) -> None:
    report, *_ = analyzed
    views = [s.host for s in report.stages.values()]
    views += [r.host for s in report.stages.values() for r in s.instances]
    for v in views:
        assert v is not None
        parts = v.launch_ns + v.sync_ns + v.other_api_ns + v.outside_api_ns
        assert abs(parts - v.span_ns) <= 1e-3 * v.span_ns
        assert min(v.launch_ns, v.sync_ns, v.other_api_ns, v.outside_api_ns) >= 0
        gpu = v.busy_ns + v.starved_ns + v.queued_ns + v.edge_ns
        assert abs(gpu - v.gpu_window_ns) <= 1e-3 * v.gpu_window_ns


def test_gpu_busy_equals_the_stage_busy_already_reported(
    analyzed: tuple[MfuReport, Path, str],
) -> None:
    report, *_ = analyzed
    for s in report.stages.values():
        assert s.host is not None and s.host.busy_ns == s.gpu_busy_ns
        for r in s.instances:
            assert r.host is not None and r.host.busy_ns == r.gpu_busy_ns
            assert r.host.n_gpu_ops >= r.n_gpu_ops  # rows: a graph launch's kernels each count


def test_counts_match_sql_over_the_stage_ranges(analyzed: tuple[MfuReport, Path, str]) -> None:
    """Launch calls and synchronization rows whose call starts inside each stage range, counted
    by plain SQL (these traces have no nested API rows, so every call is outermost)."""
    report, plain, _ = analyzed
    with sqlite3.connect(f"file:{plain}?mode=ro", uri=True) as con:
        for s in report.stages.values():
            for r in s.instances:
                start, end, tid = con.execute(
                    "SELECT start, end, globalTid FROM NVTX_EVENTS WHERE rowid = ?", (r.range_id,)
                ).fetchone()
                inside = "r.globalTid = ? AND r.start >= ? AND r.start <= ?"
                (launches,) = con.execute(
                    "SELECT count(*) FROM CUPTI_ACTIVITY_KIND_RUNTIME r JOIN StringIds s "
                    f"ON s.id = r.nameId WHERE {inside} AND ({LAUNCH_SQL})",
                    (tid, start, end),
                ).fetchone()
                (syncs,) = con.execute(
                    "SELECT count(*) FROM CUPTI_ACTIVITY_KIND_SYNCHRONIZATION y JOIN "
                    "CUPTI_ACTIVITY_KIND_RUNTIME r ON r.correlationId = y.correlationId "
                    f"AND y.globalPid = (r.globalTid / 16777216) * 16777216 WHERE {inside}",
                    (tid, start, end),
                ).fetchone()
                assert r.host is not None
                assert (r.host.n_launches, r.host.n_syncs) == (launches, syncs), (s.stage, r)


def test_decode_has_a_median_step_and_a_verdict(analyzed: tuple[MfuReport, Path, str]) -> None:
    report, _, name = analyzed
    decode = report.stages["decode"]
    step = decode.per_step
    assert step is not None and decode.host is not None
    # every step runs the same layers: the median step launches a step's share of decode
    n_steps = decode.decode_steps or 0
    assert step.n_launches == pytest.approx(decode.host.n_launches / n_steps, rel=0.02)
    assert step.span_ns < decode.host.span_ns / n_steps * 1.5
    low, high = SYNCS_PER_STEP[name]
    assert low <= step.n_syncs <= high and step.n_memcpy >= step.n_syncs
    # eager decode on these traces: hundreds of syncs a step, or the host's own time, limit it
    assert decode.verdict in {"framework-bound", "sync-bound", "launch-bound"}
    assert decode.mfu_launch_only is not None and decode.mfu_trace is not None
    assert decode.mfu_wall is not None
    assert decode.mfu_wall < decode.mfu_launch_only <= decode.mfu_trace


def test_json_markdown_and_plots_carry_the_breakdown(
    analyzed: tuple[MfuReport, Path, str], tmp_path: Path
) -> None:
    report, *_ = analyzed
    doc = to_json(report)
    for name, stage in doc["stages"].items():
        assert set(stage["host"]) >= HOST_KEYS
        assert set(stage["gpu_idle"]) >= {"busy_s", "starved_s", "queued_s", "edge_s"}
        assert stage["gpu_idle"]["busy_s"] == stage["gpu_busy_s"]
        assert stage["host_verdict"].startswith(f"{name} ({stage['verdict']}): ")
        assert stage["host_verdict"].endswith(f": {stage['advice']}")
        assert stage["host_bound"] == stage["verdict"]  # the deprecated name, for one release
        assert isinstance(stage["instances"][0]["host"]["n_launches"], int)
    per_step = doc["stages"]["decode"]["per_step"]
    assert per_step["host"]["n_syncs"] == report.stages["decode"].per_step.n_syncs  # type: ignore[union-attr]
    markdown = to_markdown(report)
    assert "## Where the wall time goes" in markdown
    assert "| decode/step |" in markdown and "host syncs and" in markdown
    written = write_plots(report, tmp_path)
    for stage in report.stages:
        png = tmp_path / f"host_gpu_{stage}.png"
        assert png in written and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
