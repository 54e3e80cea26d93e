"""What the reader takes from an nsys export, declared once for every backend.

The tables and columns each frame comes from (`TableRead`, `Field`), the columns without which a
table cannot be read (`REQUIRED_COLUMNS`), the schemas of the frames the reader returns, and the
fixed ids of the nsys schema (event types, the globalTid layout).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import polars as pl
from polars.datatypes import DataType

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

# A thread with more open (never ended) ranges than this was not cut short mid-range: its open
# ranges are dropped instead of all nesting to the end of the trace.
MAX_OPEN_RANGES_PER_THREAD: Final = 32

# ENUM_NSYS_EVENT_TYPE ids (stable across versions).
NVTX_MARK_TYPES: Final = (34, 65)
NVTX_PUSHPOP_TYPES: Final = (59, 70)
NVTX_STARTEND_TYPES: Final = (60, 71)
NVTX_RANGE_TYPES: Final = NVTX_PUSHPOP_TYPES + NVTX_STARTEND_TYPES
NVTX_DOMAIN_CREATE: Final = 75

# globalTid layout <HW:8><VM:8><PID:24><TID:24>: the process key keeps HW, VM and PID.
TID_BITS: Final = 24

GPU_OP_TABLES: Final = {
    "kernel": "CUPTI_ACTIVITY_KIND_KERNEL",
    "memcpy": "CUPTI_ACTIVITY_KIND_MEMCPY",
    "memset": "CUPTI_ACTIVITY_KIND_MEMSET",
    # A CUDA graph replay traced whole (nsys --cuda-graph-trace=graph, its default): one row per
    # replay, its kernels in no other table.
    "graph": "CUPTI_ACTIVITY_KIND_GRAPH_TRACE",
}
# The op kinds that compute: without either table a trace's GPU time is copies only.
COMPUTE_OP_KINDS: Final = ("kernel", "graph")
RUNTIME_TABLE: Final = "CUPTI_ACTIVITY_KIND_RUNTIME"
SYNC_TABLE: Final = "CUPTI_ACTIVITY_KIND_SYNCHRONIZATION"
NVTX_TABLE: Final = "NVTX_EVENTS"
GPU_TABLE: Final = "TARGET_INFO_GPU"
# Export metadata: META_DATA_EXPORT since 2024, EXPORT_META_DATA in 2022.4.
META_TABLES: Final = ("META_DATA_EXPORT", "EXPORT_META_DATA")
# An export holds at least one of these; a file or folder with none is not an nsys export.
EXPORT_MARKERS: Final = frozenset({NVTX_TABLE, RUNTIME_TABLE, "StringIds", *GPU_OP_TABLES.values()})

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
# `Trace.api_call_batches`: the API calls with their name's StringIds id, names not resolved.
API_CALL_BATCH_SCHEMA: Final = pl.Schema([*API_CALLS_SCHEMA.items(), ("name_id", pl.Int64())])
NVTX_MARKS_SCHEMA: Final = pl.Schema(
    {
        "start_ns": pl.Int64,
        "name": pl.String,
        "domain": pl.String,
        "pid": pl.Int64,
        "tid": pl.Int64,
        "json_text": pl.String,
    }
)


@dataclass(frozen=True)
class Field:
    """One column of a read: frame column `name` of `dtype`, the first non-null of the `sources`
    the table has (null when it has none of them). `convert`: values stored as another type are
    converted to `dtype` (SQLite's CAST) instead of refused as damage."""

    name: str
    dtype: DataType
    sources: tuple[str, ...] = ()
    convert: bool = False


@dataclass(frozen=True)
class TableRead:
    """The columns one frame takes from one table.

    `row_id` names a column holding the row's position in the export (SQLite's rowid, from 1)
    plus `row_id_offset`; `event_types` keeps only rows with one of those `eventType`s;
    `order_by` is a source column to sort by ("rowid": the export's own order).
    """

    table: str
    fields: tuple[Field, ...]
    row_id: str | None = None
    row_id_offset: int = 0
    event_types: tuple[int, ...] | None = None
    order_by: str | None = None

    @property
    def schema(self) -> dict[str, DataType]:
        """Frame column → dtype, the row id first."""
        head = {self.row_id: pl.Int64()} if self.row_id else {}
        return head | {f.name: f.dtype for f in self.fields}

    def sources(self, present: frozenset[str] | set[str]) -> list[str]:
        """The columns of the table this read needs, of those `present`."""
        wanted = {s for f in self.fields for s in f.sources}
        wanted |= {c for c in ("eventType", self.order_by) if c and c != "rowid"}
        return [c for c in sorted(wanted) if c in present]


def _fields(dtype: DataType, *pairs: tuple[str, str], convert: bool = False) -> tuple[Field, ...]:
    """Fields of one dtype from (frame column, source column) pairs."""
    return tuple(Field(name, dtype, (src,), convert) for name, src in pairs)


STRING_IDS_READ: Final = TableRead(
    "StringIds", (Field("id", pl.Int64(), ("id",)), Field("value", pl.String(), ("value",)))
)
NVTX_INT_COLUMNS: Final = (
    "end", "rangeId", "category", "textId", "domainId", "globalTid", "endGlobalTid",
    "uint64Value", "int64Value", "uint32Value", "int32Value", "jsonTextId",
)  # fmt: skip


def nvtx_read(event_types: tuple[int, ...]) -> TableRead:
    """NVTX_EVENTS rows of these event types, in export order, under their source names."""
    fields = (
        Field("start", pl.Int64(), ("start",), convert=True),
        Field("eventType", pl.Int64(), ("eventType",), convert=True),
        Field("text", pl.String(), ("text",)),
        Field("jsonText", pl.String(), ("jsonText",)),
        Field("doubleValue", pl.Float64(), ("doubleValue",), convert=True),
        Field("floatValue", pl.Float64(), ("floatValue",), convert=True),
        *_fields(pl.Int64(), *((c, c) for c in NVTX_INT_COLUMNS), convert=True),
    )
    return TableRead(
        NVTX_TABLE, fields, row_id="event_id", event_types=event_types, order_by="rowid"
    )


def gpu_op_columns(*, lean: bool) -> list[str]:
    """Columns of `gpu_ops(lean=...)`, in order."""
    return [c for c in GPU_OPS_SCHEMA.names() if not lean or c not in LEAN_DROPS]


def gpu_op_read(kind: str, *, lean: bool) -> TableRead:
    """One op table's rows; `op_id` is kind index · 2⁴⁰ + rowid, unique across the kinds."""
    wanted = gpu_op_columns(lean=lean)
    required = _fields(pl.Int32(), ("device_id", "deviceId"), ("stream_id", "streamId")) + _fields(
        pl.Int64(),
        ("start_ns", "start"),
        ("end_ns", "end"),
        ("global_pid", "globalPid"),
        ("correlation_id", "correlationId"),
    )
    # Kernels are named by their demangled name where the export has one.
    names = ("demangledName", "shortName") if kind == "kernel" else ()
    optional = (
        Field("name_id", pl.Int32(), names, convert=True),
        Field("graph_id", pl.UInt32(), ("graphId",), convert=True),
        Field("graph_node_id", pl.Int64(), ("graphNodeId",), convert=True),
        Field("bytes", pl.Int64(), ("bytes",), convert=True),
    )
    return TableRead(
        GPU_OP_TABLES[kind],
        required + tuple(f for f in optional if f.name in wanted),
        row_id="op_id",
        row_id_offset=list(GPU_OP_TABLES).index(kind) << 40,
    )


def api_read(*, with_names: bool, with_end: bool) -> TableRead:
    """CUDA API calls: the launching thread, the correlation id and the time."""
    pairs = [
        ("global_tid", "globalTid"),
        ("correlation_id", "correlationId"),
        ("start_ns", "start"),
    ]
    pairs += [("end_ns", "end")] if with_end else []
    pairs += [("name_id", "nameId")] if with_names else []
    return TableRead(RUNTIME_TABLE, _fields(pl.Int64(), *pairs))


SYNC_READ: Final = TableRead(
    SYNC_TABLE,
    _fields(
        pl.Int64(),
        ("global_pid", "globalPid"),
        ("correlation_id", "correlationId"),
        ("start_ns", "start"),
        ("end_ns", "end"),
        ("stream_id", "streamId"),
        ("sync_type", "syncType"),
    ),
)
GPU_INFO_READ: Final = TableRead(
    GPU_TABLE,
    (
        Field("device_id", pl.Int64(), ("id",)),
        Field("name", pl.String(), ("name",)),
        Field("sm_count", pl.Int64(), ("smCount",)),
        Field("clock_hz", pl.Int64(), ("clockRate",)),
        Field("memory_bandwidth_Bps", pl.Int64(), ("memoryBandwidth",)),
        Field("total_memory_B", pl.Int64(), ("totalMemory",)),
        Field("chip_name", pl.String(), ("chipName",)),
        Field("compute_major", pl.Int64(), ("computeMajor",)),
        Field("compute_minor", pl.Int64(), ("computeMinor",)),
    ),
    order_by="id",
)
PROCESSES_READ: Final = TableRead(
    "PROCESSES",
    (
        Field("global_pid", pl.Int64(), ("globalPid",)),
        Field("pid", pl.Int64(), ("pid",)),
        Field("name", pl.String(), ("name",)),
    ),
)
THREADS_READ: Final = TableRead(
    "ThreadNames", _fields(pl.Int64(), ("global_tid", "globalTid"), ("nameId", "nameId"))
)


def meta_read(table: str) -> TableRead:
    """Name → value rows of an export-metadata table."""
    return TableRead(table, _fields(pl.String(), ("name", "name"), ("value", "value")))


def pid_of(global_id: pl.Expr) -> pl.Expr:
    """Operating-system pid from a serialized globalTid/globalPid."""
    return (global_id // (1 << TID_BITS)) % (1 << TID_BITS)


def tid_of(global_tid: pl.Expr) -> pl.Expr:
    """Operating-system tid from a serialized globalTid."""
    return global_tid % (1 << TID_BITS)


def process_key(global_tid: pl.Expr) -> pl.Expr:
    """globalPid of a globalTid: the HW, VM and PID fields, TID zeroed."""
    return (global_tid // (1 << TID_BITS)) * (1 << TID_BITS)
