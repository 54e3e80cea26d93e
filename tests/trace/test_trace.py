"""The reader on real H100 exports: names, domains, payloads, GPU ops, read-only access, errors."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path

import polars as pl
import pytest

from llm_perf_opt.errors import (
    CorruptTraceError,
    MissingTableError,
    NoGpuOpsError,
    NoNvtxEventsError,
    TraceNotFoundError,
    WrongFileKindError,
)
from llm_perf_opt.trace import open_trace


def test_schema_and_version(probe_trace: Path) -> None:
    trace = open_trace(probe_trace)
    assert trace.schema_version == "3.20.3"
    assert trace.nsys_version.startswith("2025.3")


def test_registered_names_domains_and_payloads(probes_dir: Path) -> None:
    ranges = open_trace(probes_dir / "probe_threads.sqlite").nvtx_ranges()
    by_id = {row["event_id"]: row for row in ranges.iter_rows(named=True)}
    # the nvtx package registers its strings (textId → StringIds) and creates a domain
    assert by_id[4]["name"] == "stage" and by_id[4]["domain"] == "llm_perf_opt"
    assert by_id[5]["payload_int"] == 1
    assert by_id[9]["domain"] == "CCCL" and by_id[9]["name"].startswith("cub::")
    # torch.cuda.nvtx uses the default domain and plain text
    assert by_id[14]["name"] == "default_domain" and by_id[14]["domain"] == ""
    assert by_id[3]["style"] == "StartEnd" and by_id[6]["tid"] != by_id[4]["tid"]
    assert by_id[15]["ends_on_other_thread"] and not by_id[3]["ends_on_other_thread"]


def test_mark_message_is_resolved(probes_dir: Path) -> None:
    marks = open_trace(probes_dir / "probe_threads.sqlite").nvtx_marks()
    assert marks.height == 1
    assert json.loads(marks["name"][0]) == {"probe": "attribution", "rank": 0}
    assert marks["domain"][0] == "llm_perf_opt"


def test_domains_are_per_process(probes_dir: Path) -> None:
    ranges = open_trace(probes_dir / "probe_2proc.sqlite").nvtx_ranges()
    stage = ranges.filter(pl.col("name") == "stage")
    assert stage["pid"].n_unique() == 2
    assert stage["domain"].to_list() == ["llm_perf_opt", "llm_perf_opt"]
    assert sorted(stage["payload_int"].to_list()) == [0, 1]


def test_gpu_ops_kinds_and_graph_nodes(probes_dir: Path) -> None:
    trace = open_trace(probes_dir / "probe_threads.sqlite")
    ops = trace.gpu_ops()
    counts = dict(ops.group_by("kind").len().iter_rows())
    assert counts == {"kernel": 62, "memcpy": 6, "memset": 6}
    assert ops.filter(pl.col("graph_node_id").is_not_null()).height == 12
    assert ops["op_id"].n_unique() == ops.height
    names = trace.kernel_names()
    assert names.filter(pl.col("name").str.contains("cub::")).height > 0


def test_gpu_info(probe_trace: Path) -> None:
    info = open_trace(probe_trace).gpu_info().row(0, named=True)
    assert info["name"] == "NVIDIA H100 80GB HBM3"
    assert info["sm_count"] == 132
    assert info["memory_bandwidth_Bps"] == 3_352_320_000_000


def test_file_is_never_written(probes_dir: Path, tmp_path: Path) -> None:
    from llm_perf_opt.attribution import attribute

    path = tmp_path / "t.sqlite"
    path.write_bytes((probes_dir / "probe_threads.sqlite").read_bytes())
    path.chmod(0o444)
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    attribute(open_trace(path))
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.sqlite"]  # no -wal/-journal


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(TraceNotFoundError, match="no such file"):
        open_trace(tmp_path / "nope.sqlite")


@pytest.mark.parametrize(
    ("name", "content", "hint"),
    [
        ("run.nsys-rep", b"\x00NSYS report", "nsys export --type sqlite"),
        ("run.qdstrm", b"QDSTRM", "QdstrmImporter"),
        ("run.sqlite", b"hello world, not a database at all", "not an SQLite file"),
    ],
)
def test_wrong_kind(tmp_path: Path, name: str, content: bytes, hint: str) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(WrongFileKindError, match=hint):
        open_trace(path)


def test_truncated_file(probes_dir: Path, tmp_path: Path) -> None:
    path = tmp_path / "cut.sqlite"
    path.write_bytes((probes_dir / "probe_threads.sqlite").read_bytes()[:50_000])
    with pytest.raises(CorruptTraceError, match="truncated or damaged"):
        open_trace(path).gpu_ops()


def test_sqlite_but_not_nsys(tmp_path: Path) -> None:
    path = tmp_path / "other.sqlite"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE t (a)")
    with pytest.raises(MissingTableError, match="not an Nsight Systems export"):
        open_trace(path)


def _copy_without(src: Path, dst: Path, tables: list[str]) -> Path:
    dst.write_bytes(src.read_bytes())
    with sqlite3.connect(dst) as conn:
        for table in tables:
            conn.execute(f"DROP TABLE {table}")
    return dst


def test_without_nvtx(probe_trace: Path, tmp_path: Path) -> None:
    path = _copy_without(probe_trace, tmp_path / "a.sqlite", ["NVTX_EVENTS"])
    with pytest.raises(NoNvtxEventsError, match="-t cuda,nvtx"):
        open_trace(path).nvtx_ranges()


def test_without_gpu_ops(probe_trace: Path, tmp_path: Path) -> None:
    tables = ["CUPTI_ACTIVITY_KIND_KERNEL", "CUPTI_ACTIVITY_KIND_MEMSET"]
    path = _copy_without(probe_trace, tmp_path / "b.sqlite", tables)
    with pytest.raises(NoGpuOpsError, match="-t cuda,nvtx"):
        open_trace(path).gpu_ops()


@pytest.mark.parametrize("suffix", ["xz", "gz"])
def test_compressed_exports_are_read_directly(
    probes_dir: Path, tmp_path: Path, suffix: str
) -> None:
    import gzip
    import lzma

    from llm_perf_opt.attribution import attribute

    raw = (probes_dir / "probe_threads.sqlite").read_bytes()
    packed = tmp_path / f"t.sqlite.{suffix}"
    packed.write_bytes(lzma.compress(raw) if suffix == "xz" else gzip.compress(raw))
    plain = attribute(open_trace(probes_dir / "probe_threads.sqlite")).ranges
    assert attribute(open_trace(packed)).ranges.equals(plain)
    truncated = tmp_path / f"cut.sqlite.{suffix}"
    truncated.write_bytes(packed.read_bytes()[:2000])
    with pytest.raises(CorruptTraceError, match="cannot be decompressed"):
        open_trace(truncated)
