"""D6, D7, D8, D13: NaN/Inf/absurd numbers, hostile option files, huge token counts and
--top-kernels: each one clear error (or finite numbers), decided before any large allocation."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path
from typing import Any

import pytest

from llm_perf_opt.flops.analytic import decode_flops
from llm_perf_opt.flops.configs import builtin_config
from llm_perf_opt.flops.context import decode_context_lens
from tests.helpers.committed import PROBE, PROBE_STAGES, V1_META
from tests.helpers.contract import analyze, assert_contract, assert_error, assert_ok, flops
from tests.helpers.mutate import with_mark


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "1e300", "0", "-5", "1e-30", "abc"])
def test_d6_peak_tflops_must_be_finite_and_plausible(value: str) -> None:
    assert_error(analyze(PROBE, *PROBE_STAGES, "--peak-tflops", value), "--peak-tflops")


def _meta_with(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "run.meta.json"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_d6_non_finite_numbers_in_meta_and_static_compute(tmp_path: Path, literal: str) -> None:
    base = V1_META.read_text(encoding="utf-8")
    meta = _meta_with(
        tmp_path, base.replace('"vision": 0.035', f'"vision": {literal}, "x": 0.035', 1)
    )
    assert meta.read_text() != base
    assert_error(
        analyze(PROBE, "--meta", meta, "--ranges-out", tmp_path / "r.csv"), "run.meta.json"
    )
    static = tmp_path / "static_compute.json"
    static.write_text(
        '{"schema": "llm_perf_opt.static_compute/1", "stages": {"vision": '
        f'{{"analytic_flops_full_square": 1, "fvcore": {literal}}}}}}}',
        encoding="utf-8",
    )
    assert_error(analyze(PROBE, *PROBE_STAGES, "--static-compute", static), "static compute")


def test_d6_non_finite_and_absurd_values_in_the_trace_mark(v1_plain: Path, tmp_path: Path) -> None:
    def nan_wall(mark: dict[str, Any]) -> str:
        mark["images"][0]["wall_s"]["vision"] = float("nan")
        return json.dumps(mark)  # writes the bare NaN json.loads would accept

    line = assert_error(analyze(with_mark(v1_plain, tmp_path / "n.sqlite", nan_wall)), "got nan")
    assert "`images[0].wall_s.vision` must be a finite number" in line

    def tiny_wall(mark: dict[str, Any]) -> dict[str, Any]:
        for image in mark["images"]:
            image["wall_s"] = {"vision": 5e-324, "prefill": 5e-324, "decode": 5e-324}
        return mark

    result = analyze(with_mark(v1_plain, tmp_path / "t.sqlite", tiny_wall), "--format", "json")
    assert_contract(result)  # finite numbers, or one error naming the non-finite number
    assert "NaN" not in result.stdout and "Infinity" not in result.stdout


def test_d7_deeply_nested_json(tmp_path: Path) -> None:
    deep = _meta_with(tmp_path, "[" * 200_000 + "]" * 200_000)
    assert_error(
        analyze(PROBE, "--meta", deep, "--ranges-out", tmp_path / "r.csv"), "nested too deeply"
    )
    assert_error(flops("--config", deep), "nested too deeply")


@pytest.mark.parametrize("option", ["--meta", "--static-compute", "--config"])
def test_d7_non_utf8_option_files(tmp_path: Path, option: str) -> None:
    bad = tmp_path / "f.json"
    bad.write_bytes(b'{"schema": "\xff\xfe"}')
    args = (*PROBE_STAGES, "--format", "json") if option != "--meta" else ()
    assert_error(analyze(PROBE, *args, option, bad), "not UTF-8")
    if option == "--config":
        assert_error(flops("--config", bad), "not UTF-8")


def test_d8_huge_decode_tokens_flags(tmp_path: Path) -> None:
    assert_error(flops("--model", "deepseek-ocr", "--decode-tokens", 10**12), "--decode-tokens")
    assert_error(analyze(PROBE, *PROBE_STAGES, "--decode-tokens", 10**12), "--decode-tokens")
    tracemalloc.start()
    try:
        line = assert_error(
            flops("--model", "deepseek-ocr", "--decode-tokens", 9_000_000), "window"
        )
        analyze_line = assert_error(
            analyze(PROBE, *PROBE_STAGES, "--decode-tokens", 9_000_000), "window"
        )
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert "8192" in line and "9,000,000 decode steps" in analyze_line
    assert peak < 50 << 20  # no per-step list of 9 million entries was built


def test_d8_huge_decode_steps_in_the_trace_mark(v1_plain: Path, tmp_path: Path) -> None:
    def many_steps(mark: dict[str, Any]) -> dict[str, Any]:
        for image in mark["images"]:
            lp = image["prefill_len"]
            image["decode_steps"] = 9_000
            image["decode_context_lens"] = list(range(lp + 1, lp + 9_001))
        return mark

    trace = with_mark(v1_plain, tmp_path / "t.sqlite", many_steps)
    # the trace's own nested decode_step ranges win over the mark's count; without them (a
    # --stage naming no step range) the mark's count is checked against the window first
    assert_contract(analyze(trace, "--format", "json"))
    assert_error(analyze(trace, "--stage", "decode_step=no_such_step"), "window")

    def unlisted_steps(mark: dict[str, Any]) -> dict[str, Any]:
        mark["images"][0]["decode_steps"] = 10**12
        return mark

    # a count the mark does not list one context length for is refused before any use
    trace = with_mark(v1_plain, tmp_path / "u.sqlite", unlisted_steps)
    assert_error(analyze(trace, "--format", "json"), "`images[0].decode_context_lens` has")


def test_d8_decode_sum_is_closed_form_and_exact() -> None:
    text = builtin_config("deepseek-ocr").text
    for mode, ctx_len in (("auto", None), ("fixed", 1000), ("max", None)):
        estimate = decode_flops(text, 273, 32, mode, ctx_len)
        lens = {"auto": decode_context_lens(273, 32), "fixed": [1000] * 32, "max": [8192] * 32}[
            mode
        ]
        per_step = [decode_flops(text, 273, 1, "fixed", c).flops_total.total_flops for c in lens]
        assert estimate.flops_total.total_flops == sum(per_step)
        assert estimate.ctx_lens_first_last == (lens[0], lens[-1])


@pytest.mark.parametrize("value", [10**9, -1])
def test_d13_top_kernels_is_bounded(value: int) -> None:
    assert_error(analyze(PROBE, *PROBE_STAGES, "--top-kernels", value), "--top-kernels")


def test_d13_largest_allowed_top_kernels_runs() -> None:
    result = analyze(PROBE, *PROBE_STAGES, "--top-kernels", 10_000, "--format", "json")
    assert_ok(result)
    assert json.loads(result.stdout)["stages"]["vision"]["top_kernels"]
