"""PyTorch profiler (Kineto) Chrome traces, read as the nsys export tables they correspond to.

A trace written by `torch.profiler` (`export_chrome_trace`, `tensorboard_trace_handler`: `.json`,
`.json.gz`, `*.pt.trace.json.gz`) is one JSON object: metadata keys (`deviceProperties`, the
`add_metadata_json` keys), then `traceEvents`. It is parsed once, streamed (ijson), into the
tables an nsys export holds, written batch by batch as Arrow IPC streams into a private temporary
folder that lives as long as the Trace; `TableTrace` then reads them as it reads an arrowdir, so
every frame, batch read and rule downstream is the nsys one. What becomes what:

- `user_annotation` (`record_function` spans, ph X on a CPU thread) → NVTX push/pop ranges on
  that thread, in the default domain "" and without payload;
- `cuda_runtime`, `cuda_driver` → CUDA API calls (name, thread, `args.correlation`);
- `kernel`, `gpu_memcpy`, `gpu_memset` → GPU ops on `args.device` and `args.stream`, joined to
  their launch by `args.correlation`, launched by the process of the API calls (Kineto writes
  one file per process: a GPU event's own pid is its device);
- `cuda_sync` → CUPTI synchronization records (joined to their API call by correlation);
- `deviceProperties` → the GPUs (name, SM count, memory); every other top-level key before
  `traceEvents` (the `add_metadata_json` keys among them) → an NVTX mark whose text is the key
  and whose JSON is the value, so the runner's run metadata is found as in an nsys trace.

Times: Kineto writes µs as decimal numbers with up to 3 decimals (ns resolution) since the
epoch or boot; at 10^15 µs and more that is 19 significant digits, more than a float holds. They
are parsed as exact decimals (ijson's Decimal) and scaled by 1000 to integer ns; digits below
1 ns, which Kineto never writes, are dropped. An op's end is its start plus its `dur`, each
converted so.

The event tables are sorted by start when written out (Kineto writes CPU events, then GPU
activity buffer by buffer), so the one-pass engine can read them in batches; the sort holds one
table at a time in memory (about 70 bytes a kernel).
"""

from __future__ import annotations

import gzip
import json
import weakref
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path
from typing import IO, Any, Final

import ijson
import polars as pl
import pyarrow as pa
import pyarrow.ipc as ipc

from llm_perf_opt.errors import CorruptTraceError, TraceAccessError, WrongFileKindError
from llm_perf_opt.trace.columns import (
    GPU_OP_TABLES,
    GPU_TABLE,
    NVTX_MARK_TYPES,
    NVTX_PUSHPOP_TYPES,
    NVTX_TABLE,
    RUNTIME_TABLE,
    SYNC_TABLE,
    TID_BITS,
)
from llm_perf_opt.trace.files import new_scratch_dir, remove_scratch_dir
from llm_perf_opt.trace.table_dirs import TableTrace, _ArrowDir

EXPORT_COMMAND: Final = "torch.profiler's export_chrome_trace"
CAPTURE_HINT: Final = (
    "Profile with `torch.profiler.profile(activities=[ProfilerActivity.CPU, "
    "ProfilerActivity.CUDA])` and wrap the stages in `record_function` spans."
)
GZIP_MAGIC: Final = b"\x1f\x8b"
# Events buffered per table before they are converted and written out.
SPILL_ROWS: Final = 1 << 14
EVENTS_PREFIX: Final = "traceEvents"
PART_SUFFIX: Final = ".part.arrow"
# Top-level keys Kineto itself writes that say nothing the analysis uses.
KINETO_KEYS: Final = frozenset(
    {"schemaVersion", "deviceProperties", "distributedInfo", "displayTimeUnit", "traceName"}
)
_MARK_TYPE: Final = NVTX_MARK_TYPES[0]
_RANGE_TYPE: Final = NVTX_PUSHPOP_TYPES[0]
_I64: Final = pa.int64()
_STR: Final = pa.string()

