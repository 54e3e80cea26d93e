"""Tiny frames in the shapes `Trace` returns, for hand-built attribution scenarios.

One builder per row (`range_row`, `op_row`, `call_row`); `ranges` and `ops_and_calls` take short
row specs, `tests.helpers.synth.SynthTrace` appends rows as it goes.
"""

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


def range_row(
    event_id: int,
    name: str,
    start: int,
    end: int,
    *,
    domain: str = "",
    style: str = "PushPop",
    tid: int = 1,
    pid: int = PID,
    payload: int | None = None,
    elsewhere: bool = False,
) -> dict[str, Any]:
    """One closed NVTX range row."""
    return {
        "event_id": event_id,
        "name": name,
        "domain": domain,
        "style": style,
        "global_tid": gtid(tid, pid),
        "pid": pid,
        "tid": tid,
        "start_ns": start,
        "end_ns": end,
        "closed": True,
        "ends_on_other_thread": elsewhere,
        "payload_int": payload,
        "payload_float": None,
        "category": None,
    }


def op_row(
    op_id: int,
    start: int,
    end: int,
    corr: int,
    *,
    kind: str = "kernel",
    device: int = 0,
    stream: int = 7,
    pid: int = PID,
    name_id: int | None = 1,
    graph: int | None = None,
) -> dict[str, Any]:
    """One GPU op row; `graph` is the graphId of a graph-level row."""
    return {
        "op_id": op_id,
        "kind": kind,
        "device_id": device,
        "stream_id": stream,
        "start_ns": start,
        "end_ns": end,
        "global_pid": gpid(pid),
        "correlation_id": corr,
        "name_id": name_id,
        "graph_id": graph,
        "graph_node_id": None,
        "bytes": None,
    }


def call_row(corr: int, start: int, end: int, *, tid: int = 1, pid: int = PID) -> dict[str, Any]:
    """One launch call row."""
    return {
        "global_tid": gtid(tid, pid),
        "global_pid": gpid(pid),
        "correlation_id": corr,
        "start_ns": start,
        "end_ns": end,
    }


def ranges(*rows: dict[str, Any]) -> pl.DataFrame:
    """Ranges: each row needs id, name, start, end; tid (1), domain (""), style, pid optional."""
    out = [
        range_row(
            row["id"],
            row["name"],
            row["start"],
            row["end"],
            domain=row.get("domain", ""),
            style=row.get("style", "PushPop"),
            tid=row.get("tid", 1),
            pid=row.get("pid", PID),
            payload=row.get("payload"),
            elsewhere=row.get("elsewhere", False),
        )
        for row in rows
    ]
    return pl.DataFrame(out, schema=NVTX_RANGES_SCHEMA)


def ops_and_calls(*rows: dict[str, Any]) -> tuple[pl.DataFrame, pl.DataFrame]:
    """GPU ops with their launch calls: start, end, launch (call start; None = no call), tid (1),
    device (0), stream (7), kind ("kernel"), corr (default: row number + 1), pid, graph (the
    graphId of a graph-level row)."""
    ops, calls = [], []
    for i, row in enumerate(rows):
        corr, pid = row.get("corr", i + 1), row.get("pid", PID)
        ops.append(
            op_row(
                i + 1,
                row["start"],
                row["end"],
                corr,
                kind=row.get("kind", "kernel"),
                device=row.get("device", 0),
                stream=row.get("stream", 7),
                pid=pid,
                name_id=row.get("name_id", 1),
                graph=row.get("graph"),
            )
        )
        if row.get("launch") is not None:
            launch = row["launch"]
            calls.append(call_row(corr, launch, launch + 1, tid=row.get("tid", 1), pid=pid))
    calls_frame = pl.DataFrame(calls, schema=API_CALLS_SCHEMA).unique(
        subset=["global_pid", "correlation_id"], keep="first", maintain_order=True
    )
    return pl.DataFrame(ops, schema=GPU_OPS_SCHEMA), calls_frame
