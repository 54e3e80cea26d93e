"""`--peak-source`, both denominators, the roofline and the static compute section, end to end on
the committed H100 v1 base trace with a hand-calibrated copy of its run metadata."""

from __future__ import annotations

import json
import lzma
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner, Result
from matplotlib.image import imread

from llm_perf_opt.cli.analyze import main
from llm_perf_opt.flops import analytic, traffic
from llm_perf_opt.flops.configs import builtin_config
from tests.helpers.calibration import CALIBRATION, calibrated_meta
from tests.helpers.paths import REPO
from tests.helpers.reports import STATIC

TRACE = REPO / "traces" / "dsocr_v1_base.sqlite.xz"
H100_SXM = (989.4e12, 3.35e12)  # dense bf16 FLOP/s, bytes/s (NVIDIA's datasheet)
MEASURED = (CALIBRATION["peak_tflops"] * 1e12, CALIBRATION["peak_bandwidth_TBps"] * 1e12)
LP = 282  # v1 base: 273 image positions + 9 text tokens


def invoke(*args: str | Path) -> Result:
    return CliRunner().invoke(main, [str(TRACE), *(str(a) for a in args)])


@pytest.fixture(scope="module")
def meta_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`cal.run.meta.json` (calibrated) with `cal.static_compute.json` beside it, as in
    traces/meta/, and `plain.run.meta.json` without a calibration."""
    out = tmp_path_factory.mktemp("meta")
    (out / "cal.run.meta.json").write_text(json.dumps(calibrated_meta()), encoding="utf-8")
    (out / "cal.static_compute.json").write_text(json.dumps(STATIC), encoding="utf-8")
    plain = calibrated_meta()
    del plain["calibration"]
    (out / "plain.run.meta.json").write_text(json.dumps(plain), encoding="utf-8")
    return out


def _json(meta_dir: Path, *args: str) -> dict[str, Any]:
    result = invoke("--meta", meta_dir / "cal.run.meta.json", "--format", "json", *args)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def table_doc(meta_dir: Path) -> dict[str, Any]:
    return _json(meta_dir)


@pytest.fixture(scope="module")
def measured_doc(meta_dir: Path) -> dict[str, Any]:
    return _json(meta_dir, "--peak-source", "measured")


def test_default_divides_by_the_table_and_reports_both_peaks(table_doc: dict[str, Any]) -> None:
    doc = table_doc
    assert doc["peak_selected"] == "table" and doc["peak_flops"] == H100_SXM[0]
    assert (doc["peak_flops_table"], doc["peak_bandwidth_table"]) == H100_SXM
    assert (doc["peak_flops_measured"], doc["peak_bandwidth_measured"]) == MEASURED
    assert doc["peak_flops_measured"] <= doc["peak_flops_table"]
    assert doc["calibration"]["gemms"][0]["label"] == "square_8192"
    for name, stage in doc["stages"].items():
        busy, wall = stage["gpu_busy_s"], stage["wall_s"]
        table, measured = stage["by_peak"]["table"], stage["by_peak"]["measured"]
        assert table["mfu_trace"] == pytest.approx(stage["mfu_trace"]), name
        assert measured["mfu_trace"] == pytest.approx(stage["flops"] / (MEASURED[0] * busy))
        assert measured["mfu_wall"] == pytest.approx(stage["flops"] / (MEASURED[0] * wall))
        assert measured["mfu_trace"] > table["mfu_trace"]  # a lower denominator
    decode = doc["stages"]["decode"]
    by = decode["by_peak"]
    assert by["table"]["mbu_trace"] == pytest.approx(decode["mbu_trace"])
    assert by["measured"]["mbu_trace"] == pytest.approx(
        decode["decode_bytes"] / (MEASURED[1] * decode["gpu_busy_s"])
    )
    assert doc["model"]["by_peak"]["measured"]["mfu_trace"] == pytest.approx(
        doc["model"]["flops"] / (MEASURED[0] * doc["model"]["gpu_busy_s"])
    )


def test_measured_source_divides_by_the_calibration(
    table_doc: dict[str, Any], measured_doc: dict[str, Any]
) -> None:
    doc = measured_doc
    assert doc["peak_selected"] == "measured"
    assert (doc["peak_flops"], doc["peak_bandwidth_Bps"]) == MEASURED
    assert doc["peak_source"].startswith("measured: square_8192 (8192×8192×8192) bf16 778.7")
    for name, stage in doc["stages"].items():
        assert stage["mfu_trace"] == pytest.approx(
            stage["flops"] / (MEASURED[0] * stage["gpu_busy_s"])
        )
        assert stage["by_peak"] == table_doc["stages"][name]["by_peak"]  # same figures either way
    assert doc["ridge_flops_per_byte"] == pytest.approx(778.7 / 3.0)
    assert doc["stages"]["decode"]["mbu_trace"] == pytest.approx(
        table_doc["stages"]["decode"]["mbu_trace"] * 3.35 / 3.0
    )


def test_prefill_roofline_numbers_from_the_analytic_model(table_doc: dict[str, Any]) -> None:
    """3 measured images, each a prefill of Lp = 282: bytes from tests/flops/test_traffic.py's
    hand count (5,965,651,968 B each), FLOPs 233,242,562,560 each."""
    prefill = table_doc["stages"]["prefill"]
    assert prefill["flops"] == 3 * 233_242_562_560
    assert prefill["bytes_moved"] == 3 * 5_965_651_968
    assert prefill["arithmetic_intensity"] == pytest.approx(233_242_562_560 / 5_965_651_968)
    assert prefill["achieved_flops_per_s"] == pytest.approx(
        prefill["flops"] / prefill["gpu_busy_s"]
    )
    assert table_doc["ridge_flops_per_byte"] == pytest.approx(H100_SXM[0] / H100_SXM[1])
    assert prefill["bound"] == "memory"  # 39 FLOP/B < 295
    cfg = builtin_config("deepseek-ocr")
    vision = table_doc["stages"]["vision"]
    layout = analytic.image_layout(cfg, "base")
    assert vision["bytes_moved"] == 3 * traffic.total_bytes(
        traffic.vision_bytes(cfg, layout, "bfloat16")
    )
    decode = table_doc["stages"]["decode"]
    ctx = [c for inst in table_doc["context"]["instances"] for c in inst["ctx_lens"]]
    per_step = [traffic.total_bytes(traffic.decoder_bytes(cfg.text, 1, c, "bfloat16")) for c in ctx]
    assert decode["bytes_moved"] == sum(per_step) and decode["bound"] == "memory"


def test_value_source_and_peak_tflops_agree(meta_dir: Path) -> None:
    doc = _json(meta_dir, "--peak-source", "500")
    assert doc["peak_flops"] == 500e12 and doc["peak_selected"] == "value"
    assert doc["peak_source"] == "--peak-source 500"
    assert doc["peak_flops_table"] == H100_SXM[0] and doc["peak_flops_measured"] == MEASURED[0]
    legacy = _json(meta_dir, "--peak-tflops", "500")
    assert legacy["peak_flops"] == 500e12 and legacy["peak_source"] == "--peak-tflops 500"
    assert legacy["stages"]["vision"]["mfu_trace"] == doc["stages"]["vision"]["mfu_trace"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--peak-source", "fast"), "--peak-source 'fast': expected table, measured or"),
        (("--peak-source", "-3"), "--peak-source '-3': expected table, measured or"),
        (("--peak-source", "nan"), "--peak-source 'nan': expected table, measured or"),
        (("--peak-source", "500", "--peak-tflops", "400"), "disagree; give only one of them"),
    ],
)
def test_bad_peak_source_is_one_error_line(
    meta_dir: Path, args: tuple[str, ...], message: str
) -> None:
    result = invoke("--meta", meta_dir / "cal.run.meta.json", *args)
    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr.startswith("Error: ") and message in result.stderr
    assert len(result.stderr.splitlines()) == 1


def test_measured_without_calibration_is_a_clear_error(meta_dir: Path) -> None:
    result = invoke("--meta", meta_dir / "plain.run.meta.json", "--peak-source", "measured")
    assert result.exit_code == 2 and len(result.stderr.splitlines()) == 1
    assert "--peak-source measured needs a calibrated run" in result.stderr


def test_uncalibrated_run_has_null_measured_peaks(meta_dir: Path) -> None:
    result = invoke("--meta", meta_dir / "plain.run.meta.json", "--format", "json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["peak_flops_measured"] is None and doc["calibration"] is None
    assert doc["stages"]["vision"]["by_peak"]["measured"]["mfu_trace"] is None
    table = invoke("--meta", meta_dir / "plain.run.meta.json").stdout
    assert "MFU and MBU by denominator" not in table and "Roofline" in table


def test_terminal_and_markdown_show_both_denominators_roofline_and_static(
    meta_dir: Path, tmp_path: Path
) -> None:
    md = tmp_path / "report.md"
    result = invoke("--meta", meta_dir / "cal.run.meta.json", "--markdown", md)
    assert result.exit_code == 0, result.output
    out = " ".join(result.stdout.split())  # the console wraps long lines at spaces
    assert "Denominators: datasheet 989.4 TFLOP/s, 3.35 TB/s; measured 778.7 TFLOP/s" in out
    assert "measured 778.7 TFLOP/s (square_8192 8192×8192×8192 bf16), 3 TB/s" in out
    assert "clocks SM 1980 MHz, memory 2619 MHz (nvidia-smi)" in out
    assert "Calibration GEMMs" in out and "1×896×1280" in out
    assert "MFU and MBU by denominator" in out and "MFU trace measured" in out
    assert "Roofline (analytic bytes; ridge 295.3 FLOP/byte" in out
    # the static compute report found beside the --meta file (NAME.static_compute.json)
    assert "Static compute (runner, fvcore)" in out and "150,000,000,000" in out
    text = md.read_text(encoding="utf-8")
    for heading in ("## MFU and MBU by denominator", "## Calibration GEMMs", "## Roofline",
                    "## Static compute"):  # fmt: skip
        assert heading in text


def test_roofline_png(meta_dir: Path, tmp_path: Path) -> None:
    result = invoke("--meta", meta_dir / "cal.run.meta.json", "--plots", tmp_path)
    assert result.exit_code == 0, result.output
    png = tmp_path / "roofline.png"
    assert f"wrote {png}" in result.stderr
    image = imread(png)
    height, width = image.shape[:2]
    assert 700 < width < 1100 and 450 < height < 750  # 7.5 × 4.8 in at 120 dpi, trimmed
    rgb = image[..., :3]
    assert (rgb < 0.9).any(axis=-1).mean() > 0.02  # axes, roofs, text: not a blank canvas
    for color in ((0x2A, 0x7A, 0xB9), (0xE0, 0x8A, 0x2C), (0x3A, 0x9A, 0x4A)):  # one per stage
        hit = np.all(np.abs(rgb - np.array(color) / 255) < 0.02, axis=-1)
        assert hit.sum() > 20, color


@pytest.fixture(scope="module")
def calibrated_trace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the trace whose own metadata mark carries the calibration, laid out as the
    repository's traces/ with its static compute report in meta/."""
    folder = tmp_path_factory.mktemp("traces")
    path = folder / "v1cal.sqlite"
    with lzma.open(TRACE) as src, path.open("wb") as dst:
        shutil.copyfileobj(src, dst)
    with sqlite3.connect(path) as con:
        (sid, text), *others = con.execute(
            "SELECT id, value FROM StringIds WHERE value LIKE '%\"llm_perf_opt.run_meta/1\"%'"
        ).fetchall()
        assert not others
        meta = json.loads(text)
        meta["calibration"] = CALIBRATION
        con.execute("UPDATE StringIds SET value = ? WHERE id = ?", (json.dumps(meta), sid))
    con.close()
    (folder / "meta").mkdir()
    (folder / "meta" / "v1cal.static_compute.json").write_text(json.dumps(STATIC))
    return path


def test_calibration_in_the_trace_mark_and_static_compute_beside_the_trace(
    calibrated_trace: Path,
) -> None:
    args = [str(calibrated_trace), "--peak-source", "measured", "--format", "json"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["meta_source"] == "trace mark" and doc["peak_selected"] == "measured"
    assert (doc["peak_flops"], doc["peak_flops_table"]) == (MEASURED[0], H100_SXM[0])
    assert doc["static_compute"] == STATIC
    vision = doc["stages"]["vision"]
    assert vision["mfu_trace"] == pytest.approx(
        vision["flops"] / (MEASURED[0] * vision["gpu_busy_s"])
    )