# The nsys tables written, their columns (nsys names) and the columns they are sorted by.
TABLES: Final[dict[str, tuple[pa.Schema, tuple[str, ...]]]] = {
    GPU_OP_TABLES["kernel"]: (
        pa.schema(
            [(c, _I64) for c in ("start", "end", "deviceId", "streamId", "correlationId")]
            + [("shortName", _I64), ("demangledName", _I64)]
        ),
        ("start",),
    ),
    **{
        GPU_OP_TABLES[kind]: (
            pa.schema(
                [(c, _I64) for c in ("start", "end", "deviceId", "streamId", "correlationId")]
                + [("bytes", _I64)]
            ),
            ("start",),
        )
        for kind in ("memcpy", "memset")
    },
    RUNTIME_TABLE: (
        pa.schema([(c, _I64) for c in ("start", "end", "globalTid", "correlationId", "nameId")]),
        ("start",),
    ),
    NVTX_TABLE: (
        pa.schema(
            [
                ("start", _I64),
                ("end", _I64),
                ("eventType", _I64),
                ("text", _STR),
                ("globalTid", _I64),
                ("jsonText", _STR),
            ]
        ),
        ("start", "end"),
    ),
    SYNC_TABLE: (
        pa.schema([(c, _I64) for c in ("start", "end", "correlationId", "streamId")]),
        ("start",),
    ),
}
# Kineto categories (older versions spell some capitalized) → the table their events go to.
CATEGORIES: Final = {
    "user_annotation": NVTX_TABLE,
    "cuda_runtime": RUNTIME_TABLE,
    "cuda_driver": RUNTIME_TABLE,
    "Runtime": RUNTIME_TABLE,
    "kernel": GPU_OP_TABLES["kernel"],
    "Kernel": GPU_OP_TABLES["kernel"],
    "gpu_memcpy": GPU_OP_TABLES["memcpy"],
    "Memcpy": GPU_OP_TABLES["memcpy"],
    "gpu_memset": GPU_OP_TABLES["memset"],
    "Memset": GPU_OP_TABLES["memset"],
    "cuda_sync": SYNC_TABLE,
}
# The tables whose rows carry the launching process's globalPid, added once it is known.
_LAUNCHED: Final = (*GPU_OP_TABLES.values(), SYNC_TABLE)


class _BadValueError(ValueError):
    """An event field holds what its column cannot (text for a stream, an id past int64)."""


class KinetoTrace(TableTrace):
    """A PyTorch profiler trace, read through the nsys tables it was converted into. Its ranges
    have no NVTX domain, so stage names match in any domain."""

    range_domains = False
    capture_hint = CAPTURE_HINT


def is_json_object(head: bytes) -> bool:
    """Whether a file's first bytes (decompressed) open a JSON object."""
    return head.lstrip(b" \t\r\n\xef\xbb\xbf").startswith(b"{")


def json_head(path: Path, size: int = 64) -> bytes:
    """The first `size` bytes of `path`, gunzipped when it is gzip-compressed (empty when the
    compression is damaged: then it is no profiler trace to tell apart)."""
    try:
        with _opened(path) as handle:
            return handle.read(size)
    except (EOFError, gzip.BadGzipFile, zlib.error):
        return b""


def open_kineto(path: Path) -> KinetoTrace:
    """Convert the profiler trace at `path` (plain or gzip JSON) into nsys tables in a private
    temporary folder and open them; the folder is removed with the Trace.

    Raises:
        WrongFileKindError: the JSON is not a profiler trace (no `traceEvents`, or none of the
            profiler's event categories).
        CorruptTraceError: the JSON or its compression is truncated or damaged.
        TraceAccessError: permission denied, or no temporary folder.
    """
    scratch = new_scratch_dir(path, "convert it into")
    try:
        with _reading(path):
            head = _head_values(path)
            if head is None:
                raise WrongFileKindError(
                    f"{path}: is JSON but not a PyTorch profiler trace (no traceEvents array). "
                    "Give a trace written by torch.profiler (export_chrome_trace or "
                    "tensorboard_trace_handler), or an nsys export."
                )
            converter = _Converter(scratch)
            with _opened(path) as handle:
                for event in ijson.items(handle, f"{EVENTS_PREFIX}.item"):
                    converter.add(event)
            files = converter.finish(head)
    except BaseException:
        remove_scratch_dir(scratch)
        raise
    if not files.keys() & {NVTX_TABLE, RUNTIME_TABLE, *GPU_OP_TABLES.values()}:
        remove_scratch_dir(scratch)
        raise WrongFileKindError(
            f"{path}: is a Chrome trace without PyTorch profiler events (no user_annotation, "
            "cuda_runtime, kernel, gpu_memcpy or gpu_memset events). Give a trace written by "
            "torch.profiler, or an nsys export."
        )
    trace = KinetoTrace(path, _ArrowDir(files), EXPORT_COMMAND)
    weakref.finalize(trace, remove_scratch_dir, scratch)
    return trace


