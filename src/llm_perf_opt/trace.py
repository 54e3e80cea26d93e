"""Read an Nsight Systems SQLite export (read-only) into polars frames.

Works on exports from nsys 2022.4 (schema 3.0) to 2026.x (3.25+): columns and tables that a
version lacks, or that the lazy exporter left out because they had no rows, come back as nulls or
empty frames. Names are resolved from `StringIds` here, at the edge; kernel names stay integer ids
(`name_id`) until a report asks for them, because millions of demangled names are costly.
"""

from __future__ import annotations

import ctypes
import errno
import gzip
import lzma
import os
import re
import secrets
import shutil
import sqlite3
import stat
import tempfile
import urllib.parse
import weakref
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Final

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from llm_perf_opt.errors import (
    CorruptTraceError,
    MissingColumnError,
    MissingTableError,
    NoGpuOpsError,
    NoNvtxEventsError,
    TraceAccessError,
    TraceError,
    TraceLockedError,
    TraceNotFoundError,
    TraceTooLargeError,
    WrongFileKindError,
)

SQLITE_MAGIC: Final = b"SQLite format 3\x00"
# Compressed exports are read directly (decompressed to a private temporary file first).
# Rows per Arrow record batch read from SQLite.
BATCH_ROWS: Final = str(1 << 18)
COMPRESSED_MAGIC: Final = {b"\xfd7zXZ\x00": "xz", b"\x1f\x8b": "gzip"}
# A compressed export may decompress to at most this multiple of its size (nsys exports compress
# about 5x), and never less than the floor; the environment variable overrides both, in bytes.
DECOMPRESS_RATIO_CAP: Final = 50
DECOMPRESS_FLOOR_BYTES: Final = 1 << 30
DECOMPRESS_CAP_ENV: Final = "LLM_PERF_OPT_MAX_DECOMPRESSED_BYTES"
SCRATCH_PREFIX: Final = "mfu-trace-"
# Byte 18 of the SQLite header (file format write version): 2 means WAL journal mode.
WAL_HEADER_OFFSET: Final = 18
# A thread with more open (never ended) ranges than this was not cut short mid-range: its open
# ranges are dropped instead of all nesting to the end of the trace.
MAX_OPEN_RANGES_PER_THREAD: Final = 32
# Columns without which a table cannot be read at all; nsys has written them since 2022.4.
REQUIRED_COLUMNS: Final = {
    "CUPTI_ACTIVITY_KIND_KERNEL": (
        "start", "end", "deviceId", "streamId", "globalPid", "correlationId", "shortName",
    ),
    "CUPTI_ACTIVITY_KIND_MEMCPY": (
        "start", "end", "deviceId", "streamId", "globalPid", "correlationId",
    ),
    "CUPTI_ACTIVITY_KIND_MEMSET": (
        "start", "end", "deviceId", "streamId", "globalPid", "correlationId",
    ),
    "CUPTI_ACTIVITY_KIND_RUNTIME": ("start", "end", "globalTid", "correlationId"),
    "NVTX_EVENTS": ("start", "eventType", "globalTid"),
    "StringIds": ("id", "value"),
    "PROCESSES": ("globalPid", "pid", "name"),
    "ThreadNames": ("globalTid", "nameId"),
}  # fmt: skip

# ENUM_NSYS_EVENT_TYPE ids (stable across versions).
NVTX_MARK_TYPES: Final = (34, 65)
NVTX_PUSHPOP_TYPES: Final = (59, 70)
NVTX_STARTEND_TYPES: Final = (60, 71)
NVTX_DOMAIN_CREATE: Final = 75

# globalTid layout <HW:8><VM:8><PID:24><TID:24>: the process key keeps HW, VM and PID.
TID_BITS: Final = 24
PID_MASK: Final = 0xFFFFFF

GPU_OP_TABLES: Final = {
    "kernel": "CUPTI_ACTIVITY_KIND_KERNEL",
    "memcpy": "CUPTI_ACTIVITY_KIND_MEMCPY",
    "memset": "CUPTI_ACTIVITY_KIND_MEMSET",
    # A CUDA graph replay traced whole (nsys --cuda-graph-trace=graph, its default): one row per
    # replay, its kernels in no other table.
    "graph": "CUPTI_ACTIVITY_KIND_GRAPH_TRACE",
}
RUNTIME_TABLE: Final = "CUPTI_ACTIVITY_KIND_RUNTIME"
SYNC_TABLE: Final = "CUPTI_ACTIVITY_KIND_SYNCHRONIZATION"
NVTX_TABLE: Final = "NVTX_EVENTS"

OP_KINDS: Final = pl.Enum(list(GPU_OP_TABLES))
# Columns of gpu_ops() that attribution does not need (mostly null, 8 bytes a row each).
LEAN_DROPS: Final = ("graph_node_id", "bytes")
# Narrow types where the values allow: traces hold millions of ops, and memory is the limit.
GPU_OPS_SCHEMA: Final = pl.Schema(
    {  # type: ignore[arg-type]  # mypy widens the mixed dtype values to object
        "op_id": pl.Int64,
        "kind": OP_KINDS,
        "device_id": pl.Int32,
        "stream_id": pl.Int32,
        "start_ns": pl.Int64,
        "end_ns": pl.Int64,
        "global_pid": pl.Int64,
        "correlation_id": pl.Int64,
        "name_id": pl.Int32,
        "graph_id": pl.UInt32,
        "graph_node_id": pl.Int64,
        "bytes": pl.Int64,
    }
)
NVTX_RANGES_SCHEMA: Final = pl.Schema(
    {
        "event_id": pl.Int64,
        "name": pl.String,
        "domain": pl.String,
        "style": pl.String,
        "global_tid": pl.Int64,
        "pid": pl.Int64,
        "tid": pl.Int64,
        "start_ns": pl.Int64,
        "end_ns": pl.Int64,
        "closed": pl.Boolean,
        "ends_on_other_thread": pl.Boolean,
        "payload_int": pl.Int64,
        "payload_float": pl.Float64,
        "category": pl.Int64,
    }
)
API_CALLS_SCHEMA: Final = pl.Schema(
    {
        "global_tid": pl.Int64,
        "global_pid": pl.Int64,
        "correlation_id": pl.Int64,
        "start_ns": pl.Int64,
        "end_ns": pl.Int64,
    }
)


