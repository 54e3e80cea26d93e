"""`mfu-analyze` end to end on the real H100 probe trace (no runner metadata), and its errors."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from click.testing import CliRunner, Result

from llm_perf_opt.attribution import RangeSelection, attribute
from llm_perf_opt.cli.analyze import main
from llm_perf_opt.flops import analytic
from llm_perf_opt.flops.configs import builtin_config
from llm_perf_opt.trace import open_trace
from tests.helpers.paths import SRC
from tests.helpers.reports import RANGES_HEADER, STATIC, png_size
from tests.helpers.synth import meta_dict

STAGE_FLAGS = [
    "--stage", "vision=vision", "--stage", "prefill=prefill", "--stage", "decode=decode",
    "--model", "deepseek-ocr", "--prefill-len", "273", "--decode-tokens", "32",
]  # fmt: skip
H100_SXM_BF16 = 989.4e12  # NVIDIA's datasheet, dense


def invoke(*args: str | Path) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args])


def fail_line(result: Result) -> str:
    """The single stderr line of a failed run (exit 2, no traceback)."""
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.fixture(scope="module")
def probe_json(probe_trace: Path) -> dict[str, Any]:
    result = invoke(probe_trace, *STAGE_FLAGS, "--format", "json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def test_probe_json_numbers_from_independent_pieces(
    probe_trace: Path, probe_json: dict[str, Any]
) -> None:
    doc = probe_json
    assert doc["gpu_name"] == "NVIDIA H100 80GB HBM3"
    assert doc["peak_flops"] == H100_SXM_BF16 and doc["ctx_mode"] == "auto"
    # FLOPs straight from the analytic model, the way docs/mfu-math.md states them
    cfg = builtin_config("deepseek-ocr")
    flops = {
        "vision": analytic.vision_flops(cfg, analytic.image_layout(cfg, "base")).total_flops,
        "prefill": analytic.prefill_flops(cfg.text, 273).total_flops,
        "decode": sum(
            analytic.decode_flops_per_token(cfg.text, 273 + k).total_flops for k in range(1, 33)
        ),
    }
    # v1 decode per token: 1,148,190,720 + 61,440·C (docs/flops.md)
    assert flops["decode"] == sum(1_148_190_720 + 61_440 * (273 + k) for k in range(1, 33))
    # GPU busy time straight from the attribution of the three stage ranges
    attr = attribute(open_trace(probe_trace), RangeSelection(names=("vision", "prefill", "decode")))
    for name, stage in doc["stages"].items():
        row = attr.ranges.filter(pl.col("name") == name).row(0, named=True)
        busy_s = row["gpu_busy_ns"] / 1e9
        end_ns = max(
            row["cpu_start_ns"] + row["cpu_duration_ns"],
            row["proj_start_ns"] + row["proj_duration_ns"],
        )
        span_s = (end_ns - row["cpu_start_ns"]) / 1e9
        assert stage["flops"] == flops[name]
        assert stage["gpu_busy_s"] == pytest.approx(busy_s, rel=1e-12)
        assert stage["kernel_sum_s"] == pytest.approx(row["kernel_sum_ns"] / 1e9, rel=1e-12)
        assert stage["wall_s"] == pytest.approx(span_s, rel=1e-12)
        assert stage["mfu_trace"] == pytest.approx(flops[name] / (H100_SXM_BF16 * busy_s))
        assert stage["mfu_wall"] == pytest.approx(flops[name] / (H100_SXM_BF16 * span_s))
        assert stage["mfu_trace"] >= stage["mfu_wall"] > 0
        assert len(stage["instances"]) == 1
    decode = doc["stages"]["decode"]
    assert decode["decode_steps"] == 32  # counted from the nested decode_step ranges
    assert doc["context"]["instances"][0]["ctx_lens"] == list(range(274, 306))
    total = sum(flops.values())
    busy = sum(s["gpu_busy_s"] for s in doc["stages"].values())
    assert doc["model"]["mfu_trace"] == pytest.approx(total / (H100_SXM_BF16 * busy))


def test_probe_table_report(probe_trace: Path) -> None:
    result = invoke(probe_trace, *STAGE_FLAGS)
    assert result.exit_code == 0, result.output
    for text in ("MFU per stage", "vision", "prefill", "decode", "model", "Context length",
                 "H100 SXM dense bf16 989.4", "Top kernels: vision"):  # fmt: skip
        assert text in result.stdout


def test_ctx_modes_order_on_the_probe(probe_trace: Path) -> None:
    mfu = []
    for mode in (["--ctx-mode", "auto"], ["--ctx-len", "2048"], ["--ctx-mode", "max"]):
        result = invoke(probe_trace, *STAGE_FLAGS, *mode, "--format", "json")
        doc = json.loads(result.stdout)
        mfu.append(doc["stages"]["decode"]["mfu_trace"])
    assert mfu[0] < mfu[1] < mfu[2]


def test_outputs_csv_markdown_plots(probe_trace: Path, tmp_path: Path) -> None:
    result = invoke(
        probe_trace, *STAGE_FLAGS, "--format", "md", "--output", tmp_path / "out.md",
        "--csv", tmp_path / "r.csv", "--markdown", tmp_path / "r.md", "--plots", tmp_path / "figs",
        "--ranges-out", tmp_path / "ranges.csv",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    assert (tmp_path / "out.md").read_text() == (tmp_path / "r.md").read_text()
    assert "## Context length" in (tmp_path / "r.md").read_text()
    assert (tmp_path / "r.csv").read_text().startswith("level,stage,instance,")
    assert (tmp_path / "ranges.csv").read_text().splitlines()[0] == RANGES_HEADER
    for png in ("stage_time_split.png", "mfu_trace_vs_wall.png", "decode_step_time.png"):
        assert min(png_size(tmp_path / "figs" / png)) > 100


def test_ranges_out_alone_needs_no_stage_facts(probe_trace: Path, tmp_path: Path) -> None:
    out = tmp_path / "ranges.csv"
    result = invoke(probe_trace, "--ranges-out", out)
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    assert result.stderr.startswith("note: MFU not computed (FLOPs need the model architecture")
    lines = out.read_text().splitlines()
    assert lines[0] == RANGES_HEADER
    assert len(lines) == 1 + 36  # vision, prefill, decode, 32 decode_step, graph_replay
    # a stage name the trace lacks: still only the ranges
    result = invoke(probe_trace, "--ranges-out", out, "--stage", "vision=encoder")
    assert result.exit_code == 0 and "no NVTX range 'encoder'" in result.stderr


def test_error_unknown_stage_lists_names(probe_trace: Path) -> None:
    line = fail_line(invoke(probe_trace, *STAGE_FLAGS, "--stage", "vision=encoder"))
    assert line == (
        "Error: no NVTX range 'encoder' (any domain) for stage vision; names present: decode, "
        "decode_step, graph_replay, prefill, vision. Pass --stage vision=NAME[@DOMAIN]"
    )


def test_error_missing_flop_facts_name_the_flag(probe_trace: Path) -> None:
    stages = STAGE_FLAGS[:6]
    line = fail_line(invoke(probe_trace, *stages))
    assert line == (
        "Error: FLOPs need the model architecture and the trace has no run metadata: pass "
        "--model deepseek-ocr|deepseek-ocr2, --config FILE or --meta run.meta.json"
    )
    line = fail_line(invoke(probe_trace, *stages, "--model", "deepseek-ocr"))
    assert line.startswith("Error: prefill FLOPs need the prefill length Lp")
    assert line.endswith("pass --prefill-len N")
    line = fail_line(invoke(probe_trace, *stages, "--model", "deepseek-ocr", "--ctx-mode", "fixed",
                            "--prefill-len", "273"))  # fmt: skip
    assert line == "Error: --ctx-mode fixed needs the context length: pass --ctx-len N"


def test_error_bad_stage_option(probe_trace: Path) -> None:
    line = fail_line(invoke(probe_trace, "--stage", "encoder"))
    assert line.startswith("Error: --stage 'encoder': expected ROLE=NAME[@DOMAIN] with ROLE one of")


def test_error_missing_trace(tmp_path: Path) -> None:
    line = fail_line(invoke(tmp_path / "nope.sqlite", *STAGE_FLAGS))
    assert line.startswith("Error: ") and "no such file" in line


def _copy(probe_trace: Path, tmp_path: Path, sql: str) -> Path:
    path = tmp_path / "probe.sqlite"
    shutil.copyfile(probe_trace, path)
    path.chmod(0o644)
    with sqlite3.connect(path) as conn:
        conn.execute(sql)
    return path


def test_error_unknown_gpu_asks_for_a_peak(probe_trace: Path, tmp_path: Path) -> None:
    trace = _copy(probe_trace, tmp_path, "UPDATE TARGET_INFO_GPU SET name = 'NVIDIA Mystery X1'")
    line = fail_line(invoke(trace, *STAGE_FLAGS))
    assert line == (
        "Error: no peak FLOP/s known for GPU 'NVIDIA Mystery X1'; pass --peak-tflops X "
        "(dense bf16 TFLOP/s from the datasheet)"
    )
    result = invoke(trace, *STAGE_FLAGS, "--peak-tflops", "500", "--format", "json")
    doc = json.loads(result.stdout)
    assert doc["peak_flops"] == 500e12 and doc["peak_source"] == "--peak-tflops 500"


def test_error_zero_gpu_time(probe_trace: Path, tmp_path: Path) -> None:
    # a 4 ns range on the main thread between decode and graph_replay: it launches nothing
    tid = "(SELECT globalTid FROM NVTX_EVENTS WHERE text = 'vision')"
    trace = _copy(
        probe_trace,
        tmp_path,
        "INSERT INTO NVTX_EVENTS (start, end, eventType, text, globalTid) "
        f"VALUES (6141229091, 6141229095, 59, 'idle_stage', {tid})",
    )
    line = fail_line(invoke(trace, *STAGE_FLAGS, "--stage", "prefill=idle_stage"))
    assert line == (
        "Error: stage prefill (range 'idle_stage' (any domain), 1 instance(s)) has no GPU time: "
        "no GPU op was launched inside its ranges. Check --stage prefill=NAME[@DOMAIN], or pass "
        "--other-threads if another thread launches the kernels"
    )


def test_module_entry_point_help() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "llm_perf_opt.cli.analyze", "--help"],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONPATH": str(SRC), "PATH": ""},
    )
    assert "Example:" in result.stdout and "--ctx-mode" in result.stdout


def test_progress_goes_to_stderr_for_large_traces(
    probe_trace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("llm_perf_opt.cli.analyze.LARGE_TRACE_BYTES", 0)
    result = invoke(probe_trace, *STAGE_FLAGS, "--format", "json")
    assert result.exit_code == 0
    assert json.loads(result.stdout)["gpu_name"] == "NVIDIA H100 80GB HBM3"
    lines = result.stderr.splitlines()
    steps = [line.split("] ", 1)[1] for line in lines if not line.startswith("warning: ")]
    assert steps == [
        f"reading {probe_trace}",
        "attributing GPU ops to NVTX ranges (memory budget 256 MiB)",
        "computing MFU",
    ]


def _probe_meta(**image: Any) -> dict[str, Any]:
    """Metadata for the probe's one image: the probe ranges are in the default domain."""
    meta = meta_dict(1, dtype="float32")
    meta["model"]["config"] = builtin_config("deepseek-ocr").to_dict()
    meta["images"][0] |= {
        "prefill_len": 273,
        "decode_steps": 32,
        "decode_context_lens": list(range(274, 306)),
        "wall_s": {"vision": 0.004, "prefill": 0.02, "decode": 0.018},
        "decode_step_wall_s": [0.0005] * 32,
    } | image
    return meta


