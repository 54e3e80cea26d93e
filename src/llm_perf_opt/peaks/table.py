"""Dense peak FLOP/s and memory bandwidth per GPU, looked up from the name nsys records.

Values are vendor datasheet figures without sparsity (docs/mfu-math.md); MFU divides by them,
so a wrong row silently scales every number: names that could be a different product (A10G,
L40, H800, V100S, GH200, ...) deliberately match nothing, and the user passes `--peak-tflops`
instead of getting a guess.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from llm_perf_opt.errors import UnknownGpuError
from llm_perf_opt.vocab import PeakDtype

_TERA = 1e12


@dataclass(frozen=True)
class GpuPeak:
    """One row of the peak table: dense TFLOP/s per dtype (None: no such unit) and TB/s."""

    row: str
    fp32_tflops: float
    tf32_tflops: float | None
    bf16_tflops: float | None
    fp16_tflops: float | None
    fp8_tflops: float | None
    bandwidth_tbps: float

    def tflops(self, dtype: PeakDtype) -> float | None:
        """Dense peak TFLOP/s for `dtype`, None when the GPU has no unit for it."""
        return {
            "fp32": self.fp32_tflops,
            "tf32": self.tf32_tflops,
            "bf16": self.bf16_tflops,
            "fp16": self.fp16_tflops,
            "fp8": self.fp8_tflops,
        }[dtype]

    @property
    def bandwidth_Bps(self) -> float:
        """Peak memory bandwidth in bytes per second."""
        return self.bandwidth_tbps * _TERA


def _row(
    row: str,
    fp32: float,
    tf32: float | None,
    tensor16: float | None,
    fp8: float | None,
    tbps: float,
    *,
    fp16: float | None = None,
) -> GpuPeak:
    """Table row; BF16 and FP16 tensor peaks are equal unless `fp16` says otherwise."""
    return GpuPeak(row, fp32, tf32, tensor16, tensor16 if fp16 is None else fp16, fp8, tbps)


H100_SXM = _row("H100 SXM", 67, 494.7, 989.4, 1979, 3.35)
H100_PCIE = _row("H100 PCIe", 51, 378, 756, 1513, 2.0)
H100_NVL = _row("H100 NVL", 60, 417.5, 835.5, 1670.5, 3.9)
H200_SXM = _row("H200 SXM", 67, 494.7, 989.4, 1979, 4.8)
# H200 NVL: NVIDIA H200 datasheet (not in the shared table); same compute as H100 NVL, HBM3e.
H200_NVL = _row("H200 NVL", 60, 417.5, 835.5, 1670.5, 4.8)
A100_SXM_40 = _row("A100 SXM 40 GB", 19.5, 156, 312, None, 1.555)
A100_SXM_80 = _row("A100 SXM 80 GB", 19.5, 156, 312, None, 2.039)
A100_PCIE_40 = _row("A100 PCIe 40 GB", 19.5, 156, 312, None, 1.555)
A100_PCIE_80 = _row("A100 PCIe 80 GB", 19.5, 156, 312, None, 1.935)
A10 = _row("A10", 31.2, 62.5, 125, None, 0.6)
L4 = _row("L4", 30.3, 60, 121, 242.5, 0.3)
L40S = _row("L40S", 91.6, 183, 362, 733, 0.864)
RTX_4090 = _row("RTX 4090", 82.6, 82.6, 165.2, 330.3, 1.008)
RTX_3090 = _row("RTX 3090", 35.6, 35.6, 71, None, 0.936)
# Volta has FP16 tensor cores only: no BF16, TF32 or FP8 peak.
V100_SXM2 = _row("V100 SXM2", 15.7, None, None, None, 0.9, fp16=125)
V100_PCIE = _row("V100 PCIe", 14, None, None, None, 0.9, fp16=112)
B200 = _row("B200", 80, 1100, 2250, 4500, 8)
GB200 = _row("GB200 (per GPU)", 90, 1250, 2500, 5000, 8)

# Full-match patterns over the normalized name (upper case, vendor prefixes removed, `-`/`_`
# as spaces). nsys writes e.g. `NVIDIA H100 80GB HBM3` (the SXM5 part), `NVIDIA H100 PCIe`,
# `NVIDIA A100-SXM4-80GB`, `NVIDIA A100 80GB PCIe`, `Tesla V100-SXM2-16GB`,
# `NVIDIA GeForce RTX 4090`.
_PATTERNS: tuple[tuple[str, GpuPeak], ...] = (
    (r"H100 NVL( \d+GB)?", H100_NVL),
    (r"H100 PCIE( \d+GB)?|H100( \d+GB)? PCIE", H100_PCIE),
    (r"H100( SXM5?)?( \d+GB)?( HBM3)?( SXM5?)?", H100_SXM),
    (r"H200 NVL( \d+GB)?", H200_NVL),
    (r"H200( SXM5?)?( \d+GB)?( HBM3E)?( SXM5?)?", H200_SXM),
    (r"A100 SXM\d? 40GB", A100_SXM_40),
    (r"A100 SXM\d? 80GB", A100_SXM_80),
    (r"A100 PCIE 40GB|A100 40GB PCIE", A100_PCIE_40),
    (r"A100 PCIE 80GB|A100 80GB PCIE", A100_PCIE_80),
    (r"A10", A10),
    (r"L4", L4),
    (r"L40S", L40S),
    (r"RTX 4090", RTX_4090),
    (r"RTX 3090", RTX_3090),
    (r"V100 SXM2( \d+GB)?", V100_SXM2),
    (r"V100 PCIE( \d+GB)?", V100_PCIE),
    (r"B200", B200),
    (r"GB200", GB200),
)


def _normalize(gpu_name: str) -> str:
    """Canonical spelling: vendor/brand words dropped, separators unified, upper case."""
    name = re.sub(r"[-_\s]+", " ", gpu_name.upper()).strip()
    return re.sub(r"^(NVIDIA )?(TESLA |GEFORCE )?", "", name)


def lookup_gpu(gpu_name: str) -> GpuPeak | None:
    """Table row for a GPU name as nsys/`nvidia-smi` print it, or None when unknown.

    Args:
        gpu_name: e.g. `NVIDIA H100 80GB HBM3`.
    """
    normalized = _normalize(gpu_name)
    for pattern, peak in _PATTERNS:
        if re.fullmatch(pattern, normalized):
            return peak
    return None


@dataclass(frozen=True)
class PeakChoice:
    """The peak used for MFU/MBU and where each figure came from (shown in every report)."""

    gpu_name: str | None
    dtype: PeakDtype
    peak_flops: float
    peak_source: str
    table_row: str | None
    peak_bandwidth_Bps: float | None
    bandwidth_source: str | None


def choose_peak(
    gpu_name: str | None,
    dtype: PeakDtype,
    *,
    peak_tflops: float | None = None,
    trace_bandwidth_Bps: float | None = None,
) -> PeakChoice:
    """Pick the compute and bandwidth peaks: an explicit override wins, else the table.

    Args:
        gpu_name: the GPU name from the trace (`TARGET_INFO_GPU.name`), None when absent.
        dtype: the arithmetic the model ran in.
        peak_tflops: the user's `--peak-tflops` (dense TFLOP/s), overriding the table.
        trace_bandwidth_Bps: memory bandwidth nsys recorded, used when the table has no row.

    Raises:
        UnknownGpuError: no override and the GPU (or its `dtype` unit) is not in the table.
    """
    row = lookup_gpu(gpu_name) if gpu_name else None
    if peak_tflops is not None:
        if peak_tflops <= 0:
            raise UnknownGpuError(f"--peak-tflops must be positive, got {peak_tflops}")
        peak_flops = peak_tflops * _TERA
        peak_source = f"--peak-tflops {peak_tflops:g}"
    else:
        shown = repr(gpu_name) if gpu_name else "unknown (the trace has no TARGET_INFO_GPU row)"
        if row is None:
            raise UnknownGpuError(
                f"no peak FLOP/s known for GPU {shown}; pass --peak-tflops X "
                f"(dense {dtype} TFLOP/s from the datasheet)"
            )
        tflops = row.tflops(dtype)
        if tflops is None:
            raise UnknownGpuError(
                f"GPU {shown} ({row.row}) has no {dtype} peak in the table; "
                f"pass --peak-tflops X or choose another --dtype"
            )
        peak_flops = tflops * _TERA
        peak_source = f"table: {row.row} dense {dtype} {tflops:g} TFLOP/s"
    if row is not None:
        bandwidth: float | None = row.bandwidth_Bps
        bandwidth_source: str | None = f"table: {row.row} {row.bandwidth_tbps:g} TB/s"
    elif trace_bandwidth_Bps:
        bandwidth = trace_bandwidth_Bps
        bandwidth_source = f"trace: TARGET_INFO_GPU.memoryBandwidth {bandwidth / _TERA:.3g} TB/s"
    else:
        bandwidth, bandwidth_source = None, None
    return PeakChoice(
        gpu_name=gpu_name,
        dtype=dtype,
        peak_flops=peak_flops,
        peak_source=peak_source,
        table_row=row.row if row else None,
        peak_bandwidth_Bps=bandwidth,
        bandwidth_source=bandwidth_source,
    )
