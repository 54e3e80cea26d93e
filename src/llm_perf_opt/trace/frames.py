"""`Trace`: the frames every backend returns, resolved the same way from the export's tables.

A backend (`sqlite.SqliteTrace`, `tables.TableTrace`) only reads declared columns of one table
(`columns.TableRead`) into a frame of their dtypes, whole or in row-order batches; names, domains,
ranges, the GPU-op union and the rows left out as impossible are resolved here, once.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from functools import cached_property
from pathlib import Path
from typing import Final

import polars as pl

from llm_perf_opt.errors import (
    MissingColumnError,
    NoGpuOpsError,
    NoNvtxEventsError,
    UnorderedTableError,
)
from llm_perf_opt.trace.columns import (
    API_CALL_BATCH_SCHEMA,
    API_CALLS_SCHEMA,
    GPU_INFO_READ,
    GPU_OP_TABLES,
    GPU_OPS_SCHEMA,
    MAX_OPEN_RANGES_PER_THREAD,
    META_TABLES,
    NVTX_DOMAIN_CREATE,
    NVTX_MARK_TYPES,
    NVTX_MARKS_SCHEMA,
    NVTX_PUSHPOP_TYPES,
    NVTX_RANGE_TYPES,
    NVTX_RANGES_SCHEMA,
    NVTX_TABLE,
    OP_KINDS,
    PROCESSES_READ,
    REQUIRED_COLUMNS,
    RUNTIME_TABLE,
    STRING_IDS_READ,
    SYNC_READ,
    THREADS_READ,
    TableRead,
    api_read,
    gpu_op_columns,
    gpu_op_read,
    meta_read,
    nvtx_read,
    pid_of,
    process_key,
    tid_of,
)

# GPU ops that cannot be real, left out of `gpu_ops()` and its batches with a counted warning.
OP_ROW_RULES = (
    (
        pl.any_horizontal(pl.col("start_ns", "end_ns", "device_id", "global_pid").is_null()),
        "GPU ops without a start, end, device or process",
    ),
    (pl.col("end_ns") < pl.col("start_ns"), "GPU ops ending before they start"),
)


class Trace(ABC):
    """An open, read-only nsys export. Use `open_trace` to make one.

    Attributes:
        path: the export as given (a file or a folder).
        export_command: the nsys command that writes this kind of export, named in errors that
            ask for a new one.
        warnings: one line per kind of impossible row left out while reading.
        range_domains: whether the ranges have NVTX domains (a profiler trace's spans have
            none: a stage name then matches in any domain).
        capture_hint: how to capture a trace with ranges and GPU work, for errors.
    """

    range_domains: bool = True
    capture_hint: str = (
        "Capture with `nsys profile -t cuda,nvtx ...` and mark the stages with NVTX ranges."
    )

    def __init__(self, path: Path, export_command: str) -> None:
        self.path = path
        self.export_command = export_command
        self.warnings: list[str] = []
        self._prefetched: dict[str, Future[pl.DataFrame]] = {}

    # -- what a backend reads ---------------------------------------------------------------------
    @abstractmethod
    def _table_names(self) -> frozenset[str]:
        """Names of the export's tables."""

    @abstractmethod
    def _column_names(self, table: str) -> tuple[str, ...]:
        """Column names of a table the export has."""

    @abstractmethod
    def _read(self, read: TableRead) -> pl.DataFrame:
        """The rows of `read.table` as a frame of `read.schema`."""

    @abstractmethod
    def _read_batches(self, read: TableRead, rows: int) -> Iterator[pl.DataFrame]:
        """`_read(read)` (no `order_by`) in export order, at most `rows` rows at a time."""

    @abstractmethod
    def _max(self, table: str, columns: tuple[str, ...]) -> int | None:
        """Largest first non-null of `columns` over the table's rows (None when it has none)."""

    @abstractmethod
    def _row_bound(self, table: str) -> int:
        """At least the number of the table's rows, and close to it, without reading them."""

    # -- metadata ---------------------------------------------------------------------------------
    @cached_property
    def tables(self) -> frozenset[str]:
        return self._table_names()

    @cached_property
    def export_meta(self) -> dict[str, str]:
        """Name → value from META_DATA_EXPORT (2024+) or EXPORT_META_DATA (2022.4)."""
        for table in META_TABLES:
            if table in self.tables:
                rows = self._read(meta_read(table)).iter_rows()
                return {str(k): str(v) for k, v in rows}
        return {}

    @property
    def schema_version(self) -> str:
        return self.export_meta.get("EXPORT_SCHEMA_VERSION", "unknown")

    @property
    def nsys_version(self) -> str:
        return self.export_meta.get("EXPORT_PRODUCT_VERSION", "unknown")

    def columns(self, table: str) -> tuple[str, ...]:
        """Column names of `table` (empty when the table is absent)."""
        return self._column_names(table) if table in self.tables else ()

    def present_columns(self, table: str) -> set[str]:
        """Columns of `table` (empty when absent); raises MissingColumnError when the table is
        there but lacks one of its `REQUIRED_COLUMNS`."""
        cols = set(self.columns(table))
        missing = [c for c in REQUIRED_COLUMNS.get(table, ()) if cols and c not in cols]
        if missing:
            raise MissingColumnError(
                f"{self.path}: trace lacks column {missing[0]} of table {table} (nsys export "
                f"version {self.nsys_version}, schema {self.schema_version}); export the report "
                f"again with `{self.export_command}` (nsys 2022.4 or later)"
            )
        return cols

    @cached_property
    def trace_end_ns(self) -> int:
        """Latest timestamp of any event: where open NVTX ranges end, as NVIDIA treats them."""
        ends = [
            self._max(t, ("end",))
            for t in (*GPU_OP_TABLES.values(), RUNTIME_TABLE)
            if t in self.tables
        ]
        if NVTX_TABLE in self.tables:
            ends.append(self._max(NVTX_TABLE, ("end", "start")))
        return max((int(v) for v in ends if v is not None), default=0)

    # -- strings ----------------------------------------------------------------------------------
    @cached_property
    def _string_ids(self) -> pl.DataFrame:
        if "StringIds" not in self.tables:
            return pl.DataFrame(schema=STRING_IDS_READ.schema)
        self.present_columns("StringIds")
        return self._read(STRING_IDS_READ)

    def resolve_strings(self, ids: pl.Series) -> pl.Series:
        """Map StringIds ids to their text (null where unknown), keeping order."""
        frame = pl.DataFrame({"id": ids.cast(pl.Int64)})
        return frame.join(self._string_ids, on="id", how="left", maintain_order="left")["value"]

    def kernel_names(self) -> pl.DataFrame:
        """`name_id, name`: demangled (or short) names of the ids used by `gpu_ops()`."""
        return self._string_ids.rename({"id": "name_id", "value": "name"})

    # -- NVTX -------------------------------------------------------------------------------------
    def _nvtx_raw(self, event_types: tuple[int, ...]) -> pl.DataFrame:
        self._require_nvtx()
        return self._named(self._read(nvtx_read(event_types)))

    def _require_nvtx(self) -> None:
        if not self.present_columns(NVTX_TABLE):
            raise NoNvtxEventsError(
                f"{self.path}: the export has no NVTX_EVENTS table. {self.capture_hint}"
            )

    def _named(self, frame: pl.DataFrame) -> pl.DataFrame:
        """NVTX rows with their `name` (inline text, else the string id's) and `global_pid`."""
        text_from_id = self.resolve_strings(frame["textId"])
        return frame.with_columns(
            name=pl.coalesce(pl.col("text"), text_from_id),
            global_pid=process_key(pl.col("globalTid")),
        )

    @cached_property
    def _domains(self) -> pl.DataFrame:
        """(global_pid, domainId) → domain name, from the per-process domain-create events."""
        created = self._nvtx_raw((NVTX_DOMAIN_CREATE,))
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
        raw = self._nvtx_raw(NVTX_RANGE_TYPES)
        placed = raw.filter(pl.col("start").is_not_null(), pl.col("globalTid").is_not_null())
        return self._ranges_of(raw, _crowded_threads(placed), None)

    def _ranges_of(
        self, raw: pl.DataFrame, crowded: pl.Series, counts: Counter[str] | None
    ) -> pl.DataFrame:
        """NVTX range rows (`_named`) as `NVTX_RANGES_SCHEMA`, less the impossible ones and the
        open ranges of `crowded` threads (counted as `_drop_rows` does)."""
        raw = self._with_domain(raw)
        unplaced, backwards, crowded_open = NVTX_LEFT_OUT
        raw = self._drop_rows(
            raw, pl.col("start").is_null() | pl.col("globalTid").is_null(), unplaced, counts
        )
        raw = self._drop_rows(raw, pl.col("end") < pl.col("start"), backwards, counts)
        raw = self._drop_rows(
            raw,
            pl.col("end").is_null() & pl.col("globalTid").is_in(crowded.implode()),
            crowded_open,
            counts,
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

    def nvtx_range_batches(self, rows: int, *, warn: bool = True) -> Iterator[pl.DataFrame]:
        """The rows of `nvtx_ranges()` in frames of at most `rows` rows, in export order but the
        open ranges (never ended) last, with only the current batch and the open ranges in
        memory: whether a thread has too many open ones is known at the end. `warn`: add the
        rows left out to `warnings` at the end (once per trace: a second reading passes False)."""
        self._require_nvtx()
        counts: Counter[str] = Counter()
        # placed but never ended: whether their thread has too many is known at the end
        held_back = pl.col("end").is_null() & pl.all_horizontal(
            pl.col("start", "globalTid").is_not_null()
        )
        held = []
        no_thread = pl.Series("globalTid", [], pl.Int64)
        for part in self._read_batches(nvtx_read(NVTX_RANGE_TYPES), rows):
            named = self._named(part)
            held.append(named.filter(held_back))
            ranges = self._ranges_of(named.filter(~held_back), no_thread, counts)
            if ranges.height:
                yield ranges
        if held:
            opened = pl.concat(held)
            ranges = self._ranges_of(opened, _crowded_threads(opened), counts)
            yield from _sliced(ranges, rows)
        if warn:  # in the order a whole read warns
            self.warnings.extend(f"{counts[w]} {w} left out" for w in NVTX_LEFT_OUT if counts[w])

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
                f"{self.path}: the export has no NVTX ranges. {self.capture_hint}"
            )
        return self._nvtx_ranges

    def nvtx_marks(self) -> pl.DataFrame:
        """NVTX marks: `start_ns, name, domain, pid, tid, json_text`. Empty when there are none."""
        if NVTX_TABLE not in self.tables:
            return pl.DataFrame(schema=NVTX_MARKS_SCHEMA)
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
        parts = [
            self._read(gpu_op_read(kind, lean=lean)).with_columns(kind=pl.lit(kind, OP_KINDS))
            for kind in self._op_kinds()
        ]
        ops = pl.concat(parts, how="vertical", rechunk=False)
        return self._valid_ops(ops, gpu_op_columns(lean=lean))

    def gpu_op_batches(self, rows: int) -> Iterator[pl.DataFrame]:
        """The frames of `gpu_ops(lean=True)` sorted by `(start_ns, op_id)`, at most `rows` rows
        each, with only the current batches in memory: every op table is read in export order
        and the tables are merged.

        Raises:
            UnorderedTableError: an op table is not stored in start order (read `gpu_ops()`).
            NoGpuOpsError: the export has no GPU-op table at all.
        """
        counts: Counter[str] = Counter()
        streams = [self._op_stream(kind, rows, counts) for kind in self._op_kinds()]
        yield from _merged(streams, rows, ["start_ns", "op_id"])
        self.warnings.extend(f"{n} {what} left out" for what, n in counts.items())

    def gpu_op_rows(self) -> int:
        """About how many rows `gpu_ops()` holds (an upper bound, from the tables' metadata):
        what an analysis in memory must hold."""
        return sum(self._row_bound(GPU_OP_TABLES[kind]) for kind in self._op_kinds())

    def _op_stream(self, kind: str, rows: int, counts: Counter[str]) -> Iterator[pl.DataFrame]:
        """One op table's lean, valid ops in batches, in start order."""
        wanted = gpu_op_columns(lean=True)

        def clean(part: pl.DataFrame) -> pl.DataFrame:
            return self._valid_ops(part.with_columns(kind=pl.lit(kind, OP_KINDS)), wanted, counts)

        return self._in_start_order(gpu_op_read(kind, lean=True), rows, clean)

    def _op_kinds(self) -> list[str]:
        """The op kinds whose tables the export has; NoGpuOpsError when it has none."""
        kinds = [kind for kind, table in GPU_OP_TABLES.items() if self.present_columns(table)]
        if not kinds:
            raise NoGpuOpsError(
                f"{self.path}: the export has no kernels, memcpys, memsets or CUDA graph "
                f"executions. {self.capture_hint}"
            )
        return kinds

    def _valid_ops(
        self, ops: pl.DataFrame, wanted: list[str], counts: Counter[str] | None = None
    ) -> pl.DataFrame:
        """`ops` without the impossible rows of `OP_ROW_RULES`, in `wanted`'s columns and types."""
        ops = ops.select(wanted)
        for bad, what in OP_ROW_RULES:
            ops = self._drop_rows(ops, bad, what, counts)
        return ops.cast({k: GPU_OPS_SCHEMA[k] for k in wanted})

    def launch_calls(self) -> pl.DataFrame:
        """What attribution needs of the CUDA API calls, and no more: `global_tid,
        correlation_id, start_ns` (empty when the export has no CUDA API table)."""
        return self.api_calls(with_end=False).drop("global_pid")

    def launch_call_batches(self, rows: int) -> Iterator[pl.DataFrame]:
        """The frames of `launch_calls()` sorted by `start_ns`, at most `rows` rows each, read
        in export order with only the current batch in memory.

        Raises:
            UnorderedTableError: the CUDA API table is not stored in start order.
        """
        if not self.present_columns(RUNTIME_TABLE):
            return
        stream = self._in_start_order(
            api_read(with_names=False, with_end=False), rows, _valid_calls
        )
        yield from _merged([stream], rows, ["start_ns"])

    def api_call_batches(self, rows: int) -> Iterator[pl.DataFrame]:
        """The frames of `api_calls()` and each call's `name_id` (`API_CALL_BATCH_SCHEMA`: the
        StringIds id that `api_calls(with_names=True)` resolves to `name`) sorted by `start_ns`,
        at most `rows` rows each, read in export order with only the current batch in memory.

        Raises:
            UnorderedTableError: the CUDA API table is not stored in start order.
        """
        if not self.present_columns(RUNTIME_TABLE):
            return
        stream = self._in_start_order(api_read(with_names=True, with_end=True), rows, _call_batch)
        yield from _merged([stream], rows, ["start_ns"])

    def api_call_table(self) -> pl.DataFrame:
        """The rows of `api_call_batches` in one frame, in export order (any table order)."""
        if not self.present_columns(RUNTIME_TABLE):
            return pl.DataFrame(schema=API_CALL_BATCH_SCHEMA)
        return _call_batch(self._read(api_read(with_names=True, with_end=True)))

    def api_calls(self, *, with_names: bool = False, with_end: bool = True) -> pl.DataFrame:
        """CUDA runtime and driver calls: `global_tid, global_pid, correlation_id, start_ns,
        end_ns` (+ `name` when asked). Empty when the export has no CUDA API table."""
        read = api_read(with_names=with_names, with_end=with_end)
        if self.present_columns(RUNTIME_TABLE):
            calls = _valid_calls(self._read(read))
        else:
            calls = pl.DataFrame(schema=read.schema)
        calls = calls.with_columns(global_pid=process_key(pl.col("global_tid")))
        if with_names:
            calls = calls.with_columns(name=self.resolve_strings(calls["name_id"]))
        order = [c for c in API_CALLS_SCHEMA.names() if c in calls.columns]
        return calls.select(order + (["name"] if with_names else []))

    def sync_events(self) -> pl.DataFrame:
        """Host synchronizations CUPTI recorded (CUPTI_ACTIVITY_KIND_SYNCHRONIZATION): `global_pid,
        correlation_id` (joins the API call), `start_ns, end_ns, stream_id, sync_type`. Empty
        when the export has no such table (older nsys, or no synchronization captured)."""
        return self._read_if_present(SYNC_READ)

    def gpu_info(self) -> pl.DataFrame:
        """`device_id, name, sm_count, clock_hz, memory_bandwidth_Bps, total_memory_B, chip_name,
        compute_major, compute_minor` from TARGET_INFO_GPU (empty when absent)."""
        return self._read_if_present(GPU_INFO_READ)

    def processes(self) -> pl.DataFrame:
        """`global_pid, pid, name` of the captured processes (empty when absent)."""
        if not self.present_columns(PROCESSES_READ.table):
            return pl.DataFrame(schema=PROCESSES_READ.schema)
        return self._read(PROCESSES_READ)

    def threads(self) -> pl.DataFrame:
        """`global_tid, pid, tid, name` from ThreadNames (empty when absent)."""
        if not self.present_columns(THREADS_READ.table):
            frame = pl.DataFrame(schema=THREADS_READ.schema)
        else:
            frame = self._read(THREADS_READ)
        return frame.select(
            "global_tid",
            pid=pid_of(pl.col("global_tid")),
            tid=tid_of(pl.col("global_tid")),
            name=self.resolve_strings(frame["nameId"]),
        )

    # -- background reads -------------------------------------------------------------------------
    def prefetch_gpu_work(self) -> None:
        """Start reading the GPU ops and launch calls in background threads (the reads release
        the GIL), so they overlap the NVTX reads; `take_gpu_work` collects them."""
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
    def _read_if_present(self, read: TableRead) -> pl.DataFrame:
        """`_read(read)`, or an empty frame of its schema when the table is absent."""
        if not self.columns(read.table):
            return pl.DataFrame(schema=read.schema)
        return self._read(read)

    def _drop_rows(
        self, frame: pl.DataFrame, bad: pl.Expr, what: str, counts: Counter[str] | None = None
    ) -> pl.DataFrame:
        """`frame` without the rows where `bad` holds, with a warning that counts them (or their
        count added to `counts`, for a read in batches that warns once at its end)."""
        flagged = frame.select(bad.fill_null(False).alias("bad"))["bad"]
        n_bad = int(flagged.sum())
        if n_bad == 0:
            return frame
        if counts is None:
            self.warnings.append(f"{n_bad} {what} left out")
        else:
            counts[what] += n_bad
        return frame.filter(~flagged)

    def _in_start_order(
        self, read: TableRead, rows: int, clean: Callable[[pl.DataFrame], pl.DataFrame]
    ) -> Iterator[pl.DataFrame]:
        """`read`'s batches, cleaned, checked never to start before the row above."""
        if rows < 1:
            raise ValueError(f"batches need at least one row, not {rows}")
        previous: int | None = None
        for part in self._read_batches(read, rows):
            part = clean(part)
            if part.is_empty():
                continue
            starts = part["start_ns"]
            back = (starts < starts.shift(1, fill_value=previous)).fill_null(False)
            if back.any():
                raise UnorderedTableError(
                    f"{self.path}: table {read.table} is not stored in start order (a row "
                    f"starting at {starts.filter(back)[0]} ns follows a later one); read it "
                    "whole instead"
                )
            previous = int(starts[-1])
            yield part