@contextmanager
def _opened(path: Path) -> Iterator[IO[bytes] | gzip.GzipFile]:
    """`path` opened for binary reading, through gzip when it starts with gzip's magic."""
    with path.open("rb") as raw:
        gzipped = raw.read(len(GZIP_MAGIC)) == GZIP_MAGIC
        raw.seek(0)
        if not gzipped:
            yield raw
            return
        with gzip.GzipFile(fileobj=raw) as unzipped:
            yield unzipped


@contextmanager
def _reading(path: Path) -> Iterator[None]:
    """Parse and decompression failures as one-line trace errors."""
    try:
        yield
    except PermissionError:
        raise TraceAccessError(
            f"{path}: permission denied; make it readable (`chmod u+r {path}`)."
        ) from None
    except (ijson.JSONError, EOFError, gzip.BadGzipFile, zlib.error, UnicodeDecodeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CorruptTraceError(
            f"{path}: the profiler trace cannot be parsed ({first}); it is truncated or "
            f"damaged. Write it again with {EXPORT_COMMAND}."
        ) from None
    except _BadValueError as exc:
        raise CorruptTraceError(
            f"{path}: a profiler event holds a value of the wrong type ({exc}); the trace was "
            f"edited or damaged. Write it again with {EXPORT_COMMAND}."
        ) from None


def _head_values(path: Path) -> dict[str, Any] | None:
    """The top-level values before `traceEvents` (None when there is no `traceEvents`): where
    Kineto writes `deviceProperties` and the `add_metadata_json` keys."""
    values: dict[str, Any] = {}
    builder: ijson.ObjectBuilder | None = None
    key = ""
    with _opened(path) as handle:
        for prefix, event, value in ijson.parse(handle):
            if builder is not None:
                builder.event(event, value)
                # a value is whole at its own prefix's closing (or only) event
                if prefix == key and event not in ("start_map", "start_array", "map_key"):
                    values[key] = builder.value
                    builder = None
            elif prefix == "" and event == "map_key":
                if value == EVENTS_PREFIX:
                    return values
                key = value
                builder = ijson.ObjectBuilder()
    return None


def _ns(values: list[Any]) -> list[int | None]:
    """Exact integer ns of µs values parsed as int or Decimal (anything else: None, a row the
    reader leaves out with a counted warning)."""
    return [int(v * 1000) if type(v) is Decimal or type(v) is int else None for v in values]


def _global_tids(events: list[dict[str, Any]]) -> list[int | None]:
    """nsys's globalTid layout of each event's OS pid and tid (None for the profiler's named
    lanes, whose pid or tid is text)."""
    mask = (1 << TID_BITS) - 1
    return [
        (pid << TID_BITS) | (tid & mask) if type(pid) is int and type(tid) is int else None
        for pid, tid in ((e.get("pid"), e.get("tid")) for e in events)
    ]


def _times(events: list[dict[str, Any]]) -> tuple[list[int | None], list[int | None]]:
    """(start, end) ns of X events: `ts`, and `ts + dur` (None without `dur`)."""
    starts = _ns([e.get("ts") for e in events])
    durs = _ns([e.get("dur") for e in events])
    ends = [None if s is None or d is None else s + d for s, d in zip(starts, durs, strict=True)]
    return starts, ends


def _args(events: list[dict[str, Any]], key: str) -> list[Any]:
    return [(e.get("args") or {}).get(key) for e in events]


class _Spill:
    """One table's events, buffered and written as record batches of an Arrow IPC stream."""

    def __init__(self, path: Path, schema: pa.Schema) -> None:
        self.path = path
        self.schema = schema
        self.events: list[dict[str, Any]] = []
        self.written = 0
        self._writer: ipc.RecordBatchStreamWriter | None = None

    def write(self, columns: list[list[Any]]) -> None:
        arrays = []
        for column, field in zip(columns, self.schema, strict=True):
            try:
                arrays.append(pa.array(column, type=field.type))
            except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
                table = self.path.name.removesuffix(PART_SUFFIX)
                raise _BadValueError(f"{field.name} of {table}: {exc}") from None
        batch = pa.record_batch(arrays, schema=self.schema)
        if self._writer is None:
            self._writer = ipc.new_stream(str(self.path), self.schema)
        self._writer.write_batch(batch)
        self.written += batch.num_rows

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


class _Converter:
    """Takes the trace's events one at a time and writes the nsys tables they make, a batch of
    each table's events converted column by column."""

    def __init__(self, scratch: Path) -> None:
        self.scratch = scratch
        self.spills = {
            table: _Spill(scratch / f"{table}{PART_SUFFIX}", schema)
            for table, (schema, _) in TABLES.items()
        }
        self.strings: dict[str, int] = {}
        self.process_names: dict[int, str] = {}
        self.thread_names: dict[int, str] = {}
        self._columns: dict[str, Callable[[list[dict[str, Any]]], list[list[Any]]]] = {
            NVTX_TABLE: self._ranges,
            RUNTIME_TABLE: self._api_calls,
            GPU_OP_TABLES["kernel"]: self._kernels,
            GPU_OP_TABLES["memcpy"]: self._copies,
            GPU_OP_TABLES["memset"]: self._copies,
            SYNC_TABLE: self._syncs,
        }
        self._by_category = {cat: self.spills[table] for cat, table in CATEGORIES.items()}

    def add(self, event: Any) -> None:
        """One element of `traceEvents` (what is not an object is skipped)."""
        if type(event) is not dict:
            return
        ph = event.get("ph")
        if ph == "X":
            spill = self._by_category.get(event.get("cat", ""))
            if spill is not None:
                spill.events.append(event)
                if len(spill.events) >= SPILL_ROWS:
                    self._flush(spill)
        elif ph == "M":
            self._names(event)

    def _flush(self, spill: _Spill) -> None:
        if spill.events:
            table = spill.path.name.removesuffix(PART_SUFFIX)
            spill.write(self._columns[table](spill.events))
            spill.events = []

    def _ids(self, names: list[Any]) -> list[int]:
        """StringIds ids of the names, new ones added."""
        strings = self.strings
        return [strings.setdefault(str(n), len(strings)) for n in names]

    def _ranges(self, events: list[dict[str, Any]]) -> list[list[Any]]:
        starts, ends = _times(events)
        n = len(events)
        names = [e.get("name") for e in events]
        return [starts, ends, [_RANGE_TYPE] * n, names, _global_tids(events), [None] * n]

    def _api_calls(self, events: list[dict[str, Any]]) -> list[list[Any]]:
        starts, ends = _times(events)
        names = self._ids([e.get("name", "") for e in events])
        return [starts, ends, _global_tids(events), _args(events, "correlation"), names]

    def _kernels(self, events: list[dict[str, Any]]) -> list[list[Any]]:
        names = self._ids([e.get("name", "") for e in events])
        return [*self._ops(events), names, names]

    def _copies(self, events: list[dict[str, Any]]) -> list[list[Any]]:
        return [*self._ops(events), _args(events, "bytes")]

    def _ops(self, events: list[dict[str, Any]]) -> list[list[Any]]:
        starts, ends = _times(events)
        where = [_args(events, key) for key in ("device", "stream", "correlation")]
        return [starts, ends, *where]

    def _syncs(self, events: list[dict[str, Any]]) -> list[list[Any]]:
        starts, ends = _times(events)
        return [starts, ends, _args(events, "correlation"), _args(events, "stream")]

    def _names(self, event: dict[str, Any]) -> None:
        name = (event.get("args") or {}).get("name")
        if not isinstance(name, str):
            return
        if event.get("name") == "process_name" and type(event.get("pid")) is int:
            self.process_names[event["pid"]] = name
        elif event.get("name") == "thread_name":
            (tid,) = _global_tids([event])
            if tid is not None:
                self.thread_names[tid] = name

    def finish(self, head: dict[str, Any]) -> dict[str, Path]:
        """Write every table out; returns table name → its Arrow IPC stream file."""
        for spill in self.spills.values():
            self._flush(spill)
            spill.close()
        pid = self._launch_pid()
        files: dict[str, Path] = {}
        last_ns = 0
        for table, (_, order) in TABLES.items():
            spill = self.spills[table]
            if not spill.written:
                continue
            frame = _mapped(spill.path)
            if table in _LAUNCHED:
                frame = frame.with_columns(globalPid=pl.lit(pid << TID_BITS, pl.Int64))
            if table == NVTX_TABLE:  # the marks at the end of the trace, as the runner's
                frame = pl.concat([frame, _marks(head, pid, last_ns)], how="vertical")
            frame = frame.sort(list(order), descending=[False, *([True] * (len(order) - 1))])
            last_ns = max(last_ns, frame.select(pl.col("end").max()).item() or 0)
            files[table] = self._write(table, frame)
            spill.path.unlink()
        files |= self._small_tables(head, pid)
        return files

    def _launch_pid(self) -> int:
        """The process that made the CUDA API calls (the most calls, if several did)."""
        spill = self.spills[RUNTIME_TABLE]
        sources = [(RUNTIME_TABLE, spill)] if spill.written else []
        if not sources and self.spills[NVTX_TABLE].written:
            sources = [(NVTX_TABLE, self.spills[NVTX_TABLE])]
        if not sources:
            return 0
        tids = _mapped(sources[0][1].path)["globalTid"].drop_nulls()
        pids = (tids // (1 << TID_BITS)).mode().sort()
        return int(pids[0]) if pids.len() else 0

    def _small_tables(self, head: dict[str, Any], pid: int) -> dict[str, Path]:
        """The processes, thread names, GPUs and, last, StringIds."""
        threads = dict(
            zip(self.thread_names, self._ids(list(self.thread_names.values())), strict=True)
        )
        processes = {p: n for p, n in self.process_names.items() if p == pid}
        frames = {
            "PROCESSES": pl.DataFrame(
                {
                    "globalPid": [p << TID_BITS for p in processes],
                    "pid": list(processes),
                    "name": list(processes.values()),
                },
                schema={"globalPid": pl.Int64, "pid": pl.Int64, "name": pl.String},
            ),
            "ThreadNames": pl.DataFrame(
                {"globalTid": list(threads), "nameId": list(threads.values())},
                schema={"globalTid": pl.Int64, "nameId": pl.Int64},
            ),
            GPU_TABLE: _gpus(head.get("deviceProperties")),
            "StringIds": pl.DataFrame(
                {"id": list(self.strings.values()), "value": list(self.strings)},
                schema={"id": pl.Int64, "value": pl.String},
            ),
        }
        return {table: self._write(table, frame) for table, frame in frames.items()}

    def _write(self, table: str, frame: pl.DataFrame) -> Path:
        path = self.scratch / f"{table}.arrow"
        with ipc.new_stream(str(path), frame.to_arrow().schema) as writer:
            writer.write_table(frame.to_arrow())
        return path


def _mapped(path: Path) -> pl.DataFrame:
    """A spilled table, memory-mapped."""
    with ipc.open_stream(pa.memory_map(str(path))) as reader:
        frame = pl.from_arrow(reader.read_all())
    assert isinstance(frame, pl.DataFrame)
    return frame


def _marks(head: dict[str, Any], pid: int, at_ns: int) -> pl.DataFrame:
    """The top-level metadata keys as NVTX marks of the launching process at `at_ns` (text:
    the key, JSON: the value)."""
    keys = [k for k in head if k not in KINETO_KEYS]
    n = len(keys)
    columns = {
        "start": [at_ns] * n,
        "end": [None] * n,
        "eventType": [_MARK_TYPE] * n,
        "text": keys,
        "globalTid": [pid << TID_BITS] * n,
        "jsonText": [_json_text(head[k]) for k in keys],
    }
    frame = pl.from_arrow(pa.table(columns, schema=TABLES[NVTX_TABLE][0]))
    assert isinstance(frame, pl.DataFrame)
    return frame


def _json_text(value: Any) -> str:
    """Compact JSON of a parsed value (decimals written back as the floats they denote)."""
    return json.dumps(value, separators=(",", ":"), sort_keys=True, default=float)


def _gpus(properties: Any) -> pl.DataFrame:
    """TARGET_INFO_GPU rows from Kineto's `deviceProperties` (no clock or memory bandwidth)."""
    rows = [p for p in properties or [] if isinstance(p, dict)]

    def column(key: str) -> list[Any]:
        return [p.get(key) for p in rows]

    return pl.DataFrame(
        {
            "id": column("id"),
            "name": column("name"),
            "smCount": column("numSms"),
            "totalMemory": column("totalGlobalMem"),
            "computeMajor": column("computeMajor"),
            "computeMinor": column("computeMinor"),
        },
        schema={
            "id": pl.Int64,
            "name": pl.String,
            "smCount": pl.Int64,
            "totalMemory": pl.Int64,
            "computeMajor": pl.Int64,
            "computeMinor": pl.Int64,
        },
        strict=False,
    )
