"""What the report tests share: the `--ranges-out` header, a static compute report, PNG sizes."""

from __future__ import annotations

import struct
from pathlib import Path

RANGES_HEADER = (
    "name,domain,style,pid,tid,depth,range_id,parent_id,cpu_start_ns,cpu_duration_ns,n_gpu_ops,"
    "proj_start_ns,proj_duration_ns,kernel_sum_ns,gpu_busy_ns,excl_n_gpu_ops,excl_kernel_sum_ns,"
    "excl_gpu_busy_ns"
)


STATIC = {
    "schema": "llm_perf_opt.static_compute/1",
    "image": {"width": 1024, "height": 1024, "mode": "base"},
    "seq_len": 273,
    "stages": {
        "vision": {
            "fvcore_flops": 150_000_000_000,
            "analytic_flops_full_square": 149_000_000_000,
            "analytic_flops_causal": 149_000_000_000,
            "fvcore_vs_analytic": 150 / 149 - 1,
            "source": "fvcore",
        }
    },
}


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", path
    assert data[12:16] == b"IHDR" and data[-8:-4] == b"IEND"
    width, height = struct.unpack(">II", data[16:24])
    return width, height
