"""`resolve_peaks`: the denominator chosen, every denominator kept, and warnings about them."""

from __future__ import annotations

from typing import Any

import pytest

from llm_perf_opt.peaks.calibration import parse_calibration
from llm_perf_opt.peaks.sources import PeakSourceError, parse_peak_source, resolve_peaks
from llm_perf_opt.peaks.table import UnknownGpuError
from tests.helpers.calibration import CALIBRATION

H100 = "NVIDIA H100 80GB HBM3"


def _cal(**changes: Any) -> Any:
    return parse_calibration(dict(CALIBRATION, **changes), "test")


def test_table_is_the_default_and_the_calibration_is_kept_beside_it() -> None:
    choice, sources, warnings = resolve_peaks(H100, "bf16", calibration=_cal())
    assert choice.peak_flops == 989.4e12 and sources.selected == "table"
    assert (sources.table_flops, sources.table_bandwidth_Bps) == (989.4e12, 3.35e12)
    assert (sources.measured_flops, sources.measured_bandwidth_Bps) == (778.7e12, 3.0e12)
    assert warnings == []


def test_measured_works_for_a_gpu_the_table_does_not_know() -> None:
    choice, sources, _ = resolve_peaks("NVIDIA A10G", "bf16", peak_source="measured",
                                       calibration=_cal())  # fmt: skip
    assert choice.peak_flops == 778.7e12 and choice.peak_bandwidth_Bps == 3.0e12
    assert choice.table_row is None and sources.table_flops is None
    with pytest.raises(UnknownGpuError, match="pass --peak-tflops"):
        resolve_peaks("NVIDIA A10G", "bf16", calibration=_cal())


def test_impossible_or_mismatched_calibration_is_warned_about() -> None:
    high = _cal(peak_tflops=1200.0, peak_bandwidth_TBps=5.0)
    _, _, warnings = resolve_peaks(H100, "bf16", peak_source="measured", calibration=high)
    assert any("measured peak 1200 TFLOP/s exceeds the datasheet 989.4" in w for w in warnings)
    assert any("measured bandwidth 5 TB/s exceeds the datasheet 3.35" in w for w in warnings)
    _, _, warnings = resolve_peaks(H100, "fp16", calibration=_cal(dtype="fp32"))
    assert warnings == ["calibration was measured in fp32, the MFU divides fp16 FLOPs"]


def test_parse_peak_source() -> None:
    assert parse_peak_source("table") == "table" and parse_peak_source("measured") == "measured"
    assert parse_peak_source("751.2") == 751.2
    for bad in ("0", "inf", "Measured", ""):
        with pytest.raises(PeakSourceError, match="expected table, measured or"):
            parse_peak_source(bad)
