"""One pass over GPU ops and CUDA API calls in start order: `attribute`'s result in bounded memory.

`attribute_stream` gives the ranges frame of `attribution.attribute`, equal to the last column and
dtype, and, instead of the per-op frame, the small aggregates the analysis takes from it
(`onepass.schemas`). Ops and calls come as two iterators of frames, each in start order; memory
holds the ranges, the running sums, a budgeted number of op and call rows, never every op.

Per op batch:
1. calls are read until one starts after the batch's last op (an op starts after its launch
   call) into the window of recent calls (`onepass.calls`), and the batch is joined to them;
2. the batch joins the ops still waiting: a CUDA graph-level row waits until an op starts after
   its end (the node rows of its replay start inside it, so all have come) and is dropped if one
   shares its launch, as `without_covered_graph_rows` drops it; the ops at the latest start wait
   for a later start, so ops of equal start are summed in one round;
3. the ops before the first waiting one are attributed as `attribute` does (the containing ranges
   on the launching thread by `launch_slices` over the ranges overlapping the round, the
   innermost selected one by `_innermost_containing`, other threads' ranges when asked) and
   added to the totals of `onepass.sweep`, still in start order.

What a one-pass reading needs, checked (StreamOrderError: the caller falls back to `attribute`):
both inputs in start order; within a process, call correlation ids that grow with call start
(CUPTI numbers calls as they start); each op's launch call among the latest calls the budget
keeps; no op starting before its launch call, nor more than 9 minutes after it; no node row of a
replay after its graph-level row ended (node rows before it are found through the call). Every
committed trace and every generated one meets it. Ops
without any call are handled as `attribute` does, except that node rows outside the interval of
their graph-level row are not matched to it when neither has a call.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from typing import Final

import numpy as np
import polars as pl

from llm_perf_opt.attribution import RangeSelection, attribute_frames
from llm_perf_opt.onepass.calls import GRAPH_KEPT, HAS_NODE, INT64_MAX, INT64_MIN, LaunchCalls
from llm_perf_opt.onepass.schemas import (
    CALL_BATCH_SCHEMA,
    DEFAULT_MEMORY_BUDGET_BYTES,
    OP_BATCH_SCHEMA,
    StreamBudget,
    StreamOrderError,
)
from llm_perf_opt.onepass.totals import StreamResult, StreamStats, Totals

WAITING_SCHEMA: Final = pl.Schema(
    {  # type: ignore[arg-type]  # mypy widens the mixed dtype values to object
        **OP_BATCH_SCHEMA,
        "launch_tid": pl.Int64,
        "launch_ns": pl.Int64,
        "call": pl.Int64,
        "decided": pl.Boolean,
        "drop": pl.Boolean,
    }
)


def range_frame(ranges: pl.DataFrame, selection: RangeSelection | None = None) -> pl.DataFrame:
    """The ranges frame of `attribute` before any op is counted (structure, `path`, `selected`;
    every count 0, spans null): the input of `attribute_stream`, and what the windows and
    groups it takes are chosen from.

    Raises:
        SelectionError: the selection matches no range.
    """
    no_ops = pl.DataFrame(schema=OP_BATCH_SCHEMA)
    no_calls = pl.DataFrame(schema=CALL_BATCH_SCHEMA)
    return attribute_frames(ranges, no_ops, no_calls, selection).ranges


def attribute_stream(
    ranges: pl.DataFrame,
    op_batches: Iterable[pl.DataFrame],
    call_batches: Iterable[pl.DataFrame],
    *,
    other_threads: bool = False,
    groups: pl.DataFrame | None = None,
    windows: pl.DataFrame | None = None,
    memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET_BYTES,
) -> StreamResult:
    """Attribute every GPU op in one pass (the rule of `attribution`; the pass in the module
    docstring).

    Args:
        ranges: `range_frame(...)` of the trace's NVTX ranges and the selection.
        op_batches: frames of `OP_BATCH_SCHEMA` (`Trace.gpu_ops(lean=True)` rows), all ops of the
            trace in start order; batches longer than the budget's rows are cut.
        call_batches: frames of `CALL_BATCH_SCHEMA` (`Trace.launch_calls()` rows) in start order.
        other_threads: also attribute launches from range-less threads by time containment.
        groups: `GROUPS_SCHEMA`: the ranges whose exclusive kernels `top_kernels` sums per group.
        windows: `hostview.WINDOWS_SCHEMA`: the windows `gpu_windows`/`gpu_groups` describe.
        memory_budget_bytes: bytes for batches and waiting rows (`StreamBudget.of`).

    Returns:
        StreamResult; `gpu_windows`/`gpu_groups` None without `windows`.

    Raises:
        StreamOrderError: the inputs break the contract of the module docstring.
        ConfigError: a memory budget below the minimum.
    """
    budget = StreamBudget.of(memory_budget_bytes)
    try:
        return _run(ranges, op_batches, call_batches, other_threads, groups, windows, budget)
    finally:
        for source in (op_batches, call_batches):
            if isinstance(source, ReadAhead):
                source.close()


def _run(
    ranges: pl.DataFrame,
    op_batches: Iterable[pl.DataFrame],
    call_batches: Iterable[pl.DataFrame],
    other_threads: bool,
    groups: pl.DataFrame | None,
    windows: pl.DataFrame | None,
    budget: StreamBudget,
) -> StreamResult:
    """The pass of `attribute_stream`."""
    calls = LaunchCalls(iter(call_batches), budget)
    totals = Totals(ranges, budget, other_threads, groups, windows)
    waiting = pl.DataFrame(schema=WAITING_SCHEMA)
    last_start = INT64_MIN
    seen = waiting_max = 0
    for batch in _cut(op_batches, budget.op_batch_rows):
        start = batch["start_ns"].to_numpy()
        if start[0] < last_start or bool(np.any(np.diff(start) < 0)):
            raise StreamOrderError(
                "the GPU ops are not in start order (an op starts before the one read before "
                "it); attribute this trace in memory"
            )
        last_start = int(start[-1])
        seen += batch.height
        calls.read_until(last_start, _keep_from(waiting))
        joined = calls.join(batch)
        _note_nodes(joined, calls)
        waiting = pl.concat([waiting, _waiting_rows(joined)])
        waiting = _release(waiting, calls, totals, frontier=last_start)
        waiting_max = max(waiting_max, waiting.height)
        if waiting.height > budget.waiting_ops:
            raise StreamOrderError(
                f"more than {budget.waiting_ops} GPU ops wait for a CUDA graph replay to end "
                "or for a later start; raise the memory budget or attribute in memory"
            )
        calls.evict(_keep_from(waiting))
        totals.settle(min(calls.launch_floor(), _keep_from(waiting)))
    _release(waiting, calls, totals, frontier=INT64_MAX)
    calls.drain()
    stats = StreamStats(seen, calls.max_live, calls.evicted, waiting_max)
    return totals.result(stats)


class ReadAhead(Iterator[pl.DataFrame]):
    """`batches` with the next ones read in a background thread from the start, while the pass
    works on the current one: SQLite and Parquet reads release the GIL, so reading overlaps the
    pass (`depth` batches more in memory). The source iterator runs wholly in that thread."""

    def __init__(self, batches: Iterable[pl.DataFrame], depth: int = 1) -> None:
        self._queue: queue.Queue[pl.DataFrame | BaseException | None] = queue.Queue(depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._fill, args=(batches,), name="onepass-read", daemon=True
        )
        self._thread.start()

    def _fill(self, batches: Iterable[pl.DataFrame]) -> None:
        item: pl.DataFrame | BaseException | None
        try:
            for item in batches:
                if not self._put(item):
                    return
            item = None
        except BaseException as exc:  # handed to the thread that reads the batches
            item = exc
        self._put(item)

    def _put(self, item: pl.DataFrame | BaseException | None) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def __next__(self) -> pl.DataFrame:
        item = self._queue.get()
        if item is None:
            self._queue.put(None)  # stay exhausted
            raise StopIteration
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self) -> None:
        """Stop reading (a pass that ended early)."""
        self._stop.set()


def _cut(batches: Iterable[pl.DataFrame], rows: int) -> Iterator[pl.DataFrame]:
    """The non-empty batches, in pieces of at most `rows` rows, with the engine's columns."""
    names = OP_BATCH_SCHEMA.names()
    for batch in batches:
        for offset in range(0, batch.height, rows):
            yield batch.slice(offset, rows).select(names)


