"""Which denominator MFU and MBU divide by: the datasheet table, the run's calibration, or a value.

`--peak-source table` (default) keeps numbers comparable across runs and machines; `measured` uses
the achievable dense-matmul FLOP/s and copy bandwidth the runner timed on the device
(`calibration.py`); a number is dense TFLOP/s. Whatever is chosen, every denominator known is kept
in `PeakSources`, so the reports can show MFU and MBU against both the datasheet and the measured
ceiling.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Final

from llm_perf_opt.errors import PeakSourceError, UnknownGpuError
from llm_perf_opt.peaks.calibration import Calibration
from llm_perf_opt.peaks.table import PeakChoice, choose_peak
from llm_perf_opt.vocab import PEAK_DTYPE_OF, PeakDtype

PEAK_SOURCES: Final = ("table", "measured")
_TERA: Final = 1e12


@dataclass(frozen=True)
class PeakSources:
    """Every known denominator; `selected` (table, measured or value) is the one in `PeakChoice`."""

    selected: str
    table_flops: float | None
    table_bandwidth_Bps: float | None
    measured_flops: float | None
    measured_bandwidth_Bps: float | None
    calibration: Calibration | None


def parse_peak_source(text: str) -> str | float:
    """`table`, `measured`, or a positive number of dense TFLOP/s.

    Raises:
        PeakSourceError: anything else.
    """
    if text in PEAK_SOURCES:
        return text
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise PeakSourceError(
            f"--peak-source {text!r}: expected table, measured or a dense TFLOP/s value > 0"
        )
    return value


def resolve_peaks(
    gpu_name: str | None,
    dtype: PeakDtype,
    *,
    peak_source: str | float = "table",
    peak_tflops: float | None = None,
    trace_bandwidth_Bps: float | None = None,
    calibration: Calibration | None = None,
) -> tuple[PeakChoice, PeakSources, list[str]]:
    """The peak to divide by, all denominators known, and warnings about them.

    Args:
        gpu_name: the GPU name from the trace (None when absent).
        dtype: the arithmetic the model ran in.
        peak_source: `table`, `measured` or dense TFLOP/s (from `parse_peak_source`).
        peak_tflops: `--peak-tflops`, the same as a numeric `peak_source`.
        trace_bandwidth_Bps: memory bandwidth nsys recorded (used when the table has no row).
        calibration: the run's calibration, None when it has none.

    Raises:
        PeakSourceError: `measured` without a calibration, or both a numeric source and
            `--peak-tflops` that disagree.
        UnknownGpuError: the table is asked for and has no row for the GPU and dtype.
    """
    flag = "--peak-source"
    if peak_tflops is not None:
        if peak_source not in ("table", peak_tflops):
            raise PeakSourceError(
                f"--peak-tflops {peak_tflops:g} and --peak-source {peak_source} disagree; "
                "give only one of them"
            )
        peak_source, flag = peak_tflops, "--peak-tflops"
    if peak_source == "measured" and calibration is None:
        raise PeakSourceError(
            "--peak-source measured needs a calibrated run (run metadata without `calibration`); "
            "record one with scripts/run_dsocr.py --calibrate, or use --peak-source table"
        )
    table = _table(gpu_name, dtype, trace_bandwidth_Bps)
    warnings: list[str] = []
    if isinstance(peak_source, float):
        choice = choose_peak(
            gpu_name, dtype, peak_tflops=peak_source, trace_bandwidth_Bps=trace_bandwidth_Bps
        )
        choice = replace(choice, peak_source=f"{flag} {peak_source:g}")
        selected = "value"
    elif peak_source == "measured" and calibration is not None:
        choice = _measured(gpu_name, dtype, calibration, table)
        selected = "measured"
    else:
        choice = table or choose_peak(gpu_name, dtype, trace_bandwidth_Bps=trace_bandwidth_Bps)
        selected = "table"
    if calibration is not None:
        warnings += _calibration_warnings(calibration, dtype, table)
    sources = PeakSources(
        selected=selected,
        table_flops=table.peak_flops if table else None,
        table_bandwidth_Bps=table.peak_bandwidth_Bps if table else choice.peak_bandwidth_Bps,
        measured_flops=calibration.peak_flops if calibration else None,
        measured_bandwidth_Bps=calibration.peak_bandwidth_Bps if calibration else None,
        calibration=calibration,
    )
    return choice, sources, warnings


def _table(gpu_name: str | None, dtype: PeakDtype, trace_bw: float | None) -> PeakChoice | None:
    """The datasheet peak, None when the table has no row for this GPU and dtype."""
    try:
        return choose_peak(gpu_name, dtype, trace_bandwidth_Bps=trace_bw)
    except UnknownGpuError:
        return None


def _measured(
    gpu_name: str | None, dtype: PeakDtype, cal: Calibration, table: PeakChoice | None
) -> PeakChoice:
    best = cal.best_gemm
    base = table or PeakChoice(gpu_name, dtype, cal.peak_flops, "", None, None, None)
    return replace(
        base,
        peak_flops=cal.peak_flops,
        peak_source=(
            f"measured: {best.label} ({best.m}×{best.n}×{best.k}) {cal.dtype} "
            f"{cal.peak_tflops:g} TFLOP/s ({cal.source} calibration)"
        ),
        peak_bandwidth_Bps=cal.peak_bandwidth_Bps,
        bandwidth_source=f"measured: device copy {cal.peak_bandwidth_TBps:g} TB/s (read + write)",
    )


def _calibration_warnings(
    cal: Calibration, dtype: PeakDtype, table: PeakChoice | None
) -> list[str]:
    """A measured ceiling above the datasheet, or in another dtype, is not a fair denominator."""
    out = []
    if PEAK_DTYPE_OF.get(cal.dtype, cal.dtype) != dtype:
        out.append(f"calibration was measured in {cal.dtype}, the MFU divides {dtype} FLOPs")
    if table is not None and cal.peak_flops > table.peak_flops:
        out.append(
            f"measured peak {cal.peak_tflops:g} TFLOP/s exceeds the datasheet "
            f"{table.peak_flops / _TERA:g}: check the calibration or the GPU table row"
        )
    bw = table.peak_bandwidth_Bps if table else None
    if bw is not None and cal.peak_bandwidth_Bps > bw:
        out.append(
            f"measured bandwidth {cal.peak_bandwidth_TBps:g} TB/s exceeds the datasheet "
            f"{bw / _TERA:g}: check the calibration or the GPU table row"
        )
    return out
