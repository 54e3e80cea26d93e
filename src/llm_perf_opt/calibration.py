"""The runner's on-device calibration (`calibration` in the run metadata, docs/run-metadata.md).

`scripts/run_dsocr.py --calibrate` times dense GEMMs and a device-to-device copy before the
workload; the best GEMM is the achievable FLOP/s ceiling and the copy the achievable bandwidth,
the "measured" denominators of MFU and MBU. Checked here with the strictness of `meta.py`: every
number finite and positive, every error naming the dotted key.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from llm_perf_opt.meta import STAGES, RunMeta, _Reader

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


def _positive(r: _Reader, obj: Mapping[str, Any], key: str, path: str) -> float:
    value = r.get(obj, key, path, float)
    if not math.isfinite(value) or value <= 0:
        raise r.fail(path, f"must be a finite number > 0, got {value!r}")
    return value


def _count(r: _Reader, obj: Mapping[str, Any], key: str, path: str) -> int:
    value = r.get(obj, key, path, int)
    if value <= 0:
        raise r.fail(path, f"must be an integer > 0, got {value}")
    return value


def _gemm(r: _Reader, obj: Any, i: int) -> GemmTiming:
    p = f"{KEY}.gemms[{i}]"
    gemm = r.check(obj, p, dict)
    stage = r.opt(gemm, "stage", f"{p}.stage", str)
    if stage is not None and stage not in STAGES:
        raise r.fail(f"{p}.stage", f"must be one of {', '.join(STAGES)} or null, got {stage!r}")
    return GemmTiming(
        label=r.get(gemm, "label", f"{p}.label", str),
        stage=stage,
        m=_count(r, gemm, "m", f"{p}.m"),
        n=_count(r, gemm, "n", f"{p}.n"),
        k=_count(r, gemm, "k", f"{p}.k"),
        median_s=_positive(r, gemm, "median_s", f"{p}.median_s"),
        tflops=_positive(r, gemm, "tflops", f"{p}.tflops"),
        repeats=_count(r, gemm, "repeats", f"{p}.repeats"),
    )


def _clocks(r: _Reader, obj: Mapping[str, Any]) -> Clocks | None:
    p = f"{KEY}.clocks"
    clocks = r.opt(obj, "clocks", p, dict)
    if clocks is None:
        return None
    mhz = {}
    for key in ("sm_mhz", "mem_mhz"):
        mhz[key] = None if clocks.get(key) is None else _positive(r, clocks, key, f"{p}.{key}")
    return Clocks(mhz["sm_mhz"], mhz["mem_mhz"], r.opt(clocks, "source", f"{p}.source", str))


def parse_calibration(data: Any, source: str) -> Calibration:
    """Validate the decoded `calibration` object.

    Args:
        data: the value of the run metadata's `calibration` key.
        source: where the metadata came from (shown in errors).

    Raises:
        MetaError: a key is missing, mistyped, not finite or not positive, or `gemms` is empty.
    """
    r = _Reader(source)
    top = r.check(data, KEY, dict)
    gemms = tuple(_gemm(r, g, i) for i, g in enumerate(r.get(top, "gemms", f"{KEY}.gemms", list)))
    if not gemms:
        raise r.fail(f"{KEY}.gemms", "is empty; the calibration must time at least one GEMM")
    copy = r.get(top, "copy", f"{KEY}.copy", dict)
    return Calibration(
        source=source,
        dtype=r.get(top, "dtype", f"{KEY}.dtype", str),
        device_name=r.opt(top, "device_name", f"{KEY}.device_name", str),
        gemms=gemms,
        peak_tflops=_positive(r, top, "peak_tflops", f"{KEY}.peak_tflops"),
        copy=CopyTiming(
            bytes_moved=_count(r, copy, "bytes_moved", f"{KEY}.copy.bytes_moved"),
            median_s=_positive(r, copy, "median_s", f"{KEY}.copy.median_s"),
            tbps=_positive(r, copy, "tbps", f"{KEY}.copy.tbps"),
            repeats=_count(r, copy, "repeats", f"{KEY}.copy.repeats"),
        ),
        peak_bandwidth_TBps=_positive(r, top, "peak_bandwidth_TBps", f"{KEY}.peak_bandwidth_TBps"),
        clocks=_clocks(r, top),
    )


def calibration_of(meta: RunMeta | None) -> Calibration | None:
    """The run's calibration, None when the metadata has none (or there is no metadata).

    Raises:
        MetaError: the metadata has a `calibration` object and it is malformed.
    """
    if meta is None or meta.raw.get(KEY) is None:
        return None
    return parse_calibration(meta.raw[KEY], meta.source)
