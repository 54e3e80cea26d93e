"""Numbers beyond NVIDIA's report, proven on a hand-built export in the real nsys schema.

The tables come from `benchmarks/nsys_schema_3_20_3.sql` (copied from real nsys 2025.3 exports);
rows are written by hand so every expected number is arithmetic on this page.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import polars as pl
import pytest

from llm_perf_opt.attribution import RangeSelection, attribute
from llm_perf_opt.trace import open_trace
from tests.helpers.export import MAIN, SCHEMA, WORKER, insert, kernel


@pytest.fixture
def export(tmp_path: Path) -> Path:
    path = tmp_path / "handbuilt.sqlite"
    with sqlite3.connect(path) as db:
        db.executescript(SCHEMA.read_text())
        strings = ["llm_perf_opt", "stage", "my_kernel", "cudaLaunchKernel"]
        insert(db, "StringIds", [{"id": i, "value": v} for i, v in enumerate(strings, 1)])
        event = ("start", "end", "eventType", "text", "textId", "domainId", "globalTid")
        insert(
            db,
            "NVTX_EVENTS",
            [
                dict(zip(event, (0, None, 75, "llm_perf_opt", None, 1, MAIN), strict=True)),
                dict(zip(event, (10, 1000, 59, None, 2, 1, MAIN), strict=True)),  # stage
                dict(
                    zip(event, (500, None, 59, "open", None, 0, MAIN), strict=True)
                ),  # never closed
            ],
        )
        calls = [(100, 1), (200, 2), (300, 3), (600, 4), (700, 5)]
        insert(
            db,
            "CUPTI_ACTIVITY_KIND_RUNTIME",
            [
                {
                    "start": t,
                    "end": t + 5,
                    "eventClass": 1,
                    "correlationId": corr,
                    "nameId": 4,
                    "returnValue": 0,
                    "globalTid": WORKER if corr == 3 else MAIN,
                }
                for t, corr in calls
            ],
        )
        insert(
            db,
            "CUPTI_ACTIVITY_KIND_KERNEL",
            [
                kernel(1000, 1100, 1),  # stage
                kernel(1050, 1200, 2, stream=8),  # stage, overlaps the first by 50 ns
                kernel(1300, 1400, 3),  # launched by the worker thread, which has no ranges
                kernel(1500, 1550, 4),  # stage and open
                kernel(1500, 1600, 5, device=1),  # stage and open, on the second GPU
            ],
        )
    path.chmod(0o444)
    return path


def test_busy_union_per_device_and_open_range(export: Path) -> None:
    ranges = attribute(open_trace(export)).ranges
    stage = ranges.filter(pl.col("name") == "stage").row(0, named=True)
    assert stage["domain"] == "llm_perf_opt"
    assert stage["n_gpu_ops"] == 4
    assert stage["kernel_sum_ns"] == 100 + 150 + 50 + 100
    # device 0: [1000, 1200) ∪ [1500, 1550) = 250; device 1: [1500, 1600) = 100
    assert stage["gpu_busy_ns"] == 350
    assert stage["proj_start_ns"] == 1000 and stage["proj_duration_ns"] == 600
    opened = ranges.filter(pl.col("name") == "open").row(0, named=True)
    assert opened["cpu_duration_ns"] == 1600 - 500  # open ranges end at the end of the trace
    assert opened["n_gpu_ops"] == 2 and opened["depth"] == 1 and opened["domain"] == ""


def test_worker_thread_launch_is_unattributed_unless_asked(export: Path) -> None:
    trace = open_trace(export)
    plain = attribute(trace, RangeSelection(names=("stage",)))
    free = plain.unattributed().row(0, named=True)
    assert (free["reason"], free["n_gpu_ops"], free["kernel_sum_ns"]) == (
        "outside_any_range",
        1,
        100,
    )
    guessed = attribute(open_trace(export), RangeSelection(names=("stage",)), other_threads=True)
    stage = guessed.ranges.filter(pl.col("name") == "stage").row(0, named=True)
    assert stage["excl_n_gpu_ops"] == 5
    assert stage["gpu_busy_ns"] == 350 + 100  # + [1300, 1400) on device 0
    assert guessed.unattributed().is_empty()
