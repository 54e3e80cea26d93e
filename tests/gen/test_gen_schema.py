"""The generated file has the tables and columns of a real nsys 2025.3 export (schema 3.20.3)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from tests.helpers.generated import Tiny
from tests.helpers.trace_facts import connect

# CUPTI_ACTIVITY_KIND_MEMCPY is absent from the probe trace (it made no copies); these are its
# columns in a real 2025.3.2 export of a capture with copies on the H100 (see benchmarks/README.md).
REAL_MEMCPY_COLUMNS = [
    *("start", "end", "deviceId", "contextId", "greenContextId", "streamId", "correlationId"),
    *("globalPid", "bytes", "copyKind", "deprecatedSrcId", "srcKind", "dstKind", "srcDeviceId"),
    *("srcContextId", "dstDeviceId", "dstContextId", "migrationCause", "graphNodeId"),
    *("virtualAddress", "copyCount"),
]


def _tables(con: sqlite3.Connection) -> set[str]:
    return {n for (n,) in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def _columns(con: sqlite3.Connection, table: str) -> list[tuple[object, ...]]:
    return [tuple(row) for row in con.execute(f"PRAGMA table_info({table})")]


def test_every_table_matches_the_real_export_column_for_column(
    tiny: Tiny, probe_trace: Path
) -> None:
    gen, real = connect(tiny.path), connect(probe_trace)
    shared = _tables(gen) & _tables(real)
    assert _tables(gen) - shared == {"CUPTI_ACTIVITY_KIND_MEMCPY"}
    assert {"NVTX_EVENTS", "CUPTI_ACTIVITY_KIND_KERNEL", "StringIds", "TARGET_INFO_GPU"} <= shared
    for table in sorted(shared):
        assert _columns(gen, table) == _columns(real, table), table
    memcpy = [row[1] for row in _columns(gen, "CUPTI_ACTIVITY_KIND_MEMCPY")]
    assert memcpy == REAL_MEMCPY_COLUMNS


def test_enum_tables_and_export_metadata_are_the_real_ones(tiny: Tiny, probe_trace: Path) -> None:
    gen, real = connect(tiny.path), connect(probe_trace)
    enums = sorted(t for t in _tables(real) if t.startswith("ENUM_"))
    assert enums and enums == sorted(t for t in _tables(gen) if t.startswith("ENUM_"))
    for table in enums:
        query = f"SELECT * FROM {table} ORDER BY id"
        assert gen.execute(query).fetchall() == real.execute(query).fetchall(), table
    query = "SELECT value FROM META_DATA_EXPORT WHERE name = 'EXPORT_SCHEMA_VERSION'"
    assert gen.execute(query).fetchall() == real.execute(query).fetchall() == [("3.20.3",)]


def test_gpu_row_is_an_h100(tiny: Tiny) -> None:
    (name, sm_count, clock_hz, bandwidth) = (
        connect(tiny.path)
        .execute("SELECT name, smCount, clockRate, memoryBandwidth FROM TARGET_INFO_GPU")
        .fetchone()
    )
    assert (name, sm_count, clock_hz, bandwidth) == (
        "NVIDIA H100 80GB HBM3",
        132,
        1_980_000_000,
        3_352_320_000_000,
    )
