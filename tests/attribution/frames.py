"""Tiny frames in the shapes `Trace` returns, for hand-built attribution scenarios."""

from __future__ import annotations

from typing import Any

import polars as pl

from llm_perf_opt.trace import API_CALLS_SCHEMA, GPU_OPS_SCHEMA, NVTX_RANGES_SCHEMA

PID = 100


def gtid(tid: int, pid: int = PID) -> int:
    """Serialized globalTid of (pid, tid)."""
    return (pid << 24) | tid


def gpid(pid: int = PID) -> int:
    return pid << 24


def ranges(*rows: dict[str, Any]) -> pl.DataFrame:
    """Ranges: each row needs id, name, start, end; tid (1), domain (""), style, pid optional."""
    out = []
    for row in rows:
        tid, pid = row.get("tid", 1), row.get("pid", PID)
        out.append(
            {
                "event_id": row["id"],
                "name": row["name"],
                "domain": row.get("domain", ""),
                "style": row.get("style", "PushPop"),
                "global_tid": gtid(tid, pid),
                "pid": pid,
                "tid": tid,
                "start_ns": row["start"],
                "end_ns": row["end"],
                "closed": True,
                "ends_on_other_thread": row.get("elsewhere", False),
                "payload_int": row.get("payload"),
                "payload_float": None,
                "category": None,
            }
        )
    return pl.DataFrame(out, schema=NVTX_RANGES_SCHEMA)


def ops_and_calls(*rows: dict[str, Any]) -> tuple[pl.DataFrame, pl.DataFrame]:
    """GPU ops with their launch calls: start, end, launch (call start; None = no call), tid (1),
    device (0), stream (7), kind ("kernel"), corr (default: row number + 1), pid, graph (the
    graphId of a graph-level row)."""
    ops, calls = [], []
    for i, row in enumerate(rows):
        corr, pid = row.get("corr", i + 1), row.get("pid", PID)
        ops.append(
            {
                "op_id": i + 1,
                "kind": row.get("kind", "kernel"),
                "device_id": row.get("device", 0),
                "stream_id": row.get("stream", 7),
                "start_ns": row["start"],
                "end_ns": row["end"],
                "global_pid": gpid(pid),
                "correlation_id": corr,
                "name_id": row.get("name_id", 1),
                "graph_id": row.get("graph"),
                "graph_node_id": None,
                "bytes": None,
            }
        )
        if row.get("launch") is not None:
            calls.append(
                {
                    "global_tid": gtid(row.get("tid", 1), pid),
                    "global_pid": gpid(pid),
                    "correlation_id": corr,
                    "start_ns": row["launch"],
                    "end_ns": row["launch"] + 1,
                }
            )
    calls_frame = pl.DataFrame(calls, schema=API_CALLS_SCHEMA).unique(
        subset=["global_pid", "correlation_id"], keep="first", maintain_order=True
    )
    return pl.DataFrame(ops, schema=GPU_OPS_SCHEMA), calls_frame