# The NVTX ranges left out (with a counted warning), in the order they are checked.
NVTX_LEFT_OUT: Final = (
    "NVTX ranges without a start time or thread",
    "NVTX ranges ending before they start",
    f"open NVTX ranges on threads with more than {MAX_OPEN_RANGES_PER_THREAD} (never ended: "
    "the capture did not just stop mid-range)",
)


def _crowded_threads(placed: pl.DataFrame) -> pl.Series:
    """The threads (`globalTid`) of more than MAX_OPEN_RANGES_PER_THREAD open (`end` null)
    ranges among NVTX rows with a start and a thread: never ended, not cut by the capture."""
    open_per_thread = placed.filter(pl.col("end").is_null()).group_by("globalTid").len()
    return open_per_thread.filter(pl.col("len") > MAX_OPEN_RANGES_PER_THREAD)["globalTid"]


def _call_batch(part: pl.DataFrame) -> pl.DataFrame:
    """Valid API calls as `API_CALL_BATCH_SCHEMA` declares them."""
    part = _valid_calls(part).with_columns(global_pid=process_key(pl.col("global_tid")))
    return part.select(API_CALL_BATCH_SCHEMA.names())


def _valid_calls(calls: pl.DataFrame) -> pl.DataFrame:
    """API calls that can be placed: a thread and a start time."""
    return calls.filter(pl.col("global_tid").is_not_null(), pl.col("start_ns").is_not_null())


