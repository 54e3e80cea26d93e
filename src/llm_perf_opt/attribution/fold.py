"""The one attribution engine: a fold over GPU ops in start order (`attribution.rule`).

`attribute_stream` folds batches read in start order, in memory bounded by a budget;
`attribute_whole` folds whole tables in any order (sorted first, one batch, every call read
before it). Both return the same `StreamResult` from the same code: the ranges frame
(`rule.RANGES_SCHEMA`) and the small aggregates the report asks of the ops (`schemas`), and, on
request, each op's assignment. Memory holds the ranges, the running sums, the op and call rows
of the current batch and those still waiting.

Per op batch:
1. calls are read until one starts after the batch's last op (an op starts after its launch
   call) into the window of recent calls (`calls`), and the batch is joined to them;
2. the batch joins the ops still waiting: a CUDA graph-level row waits until an op starts after
   its end (the node rows of its replay start inside it, so all have come) and is dropped if one
   shares its launch (rule 1); the ops at the latest start wait for a later start, so ops of
   equal start are summed in one round;
3. the ops before the first waiting one are attributed (the containing ranges on the launching
   thread by `rule.launch_slices` over the ranges overlapping the round, the innermost selected
   one by `nesting.innermost_containing`, other threads' ranges when asked) and added to the
   totals (`totals`, `sweep`), still in start order.

What reading in batches needs, checked (StreamOrderError; the analysis then folds the whole
tables): both inputs in start order; within a process, call correlation ids that grow with call
start (CUPTI numbers calls as they start); each op's launch call among the latest calls the
budget keeps; no op starting before its launch call; no node row of a replay after its
graph-level row ended (node rows before it are found through the call). Every committed trace
and every generated one meets it. Either way an op may start at most 9 minutes away from its
launch call (launch latencies are summed as 40-bit offsets). Node rows without a call are
matched to a graph-level row without one only while both wait in the same round (always, for
whole tables).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from typing import Final

import numpy as np
import polars as pl

from llm_perf_opt.attribution.calls import GRAPH_KEPT, HAS_NODE, INT64_MAX, INT64_MIN, LaunchCalls
from llm_perf_opt.attribution.schemas import (
    CALL_BATCH_SCHEMA,
    DEFAULT_MEMORY_BUDGET_BYTES,
    OP_BATCH_SCHEMA,
    StreamBudget,
    StreamOrderError,
)
from llm_perf_opt.attribution.totals import StreamResult, StreamStats, Totals

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


def attribute_stream(
    ranges: pl.DataFrame,
    op_batches: Iterable[pl.DataFrame],
    call_batches: Iterable[pl.DataFrame],
    *,
    other_threads: bool = False,
    groups: pl.DataFrame | None = None,
    windows: pl.DataFrame | None = None,
    memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET_BYTES,
    keep_ops: bool = False,
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
        windows: `gpu_view.WINDOWS_SCHEMA`: the windows `gpu_windows`/`gpu_groups` describe.
        memory_budget_bytes: bytes for batches and waiting rows (`StreamBudget.of`).
        keep_ops: also return each op's assignment (`StreamResult.ops`, `OP_ASSIGNMENT_SCHEMA`).

    Returns:
        StreamResult; `gpu_windows`/`gpu_groups` None without `windows`.

    Raises:
        StreamOrderError: the inputs break the contract of the module docstring.
        ConfigError: a memory budget below the minimum.
    """
    budget = StreamBudget.of(memory_budget_bytes)
    sums = Totals(ranges, budget, other_threads, groups, windows, keep_ops=keep_ops)
    try:
        return _run(op_batches, call_batches, sums, budget, whole=False)
    finally:
        for source in (op_batches, call_batches):
            if isinstance(source, ReadAhead):
                source.close()


def attribute_whole(
    ranges: pl.DataFrame,
    ops: pl.DataFrame,
    calls: pl.DataFrame,
    *,
    other_threads: bool = False,
    groups: pl.DataFrame | None = None,
    windows: pl.DataFrame | None = None,
    keep_ops: bool = False,
) -> StreamResult:
    """`attribute_stream` of whole tables, in any order: the same fold over the ops sorted by
    start in one batch, every call read before it (sorted by correlation id per process), so
    none of the order rules of a pass applies. Memory grows with the tables.

    Args:
        ranges, other_threads, groups, windows, keep_ops: as for `attribute_stream`.
        ops: every GPU op (`OP_BATCH_SCHEMA`'s columns; others are ignored).
        calls: every launch call (`CALL_BATCH_SCHEMA`'s columns; others are ignored).

    Raises:
        StreamOrderError: an op starts more than 9 minutes away from its launch call.
    """
    ops = ops.select(OP_BATCH_SCHEMA.names()).sort("start_ns", "op_id")
    calls = calls.select(CALL_BATCH_SCHEMA.names()).sort("start_ns", maintain_order=True)
    budget = StreamBudget.whole(ops.height, calls.height)
    sums = Totals(ranges, budget, other_threads, groups, windows, keep_ops=keep_ops)
    return _run([ops], [calls], sums, budget, whole=True)


def _run(
    op_batches: Iterable[pl.DataFrame],
    call_batches: Iterable[pl.DataFrame],
    totals: Totals,
    budget: StreamBudget,
    *,
    whole: bool,
) -> StreamResult:
    """The pass: `whole`, every call is read before the first op batch."""
    calls = LaunchCalls(iter(call_batches), budget, whole=whole)
    if whole:
        calls.read_until(INT64_MAX, INT64_MAX)
    waiting = pl.DataFrame(schema=WAITING_SCHEMA)
    last_start = INT64_MIN
    seen = waiting_max = 0
    for batch in _cut(op_batches, budget.op_batch_rows):
        start = batch["start_ns"].to_numpy()
        if start[0] < last_start or bool(np.any(np.diff(start) < 0)):
            raise StreamOrderError(
                "the GPU ops are not in start order (an op starts before the one read before it)"
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
                "or for a later start; raise the memory budget"
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
            target=self._fill, args=(batches,), name="fold-read", daemon=True
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
        raise StreamOrderError("a CUDA graph replay has node rows after its graph-level row ended")
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
