"""Per-stage roofline and utilization against every known denominator, from an `MfuReport`.

A stage's arithmetic intensity is analytic FLOPs over analytic bytes moved (flops/traffic.py);
its achieved FLOP/s is FLOPs over GPU busy time. Against the peak in use the roofline is
min(peak_flops, intensity × peak_bandwidth); the ridge point peak_flops / peak_bandwidth splits
memory-bound stages (intensity below it) from compute-bound ones. Pure: no I/O, no plotting.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from llm_perf_opt.metrics.mfu import MfuReport

PEAK_NAMES: Final = ("table", "measured")


@dataclass(frozen=True)
class RooflinePoint:
    """One stage on the roofline of the peak in use."""

    stage: str
    flops: float
    bytes_moved: float
    gpu_busy_s: float
    arithmetic_intensity: float
    achieved_flops: float | None
    attainable_flops: float | None
    bound: str | None


def ridge_point(peak_flops: float, bandwidth_Bps: float | None) -> float | None:
    """FLOP per byte where the bandwidth roof meets the compute roof; None without a bandwidth."""
    return peak_flops / bandwidth_Bps if bandwidth_Bps else None


def roofline_points(report: MfuReport) -> dict[str, RooflinePoint]:
    """Stages whose bytes moved are known, against `report.peak` (empty when none is known)."""
    peak = report.peak
    ridge = ridge_point(peak.peak_flops, peak.peak_bandwidth_Bps)
    out = {}
    for name, s in report.stages.items():
        if not s.bytes_moved:
            continue
        intensity = s.flops / s.bytes_moved
        busy_s = s.gpu_busy_ns / 1e9
        attainable = (
            min(peak.peak_flops, intensity * peak.peak_bandwidth_Bps)
            if peak.peak_bandwidth_Bps
            else None
        )
        out[name] = RooflinePoint(
            stage=name,
            flops=s.flops,
            bytes_moved=s.bytes_moved,
            gpu_busy_s=busy_s,
            arithmetic_intensity=intensity,
            achieved_flops=s.flops / busy_s if busy_s > 0 else None,
            attainable_flops=attainable,
            bound=None if ridge is None else ("memory" if intensity < ridge else "compute"),
        )
    return out


def _peaks(report: MfuReport) -> dict[str, tuple[float | None, float | None]]:
    """(FLOP/s, bytes/s) of each denominator: the table and the calibration when known, else
    the one in use under the name it was selected by."""
    src = report.peak_sources
    if src is None:
        return {"table": (report.peak.peak_flops, report.peak.peak_bandwidth_Bps)}
    return {
        "table": (src.table_flops, src.table_bandwidth_Bps),
        "measured": (src.measured_flops, src.measured_bandwidth_Bps),
    }


def _div(num: float | None, rate: float | None, ns: float) -> float | None:
    if num is None or not rate or ns <= 0:
        return None
    return num / (rate * ns * 1e-9)


def utilization_by_peak(report: MfuReport) -> dict[str, dict[str, dict[str, float | None]]]:
    """Per stage and for the model: MFU (trace, wall) and decode MBU under each denominator.

    Keys: stage name or `model` → `table` / `measured` → `mfu_trace`, `mfu_wall`, `mbu_trace`,
    `mbu_wall` (None where the peak or the bytes are unknown)."""
    peaks = _peaks(report)
    rows: list[tuple[str, float, float | None, int, float]] = [
        (name, s.flops, s.decode_bytes, s.gpu_busy_ns, s.wall_ns)
        for name, s in report.stages.items()
    ]
    m = report.model
    rows.append(("model", m.flops, None, m.gpu_busy_ns, m.wall_ns))
    return {
        name: {
            peak: {
                "mfu_trace": _div(flops, f, busy),
                "mfu_wall": _div(flops, f, wall),
                "mbu_trace": _div(moved, b, busy),
                "mbu_wall": _div(moved, b, wall),
            }
            for peak, (f, b) in peaks.items()
        }
        for name, flops, moved, busy, wall in rows
    }


def roofs(report: MfuReport) -> Mapping[str, tuple[float, float]]:
    """(peak FLOP/s, bytes/s) of every denominator with both figures known, for the plot."""
    return {
        name: (f, b) for name, (f, b) in _peaks(report).items() if f is not None and b is not None
    }
