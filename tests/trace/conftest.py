"""The committed exports that are not plain SQLite files, unpacked once per session."""

from __future__ import annotations

import lzma
import tarfile
from pathlib import Path

import pytest

from tests.helpers.committed import SQLITE_TRACES
from tests.helpers.paths import DATA

LLAMA_SMALL = DATA / "llama_small"


@pytest.fixture(scope="session")
def llama_small(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """tests/data/llama_small's exports of one capture, as nsys wrote them: `sqlite`, `arrow`
    (the `--type arrow` file) and `arrowdir` (its folder)."""
    root = tmp_path_factory.mktemp("llama_small")
    exports = {"sqlite": root / "llama_small.sqlite", "arrow": root / "llama_small.arrows"}
    for path in exports.values():
        path.write_bytes(lzma.decompress((LLAMA_SMALL / f"{path.name}.xz").read_bytes()))
    with tarfile.open(LLAMA_SMALL / "llama_small_arrowdir.tar.xz") as tar:
        tar.extractall(root, filter="data")
    return exports | {"arrowdir": root / "llama_small_arrowdir"}


# What batches read, and what tells a folder to be an export.
BATCH_TABLES = (
    "StringIds",
    "META_DATA_EXPORT",
    "CUPTI_ACTIVITY_KIND_RUNTIME",
    "CUPTI_ACTIVITY_KIND_KERNEL",
    "CUPTI_ACTIVITY_KIND_MEMCPY",
    "CUPTI_ACTIVITY_KIND_MEMSET",
    "CUPTI_ACTIVITY_KIND_GRAPH_TRACE",
)
# Small row groups, so that a read in batches crosses many of them.
ROW_GROUP_ROWS = 5000


@pytest.fixture(scope="session")
def parquet_twins(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Name → a parquetdir of the GPU-op and API tables of each committed SQLite trace, made by
    benchmarks/sqlite_to_tables.py (the traces exist only as SQLite)."""
    from benchmarks.sqlite_to_tables import convert

    from llm_perf_opt.trace import open_trace

    root = tmp_path_factory.mktemp("parquet_twins")
    twins = {}
    for name, path in SQLITE_TRACES.items():
        tables = [t for t in BATCH_TABLES if t in open_trace(path).tables]
        twins[name] = root / name
        convert(path, twins[name], "parquet", ROW_GROUP_ROWS, tables)
    return twins
