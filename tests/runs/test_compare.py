"""Run-vs-run comparison: the verdict rule clause by clause, halves of one real trace within
noise, a known change found, the CLI's formats, the regression gate and the flags."""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from llm_perf_opt.analysis import AnalyzeOptions
from llm_perf_opt.batch.deltas import (
    compare_runs,
    regressions,
    small_sample_widening,
    verdict_of,
)
from llm_perf_opt.batch.fanout import analyze_one
from llm_perf_opt.batch.resultsdb import ResultsDb, RunRows
from llm_perf_opt.cli.compare import main
from tests.helpers.committed import V1_XZ

Row = Mapping[str, Any]


def invoke(*args: str | Path) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def real_rows() -> RunRows:
    result = analyze_one(V1_XZ, AnalyzeOptions())
    assert result.ok, result.error
    return result.rows()


def keep_instances(rows: RunRows, keep: set[int]) -> RunRows:
    """The run restricted to some image instances (and their decode steps)."""
    tables = dict(rows.tables)
    for name in ("instances", "decode_steps"):
        tables[name] = [r for r in rows.tables[name] if r["instance"] in keep]
    return RunRows(tables)


def changed(rows: RunRows, run_id: str, edit: Callable[[str, Row], Row]) -> RunRows:
    """A copy of the run under another id with `edit(table, row)` applied to every row."""
    return RunRows(
        {
            name: [dict(edit(name, r)) | {"run_id": run_id} for r in table]
            for name, table in rows.tables.items()
        }
    )


def scale_busy(stage: str, factor: float) -> Callable[[str, Row], Row]:
    """GPU busy time of `stage` (its instances, and the decode steps for decode) × factor."""

    def edit(table: str, row: Row) -> Row:
        hit = (table == "instances" and row["stage"] == stage) or (
            table == "decode_steps" and stage == "decode"
        )
        return {**row, "gpu_busy_s": row["gpu_busy_s"] * factor} if hit else row

    return edit


@pytest.mark.parametrize(
    ("delta", "low", "high", "lower_is_better", "expected"),
    [
        (-10.0, -12.0, -8.0, True, "improved"),  # outside the band, large, faster
        (10.0, 8.0, 12.0, True, "regressed"),  # outside, large, slower
        (10.0, 8.0, 12.0, False, "improved"),  # higher is better (MFU)
        (-10.0, -12.0, 1.0, True, "within_noise"),  # the band holds 0
        (-1.0, -1.2, -0.8, True, "within_noise"),  # outside but below --min-effect
        (-3.0, -3.5, -2.5, True, "improved"),  # exactly --min-effect counts
    ],
)
def test_verdict_needs_both_the_band_and_the_practical_threshold(
    delta: float, low: float, high: float, lower_is_better: bool, expected: str
) -> None:
    got = verdict_of(delta, low, high, lower_is_better=lower_is_better, min_effect_pct=3.0)
    assert got == expected


def test_two_halves_of_one_real_trace_are_within_noise(real_rows: RunRows) -> None:
    """Three measured pages of the H100 capture: page 1 against pages 0 and 2. Their wall times
    differ by up to 2x (the first page after warmup is slow), their busy times by < 1 %."""
    odd, even = keep_instances(real_rows, {1}), keep_instances(real_rows, {0, 2})
    comparison = compare_runs([even], [odd])
    assert set(comparison.stages) == {"vision", "prefill", "decode"}
    verdicts = {(s, m): d.verdict for s, ds in comparison.stages.items() for m, d in ds.items()}
    assert set(verdicts.values()) == {"within_noise"}, verdicts
    decode = comparison.stages["decode"]
    assert decode["step_busy_s"].unit == "decode_step"
    assert (decode["step_busy_s"].n_base, decode["step_busy_s"].n_new) == (10, 5)
    assert abs(decode["busy_s"].delta_pct) < 1
    # the wall band is wide because the walls scatter: the band reflects the data
    wall = comparison.stages["prefill"]["wall_s"]
    assert wall.ci_high_pct - wall.ci_low_pct > 50


@pytest.mark.parametrize("trace", ["dsocr_v1_base_h200", "dsocr_v1_base_gmm"])
def test_halves_of_the_h200_traces_are_within_noise(trace: str) -> None:
    result = analyze_one(V1_XZ.with_name(f"{trace}.sqlite.xz"), AnalyzeOptions())
    assert result.ok, result.error
    rows = result.rows()
    comparison = compare_runs([keep_instances(rows, {0, 2})], [keep_instances(rows, {1})])
    verdicts = {(s, m): d.verdict for s, ds in comparison.stages.items() for m, d in ds.items()}
    assert len(verdicts) == 16 and set(verdicts.values()) == {"within_noise"}, verdicts


