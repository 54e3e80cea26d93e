"""The launch calls of a one-pass attribution: a window of the latest calls of each process.

CUPTI numbers a process's API calls in the order they start, so the calls read so far are sorted
by correlation id and a batch of ops joins them by binary search. Only the latest `live_calls`
calls are kept; the correlation ids of the others tell which unmatched op might have needed one
(an error, never a silent miss):

- an op whose id is below the process's first call has no call in the trace (`no_launch_call`);
- an id between the first call and the last evicted one may be an evicted call: StreamOrderError;
- an id among the live calls that none of them has: no call;
- an id above every call read so far: no call for now, and the id is remembered, so that a call
  arriving later with it (an op that started before its launch call) raises StreamOrderError.

Read `whole` (every call before the first op, no eviction: the tables read at once), none of
that can happen: a process's calls are sorted by correlation id however their ids follow their
starts, so the order rules above do not apply.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Final

import numpy as np
import polars as pl

from llm_perf_opt.attribution.schemas import StreamBudget, StreamOrderError

# Per-call flags.
SEEN: Final = 1  # an op of the call was counted: `n_gpu_ops` counts a launch once
HAS_NODE: Final = 2  # a kernel, memcpy or memset row joined it: its graph-level row is dropped
GRAPH_KEPT: Final = 4  # its graph-level row was kept: a node row joining later is an error

INT64_MIN: Final = np.iinfo(np.int64).min
INT64_MAX: Final = np.iinfo(np.int64).max
# A call reference packs the process's index above its call number: one int64 per op.
REF_SHIFT: Final = 40
EMPTY: Final = np.zeros(0, dtype=np.int64)
EMPTY.flags.writeable = False


@dataclass
class _Process:
    """The live calls of one process (sorted by start and correlation id) and what was read."""

    corr: np.ndarray = field(default_factory=lambda: EMPTY)
    tid: np.ndarray = field(default_factory=lambda: EMPTY)
    start: np.ndarray = field(default_factory=lambda: EMPTY)
    flags: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.uint8))
    base: int = 0  # number of the call at corr[0] among the calls of the process read so far
    first_corr: int | None = None
    read_max: int = -1
    evicted_max: int = -1
    ahead: np.ndarray = field(default_factory=lambda: EMPTY)  # ids of ops with no call yet


class LaunchCalls:
    """The call batches, read as far as the ops need them, joined to op batches."""

    def __init__(
        self, batches: Iterator[pl.DataFrame], budget: StreamBudget, *, whole: bool = False
    ) -> None:
        self._batches = batches
        self._budget = budget
        self._whole = whole
        self._processes: dict[int, _Process] = {}
        self._order: list[int] = []  # process keys by index (the index goes into call refs)
        self._index: dict[int, int] = {}
        self._last_start = INT64_MIN
        self._rest: pl.DataFrame | None = None  # what is left of the batch being read
        self.exhausted = False
        self.max_live = 0
        self.evicted = 0

    # -- reading ----------------------------------------------------------------------------------
    def read_until(self, t: int, keep_from_ns: int) -> None:
        """Read calls, a budgeted piece at a time, until one starts after `t` or none is left;
        calls starting before `keep_from_ns` may be evicted on the way to stay within the
        budget."""
        rows = self._budget.call_batch_rows
        while not self.exhausted and self._last_start <= t:
            while self._rest is None or self._rest.is_empty():
                self._rest = next(self._batches, None)
                if self._rest is None:
                    self.exhausted = True
                    for proc in self._processes.values():
                        proc.ahead = EMPTY  # no call can arrive any more
                    return
            piece, self._rest = self._rest.slice(0, rows), self._rest.slice(rows)
            self._add(piece)
            self.evict(keep_from_ns)

    def drain(self) -> None:
        """Read the calls after the last op where an op found no call yet (one arriving now
        is an error); no op waits for a call any more, so any may be evicted."""
        while not self.exhausted and any(p.ahead.size for p in self._processes.values()):
            self.read_until(self._last_start, INT64_MAX)

    def _add(self, batch: pl.DataFrame) -> None:
        batch = batch.filter(
            pl.col("correlation_id") >= 0,
            pl.col("global_tid").is_not_null(),
            pl.col("start_ns").is_not_null(),
        )
        if batch.is_empty():
            return
        start = batch["start_ns"].to_numpy()
        if start[0] < self._last_start or bool(np.any(np.diff(start) < 0)):
            raise StreamOrderError(
                "the CUDA API calls are not in start order (a call starts before the one read "
                "before it)"
            )
        self._last_start = int(start[-1])
        tid = batch["global_tid"].to_numpy()
        corr = batch["correlation_id"].to_numpy()
        pid = (tid >> 24) << 24  # globalPid of the calling thread
        keys = np.unique(pid)
        for key in keys.tolist():
            rows = slice(None) if len(keys) == 1 else np.flatnonzero(pid == key)
            self._append(self._process(key), corr[rows], tid[rows], start[rows])
        self.max_live = max(self.max_live, self.live())

    def _append(self, proc: _Process, corr: np.ndarray, tid: np.ndarray, start: np.ndarray) -> None:
        """Calls of one process in start order: ids must not decrease (read whole: sorted by
        id); a repeated id keeps the first call."""
        if self._whole:
            corr = np.concatenate([proc.corr, corr])
            tid = np.concatenate([proc.tid, tid])
            start = np.concatenate([proc.start, start])
            order = np.lexsort((start, corr))
            corr, tid, start = corr[order], tid[order], start[order]
            fresh = np.r_[True, corr[1:] != corr[:-1]]
            proc.corr, proc.tid, proc.start = corr[fresh], tid[fresh], start[fresh]
            proc.flags = np.zeros(proc.corr.size, dtype=np.uint8)
            proc.first_corr = int(proc.corr[0])
            proc.read_max = int(proc.corr[-1])
            return
        steps = np.diff(np.r_[proc.read_max, corr])
        if bool(np.any(steps < 0)):
            raise StreamOrderError(
                "the correlation ids of a process's CUDA API calls do not increase with their "
                "start times"
            )
        fresh = steps > 0
        corr, tid, start = corr[fresh], tid[fresh], start[fresh]
        if corr.size == 0:
            return
        if proc.ahead.size and bool(np.any(np.isin(corr, proc.ahead))):
            raise StreamOrderError(
                "a GPU op starts before its launch call (the call came after ops that started "
                "later)"
            )
        if proc.first_corr is None:
            proc.first_corr = int(corr[0])
        proc.corr = np.concatenate([proc.corr, corr])
        proc.tid = np.concatenate([proc.tid, tid])
        proc.start = np.concatenate([proc.start, start])
        proc.flags = np.concatenate([proc.flags, np.zeros(corr.size, dtype=np.uint8)])
        proc.read_max = int(corr[-1])
        if proc.ahead.size:
            proc.ahead = proc.ahead[proc.ahead > proc.read_max]

    def _process(self, key: int) -> _Process:
        proc = self._processes.get(key)
        if proc is None:
            proc = self._processes[key] = _Process()
            self._index[key] = len(self._order)
            self._order.append(key)
        return proc

    # -- the window -------------------------------------------------------------------------------
    def live(self) -> int:
        return sum(p.corr.size for p in self._processes.values())

    def evict(self, keep_from_ns: int) -> None:
        """Drop the oldest calls beyond the budget (down to three quarters of it), never one
        starting at or after `keep_from_ns`."""
        live = self.live()
        cap = self._budget.live_calls
        if live <= cap or self._whole:
            return
        k = live - cap * 3 // 4
        starts = [p.start for p in self._processes.values()]
        if len(starts) == 1:  # one process: its starts are sorted
            kth = int(starts[0][k])
        else:
            kth = int(np.partition(np.concatenate(starts), k)[k])
        cutoff = min(kth, keep_from_ns)
        for proc in self._processes.values():
            k = int(np.searchsorted(proc.start, cutoff, side="left"))
            if k == 0:
                continue
            proc.evicted_max = int(proc.corr[k - 1])
            proc.base += k
            proc.corr, proc.tid = proc.corr[k:].copy(), proc.tid[k:].copy()
            proc.start, proc.flags = proc.start[k:].copy(), proc.flags[k:].copy()
            self.evicted += k

    def launch_floor(self) -> int:
        """No op joined from now on has a launch before this time."""
        floor = INT64_MAX if self.exhausted else self._last_start
        for proc in self._processes.values():
            if proc.start.size:  # read whole, a process's calls are sorted by id, not start
                floor = min(floor, int(proc.start.min() if self._whole else proc.start[0]))
        return floor

    # -- joining ----------------------------------------------------------------------------------
    def join(self, ops: pl.DataFrame) -> pl.DataFrame:
        """`ops` with `launch_tid`, `launch_ns` (null without a call) and `call` (a reference
        for `flags`, -1 without a call)."""
        n = ops.height
        launch_tid = np.full(n, -1, dtype=np.int64)
        launch_ns = np.zeros(n, dtype=np.int64)
        ref = np.full(n, -1, dtype=np.int64)
        pid = ops["global_pid"].to_numpy()
        corr = ops["correlation_id"].fill_null(-1).to_numpy()
        keys = np.unique(pid)
        for key in keys.tolist():
            rows = np.arange(n) if len(keys) == 1 else np.flatnonzero(pid == key)
            proc = self._process(key)
            index = self._index[key]
            pos = np.searchsorted(proc.corr, corr[rows])
            hit = pos < proc.corr.size
            hit[hit] = proc.corr[pos[hit]] == corr[rows][hit]
            hit &= corr[rows] >= 0
            found, at = rows[hit], pos[hit]
            launch_tid[found] = proc.tid[at]
            launch_ns[found] = proc.start[at]
            ref[found] = (index << REF_SHIFT) | (proc.base + at)
            self._misses(proc, corr[rows][~hit])
        matched = pl.Series(ref >= 0)
        return ops.with_columns(
            launch_tid=pl.when(matched).then(pl.Series(launch_tid)),
            launch_ns=pl.when(matched).then(pl.Series(launch_ns)),
            call=pl.Series(ref),
        )

    def _misses(self, proc: _Process, corr: np.ndarray) -> None:
        """Check the ids that found no live call (see the module docstring)."""
        corr = corr[corr >= 0]
        if proc.first_corr is not None:
            corr = corr[corr >= proc.first_corr]
            if bool(np.any(corr <= proc.evicted_max)):
                raise StreamOrderError(
                    "a GPU op ran after more CUDA API calls than the memory budget keeps had "
                    "started since its launch; raise the memory budget"
                )
            corr = corr[corr > proc.read_max]
        if corr.size == 0 or self.exhausted:
            return
        proc.ahead = np.union1d(proc.ahead, corr)
        if proc.ahead.size > self._budget.waiting_ops:
            raise StreamOrderError(
                f"more than {self._budget.waiting_ops} GPU ops found no launch call among the "
                "CUDA API calls read so far"
            )

    # -- flags ------------------------------------------------------------------------------------
    def flags(self, ref: np.ndarray) -> np.ndarray:
        """The flags of each referenced call (0 for -1)."""
        out = np.zeros(len(ref), dtype=np.uint8)
        for proc, rows, at in self._locate(ref):
            out[rows] = proc.flags[at]
        return out

    def set_flags(self, ref: np.ndarray, flag: int) -> None:
        for proc, _rows, at in self._locate(ref):
            proc.flags[at] |= flag

    def first_of_launch(self, ref: np.ndarray) -> np.ndarray:
        """True for the first op of each call ever counted (in the order given); marks them."""
        first = np.zeros(len(ref), dtype=bool)
        valid = np.flatnonzero(ref >= 0)
        if valid.size == 0:
            return first
        _, head = np.unique(ref[valid], return_index=True)
        candidates = valid[head]
        unseen = (self.flags(ref[candidates]) & SEEN) == 0
        first[candidates[unseen]] = True
        self.set_flags(ref[candidates], SEEN)
        return first

    def _locate(self, ref: np.ndarray) -> Iterator[tuple[_Process, np.ndarray, np.ndarray]]:
        """Per process: the rows of `ref` that point into it and their places in its window."""
        valid = ref >= 0
        index = np.where(valid, ref >> REF_SHIFT, -1)
        if not valid.any():
            return
        one = len(self._order) == 1
        for i in [0] if one else np.unique(index[valid]).tolist():
            proc = self._processes[self._order[i]]
            rows = np.flatnonzero(valid if one else index == i)
            at = (ref[rows] & ((1 << REF_SHIFT) - 1)) - proc.base
            if bool(np.any(at < 0)):
                raise AssertionError("a call still referenced by a waiting op was evicted")
            yield proc, rows, at
