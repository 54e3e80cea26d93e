"""The host/GPU breakdown of the stage ranges, rebuilt in plain Python from the SQLite tables.

Independent of `llm_perf_opt.hostview`: API calls, their names and the synchronization rows are
read with sqlite3; one call after another per thread, a call's time counts where no earlier call
of the thread already covered it (so nested driver rows count once, for the outer call); ops are
walked one by one per device. Slow (a Python loop per row), which is fine for these traces.
"""

from __future__ import annotations

import bisect
import sqlite3
import statistics
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import polars as pl

LAUNCH: Final = ("cudaLaunchKernel", "cuLaunchKernel", "cudaGraphLaunch", "cuGraphLaunch")
SYNC: Final = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize",
               "cuStreamSynchronize", "cuCtxSynchronize", "cuEventSynchronize")  # fmt: skip
# The verdict rule of docs/mfu-math.md: GPU-side at half the window busy; syncs first at 10 per
# step (instance) on 5 % of the launches.
GPU_BOUND_SHARE: Final = 0.5
MIN_SYNCS: Final = 10
SYNCS_PER_LAUNCH: Final = 0.05


def _kind(name: str, has_sync_row: bool) -> str:
    copy = name.startswith(("cudaMemcpy", "cuMemcpy"))
    if name.startswith(LAUNCH):
        return "launch"
    if "StreamWaitEvent" not in name and (
        name.startswith(SYNC) or (copy and "Async" not in name) or has_sync_row
    ):
        return "sync"
    return "other"


class HostReference:
    """Per stage-range and decode-step window: the JSON `host` and `gpu_idle` objects."""

    def __init__(self, db: Path, ops: pl.DataFrame) -> None:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        rows = con.execute(
            "SELECT r.globalTid, r.start, r.end, r.correlationId, s.value "
            "FROM CUPTI_ACTIVITY_KIND_RUNTIME r JOIN StringIds s ON s.id = r.nameId"
        ).fetchall()
        sync_rows: dict[tuple[int, int], int] = defaultdict(int)
        for pid, corr in con.execute(
            "SELECT globalPid, correlationId FROM CUPTI_ACTIVITY_KIND_SYNCHRONIZATION"
        ):
            sync_rows[(pid, corr)] += 1
        con.close()
        self.has_sync_rows = bool(sync_rows)
        # per thread: every call (start, kind, is a copy, is outermost, sync rows) and the
        # pieces of time it adds to what the thread's earlier calls covered
        self.calls: dict[int, list[tuple[int, str, bool, bool, int]]] = defaultdict(list)
        self.pieces: dict[int, list[tuple[int, int, str]]] = defaultdict(list)
        covered: dict[int, int] = {}
        for tid, start, end, corr, name in sorted(rows, key=lambda r: (r[0], r[1], -r[2])):
            n_rows = sync_rows.get(((tid >> 24) << 24, corr), 0)
            kind = _kind(name, n_rows > 0)
            before = covered.get(tid)
            outer = before is None or start >= before
            if before is None or end > before:
                self.pieces[tid].append((start if before is None else max(start, before), end,
                                         kind))  # fmt: skip
                covered[tid] = end
            copy = name.startswith(("cudaMemcpy", "cuMemcpy"))
            rows_counted = 0 if "StreamWaitEvent" in name else n_rows
            self.calls[tid].append((start, kind, copy, outer, rows_counted))
        self.ops = ops.filter(pl.col("range_id").is_not_null(), pl.col("launch_ns").is_not_null())

    def window(self, tid: int, start: int, end: int, owner: int) -> dict[str, Any]:
        parts = {"launch": 0, "sync": 0, "other": 0}
        pieces = self.pieces.get(tid, [])
        k = bisect.bisect_right([p[1] for p in pieces], start)
        while k < len(pieces) and pieces[k][0] < end:
            p_start, p_end, kind = pieces[k]
            parts[kind] += max(0, min(p_end, end) - max(p_start, start))
            k += 1
        calls = self.calls.get(tid, [])
        a = bisect.bisect_left([c[0] for c in calls], start)
        b = bisect.bisect_right([c[0] for c in calls], end)
        inside = calls[a:b]
        n_launches = sum(1 for c in inside if c[3] and c[1] == "launch")
        n_memcpy = sum(1 for c in inside if c[3] and c[2])
        if self.has_sync_rows:
            n_syncs = sum(c[4] for c in inside)
        else:
            n_syncs = sum(1 for c in inside if c[3] and c[1] == "sync")
        span = end - start
        mine = self.ops.filter(
            pl.col("range_id") == owner, pl.col("launch_ns").is_between(start, end)
        ).sort("device_id", "start_ns", "launch_ns")
        g_end = max([end, *mine["end_ns"].to_list()])
        gpu = {"busy": 0, "starved": 0, "queued": 0, "edge": 0}
        for _, dev in mine.group_by(["device_id"], maintain_order=True):
            cov = None
            for launch, s0, e in dev.select("launch_ns", "start_ns", "end_ns").iter_rows():
                s = max(s0, start)
                if cov is None:
                    gpu["edge"] += s - start
                    cov = s
                elif s > cov:
                    starved = min(max(launch - cov, 0), s - cov)
                    gpu["starved"] += starved
                    gpu["queued"] += s - cov - starved
                gpu["busy"] += max(0, e - max(s, cov))
                cov = max(cov, e)
            assert cov is not None
            gpu["edge"] += g_end - cov
        if mine.is_empty():
            gpu["edge"] = g_end - start
        latencies = (mine["start_ns"] - mine["launch_ns"]).to_list()
        return {
            "host": {
                "span_s": span / 1e9,
                "launch_s": parts["launch"] / 1e9,
                "sync_s": parts["sync"] / 1e9,
                "other_api_s": parts["other"] / 1e9,
                "outside_api_s": (span - sum(parts.values())) / 1e9,
                "n_launches": n_launches,
                "n_syncs": n_syncs,
                "n_memcpy": n_memcpy,
                "n_gpu_ops": mine.height,
                "host_per_gpu_op_s": span / mine.height / 1e9 if mine.height else None,
            },
            "gpu_idle": {
                "window_s": (g_end - start) / 1e9,
                **{f"{k}_s": v / 1e9 for k, v in gpu.items()},
                "launch_latency_median_s": statistics.median(latencies) / 1e9
                if latencies
                else None,
            },
            "_latencies": latencies,
        }


