"""Attribution equals NVIDIA's own projection on real H100 traces, range by range.

Traces: tests/data/h100_probe_toy (toy stages, CUDA graph), tests/data/h100_probes/probe_threads
(CCCL ranges nested in ours, a second launching thread, start/end ranges, one ended on another
thread, graph replay, memcpy/memset) and probe_2proc (two ranks under torchrun: correlation ids
repeat across processes). Oracles: the CSVs nsys 2025.3 wrote on the GPU machine, the ones nsys
stats 2022.4 wrote here (committed), and a live run of nsys stats 2022.4 (marked `oracle`).
"""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from llm_perf_opt.attribution import attribute
from llm_perf_opt.trace import open_trace
from tests.helpers import paths
from tests.helpers.oracles import (
    kernel_sums,
    outside_kernel_time,
    projection_mismatches,
    run_nsys_stats,
)

DATA = paths.DATA / "h100_probes"
TOY = paths.DATA / "h100_probe_toy"

CASES = [
    (TOY / "h100_probe_nsys2025.sqlite", TOY / "h100_probe_nsys2025_nvtxgpuproj.csv",
     TOY / "h100_probe_nsys2025_nvtxkernsum.csv"),
    *[
        (DATA / f"{name}.sqlite", DATA / f"{name}_{proj}", DATA / f"{name}_{kern}")
        for name in ("probe_threads", "probe_2proc")
        for proj, kern in (
            ("nsys2025_nvtx_gpu_proj_trace.csv", "nsys2025_nvtx_kern_sum.csv"),
            ("nsys2022_nvtxgpuproj.csv", "nsys2022_nvtxkernsum.csv"),
        )
    ],
]  # fmt: skip


@pytest.mark.parametrize(("trace", "proj", "kern"), CASES, ids=lambda p: Path(p).name)
def test_projection_matches_nvidia(trace: Path, proj: Path, kern: Path) -> None:
    ours = attribute(open_trace(trace))
    bad = projection_mismatches(ours, proj)
    assert bad.is_empty(), bad
    theirs, mine = kernel_sums(ours, kern)
    assert_frame_equal(theirs, mine)


@pytest.mark.parametrize(("trace", "proj", "kern"), CASES, ids=lambda p: Path(p).name)
def test_unattributed_kernel_time_matches_nvidia_none_row(
    trace: Path, proj: Path, kern: Path
) -> None:
    ours = attribute(open_trace(trace))
    outside = ours.unattributed().filter(pl.col("reason") == "outside_any_range")
    assert int(outside["kernel_sum_ns"].sum()) == outside_kernel_time(kern)


def test_ranges_nvidia_drops_are_still_reported(probes_dir: Path) -> None:
    """NVIDIA leaves out a start/end range ended on another thread; we keep and attribute it."""
    ours = attribute(open_trace(probes_dir / "probe_threads.sqlite")).ranges
    row = ours.filter(pl.col("name") == "ended_elsewhere").row(0, named=True)
    assert row["style"] == "StartEnd" and row["n_gpu_ops"] == 2 and row["depth"] == 0


def test_cccl_ranges_do_not_steal_stage_kernels(probes_dir: Path) -> None:
    trace = open_trace(probes_dir / "probe_threads.sqlite")
    from llm_perf_opt.attribution import RangeSelection

    everything = attribute(trace).ranges
    ours_only = attribute(trace, RangeSelection(domains=("llm_perf_opt",))).ranges
    cub = everything.filter(pl.col("name") == "cub_ops").row(0, named=True)
    cub_sel = ours_only.filter(pl.col("name") == "cub_ops").row(0, named=True)
    cccl = everything.filter(pl.col("domain") == "CCCL")
    # all ranges selected: CCCL ranges take their kernels from cub_ops exclusively
    assert cub["excl_n_gpu_ops"] == cub["n_gpu_ops"] - int(cccl["n_gpu_ops"].sum())
    # only our domain selected: cub_ops keeps every kernel it launched
    assert cub_sel["excl_n_gpu_ops"] == cub_sel["n_gpu_ops"] == cub["n_gpu_ops"]
    assert cub_sel["excl_kernel_sum_ns"] == cub_sel["kernel_sum_ns"]


def test_correlation_ids_repeat_across_processes_without_mixing(probes_dir: Path) -> None:
    trace = open_trace(probes_dir / "probe_2proc.sqlite")
    ops = trace.gpu_ops()
    repeated = ops.group_by("correlation_id").agg(pl.col("global_pid").n_unique().alias("n"))
    assert repeated.filter(pl.col("n") > 1).height > 0
    result = attribute(trace)
    # every attributed op belongs to a range of its own process
    owner = result.ops.filter(pl.col("range_id").is_not_null()).join(
        result.ranges.select("range_id", range_pid="pid"), on="range_id"
    )
    assert (owner["pid"] == owner["range_pid"]).all()


@pytest.mark.oracle
@pytest.mark.parametrize("name", ["probe_threads", "probe_2proc"])
def test_live_nsys_stats_2022(name: str, probes_dir: Path, tmp_path: Path) -> None:
    proj, kern = run_nsys_stats(probes_dir / f"{name}.sqlite", tmp_path)
    ours = attribute(open_trace(probes_dir / f"{name}.sqlite"))
    assert projection_mismatches(ours, proj).is_empty()
    theirs, mine = kernel_sums(ours, kern)
    assert_frame_equal(theirs, mine)
