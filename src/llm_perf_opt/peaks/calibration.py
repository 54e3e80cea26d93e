"""The runner's on-device calibration (`calibration` in the run metadata, docs/run-metadata.md).

`scripts/run_dsocr.py --calibrate` times dense GEMMs and a device-to-device copy before the
workload; the best GEMM is the achievable FLOP/s ceiling and the copy the achievable bandwidth,
the "measured" denominators of MFU and MBU. Checked against its part of the run-metadata schema:
every rate and time finite and positive, every error naming the dotted key.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from llm_perf_opt.inputs.run_meta import RunMeta
from llm_perf_opt.schemas import check_part

_TERA: Final = 1e12
KEY: Final = "calibration"


@dataclass(frozen=True)
class GemmTiming:
    """One timed `[m, k] × [k, n]` matmul; `stage` names the stage whose shape it is (or None)."""

    label: str
    stage: str | None
    m: int
    n: int
    k: int
    median_s: float
    tflops: float
    repeats: int


@dataclass(frozen=True)
class CopyTiming:
    """The device-to-device copy; `bytes_moved` counts bytes read plus bytes written."""

    bytes_moved: int
    median_s: float
    tbps: float
    repeats: int


@dataclass(frozen=True)
class Clocks:
    """SM and memory clocks during the calibration, as `source` reported them."""

    sm_mhz: float | None
    mem_mhz: float | None
    source: str | None


@dataclass(frozen=True)
class Calibration:
    """Achievable dense-matmul FLOP/s and memory bandwidth measured on the run's device."""

    source: str
    dtype: str
    device_name: str | None
    gemms: tuple[GemmTiming, ...]
    peak_tflops: float
    copy: CopyTiming
    peak_bandwidth_TBps: float
    clocks: Clocks | None

    @property
    def peak_flops(self) -> float:
        """Achievable FLOP/s: the best GEMM."""
        return self.peak_tflops * _TERA

    @property
    def peak_bandwidth_Bps(self) -> float:
        """Achievable bytes per second: the copy."""
        return self.peak_bandwidth_TBps * _TERA

    @property
    def best_gemm(self) -> GemmTiming:
        """The GEMM that set `peak_tflops` (the fastest one)."""
        return max(self.gemms, key=lambda g: g.tflops)


def _gemm(gemm: Mapping[str, Any]) -> GemmTiming:
    return GemmTiming(
        label=gemm["label"],
        stage=gemm["stage"],
        m=int(gemm["m"]),
        n=int(gemm["n"]),
        k=int(gemm["k"]),
        median_s=float(gemm["median_s"]),
        tflops=float(gemm["tflops"]),
        repeats=int(gemm["repeats"]),
    )


def parse_calibration(data: Any, source: str) -> Calibration:
    """Validate the decoded `calibration` object.

    Args:
        data: the value of the run metadata's `calibration` key.
        source: where the metadata came from (shown in errors).

    Raises:
        MetaError: a key is missing, mistyped, not finite or not positive, or `gemms` is empty.
    """
    check_part(data, KEY, f"run metadata ({source})")
    copy, clocks = data["copy"], data["clocks"]
    return Calibration(
        source=source,
        dtype=data["dtype"],
        device_name=data["device_name"],
        gemms=tuple(_gemm(g) for g in data["gemms"]),
        peak_tflops=float(data["peak_tflops"]),
        copy=CopyTiming(
            bytes_moved=int(copy["bytes_moved"]),
            median_s=float(copy["median_s"]),
            tbps=float(copy["tbps"]),
            repeats=int(copy["repeats"]),
        ),
        peak_bandwidth_TBps=float(data["peak_bandwidth_TBps"]),
        clocks=None
        if clocks is None
        else Clocks(float(clocks["sm_mhz"]), float(clocks["mem_mhz"]), clocks["source"]),
    )


def calibration_of(meta: RunMeta | None) -> Calibration | None:
    """The run's calibration, None when the metadata has none (or there is no metadata).

    Raises:
        MetaError: the metadata has a `calibration` object and it is malformed.
    """
    if meta is None or meta.raw.get(KEY) is None:
        return None
    return parse_calibration(meta.raw[KEY], meta.source)