_REFERENCES: dict[Path, HostReference] = {}


def reference_for(db: Path, ops: pl.DataFrame) -> HostReference:
    """One reference per trace for the session (reading the calls row by row is the slow part)."""
    if db not in _REFERENCES:
        _REFERENCES[db] = HostReference(db, ops)
    return _REFERENCES[db]


def _window_of(ref: HostReference, row: Mapping[str, Any], owner: int) -> dict[str, Any]:
    start = row["cpu_start_ns"]
    return ref.window(row["global_tid"], start, start + row["cpu_duration_ns"], owner)


def stage_total(views: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Sums over instances; the latency median over all their ops."""
    out: dict[str, Any] = {}
    for part in ("host", "gpu_idle"):
        out[part] = {
            k: sum(v[part][k] for v in views)
            for k in views[0][part]
            if k not in ("host_per_gpu_op_s", "launch_latency_median_s")
        }
    host = out["host"]
    host["host_per_gpu_op_s"] = host["span_s"] / host["n_gpu_ops"] if host["n_gpu_ops"] else None
    latencies = [x for v in views for x in v["_latencies"]]
    out["gpu_idle"]["launch_latency_median_s"] = (
        statistics.median(latencies) / 1e9 if latencies else None
    )
    return out


def step_median(views: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Column-wise median over decode steps; host time per op of the median step is its median
    span over its median op count."""
    out: dict[str, Any] = {}
    for part in ("host", "gpu_idle"):
        out[part] = {}
        for k in views[0][part]:
            values = [v[part][k] for v in views if v[part][k] is not None]
            out[part][k] = statistics.median(values) if values else None
    host = out["host"]
    host["host_per_gpu_op_s"] = host["span_s"] / host["n_gpu_ops"] if host["n_gpu_ops"] else None
    return out


def with_host(
    stages: dict[str, Any],
    instances: Sequence[Mapping[str, Any]],
    ref: HostReference,
    peak_flops: float,
    steps_out: Sequence[dict[str, Any]],
) -> None:
    """Add the breakdown keys to the recomputed `stages` and each decode step's host syncs to
    `steps_out` (in place)."""
    for stage, doc in stages.items():
        views = [_window_of(ref, inst[stage], inst[stage]["range_id"]) for inst in instances]
        for out, view in zip(doc["instances"], views, strict=True):
            out |= {k: view[k] for k in ("host", "gpu_idle")}
        total = stage_total(views)
        doc |= total
        floor_s = max(total["gpu_idle"]["busy_s"], total["host"]["launch_s"])
        doc["mfu_launch_only"] = doc["flops"] / (peak_flops * floor_s)
        if stage == "decode":
            steps = [
                _window_of(ref, step, inst["decode"]["range_id"])
                for inst in instances
                for step in inst["steps"]
            ]
            doc["per_step"] = step_median(steps)
            for out, view in zip(steps_out, steps, strict=True):
                out["n_syncs"] = view["host"]["n_syncs"]
        doc["verdict"] = _verdict(doc, len(instances))


def _verdict(doc: Mapping[str, Any], n_instances: int) -> str:
    """The verdict rule of docs/mfu-math.md over the recomputed breakdown (in seconds)."""
    host, gpu = doc["host"], doc["gpu_idle"]
    if gpu["busy_s"] >= GPU_BOUND_SHARE * gpu["window_s"]:
        mbu = doc.get("mbu_trace")
        return "memory-bound" if mbu is not None and mbu > doc["mfu_trace"] else "compute-bound"
    unit = (
        doc["per_step"]["host"]
        if "per_step" in doc
        else {k: host[k] / n_instances for k in ("n_syncs", "n_launches")}
    )
    if unit["n_syncs"] >= MIN_SYNCS and unit["n_syncs"] >= SYNCS_PER_LAUNCH * unit["n_launches"]:
        return "sync-bound"
    if gpu["starved_s"] < gpu["queued_s"] + gpu["edge_s"]:
        return "queue-bound"
    parts = [
        ("sync-bound", host["sync_s"]),
        ("launch-bound", host["launch_s"]),
        ("framework-bound", host["outside_api_s"]),
        ("api-bound", host["other_api_s"]),
    ]
    return max(parts, key=lambda p: p[1])[0]
