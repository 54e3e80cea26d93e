"""A runner calibration object and the committed v1 base metadata carrying it."""

from __future__ import annotations

import json
from typing import Any

from tests.helpers.committed import V1_META

# The shape the runner writes (`scripts/run_dsocr.py --calibrate`, docs/run-metadata.md).
CALIBRATION: dict[str, Any] = {
    "dtype": "bf16",
    "device_name": "NVIDIA H100 80GB HBM3",
    "gemms": [
        {"label": "square_8192", "stage": None, "m": 8192, "n": 8192, "k": 8192,
         "median_s": 0.001412, "tflops": 778.7, "repeats": 20},
        {"label": "decode_moe_up", "stage": "decode", "m": 1, "n": 896, "k": 1280,
         "median_s": 9.1e-06, "tflops": 0.25, "repeats": 50},
    ],
    "peak_tflops": 778.7,
    "copy": {"bytes_moved": 8589934592, "median_s": 0.00286, "tbps": 3.0, "repeats": 20},
    "peak_bandwidth_TBps": 3.0,
    "clocks": {"sm_mhz": 1980, "mem_mhz": 2619, "source": "nvidia-smi"},
}  # fmt: skip


def calibrated_meta(calibration: Any = CALIBRATION) -> dict[str, Any]:
    """The committed v1 base run metadata with a calibration object added."""
    meta: dict[str, Any] = json.loads(V1_META.read_text(encoding="utf-8"))
    meta["calibration"] = calibration
    return meta
