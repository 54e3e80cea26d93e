"""The host view of `hostview.host_view` in one pass over CUDA API call batches.

`HostViewStream(windows, syncs, resolve_names)` takes the API calls in start order, batch by
batch (`Trace.api_call_batches(rows)`), and `result()` is the frame `host_view(windows,
trace.api_calls(with_names=True), trace.sync_events())` gives, equal to the last column and
dtype, without the whole API table in memory. The rule is `host_view`'s, through the same step
(`hostview.add_thread_parts`): per thread the API intervals are merged (a call's piece starts at
the latest end of the thread's earlier calls, carried across batch borders), each window gets the
launch, sync and other pieces inside it and counts the outermost launch and memcpy calls, and the
synchronization rows of every call, starting in it. Per window the sums are integers of
nanoseconds or calls, exact in float64, so summing them batch by batch gives `host_view`'s
values exactly.

Ties: `host_view` orders a thread's calls by start, the longer first at equal starts (an
enclosing call before the calls it encloses). A batch border may split calls of equal start, so
the calls at the latest start seen wait for the next batch (or `result()`), and each round sorts
what it takes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Final

import numpy as np
import polars as pl

from llm_perf_opt.attribution import intervals
from llm_perf_opt.attribution.calls import INT64_MIN
from llm_perf_opt.attribution.schemas import HOST_CALL_BATCH_SCHEMA, StreamOrderError
from llm_perf_opt.hostview.breakdown import (
    HOST_SCHEMA,
    add_thread_parts,
    call_arrays,
    call_flags,
    classify_names,
    host_columns,
    host_zeros,
    sort_calls,
    sync_counts,
)

# The classes of the API names seen so far, by StringIds id (`hostview.classify_names`).
NAME_KINDS_SCHEMA: Final = pl.Schema(
    {
        "name_id": pl.Int64,
        "cls": pl.Int8,
        "is_memcpy": pl.Boolean,
        "gpu_side_wait": pl.Boolean,
    }
)


class HostViewStream:
    """`hostview.host_view` of some windows, from the API calls read in start-ordered batches.

    Memory holds the windows and their running sums (six floats a window), per window thread the
    latest end of its calls so far (the carry across batch borders), the synchronization rows
    counted per call (`sync_counts` of `syncs`, read whole: there are few), the classes of the
    distinct API name ids seen, the calls at the latest start seen (held back for a later batch)
    and the current batch; never the whole API table. Calls of threads without windows are
    dropped as they come.

    Args:
        windows: `window_id, global_tid, start_ns, end_ns` (`hostview.WINDOWS_SCHEMA`'s; extra
            columns are ignored), as `host_view` takes them.
        syncs: `Trace.sync_events()` (`global_pid, correlation_id` are read); None or empty where
            the export has none (the synchronizing calls are then told by name).
        resolve_names: StringIds ids → their text, in order (`Trace.resolve_strings`): how the
            calls' `name_id`s are classified, each distinct id once.
    """

    def __init__(
        self,
        windows: pl.DataFrame,
        syncs: pl.DataFrame | None,
        resolve_names: Callable[[pl.Series], pl.Series],
    ) -> None:
        self._windows = windows.select("window_id", "global_tid", "start_ns", "end_ns").cast(
            pl.Int64
        )
        self._sums = host_zeros(self._windows.height)
        w_tid = self._windows["global_tid"].to_numpy()
        self._w_start = self._windows["start_ns"].to_numpy()
        self._w_end = self._windows["end_ns"].to_numpy()
        self._tids = np.unique(w_tid)  # sorted: a thread's index by searchsorted
        self._thread_windows = [np.flatnonzero(w_tid == t) for t in self._tids.tolist()]
        self._carry = np.full(len(self._tids), INT64_MIN, dtype=np.int64)
        per_call = sync_counts(syncs)
        if per_call is not None:  # by correlation id: a batch joins only the rows in its range
            per_call = per_call.drop_nulls().sort("correlation_id")
        self._per_call = per_call
        self._resolve_names = resolve_names
        self._kinds = pl.DataFrame(schema=NAME_KINDS_SCHEMA)
        self._known_ids = np.empty(0, dtype=np.int64)  # of `_kinds`, sorted
        self._held = pl.DataFrame(schema=HOST_CALL_BATCH_SCHEMA)
        self._last_start: int | None = None
        self._done = False

    def add(self, batch: pl.DataFrame) -> None:
        """Take the next calls (`HOST_CALL_BATCH_SCHEMA`: `Trace.api_call_batches` rows), in
        start order and none starting before the calls of earlier batches.

        Raises:
            StreamOrderError: the batch is out of start order, or comes after `result()`.
        """
        if self._done:
            raise StreamOrderError("API calls were added after the host view's result was taken")
        if batch.is_empty():
            return
        if batch.columns != HOST_CALL_BATCH_SCHEMA.names():
            batch = batch.select(HOST_CALL_BATCH_SCHEMA.names())
        starts = batch["start_ns"].to_numpy()
        back = np.flatnonzero(starts[1:] < starts[:-1])
        previous = self._last_start
        if back.size or (previous is not None and starts[0] < previous):
            at = int(starts[back[0] + 1]) if back.size else int(starts[0])
            raise StreamOrderError(
                f"API calls are not in start order (a call starting at {at} ns follows a later "
                "one); compute the host view with hostview.host_view over the whole table"
            )
        self._last_start = last = int(starts[-1])
        mine = np.isin(batch["global_tid"].to_numpy(), self._tids)
        if not mine.all():
            batch = batch.filter(pl.Series(mine))
        calls = pl.concat([self._held, batch]) if self._held.height else batch
        # rows before the batch's last start are final; those at it may tie with later ones
        ready = int(np.searchsorted(calls["start_ns"].to_numpy(), last, side="left"))
        self._held = calls.slice(ready)
        self._take(calls.slice(0, ready))

    def add_all(self, batches: Iterable[pl.DataFrame]) -> HostViewStream:
        """`add` each batch; returns the stream, for `result()`."""
        for batch in batches:
            self.add(batch)
        return self

    def result(self) -> pl.DataFrame:
        """`window_id` + `hostview.HOST_SCHEMA` per window, in the windows' order: the frame of
        `host_view` over every call added. Later calls cannot be added."""
        if not self._done:
            self._take(self._held)
            self._held = self._held.clear()
            self._done = True
        columns = host_columns(self._windows, self._sums)
        out = self._windows.select("window_id").with_columns(*columns)
        return out.cast(dict(HOST_SCHEMA))  # type: ignore[arg-type]

    def _take(self, calls: pl.DataFrame) -> None:
        """Add what final calls (of window threads, every call of their starts among them) give
        the windows, and carry each thread's latest end on."""
        if calls.is_empty():
            return
        self._classify(calls["name_id"])
        calls = sort_calls(call_flags(calls, self._kinds, "name_id", self._syncs_of(calls)))
        tid, start, end, cls, memcpy, sync_rows = call_arrays(calls)
        new_seg = np.r_[True, tid[1:] != tid[:-1]]
        heads = np.flatnonzero(new_seg)
        bounds = np.r_[heads, len(tid)]
        thread = np.searchsorted(self._tids, tid[heads])
        covered = np.maximum(
            intervals.segmented_prev_max(end, new_seg),
            np.repeat(self._carry[thread], np.diff(bounds)),
        )
        reach = np.maximum.reduceat(end, heads)
        self._carry[thread] = np.maximum(self._carry[thread], reach)
        for k, (a, b) in enumerate(zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True)):
            rows = self._thread_windows[int(thread[k])]
            # windows ending before these calls or starting after them get nothing from them
            rows = rows[(self._w_end[rows] >= start[a]) & (self._w_start[rows] <= reach[k])]
            if rows.size == 0:
                continue
            seg = slice(a, b)
            add_thread_parts(
                self._sums,
                rows,
                (start[seg], end[seg], covered[seg], cls[seg], memcpy[seg]),
                None if sync_rows is None else sync_rows[seg],
                self._w_start[rows],
                self._w_end[rows],
            )

    def _syncs_of(self, calls: pl.DataFrame) -> pl.DataFrame | None:
        """The rows of the per-call synchronization counts whose correlation id lies in the
        range of the calls' (all the calls can join), a slice of the sorted table."""
        per_call = self._per_call
        column = calls["correlation_id"]
        ids = (column.drop_nulls() if column.null_count() else column).to_numpy()
        if per_call is None or ids.size == 0:
            return per_call
        keys = per_call["correlation_id"].to_numpy()
        lo = int(np.searchsorted(keys, int(ids.min()), side="left"))
        hi = int(np.searchsorted(keys, int(ids.max()), side="right"))
        return per_call.slice(lo, hi - lo)

    def _classify(self, name_ids: pl.Series) -> None:
        """Resolve and classify the name ids not seen before (`hostview.classify_names`; an id
        without a name gets null classes, as its call gets in `host_view`)."""
        ids = (name_ids.drop_nulls() if name_ids.null_count() else name_ids).to_numpy()
        known = self._known_ids
        pos = np.minimum(np.searchsorted(known, ids), max(known.size - 1, 0))
        new = ids if known.size == 0 else ids[known[pos] != ids]
        if new.size == 0:
            return
        new_ids = pl.Series("name_id", np.unique(new), dtype=pl.Int64)
        names = self._resolve_names(new_ids).alias("name")
        kinds = pl.DataFrame([new_ids, names]).join(
            classify_names(names), on="name", how="left", maintain_order="left"
        )
        self._kinds = pl.concat([self._kinds, kinds.select(NAME_KINDS_SCHEMA.names())])
        self._known_ids = np.sort(self._kinds["name_id"].to_numpy())
