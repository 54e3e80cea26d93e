"""Rows into the SQLite export: NVTX events, API calls, kernels, copies, memsets, graph replays.

Simulated runs are buffered per chunk (an image) and inserted with `executemany`; correlation ids
are assigned in call order at each flush, so they are unique in the process and increase.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from benchmarks.gen_trace.kernels import KERNEL_KINDS, KernelKind
from benchmarks.gen_trace.plan import GLOBAL_PID, TracePlan
from benchmarks.gen_trace.timeline import IntArray, Run, Strings
from benchmarks.gen_trace.workload import (
    GRAPH_EXEC_ID,
    GRAPH_ID,
    GRAPH_NODE_ID_BASE,
    MEM_DEVICE,
    OP_KERNEL,
    OP_MEMCPY,
    OP_MEMSET,
)


def nvtx_row(
    start: int,
    end: int | None,
    event_type: int,
    gtid: int,
    *,
    text: str | None = None,
    text_id: int | None = None,
    domain: int = 0,
    color: int | None = None,
    payload: int | None = None,
    range_id: int | None = None,
) -> tuple[Any, ...]:
    """One NVTX_EVENTS row in the column order of the real table."""
    return (
        start,
        end,
        event_type,
        range_id,
        None,
        color,
        text,
        gtid,
        None,
        text_id,
        domain,
        None,
        payload,
        None,
        None,
        None,
        None,
        None,
        None,
        None,
    )


@dataclass
class Summary:
    """What a generation wrote: counts for the README/benchmark and the run metadata."""

    path: Path
    plan: TracePlan
    n_kernels: int = 0
    n_memcpy: int = 0
    n_memset: int = 0
    n_graph_replays: int = 0  # graph-level rows (`graph_level`); their kernels have no rows
    n_api: int = 0
    n_nvtx: int = 0
    duration_ns: int = 0
    seconds: float = 0.0
    meta: dict[str, Any] = field(default_factory=dict)


class Writer:
    """Streams simulated runs into the SQLite file, one chunk (an image) at a time."""

    def __init__(
        self,
        con: sqlite3.Connection,
        summary: Summary,
        kind_columns: IntArray,
        graph_level: bool = False,
    ) -> None:
        self.con = con
        self.summary = summary
        self.kind_columns = kind_columns
        self.graph_level = graph_level
        self.runs: list[Run] = []
        self.next_correlation = 1_000
        self.next_grid_id = 1

    def add(self, run: Run) -> Run:
        """Queue a run for the next flush."""
        self.runs.append(run)
        return run

    def flush(self) -> None:
        """Assign correlation ids in call order and insert API calls and GPU ops."""
        if not self.runs:
            return
        runs, self.runs = self.runs, []
        api_start = np.concatenate([r.api_start for r in runs])
        api_offsets = np.cumsum([0] + [len(r.api_start) for r in runs[:-1]])
        order = np.argsort(api_start, kind="stable")
        correlation = np.empty(len(order), dtype=np.int64)
        correlation[order] = self.next_correlation + np.arange(len(order))
        self.next_correlation += len(order)
        self._insert_api(runs, order, correlation)
        self._insert_ops(runs, api_offsets, correlation)

    def _insert_api(self, runs: list[Run], order: IntArray, correlation: IntArray) -> None:
        cols = [
            np.concatenate([r.api_start for r in runs])[order],
            np.concatenate([r.api_end for r in runs])[order],
            np.concatenate([r.block.api_class for r in runs])[order],
            np.concatenate([np.full(len(r.api_start), r.gtid) for r in runs])[order],
            correlation[order],
            np.concatenate([r.block.api_name for r in runs])[order],
        ]
        rows = zip(*(c.tolist() for c in cols), strict=True)
        self.con.executemany(
            "INSERT INTO CUPTI_ACTIVITY_KIND_RUNTIME VALUES (?, ?, ?, ?, ?, ?, 0, NULL)", rows
        )
        self.summary.n_api += len(order)

    def _insert_ops(self, runs: list[Run], api_offsets: IntArray, correlation: IntArray) -> None:
        def cat(attr: str) -> IntArray:
            return np.concatenate([getattr(r.block, attr) for r in runs])

        start = np.concatenate([r.op_start for r in runs])
        end = np.concatenate([r.op_end for r in runs])
        stream = np.concatenate([np.full(len(r.op_start), r.stream) for r in runs])
        api_index = np.concatenate(
            [r.block.op_slot + off for r, off in zip(runs, api_offsets, strict=True)]
        )
        corr = correlation[api_index]
        code, kind, node = cat("op_code"), cat("op_kind"), cat("op_node")
        order = np.argsort(start, kind="stable")
        start, end, stream, corr = start[order], end[order], stream[order], corr[order]
        code, kind, node = code[order], kind[order], node[order]
        nbytes, copy = cat("op_bytes")[order], cat("op_copy")[order]
        src, dst = cat("op_src")[order], cat("op_dst")[order]
        kernels = code == OP_KERNEL
        if self.graph_level:
            replayed = kernels & (node >= 0)
            self._insert_graph_replays(start[replayed], end[replayed], stream[replayed],
                                       corr[replayed])  # fmt: skip
            kernels &= ~replayed
        self._insert_kernels(kernels, start, end, stream, corr, kind, node)
        m = code == OP_MEMCPY
        rows = zip(
            *(c.tolist() for c in (start[m], end[m], stream[m], corr[m], nbytes[m], copy[m])),
            src[m].tolist(),
            dst[m].tolist(),
            strict=True,
        )
        self.con.executemany(
            "INSERT INTO CUPTI_ACTIVITY_KIND_MEMCPY VALUES (?, ?, 0, 1, 0, ?, ?, "
            f"{GLOBAL_PID}, ?, ?, NULL, ?, ?, NULL, NULL, NULL, NULL, NULL, NULL, NULL, 1)",
            rows,
        )
        self.summary.n_memcpy += int(m.sum())
        m = code == OP_MEMSET
        rows = zip(
            *(c.tolist() for c in (start[m], end[m], stream[m], corr[m], nbytes[m])), strict=True
        )
        self.con.executemany(
            "INSERT INTO CUPTI_ACTIVITY_KIND_MEMSET VALUES "
            f"(?, ?, 0, 1, 0, ?, ?, {GLOBAL_PID}, 0, ?, NULL, {MEM_DEVICE})",
            rows,
        )
        self.summary.n_memset += int(m.sum())

    def _insert_graph_replays(
        self, start: IntArray, end: IntArray, stream: IntArray, corr: IntArray
    ) -> None:
        """One graph-level row per replay (the node kernels sharing a correlation id): first
        node start to last node end, as nsys's default `--cuda-graph-trace=graph` records it."""
        if len(corr) == 0:
            return
        order = np.argsort(corr, kind="stable")
        corr, start, end, stream = corr[order], start[order], end[order], stream[order]
        heads = np.flatnonzero(np.r_[True, corr[1:] != corr[:-1]])
        rows = zip(
            np.minimum.reduceat(start, heads).tolist(),
            np.maximum.reduceat(end, heads).tolist(),
            stream[heads].tolist(),
            corr[heads].tolist(),
            strict=True,
        )
        self.con.executemany(
            "INSERT INTO CUPTI_ACTIVITY_KIND_GRAPH_TRACE VALUES "
            f"(?, ?, 0, 1, NULL, ?, ?, {GLOBAL_PID}, {GRAPH_ID}, {GRAPH_EXEC_ID})",
            rows,
        )
        self.summary.n_graph_replays += len(heads)

    def _insert_kernels(
        self,
        mask: npt.NDArray[np.bool_],
        start: IntArray,
        end: IntArray,
        stream: IntArray,
        corr: IntArray,
        kind: IntArray,
        node: IntArray,
    ) -> None:
        kind, node = kind[mask], node[mask]
        n = len(kind)
        grid_id = np.empty(n, dtype=np.int64)
        plain = node < 0
        grid_id[plain] = self.next_grid_id + np.arange(int(plain.sum()))
        grid_id[~plain] = 1_000_000 + node[~plain]
        self.next_grid_id += int(plain.sum())
        per_kind = [column[kind].tolist() for column in self.kind_columns]
        graph_node = [None if g < 0 else GRAPH_NODE_ID_BASE + g for g in node.tolist()]
        rows = zip(
            start[mask].tolist(),
            end[mask].tolist(),
            stream[mask].tolist(),
            corr[mask].tolist(),
            *per_kind,
            grid_id.tolist(),
            graph_node,
            strict=True,
        )
        self.con.executemany(KERNEL_INSERT, rows)
        self.summary.n_kernels += n


