"""NVIDIA's own `nsys stats` reads the generated file, and our attribution agrees with it there."""

from __future__ import annotations

import csv
import hashlib
import shutil
import subprocess
from collections import defaultdict

import pytest

from llm_perf_opt.attribution import attribute
from llm_perf_opt.trace import open_trace
from tests.helpers.generated import Tiny
from tests.helpers.oracles import nsys_stats

pytestmark = pytest.mark.oracle


@pytest.fixture(scope="module")
def nvidia(tiny: Tiny, tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict[str, str]]]:
    """NVIDIA's nvtxgpuproj and nvtxkernsum rows on a copy of the tiny trace (which it must not
    change)."""
    nsys = nsys_stats()
    work = tmp_path_factory.mktemp("nsys")
    copy = work / "tiny.sqlite"
    shutil.copyfile(tiny.path, copy)
    before = hashlib.sha256(copy.read_bytes()).hexdigest()
    reports = ["-r", "nvtxgpuproj,nvtxkernsum", "-f", "csv", "-o", str(work / "out")]
    subprocess.run([nsys, "stats", "-q", *reports, str(copy)], check=True, capture_output=True)
    assert hashlib.sha256(copy.read_bytes()).hexdigest() == before
    found = {}
    for report in ("nvtxgpuproj", "nvtxkernsum"):
        with (work / f"out_{report}.csv").open(newline="") as f:
            found[report] = list(csv.DictReader(f))
    return found


def test_nvidia_lists_every_kind_of_range_we_generate(
    tiny: Tiny, nvidia: dict[str, list[dict[str, str]]]
) -> None:
    names = {row["Name"] for row in nvidia["nvtxgpuproj"]}
    assert {
        "load_model",
        "prefetch_next_image",
        "llm_perf_opt:warmup",
        "llm_perf_opt:image",
        "llm_perf_opt:vision",
        "llm_perf_opt:prefill",
        "llm_perf_opt:decode",
        "llm_perf_opt:decode_step",
        "CCCL:cub::DeviceReduce::Sum",
        "CCCL:cub::DeviceSelect::Flagged",
    } == names
    steps = [r for r in tiny.ranges if r.name == "decode_step"]
    listed = [row for row in nvidia["nvtxgpuproj"] if row["Name"] == "llm_perf_opt:decode_step"]
    assert len(listed) == len(steps)


def test_nvidia_counts_each_graph_replay_as_one_gpu_op(
    tiny: Tiny, nvidia: dict[str, list[dict[str, str]]]
) -> None:
    """NumGPUOps counts distinct correlation ids: a graph launch's node kernels count once."""
    by_row = {r.row: r for r in tiny.ranges}
    for row in nvidia["nvtxgpuproj"]:
        r = by_row[int(row["RangeId"])]
        inside = (o for o in tiny.ops if o.gtid == r.gtid)
        launched = [o for o in inside if r.start <= o.api_start and o.api_end <= r.end]
        assert int(row["NumGPUOps"]) == len({o.correlation for o in launched}), r.path()
        assert int(row["Projected Start (ns)"]) == min(o.start for o in launched)


def test_our_attribution_equals_nvidia_on_every_range_it_lists(
    tiny: Tiny, nvidia: dict[str, list[dict[str, str]]]
) -> None:
    ours = attribute(open_trace(tiny.path)).ranges
    by_id = {row["range_id"]: row for row in ours.iter_rows(named=True)}
    for row in nvidia["nvtxgpuproj"]:
        mine = by_id[int(row["RangeId"])]
        theirs = (row["NumGPUOps"], row["Projected Start (ns)"], row["Projected Duration (ns)"])
        assert tuple(map(int, theirs)) == (
            mine["n_gpu_ops"],
            mine["proj_start_ns"],
            mine["proj_duration_ns"],
        ), row["Name"]
    nvidia_sums: dict[tuple[str, str, int], int] = defaultdict(int)
    for row in nvidia["nvtxkernsum"]:
        if row["NVTX Range"] not in ("", "None"):
            key = (row["NVTX Range"], row["Style"], int(row["TID"]))
            nvidia_sums[key] += int(row["Total Time (ns)"])
    our_sums: dict[tuple[str, str, int], int] = defaultdict(int)
    for mine in by_id.values():
        if mine["kernel_sum_ns"]:
            name = f"{mine['domain']}:{mine['name']}" if mine["domain"] else mine["name"]
            our_sums[(name, mine["style"], mine["tid"])] += mine["kernel_sum_ns"]
    assert our_sums == nvidia_sums