def pid_of(global_id: pl.Expr) -> pl.Expr:
    """Operating-system pid from a serialized globalTid/globalPid."""
    return (global_id // (1 << TID_BITS)) % (1 << TID_BITS)


def tid_of(global_tid: pl.Expr) -> pl.Expr:
    """Operating-system tid from a serialized globalTid."""
    return global_tid % (1 << TID_BITS)


def process_key(global_tid: pl.Expr) -> pl.Expr:
    """globalPid of a globalTid: the HW, VM and PID fields, TID zeroed."""
    return (global_tid // (1 << TID_BITS)) * (1 << TID_BITS)


@dataclass
class Trace:
    """An open, read-only nsys SQLite export. Use `open_trace` to make one."""

    path: Path
    _conn: sqlite3.Connection = field(repr=False)
    db_path: Path | None = None
    _prefetched: dict[str, Future[pl.DataFrame]] = field(default_factory=dict, repr=False)
    # Rows left out because they cannot be real (no time, end before start), one line each.
    warnings: list[str] = field(default_factory=list)

    # -- metadata -------------------------------------------------------------------------------
    @cached_property
    def tables(self) -> frozenset[str]:
        rows = self._sql("SELECT name FROM sqlite_master WHERE type IN ('table', 'view')")
        return frozenset(r[0] for r in rows)

    @cached_property
    def export_meta(self) -> dict[str, str]:
        """Name → value from META_DATA_EXPORT (2024+) or EXPORT_META_DATA (2022.4)."""
        for table in ("META_DATA_EXPORT", "EXPORT_META_DATA"):
            if table in self.tables:
                return {str(k): str(v) for k, v in self._sql(f"SELECT name, value FROM {table}")}
        return {}

    @property
    def schema_version(self) -> str:
        return self.export_meta.get("EXPORT_SCHEMA_VERSION", "unknown")

    @property
    def nsys_version(self) -> str:
        return self.export_meta.get("EXPORT_PRODUCT_VERSION", "unknown")

    def columns(self, table: str) -> tuple[str, ...]:
        """Column names of `table` (empty when the table is absent)."""
        if table not in self.tables:
            return ()
        return tuple(r[1] for r in self._sql(f"PRAGMA table_info({table})"))

    def present_columns(self, table: str) -> set[str]:
        """Columns of `table` (empty when absent); raises MissingColumnError when the table is
        there but lacks one of its `REQUIRED_COLUMNS`."""
        cols = set(self.columns(table))
        missing = [c for c in REQUIRED_COLUMNS.get(table, ()) if cols and c not in cols]
        if missing:
            raise MissingColumnError(
                f"{self.path}: trace lacks column {missing[0]} of table {table} (nsys export "
                f"version {self.nsys_version}, schema {self.schema_version}); export the report "
                "again with `nsys export --type sqlite` (nsys 2022.4 or later)"
            )
        return cols

    @cached_property
    def trace_end_ns(self) -> int:
        """Latest timestamp of any event: where open NVTX ranges end, as NVIDIA treats them."""
        candidates = [
            f"SELECT max(end) FROM {t}"
            for t in (*GPU_OP_TABLES.values(), RUNTIME_TABLE)
            if t in self.tables
        ]
        if NVTX_TABLE in self.tables:
            candidates.append(f"SELECT max(coalesce(end, start)) FROM {NVTX_TABLE}")
        values = [self._sql(q)[0][0] for q in candidates]
        return max((int(v) for v in values if v is not None), default=0)

    # -- strings ----------------------------------------------------------------------------------
    @cached_property
    def _string_ids(self) -> pl.DataFrame:
        if "StringIds" not in self.tables:
            return pl.DataFrame(schema={"id": pl.Int64, "value": pl.String})
        self.present_columns("StringIds")
        return self._frame(
            "SELECT id, CAST(value AS BLOB) AS value FROM StringIds",
            {"id": pl.Int64, "value": pl.String},
        )

    def resolve_strings(self, ids: pl.Series) -> pl.Series:
        """Map StringIds ids to their text (null where unknown), keeping order."""
        frame = pl.DataFrame({"id": ids.cast(pl.Int64)})
        return frame.join(self._string_ids, on="id", how="left", maintain_order="left")["value"]

    def kernel_names(self) -> pl.DataFrame:
        """`name_id, name`: demangled (or short) names of the ids used by `gpu_ops()`."""
        return self._string_ids.rename({"id": "name_id", "value": "name"})

    # -- NVTX -------------------------------------------------------------------------------------
    def _nvtx_raw(self, event_types: Iterable[int]) -> pl.DataFrame:
        cols = self.present_columns(NVTX_TABLE)
        if not cols:
            raise NoNvtxEventsError(
                f"{self.path}: the export has no NVTX_EVENTS table. Capture with "
                "`nsys profile -t cuda,nvtx ...` and mark the stages with NVTX ranges."
            )

        def col(name: str, sql_type: str) -> str:
            return f"CAST({name} AS {sql_type}) AS {name}" if name in cols else f"NULL AS {name}"

        int_cols = [
            "end", "rangeId", "category", "textId", "domainId", "globalTid", "endGlobalTid",
            "uint64Value", "int64Value", "uint32Value", "int32Value", "jsonTextId",
        ]  # fmt: skip
        select = ", ".join(
            [
                "rowid AS event_id",
                "CAST(start AS INTEGER) AS start",
                "CAST(eventType AS INTEGER) AS eventType",
                col("text", "BLOB"),
                col("jsonText", "BLOB"),
                col("doubleValue", "REAL"),
                col("floatValue", "REAL"),
                *(col(c, "INTEGER") for c in int_cols),
            ]
        )
        types = ",".join(str(t) for t in event_types)
        schema = {
            "event_id": pl.Int64,
            "start": pl.Int64,
            "eventType": pl.Int64,
            "text": pl.String,
            "jsonText": pl.String,
            "doubleValue": pl.Float64,
            "floatValue": pl.Float64,
            **dict.fromkeys(int_cols, pl.Int64),
        }
        frame = self._frame(
            f"SELECT {select} FROM {NVTX_TABLE} WHERE eventType IN ({types}) ORDER BY rowid",
            schema,
        )
        text_from_id = self.resolve_strings(frame["textId"])
        return frame.with_columns(
            name=pl.coalesce(pl.col("text"), text_from_id),
            global_pid=process_key(pl.col("globalTid")),
        )

    @cached_property
    def _domains(self) -> pl.DataFrame:
        """(global_pid, domainId) → domain name, from the per-process domain-create events."""
        created = self._nvtx_raw([NVTX_DOMAIN_CREATE])
        return created.select("global_pid", "domainId", domain=pl.col("name")).unique(
            subset=["global_pid", "domainId"], keep="last"
        )

    def _with_domain(self, frame: pl.DataFrame) -> pl.DataFrame:
        joined = frame.join(
            self._domains, on=["global_pid", "domainId"], how="left", maintain_order="left"
        )
        # The default domain (id 0 or null) has no create event: it is named "".
        return joined.with_columns(pl.col("domain").fill_null(""))

    @cached_property
    def _nvtx_ranges(self) -> pl.DataFrame:
        raw = self._with_domain(self._nvtx_raw(NVTX_PUSHPOP_TYPES + NVTX_STARTEND_TYPES))
        raw = self._drop_rows(
            raw,
            pl.col("start").is_null() | pl.col("globalTid").is_null(),
            "NVTX ranges without a start time or thread",
        )
        raw = self._drop_rows(
            raw, pl.col("end") < pl.col("start"), "NVTX ranges ending before they start"
        )
        raw = self._drop_rows(
            raw,
            pl.col("end").is_null()
            & (pl.col("end").is_null().sum().over("globalTid") > MAX_OPEN_RANGES_PER_THREAD),
            f"open NVTX ranges on threads with more than {MAX_OPEN_RANGES_PER_THREAD} (never "
            "ended: the capture did not just stop mid-range)",
        )
        end_of_trace = self.trace_end_ns
        ranges = raw.select(
            "event_id",
            pl.col("name").fill_null(""),
            "domain",
            style=pl.when(pl.col("eventType").is_in(NVTX_PUSHPOP_TYPES))
            .then(pl.lit("PushPop"))
            .otherwise(pl.lit("StartEnd")),
            global_tid=pl.col("globalTid"),
            pid=pid_of(pl.col("globalTid")),
            tid=tid_of(pl.col("globalTid")),
            start_ns=pl.col("start"),
            end_ns=pl.col("end").fill_null(max(end_of_trace, 0)),
            closed=pl.col("end").is_not_null(),
            ends_on_other_thread=pl.col("endGlobalTid").is_not_null()
            & (pl.col("endGlobalTid") != pl.col("globalTid")),
            payload_int=pl.coalesce("int64Value", "uint64Value", "int32Value", "uint32Value"),
            payload_float=pl.coalesce("doubleValue", "floatValue"),
            category=pl.col("category"),
        )
        return ranges.cast(dict(NVTX_RANGES_SCHEMA))  # type: ignore[arg-type]

    def nvtx_ranges(self) -> pl.DataFrame:
        """Push/pop and start/end ranges (incl. the Nvtxt 70/71 variants), one row each.

        Open ranges (never closed) end at the end of the trace, as NVIDIA's projection treats
        them; `closed` says which were. Raises NoNvtxEventsError when the export has none.
        """
        if self._nvtx_ranges.is_empty():
            left_out = [w for w in self.warnings if "NVTX ranges" in w]
            if left_out:
                raise NoNvtxEventsError(
                    f"{self.path}: no usable NVTX ranges: {'; '.join(left_out)}. The export is "
                    "damaged or the ranges were never ended; capture again."
                )
            raise NoNvtxEventsError(
                f"{self.path}: the export has no NVTX ranges. Capture with "
                "`nsys profile -t cuda,nvtx ...` and wrap the stages in NVTX ranges."
            )
        return self._nvtx_ranges

    def nvtx_marks(self) -> pl.DataFrame:
        """NVTX marks: `start_ns, name, domain, pid, tid, json_text`. Empty when there are none."""
        if NVTX_TABLE not in self.tables:
            return pl.DataFrame(
                schema={
                    "start_ns": pl.Int64,
                    "name": pl.String,
                    "domain": pl.String,
                    "pid": pl.Int64,
                    "tid": pl.Int64,
                    "json_text": pl.String,
                }
            )
        marks = self._with_domain(self._nvtx_raw(NVTX_MARK_TYPES))
        return marks.select(
            start_ns=pl.col("start"),
            name=pl.col("name"),
            domain=pl.col("domain"),
            pid=pid_of(pl.col("globalTid")),
            tid=tid_of(pl.col("globalTid")),
            json_text=pl.col("jsonText"),
        )

    # -- GPU work and CUDA API --------------------------------------------------------------------
    def gpu_ops(self, *, lean: bool = False) -> pl.DataFrame:
        """Kernels, memcpys, memsets and whole-graph executions of every device, in one frame
        (`GPU_OPS_SCHEMA`; `lean` leaves out `graph_node_id` and `bytes`, which attribution does
        not need).

        `op_id` is unique across the kinds (kind index · 2⁴⁰ + rowid). A `graph` op is one replay
        of a CUDA graph traced at graph level: `name_id` null, `graph_id` the replayed graph
        (`graphId`; also set on node kernels where the export has the column). Raises
        NoGpuOpsError when the export has no GPU-op table at all.
        """
        wanted = [c for c in GPU_OPS_SCHEMA.names() if not lean or c not in LEAN_DROPS]
        parts = []
        for kind_index, (kind, table) in enumerate(GPU_OP_TABLES.items()):
            cols = self.present_columns(table)
            if not cols:
                continue
            if kind == "kernel":
                name = (
                    "coalesce(demangledName, shortName)" if "demangledName" in cols else "shortName"
                )
            else:
                name = "NULL"
            optional = {
                "name_id": name,
                "graph_id": "graphId" if "graphId" in cols else "NULL",
                "graph_node_id": "graphNodeId" if "graphNodeId" in cols else "NULL",
                "bytes": "bytes" if "bytes" in cols else "NULL",
            }
            selected = ", ".join(
                f"CAST({src} AS INTEGER) AS {dst}" for dst, src in optional.items() if dst in wanted
            )
            query = (
                f"SELECT rowid + {kind_index << 40} AS op_id, deviceId AS device_id, "
                "streamId AS stream_id, start AS start_ns, end AS end_ns, "
                "globalPid AS global_pid, correlationId AS correlation_id, "
                f"{selected} FROM {table}"
            )
            schema = {k: v for k, v in GPU_OPS_SCHEMA.items() if k != "kind" and k in wanted}
            frame = self._frame(query, schema)
            parts.append(frame.with_columns(kind=pl.lit(kind, OP_KINDS)))
        if not parts:
            raise NoGpuOpsError(
                f"{self.path}: the export has no kernels, memcpys, memsets or CUDA graph "
                "executions. Capture with `nsys profile -t cuda,nvtx ...`."
            )
        ops = pl.concat(parts, how="vertical", rechunk=False).select(wanted)
        ops = self._drop_rows(
            ops,
            pl.any_horizontal(pl.col("start_ns", "end_ns", "device_id", "global_pid").is_null()),
            "GPU ops without a start, end, device or process",
        )
        ops = self._drop_rows(
            ops, pl.col("end_ns") < pl.col("start_ns"), "GPU ops ending before they start"
        )
        return ops.cast({k: GPU_OPS_SCHEMA[k] for k in wanted})

    def launch_calls(self) -> pl.DataFrame:
        """What attribution needs of the CUDA API calls, and no more: `global_tid,
        correlation_id, start_ns` (empty when the export has no CUDA API table)."""
        return self.api_calls(with_end=False).drop("global_pid")

    def api_calls(self, *, with_names: bool = False, with_end: bool = True) -> pl.DataFrame:
        """CUDA runtime and driver calls: `global_tid, global_pid, correlation_id, start_ns,
        end_ns` (+ `name` when asked). Empty when the export has no CUDA API table."""
        wanted = {
            "globalTid": "global_tid",
            "correlationId": "correlation_id",
            "start": "start_ns",
            **({"end": "end_ns"} if with_end else {}),
            **({"nameId": "name_id"} if with_names else {}),
        }
        schema = dict.fromkeys(wanted.values(), pl.Int64)
        if self.present_columns(RUNTIME_TABLE):
            select = ", ".join(f"{src} AS {dst}" for src, dst in wanted.items())
            calls = self._frame(f"SELECT {select} FROM {RUNTIME_TABLE}", schema)
            calls = calls.filter(
                pl.col("global_tid").is_not_null(), pl.col("start_ns").is_not_null()
            )
        else:
            calls = pl.DataFrame(schema=schema)
        calls = calls.with_columns(global_pid=process_key(pl.col("global_tid")))
        if with_names:
            calls = calls.with_columns(name=self.resolve_strings(calls["name_id"]))
        order = [c for c in API_CALLS_SCHEMA.names() if c in calls.columns]
        return calls.select(order + (["name"] if with_names else []))

    def sync_events(self) -> pl.DataFrame:
        """Host synchronizations CUPTI recorded (CUPTI_ACTIVITY_KIND_SYNCHRONIZATION): `global_pid,
        correlation_id` (joins the API call), `start_ns, end_ns, stream_id, sync_type`. Empty
        when the export has no such table (older nsys, or no synchronization captured)."""
        wanted = {
            "globalPid": "global_pid",
            "correlationId": "correlation_id",
            "start": "start_ns",
            "end": "end_ns",
            "streamId": "stream_id",
            "syncType": "sync_type",
        }
        schema = dict.fromkeys(wanted.values(), pl.Int64)
        cols = set(self.columns(SYNC_TABLE))
        if not cols:
            return pl.DataFrame(schema=schema)
        select = ", ".join(
            f"{src if src in cols else 'NULL'} AS {dst}" for src, dst in wanted.items()
        )
        return self._frame(f"SELECT {select} FROM {SYNC_TABLE}", schema)

    def gpu_info(self) -> pl.DataFrame:
        """`device_id, name, sm_count, clock_hz, memory_bandwidth_Bps, total_memory_B, chip_name,
        compute_major, compute_minor` from TARGET_INFO_GPU (empty when absent)."""
        wanted = {
            "id": ("device_id", pl.Int64),
            "name": ("name", pl.String),
            "smCount": ("sm_count", pl.Int64),
            "clockRate": ("clock_hz", pl.Int64),
            "memoryBandwidth": ("memory_bandwidth_Bps", pl.Int64),
            "totalMemory": ("total_memory_B", pl.Int64),
            "chipName": ("chip_name", pl.String),
            "computeMajor": ("compute_major", pl.Int64),
            "computeMinor": ("compute_minor", pl.Int64),
        }
        cols = set(self.columns("TARGET_INFO_GPU"))
        select = ", ".join(
            f"{_sql_column(src, dtype) if src in cols else 'NULL'} AS {dst}"
            for src, (dst, dtype) in wanted.items()
        )
        schema = dict(wanted.values())
        if not cols:
            return pl.DataFrame(schema=schema)
        return self._frame(f"SELECT {select} FROM TARGET_INFO_GPU ORDER BY id", schema)

    def processes(self) -> pl.DataFrame:
        """`global_pid, pid, name` of the captured processes (empty when absent)."""
        schema = {"global_pid": pl.Int64, "pid": pl.Int64, "name": pl.String}
        if not self.present_columns("PROCESSES"):
            return pl.DataFrame(schema=schema)
        return self._frame(
            "SELECT globalPid AS global_pid, pid, CAST(name AS BLOB) AS name FROM PROCESSES", schema
        )

    def threads(self) -> pl.DataFrame:
        """`global_tid, pid, tid, name` from ThreadNames (empty when absent)."""
        schema = {"global_tid": pl.Int64, "nameId": pl.Int64}
        if not self.present_columns("ThreadNames"):
            frame = pl.DataFrame(schema=schema)
        else:
            frame = self._frame("SELECT globalTid AS global_tid, nameId FROM ThreadNames", schema)
        return frame.select(
            "global_tid",
            pid=pid_of(pl.col("global_tid")),
            tid=tid_of(pl.col("global_tid")),
            name=self.resolve_strings(frame["nameId"]),
        )

    # -- background reads -------------------------------------------------------------------------
    def prefetch_gpu_work(self) -> None:
        """Start reading the GPU ops and launch calls in background threads (the SQLite scans
        release the GIL), so they overlap the NVTX reads; `take_gpu_work` collects them."""
        if self._prefetched:
            return
        self.tables  # noqa: B018 - resolve the shared lookup before the threads start
        pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="trace-read")
        self._prefetched = {
            "ops": pool.submit(self.gpu_ops, lean=True),
            "calls": pool.submit(self.launch_calls),
        }
        pool.shutdown(wait=False)

    def take_gpu_work(self) -> tuple[pl.DataFrame, pl.DataFrame]:
        """`(gpu_ops(), launch_calls())`, from the prefetch when one ran. The Trace keeps no
        reference, so the caller can free millions of rows as soon as it is done with them."""
        self.prefetch_gpu_work()
        ops, calls = self._prefetched.pop("ops"), self._prefetched.pop("calls")
        return ops.result(), calls.result()

    # -- plumbing ---------------------------------------------------------------------------------
    def _drop_rows(self, frame: pl.DataFrame, bad: pl.Expr, what: str) -> pl.DataFrame:
        """`frame` without the rows where `bad` holds, with a warning that counts them."""
        flagged = frame.select(bad.fill_null(False).alias("bad"))["bad"]
        n_bad = int(flagged.sum())
        if n_bad == 0:
            return frame
        self.warnings.append(f"{n_bad} {what} left out")
        return frame.filter(~flagged)

    def _sql(self, query: str) -> list[tuple[Any, ...]]:
        try:
            return self._conn.execute(query).fetchall()
        except sqlite3.Error as exc:
            raise _read_error(self.path, exc, query) from exc

    def _frame(self, query: str, schema: dict[str, Any]) -> pl.DataFrame:
        """Run `query` into a frame of `schema` through Arrow (ADBC), not Python rows.

        Record batches are converted and narrowed one at a time, so the driver's raw buffers for
        millions of rows never all exist beside the narrowed copy."""
        import adbc_driver_sqlite.dbapi as adbc

        parts = []
        try:
            db = self.db_path or self.path
            with adbc.connect(_readonly_uri(db)) as conn, conn.cursor() as cur:
                cur.adbc_statement.set_options(**{"adbc.sqlite.query.batch_rows": BATCH_ROWS})
                cur.execute(query)
                for batch in cur.fetch_record_batch():
                    part = pl.from_arrow(batch)
                    assert isinstance(part, pl.DataFrame)
                    parts.append(_narrowed(part, schema, self.path, query))
        except (OSError, adbc.Error) as exc:  # the driver's errors, and SQLite's as OSError
            raise _read_error(self.path, exc, query) from exc
        finally:
            _release_freed_memory()
        if not parts:
            return pl.DataFrame(schema=schema)
        return pl.concat(parts, rechunk=False)


def _release_freed_memory() -> None:
    """Give memory freed by the SQLite driver (C malloc) back to the system: polars allocates
    with its own allocator and cannot reuse it, so without this the peak only grows."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc: nothing to trim
        return
    libc.malloc_trim(0)


def _readonly_uri(path: Path) -> str:
    """Read-only URI; `immutable=1` (no locks, no -wal/-shm files) for a WAL-mode database, whose
    read-only opening would otherwise create those files beside it, and for private copies."""
    query = "mode=ro"
    if path.parent.name.startswith(SCRATCH_PREFIX) or _is_wal(path):
        query += "&immutable=1"
    return f"file:{urllib.parse.quote(str(path.resolve()))}?{query}"


def _is_wal(path: Path) -> bool:
    with path.open("rb") as handle:
        handle.seek(WAL_HEADER_OFFSET)
        return handle.read(1) == b"\x02"


def _sql_column(name: str, dtype: Any) -> str:
    """`name` as SQL, read as BLOB when it is text (decoded by `_narrowed`, invalid UTF-8 too)."""
    return f"CAST({name} AS BLOB)" if dtype == pl.String else name


def _narrowed(part: pl.DataFrame, schema: dict[str, Any], path: Path, query: str) -> pl.DataFrame:
    """One record batch cast to `schema`; text read as BLOB is decoded, and a value the schema
    cannot hold (text or a fraction in an id column, an id beyond int32) is a clear error."""
    decoded = [
        _decoded(part[c])
        for c, t in schema.items()
        if t == pl.String and part[c].dtype == pl.Binary
    ]
    part = part.with_columns(decoded)
    try:
        return part.cast(schema)  # type: ignore[arg-type]
    except (pl.exceptions.InvalidOperationError, pl.exceptions.ComputeError) as exc:
        alias = next((c for c, t in schema.items() if _cast_fails(part[c], t)), None)
        if alias is None:
            raise CorruptTraceError(_corrupt_message(path, exc)) from exc
        values = part[alias]
        try:
            lost = values.cast(schema[alias], strict=False).is_null() & values.is_not_null()
            bad = values.filter(lost)
        except (pl.exceptions.InvalidOperationError, pl.exceptions.ComputeError):
            bad = values.drop_nulls()  # no value of this type converts at all (bytes)
        example = repr(bad[0])[:40] if len(bad) else "?"
        source = re.search(rf"(\w+) AS {alias}\b", query)
        raise CorruptTraceError(
            f"{path}: column {source[1] if source else alias} of table {_table_of(query)} holds "
            f"{example}, not a value of type {schema[alias]}; the export was edited or damaged. "
            "Export it again with `nsys export --type sqlite`."
        ) from exc


def _cast_fails(values: pl.Series, dtype: Any) -> bool:
    try:
        values.cast(dtype)
    except (pl.exceptions.InvalidOperationError, pl.exceptions.ComputeError):
        return True
    return False


def _decoded(values: pl.Series) -> pl.Series:
    """Binary → String with invalid UTF-8 (damaged or hand-written NVTX text) decoded with
    U+FFFD replacements. Valid data is checked in one pass over the whole buffer; only the rows
    found invalid are decoded one by one."""
    arrow = values.rechunk().to_arrow()
    _, offset_buffer, data = arrow.buffers()
    width = np.int64 if arrow.type == pa.large_binary() else np.int32
    window = np.frombuffer(offset_buffer, width)[arrow.offset : arrow.offset + len(arrow) + 1]
    offsets = window.astype(np.int64)  # positions in the data buffer
    raw = data.to_pybytes() if data is not None else b""
    bad: list[int] = []
    pos, end = int(offsets[0]), int(offsets[-1])
    while pos < end:
        try:
            raw[pos:end].decode("utf-8")
            break
        except UnicodeDecodeError as exc:
            row = int(np.searchsorted(offsets, pos + exc.start, side="right")) - 1
            bad.append(row)
            pos = int(offsets[row + 1])
    # Valid as a whole, but a row may still start inside another row's character.
    starts, stops = offsets[:-1], offsets[1:]
    nonempty = np.flatnonzero(stops > starts)
    if len(nonempty):
        heads = np.frombuffer(raw, np.uint8)[starts[nonempty]]
        split = np.flatnonzero((heads & 0xC0) == 0x80)  # and the row before may end mid-char
        bad.extend(nonempty[split].tolist() + nonempty[split[split > 0] - 1].tolist())
    if not bad:
        return values.cast(pl.String)
    rows = sorted(set(bad))
    fixed = [raw[offsets[r] : offsets[r + 1]].decode("utf-8", "replace") for r in rows]
    invalid = np.zeros(len(arrow), dtype=bool)
    invalid[rows] = True
    valid_only = pc.if_else(pa.array(invalid), pa.scalar(None, arrow.type), arrow)
    text = pl.Series(values.name, valid_only.cast(pa.large_string()))
    return text.scatter(rows, fixed)


def _table_of(query: str) -> str:
    match = re.search(r"\bFROM\s+(\w+)", query)
    return match[1] if match else "?"


def _read_error(path: Path, exc: Exception, query: str = "") -> TraceError:
    """The error a failed SQLite read means, said plainly."""
    text = str(exc)
    lower = text.lower()
    if "locked" in lower or "busy" in lower:
        return TraceLockedError(
            f"{path}: the trace is locked by another process (it is being written); wait for "
            "that process to finish, or analyze a copy"
        )
    column = re.search(r"no such column:\s*(\S+)", text)
    if column:
        return MissingColumnError(
            f"{path}: trace lacks column {column[1]} of table {_table_of(query)}; export the "
            "report again with `nsys export --type sqlite`"
        )
    table = re.search(r"no such table:\s*(\S+)", text)
    if table:
        return MissingTableError(
            f"{path}: trace lacks table {table[1]} (a view or table refers to it); export the "
            "report again with `nsys export --type sqlite`"
        )
    if "type mismatch" in lower:
        return CorruptTraceError(
            f"{path}: a column of table {_table_of(query)} mixes text and numbers ({text}); the "
            "export was edited or damaged. Export it again with `nsys export --type sqlite`."
        )
    if "permission" in lower or "readonly" in lower or "unable to open" in lower:
        return TraceAccessError(
            f"{path}: SQLite cannot open the trace ({text}); check its permissions"
        )
    return CorruptTraceError(_corrupt_message(path, exc))


def _corrupt_message(path: Path, exc: Exception) -> str:
    return (
        f"{path}: the SQLite file cannot be read ({exc}); it is truncated or damaged. "
        "Export it again with `nsys export --type sqlite -f true -o FILE.sqlite REPORT.nsys-rep`."
    )


def open_trace(path: str | Path) -> Trace:
    """Open an nsys SQLite export read-only; the file is never written, and no -wal, -shm or
    -journal file is created beside it.

    Raises:
        TraceNotFoundError: the path does not exist.
        TraceAccessError: permission denied, or not a regular file (a FIFO or device).
        WrongFileKindError: a .nsys-rep/.qdstrm or another non-SQLite file was given.
        CorruptTraceError: the file is truncated or damaged.
        TraceLockedError: another process is writing it.
        TraceTooLargeError: a compressed export would decompress past the size cap.
        MissingTableError: it is SQLite, but not an nsys export.
    """
    path = Path(path)
    try:
        info = path.stat()
    except FileNotFoundError:
        raise TraceNotFoundError(
            f"{path}: no such file. Give the path of an nsys SQLite export."
        ) from None
    except OSError as exc:
        raise TraceAccessError(f"{path}: cannot be read ({exc.strerror}).") from None
    if stat.S_ISDIR(info.st_mode):
        raise WrongFileKindError(f"{path}: is a directory, not an nsys SQLite export.")
    if not stat.S_ISREG(info.st_mode):
        raise TraceAccessError(
            f"{path}: is not a regular file (a FIFO, socket or device); give the path of an "
            "nsys SQLite export on disk."
        )
    try:
        db_path, scratch = _decompressed(path)
        with db_path.open("rb") as handle:
            magic = handle.read(len(SQLITE_MAGIC))
    except PermissionError:
        raise TraceAccessError(
            f"{path}: permission denied; make the file readable (`chmod u+r {path}`)."
        ) from None
    if magic != SQLITE_MAGIC:
        _remove_scratch(scratch)
        raise WrongFileKindError(_wrong_kind_message(path))
    if _is_wal(db_path) and _has_pending_wal(db_path):
        _remove_scratch(scratch)
        raise TraceLockedError(
            f"{path}: is in WAL mode with changes still in {db_path.name}-wal (another process "
            "may be writing it); let that process finish, or analyze a copy made with "
            "`sqlite3 FILE '.backup copy.sqlite'`."
        )
    try:
        conn = sqlite3.connect(
            _readonly_uri(db_path), uri=True, check_same_thread=False, timeout=1.0
        )
        conn.text_factory = lambda raw: raw.decode("utf-8", "replace")
        trace = Trace(path=path, _conn=conn, db_path=db_path)
        if scratch is not None:  # the decompressed copy goes when the Trace does
            weakref.finalize(trace, _remove_scratch, scratch)
        tables = trace.tables
    except sqlite3.Error as exc:
        _remove_scratch(scratch)
        raise _read_error(path, exc) from exc
    if not tables & {NVTX_TABLE, RUNTIME_TABLE, "StringIds", *GPU_OP_TABLES.values()}:
        raise MissingTableError(
            f"{path}: this SQLite file is not an Nsight Systems export (none of NVTX_EVENTS, "
            "CUPTI_ACTIVITY_KIND_*, StringIds). Export one with `nsys export --type sqlite`."
        )
    return trace


def _has_pending_wal(db_path: Path) -> bool:
    wal = db_path.with_name(db_path.name + "-wal")
    return wal.is_file() and wal.stat().st_size > 0


# Private decompressed copies alive in this process: removed with their Trace, and by
# `remove_scratch()` when the process is stopped by a signal.
_SCRATCH_DIRS: set[Path] = set()


def _remove_scratch(scratch: Path | None) -> None:
    if scratch is not None:
        shutil.rmtree(scratch, ignore_errors=True)
        _SCRATCH_DIRS.discard(scratch)


def scratch_dirs() -> frozenset[Path]:
    """The folders of this process's live decompressed copies."""
    return frozenset(_SCRATCH_DIRS)


def remove_scratch(keep: frozenset[Path] = frozenset()) -> None:
    """Remove this process's decompressed copies but those in `keep` (a CLI run removes what it
    made; a signal removes everything)."""
    for scratch in _SCRATCH_DIRS - keep:
        _remove_scratch(scratch)


def in_scratch(path: Path) -> bool:
    """True when `path` lies in one of this process's decompressed copies' folders."""
    target = path.resolve()
    return any(target.is_relative_to(d.resolve()) for d in _SCRATCH_DIRS)


def decompress_cap(compressed_bytes: int) -> int:
    """Most bytes a compressed export of this size may decompress to (`DECOMPRESS_CAP_ENV`
    overrides).

    Raises:
        TraceError: the environment variable is not a positive integer.
    """
    override = os.environ.get(DECOMPRESS_CAP_ENV)
    if override is not None:
        try:
            value = int(override)
        except ValueError:
            value = 0
        if value <= 0:
            raise TraceError(f"{DECOMPRESS_CAP_ENV}={override!r} must be a positive byte count")
        return value
    return max(DECOMPRESS_FLOOR_BYTES, DECOMPRESS_RATIO_CAP * compressed_bytes)


def _decompressed(path: Path) -> tuple[Path, Path | None]:
    """The SQLite file to open: `path` itself, or an .xz/.gz export decompressed to a private
    temporary folder that lives as long as the Trace. The copy stops at `decompress_cap` and
    must fit the free space of the temporary folder."""
    with path.open("rb") as handle:
        head = handle.read(8)
    kind = next((k for magic, k in COMPRESSED_MAGIC.items() if head.startswith(magic)), None)
    if kind is None:
        return path, None
    cap = decompress_cap(path.stat().st_size)
    declared = _xz_declared_size(path) if kind == "xz" else None
    if declared is not None and declared > cap:
        raise TraceTooLargeError(_over_cap_message(path, cap))
    # Registered before it exists, so a signal arriving in between still finds it.
    scratch = Path(tempfile.gettempdir()) / f"{SCRATCH_PREFIX}{secrets.token_hex(8)}"
    _SCRATCH_DIRS.add(scratch)
    try:
        scratch.mkdir(mode=0o700)
    except OSError as exc:
        _SCRATCH_DIRS.discard(scratch)
        raise TraceAccessError(
            f"{path}: no temporary folder to decompress it into ({exc}); set TMPDIR"
        ) from None
    target = scratch / "trace.sqlite"
    try:
        free = shutil.disk_usage(scratch).free
        if declared is not None and declared > free:
            raise TraceTooLargeError(_no_space_message(path, declared, free, scratch.parent))
        with (
            lzma.open(path) if kind == "xz" else gzip.open(path) as src,
            target.open("wb") as dst,
        ):
            written = 0
            while chunk := src.read(1 << 22):
                written += len(chunk)
                if written > cap:  # the declared size can lie, or be absent (gzip)
                    raise TraceTooLargeError(_over_cap_message(path, cap))
                if written > free:
                    raise TraceTooLargeError(_no_space_message(path, written, free, scratch.parent))
                dst.write(chunk)
    except OSError as exc:
        _remove_scratch(scratch)
        if exc.errno != errno.ENOSPC:
            raise _decompress_error(path, exc) from exc
        raise TraceTooLargeError(
            f"{path}: no space left in {scratch.parent} to decompress it; set TMPDIR to a "
            "larger disk or decompress it yourself"
        ) from None
    except (EOFError, lzma.LZMAError) as exc:
        _remove_scratch(scratch)
        raise _decompress_error(path, exc) from exc
    except BaseException:
        _remove_scratch(scratch)
        raise
    return target, scratch


def _over_cap_message(path: Path, cap: int) -> str:
    return (
        f"{path}: decompresses to more than {cap:,} bytes, the cap for a "
        f"{path.stat().st_size:,}-byte file; if it is a real trace, raise the cap with "
        f"{DECOMPRESS_CAP_ENV}=BYTES or decompress it yourself"
    )


def _no_space_message(path: Path, needed: int, free: int, folder: Path) -> str:
    return (
        f"{path}: decompressing it needs at least {needed:,} bytes but {folder} has {free:,} "
        "free; set TMPDIR to a larger disk or decompress it yourself"
    )


def _xz_declared_size(path: Path) -> int | None:
    """Uncompressed size the index of the file's last .xz stream declares (None when the tail
    is not a well-formed index): known before a byte is written."""
    size = path.stat().st_size
    if size < 24:
        return None
    with path.open("rb") as handle:
        handle.seek(size - 12)
        footer = handle.read(12)
        if footer[-2:] != b"YZ":
            return None
        index_size = (int.from_bytes(footer[4:8], "little") + 1) * 4
        if index_size > size - 24:
            return None
        handle.seek(size - 12 - index_size)
        index = handle.read(index_size)
    if not index or index[0] != 0:
        return None
    try:
        n_records, pos = _xz_varint(index, 1)
        total = 0
        for _ in range(n_records):  # one record per xz block: a handful, not per row
            _, pos = _xz_varint(index, pos)
            uncompressed, pos = _xz_varint(index, pos)
            total += uncompressed
    except IndexError:
        return None
    return total


def _xz_varint(data: bytes, pos: int) -> tuple[int, int]:
    """The .xz multibyte integer at `pos` and the position after it."""
    value, shift = 0, 0
    while True:
        byte = data[pos]
        value |= (byte & 0x7F) << shift
        pos += 1
        if byte < 0x80 or shift > 56:
            return value, pos
        shift += 7


def _decompress_error(path: Path, exc: BaseException) -> CorruptTraceError:
    return CorruptTraceError(
        f"{path}: the compressed export cannot be decompressed ({exc}); it is truncated or "
        "damaged. Compress it again (`xz -k FILE.sqlite`) or give the plain .sqlite."
    )


def _wrong_kind_message(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in (".nsys-rep", ".qdrep"):
        return (
            f"{path}: is an Nsight Systems report, not its SQLite export. Export it first: "
            f"`nsys export --type sqlite -o {path.with_suffix('.sqlite')} {path}`."
        )
    if suffix == ".qdstrm":
        return (
            f"{path}: is a raw .qdstrm capture stream. Let nsys finish it into a .nsys-rep "
            "(`QdstrmImporter -i FILE.qdstrm`), then `nsys export --type sqlite` that report."
        )
    return f"{path}: is not an SQLite file. Give the `.sqlite` export of an nsys report."
