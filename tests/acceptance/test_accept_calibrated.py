"""The calibrated H200 trace `dsocr_v1_base_gmm` (grouped-mm experts, `--calibrate`,
`--static-compute`): both denominators, a physically possible measured peak, the roofline and
the static compute section, read from the trace's own metadata mark as a user would."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Final

import pytest
from matplotlib.image import imread

from tests.helpers.paths import TRACES
from tests.helpers.real_traces import run_cli

NAME: Final = "dsocr_v1_base_gmm"
TRACE: Final = TRACES / f"{NAME}.sqlite.xz"
H200_SXM: Final = (989.4e12, 4.8e12)  # dense bf16 FLOP/s, HBM3e bytes/s (gpu-peaks.md)


@pytest.fixture(scope="module")
def meta() -> dict[str, Any]:
    return json.loads((TRACES / "meta" / f"{NAME}.run.meta.json").read_text(encoding="utf-8"))  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def doc() -> dict[str, Any]:
    return json.loads(run_cli(TRACE, "--format", "json"))  # type: ignore[no-any-return]


def test_the_calibration_is_self_consistent_and_below_the_datasheet(meta: dict[str, Any]) -> None:
    cal = meta["calibration"]
    assert cal["device_name"] == "NVIDIA H200" and cal["dtype"] == "bf16"
    for gemm in cal["gemms"]:
        flops = 2 * gemm["m"] * gemm["n"] * gemm["k"]
        assert gemm["tflops"] == pytest.approx(flops / gemm["median_s"] / 1e12, rel=1e-6)
        assert gemm["repeats"] >= 20
    assert cal["peak_tflops"] == max(g["tflops"] for g in cal["gemms"])
    copy = cal["copy"]
    assert copy["tbps"] == pytest.approx(copy["bytes_moved"] / copy["median_s"] / 1e12, rel=1e-6)
    assert 0.5 * H200_SXM[0] < cal["peak_tflops"] * 1e12 <= H200_SXM[0]
    assert 0.5 * H200_SXM[1] < cal["peak_bandwidth_TBps"] * 1e12 <= H200_SXM[1]


def test_report_carries_both_denominators(doc: dict[str, Any], meta: dict[str, Any]) -> None:
    cal = meta["calibration"]
    assert doc["meta_source"] == "trace mark" and doc["gpu_name"] == "NVIDIA H200"
    assert doc["peak_selected"] == "table" and doc["peak_flops"] == H200_SXM[0]
    assert (doc["peak_flops_table"], doc["peak_bandwidth_table"]) == H200_SXM
    assert doc["peak_flops_measured"] == pytest.approx(cal["peak_tflops"] * 1e12)
    assert doc["peak_bandwidth_measured"] == pytest.approx(cal["peak_bandwidth_TBps"] * 1e12)
    assert doc["peak_flops_measured"] <= doc["peak_flops_table"]
    assert doc["peak_bandwidth_measured"] <= doc["peak_bandwidth_table"]
    assert not [w for w in doc["warnings"] if "calibration" in w or "exceeds" in w]
    ratio = doc["peak_flops_table"] / doc["peak_flops_measured"]
    for name, stage in doc["stages"].items():
        by = stage["by_peak"]
        assert by["measured"]["mfu_trace"] == pytest.approx(by["table"]["mfu_trace"] * ratio), name
    decode = doc["stages"]["decode"]["by_peak"]
    bw_ratio = doc["peak_bandwidth_table"] / doc["peak_bandwidth_measured"]
    assert decode["measured"]["mbu_trace"] == pytest.approx(decode["table"]["mbu_trace"] * bw_ratio)


def test_roofline_places_every_stage_under_the_h200_ridge(doc: dict[str, Any]) -> None:
    assert doc["ridge_flops_per_byte"] == pytest.approx(H200_SXM[0] / H200_SXM[1])  # 206
    for name, stage in doc["stages"].items():
        assert stage["arithmetic_intensity"] == pytest.approx(stage["flops"] / stage["bytes_moved"])
        achieved = stage["achieved_flops_per_s"]
        assert achieved == pytest.approx(stage["flops"] / stage["gpu_busy_s"])
        # under the roof: min(peak, intensity × bandwidth)
        assert achieved < min(H200_SXM[0], stage["arithmetic_intensity"] * H200_SXM[1]), name
    intensity = {n: s["arithmetic_intensity"] for n, s in doc["stages"].items()}
    assert intensity["decode"] < intensity["prefill"] < intensity["vision"]
    assert doc["stages"]["decode"]["bound"] == "memory"


def test_static_compute_found_beside_the_trace(doc: dict[str, Any]) -> None:
    on_disk = json.loads((TRACES / "meta" / f"{NAME}.static_compute.json").read_text())
    assert doc["static_compute"] == on_disk
    vision = doc["static_compute"]["stages"]["vision"]
    assert vision["analytic_flops_causal"] * 3 == doc["stages"]["vision"]["flops"]


def test_terminal_report_and_plots(tmp_path: Path) -> None:
    out = " ".join(run_cli(TRACE, "--plots", tmp_path, "--top-kernels", "0").split())
    assert "Denominators: datasheet 989.4 TFLOP/s, 4.8 TB/s; measured 752.6 TFLOP/s" in out
    for section in ("MFU and MBU by denominator", "Calibration GEMMs", "Roofline",
                    "Static compute (runner, fvcore)", "vision_sam_qkv"):  # fmt: skip
        assert section in out
    image = imread(tmp_path / "roofline.png")
    assert image.shape[0] > 400 and image.shape[1] > 600
    assert (image[..., :3] < 0.9).any(axis=-1).mean() > 0.02
