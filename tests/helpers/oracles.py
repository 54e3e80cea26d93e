"""Compare our attribution with NVIDIA's `nvtxgpuproj` / `nvtxkernsum` CSVs (2022.4 or 2025.3)."""

from __future__ import annotations

import io
import lzma
import os
import shutil
import subprocess
from pathlib import Path

import polars as pl

from llm_perf_opt.attribution import Attribution
from tests.helpers.paths import REPO

GET_NSYS = REPO / "scripts" / "get-nsys-stats.sh"


def read_csv(csv: Path) -> pl.DataFrame:
    """An oracle CSV as text columns; `.csv.xz` files are decompressed in memory."""
    data = lzma.decompress(csv.read_bytes()) if csv.suffix == ".xz" else csv.read_bytes()
    return pl.read_csv(io.BytesIO(data), infer_schema_length=0)


def read_projection(csv: Path) -> pl.DataFrame:
    """NVIDIA's projection report, typed (2022.4 writes `None` for a missing parent)."""
    frame = read_csv(csv)
    ints = ["RangeId", "NumGPUOps", "Projected Start (ns)", "Projected Duration (ns)", "Lvl"]
    return frame.with_columns(
        pl.col(ints).cast(pl.Int64),
        pl.col("ParentId").replace({"None": None, "": None}).cast(pl.Int64),
    )


def projection_mismatches(ours: Attribution, csv: Path) -> pl.DataFrame:
    """Rows of NVIDIA's projection whose count, span, level or parent differ from ours."""
    nvidia = read_projection(csv)
    joined = nvidia.join(ours.ranges, left_on="RangeId", right_on="range_id", how="left")
    return joined.filter(
        pl.col("n_gpu_ops").ne_missing(pl.col("NumGPUOps"))
        | pl.col("proj_start_ns").ne_missing(pl.col("Projected Start (ns)"))
        | pl.col("proj_duration_ns").ne_missing(pl.col("Projected Duration (ns)"))
        | pl.col("depth").ne_missing(pl.col("Lvl"))
        | pl.col("parent_id").ne_missing(pl.col("ParentId"))
    )


def kernel_sums(ours: Attribution, csv: Path) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Per (range name, style, pid, tid): NVIDIA's total kernel time and ours, same key order.

    NVIDIA names ranges `domain:name` (`:name` for the default domain in 2025.3) and lists
    kernels outside every range under `None`; ours are split into name and domain."""
    nvidia = read_csv(csv).with_columns(
        pl.col("PID", "TID", "Total Time (ns)").cast(pl.Int64),
        key=pl.col("NVTX Range").str.strip_prefix(":"),
    )
    theirs = (
        nvidia.filter(~_outside_rows())
        .group_by("key", "Style", "PID", "TID")
        .agg(total=pl.col("Total Time (ns)").sum())
        .sort("key", "Style", "PID", "TID")
    )
    mine = (
        ours.ranges.with_columns(
            key=pl.when(pl.col("domain") == "")
            .then(pl.col("name"))
            .otherwise(pl.col("domain") + ":" + pl.col("name"))
        )
        .filter(
            (pl.col("kernel_sum_ns") > 0) & ~pl.col("ends_on_other_thread")
        )  # NVIDIA drops those
        .group_by("key", Style="style", PID="pid", TID="tid")
        .agg(total=pl.col("kernel_sum_ns").sum())
        .sort("key", "Style", "PID", "TID")
    )
    return theirs, mine


def _outside_rows() -> pl.Expr:
    """Kernels outside every range: `None` in 2022.4, an empty name in 2025.3."""
    return pl.col("NVTX Range").is_null() | (pl.col("NVTX Range") == "None")


def outside_kernel_time(csv: Path) -> int:
    """NVIDIA's kernel time outside every range (its `None` rows)."""
    nvidia = read_csv(csv)
    outside = nvidia.filter(_outside_rows())
    return int(outside["Total Time (ns)"].cast(pl.Int64).sum())


def nsys_stats() -> str:
    """NVIDIA's nsys 2022.4: `$NSYS_STATS`, else the one scripts/get-nsys-stats.sh fetches."""
    return (
        os.environ.get("NSYS_STATS")
        or subprocess.run(
            ["bash", str(GET_NSYS)], check=True, capture_output=True, text=True
        ).stdout.strip()
    )


def run_nsys_stats(trace: Path, out_dir: Path) -> tuple[Path, Path]:
    """Run NVIDIA's nsys stats 2022.4 on a copy of `trace`; returns the two CSV paths."""
    nsys = nsys_stats()
    copy = out_dir / trace.name
    shutil.copyfile(trace, copy)
    prefix = out_dir / trace.stem
    subprocess.run(
        [
            nsys,
            "stats",
            "-q",
            "-f",
            "csv",
            "-r",
            "nvtxgpuproj,nvtxkernsum",
            "-o",
            str(prefix),
            str(copy),
        ],
        check=True,
        capture_output=True,
    )
    return Path(f"{prefix}_nvtxgpuproj.csv"), Path(f"{prefix}_nvtxkernsum.csv")