def _waiting_rows(joined: pl.DataFrame) -> pl.DataFrame:
    """Joined ops as waiting rows: graph-level rows undecided, none dropped yet."""
    return joined.with_columns(decided=pl.col("kind") != "graph", drop=pl.lit(False)).select(
        WAITING_SCHEMA.names()
    )


def _keep_from(waiting: pl.DataFrame) -> int:
    """The earliest launch of a waiting op: its call must stay in the window."""
    first = waiting["launch_ns"].min()
    return INT64_MAX if first is None else int(first)  # type: ignore[arg-type]


def _note_nodes(joined: pl.DataFrame, calls: LaunchCalls) -> None:
    """Mark the calls of node rows (kernel, memcpy, memset), so a graph-level row of the same
    launch is dropped; one after its graph-level row was kept breaks the contract."""
    ref = joined.filter(pl.col("kind") != "graph", pl.col("call") >= 0)["call"].to_numpy()
    if ref.size == 0:
        return
    if bool(np.any(calls.flags(ref) & GRAPH_KEPT)):
        raise StreamOrderError(
            "a CUDA graph replay has node rows after its graph-level row ended; attribute this "
            "trace in memory"
        )
    calls.set_flags(ref, HAS_NODE)


def _release(
    waiting: pl.DataFrame, calls: LaunchCalls, totals: Totals, *, frontier: int
) -> pl.DataFrame:
    """Decide the graph-level rows whose replay ended before `frontier` (all of them at the
    end), attribute the ops before the first undecided row and before `frontier`, and return
    the rest."""
    undecided = ~waiting["decided"]
    due = undecided & (waiting["end_ns"] < frontier)
    if due.any():
        waiting = _decide_graph_rows(waiting, due, calls)
        undecided = ~waiting["decided"]
    bound = frontier
    if undecided.any():
        bound = min(bound, int(waiting.filter(undecided)["start_ns"].min()))  # type: ignore[arg-type]
    n = int(np.searchsorted(waiting["start_ns"].to_numpy(), bound, side="left"))
    ready = waiting.slice(0, n).filter(~pl.col("drop"))
    if ready.height:
        totals.add(ready, calls)
    return waiting.slice(n)


def _decide_graph_rows(waiting: pl.DataFrame, due: pl.Series, calls: LaunchCalls) -> pl.DataFrame:
    """Drop the due graph-level rows that share their launch with a node row (waiting, or
    joined to the same call before), keep the others."""
    keys = ["global_pid", "correlation_id"]
    nodes = waiting.filter(pl.col("kind") != "graph").select(keys).unique()
    indexed = waiting.with_row_index("row")
    rows = indexed.filter(due)
    covered = rows.join(nodes, on=keys, how="semi")["row"].to_numpy()
    ref = rows["call"].to_numpy()
    flagged = rows.filter(pl.Series((calls.flags(ref) & HAS_NODE) > 0))["row"].to_numpy()
    drop = np.zeros(waiting.height, dtype=bool)
    drop[np.union1d(covered, flagged).astype(np.int64)] = True
    kept = rows.filter(~pl.Series(drop[rows["row"].to_numpy()]))["call"].to_numpy()
    calls.set_flags(kept[kept >= 0], GRAPH_KEPT)
    return waiting.with_columns(
        decided=pl.col("decided") | due, drop=pl.col("drop") | pl.Series(drop)
    )