DEFAULT_DOMAIN_STAGES = [
    "--stage", "vision=vision@", "--stage", "prefill=prefill@", "--stage", "decode=decode@",
    "--stage", "decode_step=decode_step@",
]  # fmt: skip


def test_meta_file_supplies_facts_dtype_and_runner_wall(probe_trace: Path, tmp_path: Path) -> None:
    (tmp_path / "run.meta.json").write_text(json.dumps(_probe_meta()))
    (tmp_path / "static_compute.json").write_text(json.dumps(STATIC))
    result = invoke(
        probe_trace, "--meta", tmp_path / "run.meta.json", *DEFAULT_DOMAIN_STAGES,
        "--format", "json", "--markdown", tmp_path / "r.md",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["meta_source"] == str(tmp_path / "run.meta.json")
    assert doc["flops_source"] == "run metadata model.config"
    assert doc["dtype"] == "fp32" and doc["peak_flops"] == 67e12  # float32 run → FP32 column
    vision = doc["stages"]["vision"]
    assert vision["wall_source"] == "runner" and vision["wall_s"] == 0.004
    assert vision["mfu_wall"] == pytest.approx(vision["flops"] / (67e12 * 0.004))
    assert doc["decode_steps"][0]["wall_s"] == 0.0005
    assert doc["static_compute"] == STATIC
    assert "## Static compute (runner, fvcore)" in (tmp_path / "r.md").read_text()


def test_metadata_mark_in_the_trace_is_read(probe_trace: Path, tmp_path: Path) -> None:
    mark = json.dumps(_probe_meta(mode="small")).replace("'", "''")
    tid = "(SELECT globalTid FROM NVTX_EVENTS WHERE text = 'vision')"
    trace = _copy(
        probe_trace,
        tmp_path,
        "INSERT INTO NVTX_EVENTS (start, eventType, text, globalTid) "
        f"VALUES (6209600000, 34, '{mark}', {tid})",
    )
    result = invoke(trace, *DEFAULT_DOMAIN_STAGES, "--format", "json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["meta_source"] == "trace mark"
    cfg = builtin_config("deepseek-ocr")
    small = analytic.vision_flops(cfg, analytic.image_layout(cfg, "small")).total_flops
    assert doc["stages"]["vision"]["flops"] == small  # the mode came from the mark
    # the metadata lists one image: 32 decode instances cannot be matched to it
    result = invoke(trace, *DEFAULT_DOMAIN_STAGES, "--stage", "decode=decode_step@")
    assert fail_line(result) == (
        "Error: the trace holds 32 measured image instance(s) but the run metadata (trace mark) "
        "lists 1 image(s); was the capture cut short?"
    )