def _merged(
    streams: Sequence[Iterator[pl.DataFrame]], rows: int, by: list[str]
) -> Iterator[pl.DataFrame]:
    """Frames of streams each sorted by `by[0]`, merged into frames sorted by `by` of at most
    `rows` rows. A buffered row goes out once it starts before the last buffered start of every
    stream not yet exhausted: no row still to come can sort before it."""
    key = by[0]
    buffers = [pl.DataFrame() for _ in streams]
    exhausted = [False] * len(streams)

    def pull(i: int) -> None:
        part = next(streams[i], None)
        if part is None:
            exhausted[i] = True
        else:
            buffers[i] = pl.concat([buffers[i], part]) if buffers[i].height else part

    while True:
        for i in range(len(streams)):
            while not exhausted[i] and not buffers[i].height:
                pull(i)
        waiting = [i for i in range(len(streams)) if not exhausted[i]]
        if not waiting:
            rest = [b for b in buffers if b.height]
            if rest:
                yield from _sliced(pl.concat(rest).sort(by, maintain_order=True), rows)
            return
        frontier = min(buffers[i][key][-1] for i in waiting)
        ready = [b.filter(pl.col(key) < frontier) for b in buffers if b.height]
        if not any(r.height for r in ready):
            for i in waiting:  # every buffered row starts at the frontier or later: read on
                if buffers[i][key][-1] == frontier:
                    pull(i)
            continue
        buffers = [b.filter(pl.col(key) >= frontier) if b.height else b for b in buffers]
        yield from _sliced(pl.concat(ready).sort(by, maintain_order=True), rows)


def _sliced(frame: pl.DataFrame, rows: int) -> Iterable[pl.DataFrame]:
    """`frame` in consecutive slices of at most `rows` rows."""
    return (frame.slice(offset, rows) for offset in range(0, frame.height, rows))
