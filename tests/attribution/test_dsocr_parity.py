"""Attribution parity on the real DeepSeek-OCR traces in traces/ (thousands of ranges each).

The traces were made by scripts/make_traces.sh on an H100 (the 32-token one as traces/README.md
says); NVIDIA's CSVs come from nsys 2025.3 on
that machine, and for v1 base also from nsys stats 2022.4 here (it needs 2.5 minutes per trace, so
CI does not rerun it: the live oracle runs on the small probes in test_attribution_parity.py).
"""

from __future__ import annotations

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from llm_perf_opt.attribution import RangeSelection, attribute
from llm_perf_opt.trace import open_trace
from tests.helpers.oracles import kernel_sums, outside_kernel_time, projection_mismatches
from tests.helpers.paths import TRACES

ORACLES = [
    ("dsocr_v1_base", "nsys2025_nvtx_gpu_proj_trace", "nsys2025_nvtx_kern_sum"),
    ("dsocr_v1_base", "nsys2022_nvtxgpuproj", "nsys2022_nvtxkernsum"),
    ("dsocr_v1_gundam", "nsys2025_nvtx_gpu_proj_trace", "nsys2025_nvtx_kern_sum"),
    ("dsocr2_base", "nsys2025_nvtx_gpu_proj_trace", "nsys2025_nvtx_kern_sum"),
    ("dsocr_v1_base_t32", "nsys2025_nvtx_gpu_proj_trace", "nsys2025_nvtx_kern_sum"),
]


@pytest.mark.parametrize(("name", "proj", "kern"), ORACLES)
def test_every_range_matches_nvidia(name: str, proj: str, kern: str) -> None:
    ours = attribute(open_trace(TRACES / f"{name}.sqlite.xz"))
    assert ours.ranges.height > 4000
    bad = projection_mismatches(ours, TRACES / "oracle" / f"{name}_{proj}.csv.xz")
    assert bad.is_empty(), bad
    theirs, mine = kernel_sums(ours, TRACES / "oracle" / f"{name}_{kern}.csv.xz")
    assert_frame_equal(theirs, mine)
    outside = ours.unattributed().filter(pl.col("reason") == "outside_any_range")
    expected = outside_kernel_time(TRACES / "oracle" / f"{name}_{kern}.csv.xz")
    assert int(outside["kernel_sum_ns"].sum()) == expected


@pytest.mark.parametrize("name", ["dsocr_v1_base", "dsocr_v1_gundam", "dsocr2_base"])
def test_stage_selection_keeps_cccl_kernels_in_the_stage(name: str) -> None:
    """The eager MoE calls torch.nonzero → CUB, whose CCCL ranges nest inside prefill/decode."""
    trace = open_trace(TRACES / f"{name}.sqlite.xz")
    stages = RangeSelection(names=("vision", "prefill", "decode"), domains=("llm_perf_opt",))
    ours = attribute(trace, stages).ranges.filter(pl.col("selected"))
    assert (ours["excl_kernel_sum_ns"] == ours["kernel_sum_ns"]).all()
    everything = attribute(trace).ranges
    cccl = everything.filter(pl.col("domain") == "CCCL")
    assert cccl.height > 100 and int(cccl["excl_kernel_sum_ns"].sum()) > 0
