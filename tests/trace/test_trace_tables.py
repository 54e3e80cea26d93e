"""The Arrow/Parquet backend on real nsys exports: the same frames and the same report as the
SQLite export of the same capture, inputs told apart, one-line errors for what is no export."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any, Final

import polars as pl
import pytest
from click.testing import CliRunner
from polars.testing import assert_frame_equal

from llm_perf_opt.attribution import attribute
from llm_perf_opt.batch.runs import expand_paths, is_batch
from llm_perf_opt.cli.analyze import main
from llm_perf_opt.errors import (
    CorruptTraceError,
    MissingColumnError,
    MissingTableError,
    NoNvtxEventsError,
    WrongFileKindError,
)
from llm_perf_opt.trace import SqliteTrace, TableTrace, open_trace
from tests.helpers.committed import LLAMA_CONFIG
from tests.helpers.oracles import kernel_sums, projection_mismatches
from tests.helpers.paths import REPO

LLAMA_SQLITE: Final = REPO / "traces" / "llama_1b_shape.sqlite.xz"
LLAMA_PARQUET: Final = REPO / "tests" / "data" / "llama_parquet"
LLAMA_SMALL: Final = REPO / "tests" / "data" / "llama_small"
KERNELS: Final = "CUPTI_ACTIVITY_KIND_KERNEL"
# Every frame a Trace returns, with the arguments that change its columns.
FRAMES: Final[list[tuple[str, dict[str, Any]]]] = [
    ("nvtx_ranges", {}),
    ("nvtx_marks", {}),
    ("gpu_ops", {}),
    ("gpu_ops", {"lean": True}),
    ("kernel_names", {}),
    ("api_calls", {}),
    ("api_calls", {"with_names": True}),
    ("api_calls", {"with_end": False}),
    ("launch_calls", {}),
    ("sync_events", {}),
    ("gpu_info", {}),
    ("processes", {}),
    ("threads", {}),
]
# (SQLite export, its twin, the prefill length of the capture)
TWINS: Final = {
    "parquetdir": ("llama_1b_shape", "parquetdir", 512),
    "arrowdir": ("llama_small", "arrowdir", 128),
    "arrow": ("llama_small", "arrow", 128),
}


@pytest.fixture(params=list(TWINS))
def twin(request: pytest.FixtureRequest, llama_small: dict[str, Path]) -> tuple[Path, Path, int]:
    """(SQLite export, the same capture in another format, its prefill length)."""
    capture, kind, prefill = TWINS[request.param]
    if capture == "llama_1b_shape":
        return LLAMA_SQLITE, LLAMA_PARQUET, prefill
    return llama_small["sqlite"], llama_small[kind], prefill


def test_every_frame_is_the_sqlite_exports(twin: tuple[Path, Path, int]) -> None:
    sqlite_path, other_path, _ = twin
    sqlite, other = open_trace(sqlite_path), open_trace(other_path)
    assert isinstance(sqlite, SqliteTrace) and isinstance(other, TableTrace)
    for method, kwargs in FRAMES:
        mine = getattr(other, method)(**kwargs)
        assert mine.is_empty() == (method == "nvtx_marks"), method  # plain torch.cuda.nvtx
        assert_frame_equal(mine, getattr(sqlite, method)(**kwargs))
    assert other.tables == sqlite.tables
    for table in (KERNELS, "NVTX_EVENTS", "StringIds", "TARGET_INFO_GPU"):
        assert other.columns(table) == sqlite.columns(table)
    assert (other.schema_version, other.nsys_version) == ("3.20.3", "2025.3.2.0")
    assert (sqlite.schema_version, sqlite.nsys_version) == ("3.20.3", "2025.3.2.0")
    assert other.trace_end_ns == sqlite.trace_end_ns > 0
    assert other.gpu_info()["name"].to_list() == ["NVIDIA H200"]
    assert other.warnings == sqlite.warnings == []


def test_the_report_is_the_sqlite_exports(twin: tuple[Path, Path, int]) -> None:
    sqlite_path, other_path, prefill = twin
    args = ["--config", str(LLAMA_CONFIG), "--prefill-len", str(prefill), "--format", "json"]
    reports = []
    for path in (sqlite_path, other_path):
        result = CliRunner().invoke(main, [str(path), *args], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        reports.append(json.loads(result.stdout))
    assert reports[1].pop("trace") == str(other_path)
    assert reports[0].pop("trace") == str(sqlite_path)
    assert reports[1] == reports[0]
    assert list(reports[0]["stages"]) == ["prefill", "decode"]


def test_arrow_export_matches_nvidias_projection(llama_small: dict[str, Path]) -> None:
    ours = attribute(open_trace(llama_small["arrow"]))
    bad = projection_mismatches(
        ours, LLAMA_SMALL / "llama_small_nsys2025_nvtx_gpu_proj_trace.csv.xz"
    )
    assert bad.is_empty(), bad
    theirs, mine = kernel_sums(ours, LLAMA_SMALL / "llama_small_nsys2025_nvtx_kern_sum.csv.xz")
    assert_frame_equal(theirs, mine)
    assert ours.ranges.filter(pl.col("name") == "decode_step").height == 8


def test_a_table_export_folder_is_one_trace(llama_small: dict[str, Path], tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    shutil.copytree(llama_small["arrowdir"], runs / "a" / "llama_small_arrowdir")
    shutil.copytree(LLAMA_PARQUET, runs / "b" / "llama_parquet")
    shutil.copy(llama_small["arrow"], runs / "a")
    shutil.copy(llama_small["sqlite"], runs / "b")
    assert not is_batch([str(LLAMA_PARQUET)])
    assert not is_batch([str(runs / "a" / "llama_small_arrowdir")])
    assert is_batch([str(runs)])
    found = [p.relative_to(runs).as_posix() for p in expand_paths([str(runs)])]
    assert found == [
        "a/llama_small.arrows",
        "a/llama_small_arrowdir",
        "b/llama_parquet",
        "b/llama_small.sqlite",
    ]
    assert expand_paths([str(runs / "b" / "llama_parquet")]) == [runs / "b" / "llama_parquet"]
    assert expand_paths([f"{runs}/*/llama_*"]) == [
        runs / "a" / "llama_small.arrows",
        runs / "a" / "llama_small_arrowdir",
        runs / "b" / "llama_parquet",
        runs / "b" / "llama_small.sqlite",
    ]
    args = [str(runs), "--config", str(LLAMA_CONFIG), "--prefill-len", "128", "-j", "1"]
    result = CliRunner().invoke(main, [*args, "--format", "json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["n_traces"] == 4 and summary["n_failed"] == 0


def _copy(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


def test_folders_that_are_no_export(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(WrongFileKindError, match="directory without nsys export tables"):
        open_trace(tmp_path / "empty")
    (tmp_path / "other").mkdir()
    pl.DataFrame({"a": [1]}).write_parquet(tmp_path / "other" / "data.parquet")
    with pytest.raises(MissingTableError, match="not an Nsight Systems export"):
        open_trace(tmp_path / "other")
    with pytest.raises(WrongFileKindError, match="one table of an nsys parquetdir export"):
        open_trace(LLAMA_PARQUET / "StringIds.parquet")
    with pytest.raises(WrongFileKindError, match="is a Parquet file, not an nsys export"):
        open_trace(tmp_path / "other" / "data.parquet")


def test_one_arrowdir_table_or_a_compressed_arrow_export(llama_small: dict[str, Path]) -> None:
    with pytest.raises(WrongFileKindError, match="holds only table NVTX_EVENTS"):
        open_trace(llama_small["arrowdir"] / "NVTX_EVENTS.arrow")
    with pytest.raises(WrongFileKindError, match="is a compressed Arrow export"):
        open_trace(LLAMA_SMALL / "llama_small.arrows.xz")


def test_missing_table_and_column(tmp_path: Path) -> None:
    no_nvtx = _copy(LLAMA_PARQUET, tmp_path / "a")
    (no_nvtx / "NVTX_EVENTS.parquet").unlink()
    with pytest.raises(NoNvtxEventsError, match="no NVTX_EVENTS table"):
        open_trace(no_nvtx).nvtx_ranges()
    no_device = _copy(LLAMA_PARQUET, tmp_path / "b")
    kernels = no_device / f"{KERNELS}.parquet"
    pl.read_parquet(kernels).drop("deviceId").write_parquet(kernels)
    with pytest.raises(MissingColumnError) as caught:
        open_trace(no_device).gpu_ops()
    assert str(caught.value) == (
        f"{no_device}: trace lacks column deviceId of table {KERNELS} (nsys export version "
        "2025.3.2.0, schema 3.20.3); export the report again with `nsys export --type "
        "parquetdir` (nsys 2022.4 or later)"
    )


def test_damaged_table_files(tmp_path: Path, llama_small: dict[str, Path]) -> None:
    cut = _copy(LLAMA_PARQUET, tmp_path / "cut")
    kernels = cut / f"{KERNELS}.parquet"
    kernels.write_bytes(kernels.read_bytes()[:5000])
    with pytest.raises(CorruptTraceError, match=re.escape(f"{kernels}: cannot be read (")):
        open_trace(cut).gpu_ops()
    big = _copy(LLAMA_PARQUET, tmp_path / "big")
    kernels = big / f"{KERNELS}.parquet"
    huge = pl.lit(1 << 40, pl.UInt64)
    pl.read_parquet(kernels).with_columns(streamId=huge).write_parquet(kernels)
    wrong_type = r"column streamId of table \w+ holds a value that is not of type Int32"
    with pytest.raises(CorruptTraceError, match=wrong_type):
        open_trace(big).gpu_ops()
    stream = tmp_path / "cut.arrows"
    stream.write_bytes(llama_small["arrow"].read_bytes()[:2_000_000])
    with pytest.raises(CorruptTraceError, match="Arrow export cannot be read"):
        open_trace(stream)
    arrowdir = _copy(llama_small["arrowdir"], tmp_path / "arrowdir")
    (arrowdir / "NVTX_EVENTS.arrow").write_bytes(b"\xff\xff\xff\xff garbage")
    with pytest.raises(CorruptTraceError, match=r"NVTX_EVENTS\.arrow: cannot be read"):
        open_trace(arrowdir).nvtx_ranges()


def test_cli_error_is_one_line(tmp_path: Path) -> None:
    no_nvtx = _copy(LLAMA_PARQUET, tmp_path / "a")
    (no_nvtx / "NVTX_EVENTS.parquet").unlink()
    result = CliRunner().invoke(main, [str(no_nvtx), "--config", str(LLAMA_CONFIG)])
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [
        f"Error: {no_nvtx}: the export has no NVTX_EVENTS table. Capture with `nsys profile "
        "-t cuda,nvtx ...` and mark the stages with NVTX ranges."
    ]
