"""Rows of a hand-built nsys SQLite export (the schema nsys 2025 writes, benchmarks/)."""

from __future__ import annotations

import sqlite3

from tests.helpers.paths import REPO

SCHEMA = REPO / "benchmarks" / "nsys_schema_3_20_3.sql"
PID = 4242


def gtid(pid: int, tid: int) -> int:
    """Serialized globalTid of (pid, tid), as nsys writes it."""
    return (pid << 24) | tid


MAIN, WORKER = gtid(PID, PID), gtid(PID, PID + 1)
GPID = PID << 24


def insert(db: sqlite3.Connection, table: str, rows: list[dict[str, object]]) -> None:
    if not rows:
        return
    names = list(rows[0])
    sql = f"INSERT INTO {table} ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})"
    db.executemany(sql, [tuple(r[n] for n in names) for r in rows])


def kernel(
    start: int,
    end: int,
    corr: int,
    device: int = 0,
    stream: int = 7,
    *,
    gpid: int = GPID,
    name: int = 3,
    node: int | None = None,
) -> dict[str, object]:
    """A CUPTI_ACTIVITY_KIND_KERNEL row; `name` is its StringIds id, `node` its graph node."""
    launch = dict.fromkeys(("gridY", "gridZ", "blockY", "blockZ", "registersPerThread"), 1)
    memory = dict.fromkeys(
        ("staticSharedMemory", "dynamicSharedMemory", "localMemoryPerThread", "localMemoryTotal"), 0
    )
    return {
        "start": start, "end": end, "deviceId": device, "contextId": 1, "streamId": stream,
        "correlationId": corr, "globalPid": gpid, "demangledName": name, "shortName": name,
        "gridX": 32, "blockX": 128, "gridId": corr, "graphNodeId": node, **launch, **memory,
    }  # fmt: skip
