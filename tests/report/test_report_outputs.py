"""Renderers: JSON keys and numbers, CSV rows, Markdown sections, the ranges CSV, PNG plots."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from llm_perf_opt.cli.terminal import render_table
from llm_perf_opt.inputs.facts import ContextChoice, StageInputs
from llm_perf_opt.inputs.run_meta import parse_meta
from llm_perf_opt.inputs.stage_ranges import default_refs
from llm_perf_opt.metrics.mfu import MfuReport, compute_mfu
from llm_perf_opt.report import (
    CSV_COLUMNS,
    to_csv,
    to_json,
    to_json_text,
    to_markdown,
    write_ranges_csv,
)
from llm_perf_opt.report.plots import write_plots
from tests.helpers.mfu_inputs import synth_inputs
from tests.helpers.paths import REPO
from tests.helpers.reports import RANGES_HEADER, STATIC, png_size
from tests.helpers.synth import DOMAIN, PEAK, LinearFlops, meta_dict, runner_like_trace


@pytest.fixture(scope="module")
def report() -> MfuReport:
    refs = default_refs(DOMAIN)
    ranges, ops = synth_inputs(runner_like_trace()[0], refs)
    return compute_mfu(
        ranges,
        ops,
        refs=refs,
        inputs=StageInputs(meta=parse_meta(meta_dict(), "test")),
        flops_model=LinearFlops(),
        peak=PEAK,
        ctx=ContextChoice("auto"),
        kernel_names=None,
        static_compute=STATIC,
    )


def test_json_has_the_contract_keys_and_consistent_numbers(report: MfuReport) -> None:
    doc = json.loads(to_json_text(report))
    assert {"gpu_name", "peak_flops", "ctx_mode", "ctx_len", "stages", "model"} <= doc.keys()
    assert doc["gpu_name"] == "Test GPU" and doc["peak_flops"] == 1e15
    assert doc["ctx_mode"] == "auto" and doc["ctx_len"] is None
    assert list(doc["stages"]) == ["vision", "prefill", "decode"]
    peak = doc["peak_flops"]
    for name, stage in doc["stages"].items():
        for key in ("flops", "gpu_busy_s", "kernel_sum_s", "wall_s", "mfu_trace", "mfu_wall"):
            assert isinstance(stage[key], float), (name, key)
        assert stage["mfu_trace"] == pytest.approx(stage["flops"] / (peak * stage["gpu_busy_s"]))
        assert stage["mfu_wall"] == pytest.approx(stage["flops"] / (peak * stage["wall_s"]))
        assert stage["mfu_trace"] >= stage["mfu_wall"]
        assert len(stage["instances"]) == 2
        assert stage["flops"] == pytest.approx(sum(i["flops"] for i in stage["instances"]))
        assert stage["gpu_busy_s"] == pytest.approx(
            sum(i["gpu_busy_s"] for i in stage["instances"])
        )
    total = sum(s["flops"] for s in doc["stages"].values())
    busy = sum(s["gpu_busy_s"] for s in doc["stages"].values())
    assert doc["model"]["mfu_trace"] == pytest.approx(total / (peak * busy))
    decode = doc["stages"]["decode"]
    assert doc["mbu"]["decode"]["trace"] == decode["mbu_trace"]
    assert decode["mbu_trace"] == pytest.approx(
        decode["decode_bytes"] / (doc["peak_bandwidth_Bps"] * decode["gpu_busy_s"])
    )
    assert [c["ctx_len_first"] for c in doc["context"]["instances"]] == [301, 301]
    assert len(doc["decode_steps"]) == 6
    assert doc["static_compute"] == STATIC


def test_json_output_doc_lists_every_key(report: MfuReport) -> None:
    """docs/json-output.md documents each key the JSON can hold."""
    doc_text = (REPO / "docs" / "json-output.md").read_text()
    doc = to_json(report)
    keys = set(doc) | set(doc["stages"]["decode"]) | set(doc["stages"]["decode"]["instances"][0])
    keys |= set(doc["context"]) | set(doc["context"]["instances"][0]) | set(doc["model"])
    keys |= set(doc["decode_steps"][0]) | set(doc["mbu"]["decode"])
    keys |= (
        set(doc["stages"]["decode"]["top_kernels"][0])
        if doc["stages"]["decode"]["top_kernels"]
        else set()
    )
    missing = sorted(k for k in keys if f"`{k}`" not in doc_text)
    assert not missing, f"undocumented JSON keys: {missing}"


def test_csv_rows_per_instance_stage_and_model(report: MfuReport) -> None:
    rows = list(csv.DictReader(io.StringIO(to_csv(report))))
    assert tuple(rows[0]) == CSV_COLUMNS
    levels = [(r["level"], r["stage"]) for r in rows]
    assert levels.count(("instance", "vision")) == 2
    assert levels.count(("stage", "decode")) == 1 and levels[-1] == ("model", "all")
    vision = next(r for r in rows if r["level"] == "stage" and r["stage"] == "vision")
    assert float(vision["mfu_trace"]) == pytest.approx(report.stages["vision"].mfu_trace)


def test_markdown_sections(report: MfuReport) -> None:
    text = to_markdown(report)
    for heading in (
        "## MFU per stage",
        "## Per image instance",
        "## Decode",
        "## Context length: --ctx-mode auto",
        "## Static compute (runner, fvcore)",
    ):
        assert heading in text
    assert (
        "| vision | 150,000,000,000 | 149,000,000,000 | 149,000,000,000 | +0.67% | fvcore |" in text
    )


def test_table_renders_to_text(report: MfuReport) -> None:
    from rich.console import Console

    console = Console(file=io.StringIO(), width=160)
    render_table(report, console)
    out = console.file.getvalue()  # type: ignore[attr-defined]
    # a trace without API calls has no breakdown: the verdict column says so
    assert "MFU per stage" in out and " n/a │" in out and "Context length" in out


def test_ranges_csv_has_exactly_the_contract_columns(tmp_path: Path) -> None:
    attr = runner_like_trace()[0].attribution()
    path = tmp_path / "ranges.csv"
    write_ranges_csv(attr.ranges, path)
    lines = path.read_text().splitlines()
    assert lines[0] == RANGES_HEADER
    assert len(lines) == 1 + attr.ranges.height


def test_plots_are_valid_non_empty_pngs(report: MfuReport, tmp_path: Path) -> None:
    paths = write_plots(report, tmp_path / "figs")
    assert [p.name for p in paths] == [
        "stage_time_split.png",
        "mfu_trace_vs_wall.png",
        "kernel_categories.png",
        "decode_step_time.png",
    ]
    for path in paths:
        width, height = png_size(path)
        assert width > 300 and height > 150
        assert path.stat().st_size > 5_000