@pytest.mark.parametrize(("df", "t_975"), [(1, 12.706), (4, 2.776), (11, 2.201), (20, 2.086),
                                           (60, 2.000)])  # fmt: skip
def test_small_sample_widening_is_t_over_z(df: int, t_975: float) -> None:
    assert small_sample_widening(df) * 1.959964 == pytest.approx(t_975, rel=2e-3)


def test_point_values_are_ratios_of_sums_over_instances(real_rows: RunRows) -> None:
    comparison = compare_runs([real_rows], [real_rows])
    for s in real_rows.tables["stages"]:
        deltas = comparison.stages[s["stage"]]
        assert deltas["busy_s"].base == pytest.approx(s["gpu_busy_s"] / s["n_instances"])
        assert deltas["wall_s"].base == pytest.approx(s["wall_s"] / s["n_instances"])
        assert deltas["mfu_trace"].base == pytest.approx(s["mfu_trace"])
        assert deltas["mfu_wall"].base == pytest.approx(s["mfu_wall"])
        assert all(d.delta_pct == 0 and d.verdict == "within_noise" for d in deltas.values())
    decode = {s["stage"]: s for s in real_rows.tables["stages"]}["decode"]
    assert comparison.stages["decode"]["kernels_per_step"].base == decode["kernels_per_step"]
    assert comparison.stages["decode"]["mbu_trace"].base == pytest.approx(decode["mbu_trace"])
    steps = real_rows.tables["decode_steps"]
    step_mean = sum(r["gpu_busy_s"] for r in steps) / len(steps)
    assert comparison.stages["decode"]["step_busy_s"].base == pytest.approx(step_mean)
    assert comparison.flags == (f"the same run is on both sides: {real_rows.run_id}",)


def test_a_faster_prefill_is_improved_and_a_slower_decode_regressed(real_rows: RunRows) -> None:
    faster = changed(real_rows, "f" * 16, scale_busy("prefill", 0.8))
    comparison = compare_runs([real_rows], [faster])
    prefill = comparison.stages["prefill"]
    assert prefill["busy_s"].verdict == "improved"
    assert prefill["busy_s"].delta_pct == pytest.approx(-20)
    assert prefill["mfu_trace"].verdict == "improved"
    assert prefill["mfu_trace"].delta_pct == pytest.approx(25)
    assert comparison.stages["vision"]["busy_s"].verdict == "within_noise"
    slower = changed(real_rows, "s" * 16, scale_busy("decode", 1.1))
    comparison = compare_runs([real_rows], [slower])
    assert comparison.stages["decode"]["busy_s"].verdict == "regressed"
    assert comparison.stages["decode"]["step_busy_s"].verdict == "regressed"
    assert {(s, m) for s, m, _ in regressions(comparison, 5)} == {
        ("decode", "busy_s"),
        ("decode", "step_busy_s"),
    }
    assert regressions(comparison, 15) == []
    # the same change is below a 15 % practical threshold
    lenient = compare_runs([real_rows], [slower], min_effect_pct=15)
    assert lenient.stages["decode"]["busy_s"].verdict == "within_noise"


def test_different_models_are_compared_but_flagged(real_rows: RunRows) -> None:
    def other_model(table: str, row: Row) -> Row:
        return (
            {**row, "model": "deepseek-ocr2", "gpu_name": "NVIDIA H200"} if table == "runs" else row
        )

    comparison = compare_runs([real_rows], [changed(real_rows, "o" * 16, other_model)])
    assert any(f.startswith("model differs") for f in comparison.flags)
    assert any(f.startswith("gpu_name differs") for f in comparison.flags)
    assert comparison.stages["decode"]["busy_s"].verdict == "within_noise"