KERNEL_INSERT = (
    "INSERT INTO CUPTI_ACTIVITY_KIND_KERNEL (start, end, streamId, correlationId, demangledName, "
    "shortName, mangledName, cacheConfig, registersPerThread, gridX, gridY, gridZ, blockX, blockY, "
    "blockZ, staticSharedMemory, dynamicSharedMemory, sharedMemoryExecuted, "
    "sharedMemoryLimitConfig, gridId, graphNodeId, deviceId, contextId, greenContextId, "
    "globalPid, launchType, localMemoryPerThread, localMemoryTotal) VALUES "
    "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0, 1, 0, "
    f"{GLOBAL_PID}, 1, 0, 250871808)"
)


def _mangled(kind: KernelKind) -> str:
    """A stand-in Itanium-style mangled name (nvjet kernels are not mangled)."""
    if kind.short.startswith(("nvjet", "sm90_")):
        return kind.short
    return f"_ZN2at6native{len(kind.short)}{kind.short}IJEEEvv"


def kind_columns(strings: Strings) -> IntArray:
    """Per-kind kernel columns, one row each, in `KERNEL_INSERT` order (names ... limit config)."""
    cols = []
    for kind in KERNEL_KINDS.values():
        big = kind.dynamic_smem > 48 * 1024
        cols.append(
            [
                strings.id(kind.demangled),
                strings.id(kind.short),
                strings.id(_mangled(kind)),
                2 if big else 1,
                kind.registers,
                *kind.grid,
                *kind.block,
                kind.static_smem,
                kind.dynamic_smem,
                233_472 if big else 32_768,
                1 if big else 0,
            ]
        )
    return np.asarray(cols, dtype=np.int64).T.copy()
