"""GPU peak lookup: nsys/nvidia-smi names → datasheet rows (llm_perf_opt.peaks.table)."""

from __future__ import annotations

import pytest

from llm_perf_opt.peaks.table import UnknownGpuError, choose_peak, lookup_gpu


@pytest.mark.parametrize(
    ("name", "row", "bf16", "tbps"),
    [
        ("NVIDIA H100 80GB HBM3", "H100 SXM", 989.4, 3.35),
        ("NVIDIA H100 PCIe", "H100 PCIe", 756, 2.0),
        ("NVIDIA H100 NVL", "H100 NVL", 835.5, 3.9),
        ("NVIDIA H200", "H200 SXM", 989.4, 4.8),
        ("NVIDIA H200 NVL", "H200 NVL", 835.5, 4.8),
        ("NVIDIA A100-SXM4-40GB", "A100 SXM 40 GB", 312, 1.555),
        ("NVIDIA A100-SXM4-80GB", "A100 SXM 80 GB", 312, 2.039),
        ("NVIDIA A100-PCIE-40GB", "A100 PCIe 40 GB", 312, 1.555),
        ("NVIDIA A100 80GB PCIe", "A100 PCIe 80 GB", 312, 1.935),
        ("NVIDIA A10", "A10", 125, 0.6),
        ("NVIDIA L4", "L4", 121, 0.3),
        ("NVIDIA L40S", "L40S", 362, 0.864),
        ("NVIDIA GeForce RTX 4090", "RTX 4090", 165.2, 1.008),
        ("NVIDIA GeForce RTX 3090", "RTX 3090", 71, 0.936),
        ("NVIDIA B200", "B200", 2250, 8),
        ("NVIDIA GB200", "GB200 (per GPU)", 2500, 8),
    ],
)
def test_known_names_map_to_their_row(name: str, row: str, bf16: float, tbps: float) -> None:
    peak = lookup_gpu(name)
    assert peak is not None and peak.row == row
    assert peak.tflops("bf16") == bf16
    assert peak.bandwidth_tbps == tbps


@pytest.mark.parametrize(
    "name",
    ["NVIDIA A10G", "NVIDIA L40", "NVIDIA H800", "Tesla V100S-PCIE-32GB", "NVIDIA GH200 480GB",
     "NVIDIA A100X", "NVIDIA GeForce RTX 3090 Ti", "cpu"],
)  # fmt: skip
def test_look_alike_products_are_not_guessed(name: str) -> None:
    assert lookup_gpu(name) is None


def test_h100_sxm_columns_per_dtype() -> None:
    peak = lookup_gpu("NVIDIA H100 80GB HBM3")
    assert peak is not None
    got = {d: peak.tflops(d) for d in ("fp32", "tf32", "bf16", "fp16", "fp8")}
    assert got == {"fp32": 67, "tf32": 494.7, "bf16": 989.4, "fp16": 989.4, "fp8": 1979}


def test_volta_has_fp16_but_no_bf16() -> None:
    v100 = lookup_gpu("Tesla V100-SXM2-16GB")
    assert v100 is not None and v100.tflops("fp16") == 125 and v100.tflops("bf16") is None
    with pytest.raises(UnknownGpuError, match=r"no bf16 peak.*pass --peak-tflops X"):
        choose_peak("Tesla V100-SXM2-16GB", "bf16")
    assert choose_peak("Tesla V100-PCIE-32GB", "fp16").peak_flops == 112e12


def test_choose_peak_reports_its_source() -> None:
    peak = choose_peak("NVIDIA H100 80GB HBM3", "bf16")
    assert peak.peak_flops == 989.4e12 and peak.table_row == "H100 SXM"
    assert peak.peak_source == "table: H100 SXM dense bf16 989.4 TFLOP/s"
    assert peak.peak_bandwidth_Bps == 3.35e12
    override = choose_peak("NVIDIA H100 80GB HBM3", "bf16", peak_tflops=800)
    assert override.peak_flops == 800e12 and override.peak_source == "--peak-tflops 800"
    assert override.peak_bandwidth_Bps == 3.35e12  # bandwidth still from the table


def test_unknown_gpu_needs_an_override() -> None:
    with pytest.raises(UnknownGpuError, match=r"'NVIDIA A10G'; pass --peak-tflops X"):
        choose_peak("NVIDIA A10G", "bf16")
    with pytest.raises(UnknownGpuError, match="pass --peak-tflops X"):
        choose_peak(None, "bf16")
    peak = choose_peak("NVIDIA A10G", "bf16", peak_tflops=70, trace_bandwidth_Bps=6e11)
    assert peak.peak_flops == 70e12 and peak.table_row is None
    assert peak.peak_bandwidth_Bps == 6e11 and "trace" in (peak.bandwidth_source or "")
    assert choose_peak("NVIDIA A10G", "bf16", peak_tflops=70).peak_bandwidth_Bps is None