@pytest.fixture(scope="module")
def stored(real_rows: RunRows, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A database with the real run and a copy whose decode is 10 % slower."""
    db = tmp_path_factory.mktemp("cmp") / "results.sqlite"
    slower = changed(real_rows, "5" * 16, scale_busy("decode", 1.1))
    with ResultsDb(db) as out:
        out.write(real_rows)
        out.write(slower)
    return db, slower.run_id


def test_cli_json_by_run_ids_and_the_regression_gate(
    stored: tuple[Path, str], real_rows: RunRows
) -> None:
    db, slower = stored
    result = invoke("--db", db, real_rows.run_id[:6], "--", slower, "--format", "json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["schema"] == "llm_perf_opt.mfu_compare/1"
    for stage in ("vision", "prefill", "decode"):
        for metric in ("busy_s", "wall_s", "mfu_trace", "mfu_wall"):
            cell = doc["stages"][stage][metric]
            keys = {"base", "new", "delta_pct", "ci_low_pct", "ci_high_pct", "verdict"}
            assert keys <= cell.keys()
            assert cell["verdict"] in ("improved", "regressed", "within_noise")
    assert doc["stages"]["decode"]["step_busy_s"]["verdict"] == "regressed"
    assert doc["stages"]["decode"]["busy_s"]["delta_pct"] == pytest.approx(10)
    gate = invoke("--db", db, real_rows.run_id, "--", slower, "--fail-on-regression", "5")
    assert gate.exit_code == 1
    assert "regression: decode busy_s +10.0% (> 5%)" in gate.stderr
    assert (
        invoke("--db", db, real_rows.run_id, "--", slower, "--fail-on-regression", "20").exit_code
        == 0
    )


def test_cli_markdown_png_and_options_after_the_separator(
    stored: tuple[Path, str], real_rows: RunRows, tmp_path: Path
) -> None:
    db, slower = stored
    png = tmp_path / "cmp.png"
    result = invoke("--db", db, real_rows.run_id, "--", slower, "--format", "md", "--plot", png)
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("# MFU comparison")
    assert "| decode | step busy µs |" in result.stdout and "regressed" in result.stdout
    header = png.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", header[16:24])
    assert width > 600 and height > 200


def test_cli_errors_are_one_line(stored: tuple[Path, str], real_rows: RunRows) -> None:
    db, _ = stored
    missing = invoke("--db", db, "zzzz", "--", real_rows.run_id)
    assert missing.exit_code == 2 and "no run" in missing.stderr
    assert len(missing.stderr.splitlines()) == 1
    no_db = invoke("abcdef", "--", "012345")
    assert no_db.exit_code == 2 and "--db" in no_db.stderr
    no_sep = invoke("--db", db, real_rows.run_id)
    assert no_sep.exit_code == 2 and "no NEW runs given" in no_sep.stderr
    helped = invoke("--help")
    assert helped.exit_code == 0 and "BASE... -- NEW..." in helped.stdout


def test_cli_on_traces_compares_their_fresh_analysis(good_traces: list[Path]) -> None:
    result = invoke(good_traces[0], "--", good_traces[0], "--format", "json", "-j", "1")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["base"][0]["trace_name"] == good_traces[0].name
    assert all(
        cell["delta_pct"] == 0 and cell["verdict"] == "within_noise"
        for stage in doc["stages"].values()
        for cell in stage.values()
    )
    assert "same run is on both sides" in result.stderr


H200_EAGER = V1_XZ.with_name("dsocr_v1_base_h200.sqlite.xz")
H200_GMM = V1_XZ.with_name("dsocr_v1_base_gmm.sqlite.xz")


def test_grouped_mm_improves_decode_and_prefill_busy_time_on_the_h200_traces() -> None:
    """The committed H200 captures of the same run with the MoE experts as the per-expert loop
    (eager) and as grouped_mm: decode and prefill GPU time drop far beyond noise; the vision
    tower, which has no experts, stays within noise on busy time."""
    eager, gmm = (analyze_one(p, AnalyzeOptions()) for p in (H200_EAGER, H200_GMM))
    assert eager.ok and gmm.ok, (eager.error, gmm.error)
    comparison = compare_runs([eager.rows()], [gmm.rows()])
    assert [r.experts_implementation for r in comparison.base + comparison.new] == [
        "eager",
        "grouped_mm",
    ]
    assert comparison.flags == ()  # same model, mode, GPU and dtype
    for stage in ("prefill", "decode"):
        busy = comparison.stages[stage]["busy_s"]
        assert busy.verdict == "improved", (stage, busy)
        assert busy.ci_high_pct < -20 and busy.n_base == busy.n_new == 3
        assert comparison.stages[stage]["mfu_trace"].verdict == "improved"
    decode = comparison.stages["decode"]
    assert decode["step_busy_s"].verdict == "improved"
    assert decode["kernels_per_step"].verdict == "improved"
    assert comparison.stages["vision"]["busy_s"].verdict == "within_noise"


def test_wildly_scattered_units_give_a_finite_band(real_rows: RunRows) -> None:
    """One page 20x slower than the other two: the widened residuals would go below zero
    without their floor; the band stays finite and positive-ratio."""

    def scatter(table: str, row: Row) -> Row:
        slow = table == "instances" and row["stage"] == "prefill" and row["instance"] == 0
        return {**row, "wall_s": row["wall_s"] * 20} if slow else row

    wild = changed(real_rows, "w" * 16, scatter)
    wall = compare_runs([wild], [real_rows]).stages["prefill"]["wall_s"]
    assert wall.ci_low_pct > -100 and wall.ci_high_pct < float("inf")
    assert wall.ci_low_pct < wall.delta_pct < wall.ci_high_pct
