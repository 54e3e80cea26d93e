"""Running per-range and per-window sums over ops that arrive in start order, batch by batch.

Busy time is a union of intervals per (range, device). With ops in start order the union needs,
across batch borders, one number per (range, device): the latest end so far, `C`. Proof: let op
k start at s_k ≥ s_i for every earlier op i, and let C be the largest earlier end, reached by op j.
Since s_j ≤ s_k, op j covers [s_k, C] (when s_k < C), and no earlier op reaches past C; so the part
of [s_k, e_k] not yet covered is [max(s_k, C), e_k], of length max(0, e_k − max(s_k, C)). Summing
that over the ops in any start order (ties in any order, streams overlapping or not, one batch or
many) gives the union, which is what a sort by (range, device, start) and a running maximum of
ends over all the ops at once gives (the reference in tests/helpers/perop.py).

The GPU view of a window (`gpu_view`) sweeps the same way with the window's clamped
starts and also splits each gap before an op at the op's launch. A gap belongs to the first op of
a run of equal starts in (launch, op id) order; runs of equal starts never straddle a batch
border (the engine holds back the ops at the latest start until a later start arrives), and the
ops clamped to the window start come first and have no gap at all, so ordering each batch by
(window, device, start, launch, op id) reproduces the order of all the ops sorted at once.
"""

from __future__ import annotations

from typing import Final

import numpy as np
import polars as pl

from llm_perf_opt.attribution.calls import EMPTY, INT64_MAX, INT64_MIN
from llm_perf_opt.attribution.gpu_view import (
    GPU_GROUPS_SCHEMA,
    GPU_WINDOWS_SCHEMA,
    STEP_GROUP,
    WINDOWS_SCHEMA,
)
from llm_perf_opt.attribution.intervals import searchsorted_in, segmented_prev_max, sorted_by
from llm_perf_opt.errors import CorruptTraceError

# A (key, latency) pair as one int64: the key above 40 bits of latency + 2^39 ns (±9 minutes).
LATENCY_BITS: Final = 40
LATENCY_OFFSET: Final = 1 << 39


class RangeTotals:
    """Count, launch count, kernel sum, busy union (and span) per range position."""

    def __init__(self, n: int, *, spans: bool) -> None:
        self.n = n
        self.n_gpu_ops = np.zeros(n, dtype=np.int64)
        self.n_op_rows = np.zeros(n, dtype=np.int64)
        self.kernel_sum_ns = np.zeros(n, dtype=np.int64)
        self.gpu_busy_ns = np.zeros(n, dtype=np.int64)
        self.spans = spans
        self.proj_start_ns = np.full(n if spans else 0, INT64_MAX, dtype=np.int64)
        self.proj_end_ns = np.full(n if spans else 0, INT64_MIN, dtype=np.int64)
        self._covered: dict[int, np.ndarray] = {}  # device -> latest end per range

    def add(
        self,
        pos: np.ndarray,
        dev: np.ndarray,
        start: np.ndarray,
        end: np.ndarray,
        kernel: np.ndarray,
        first: np.ndarray,
    ) -> None:
        """Count ops (one row per (range, op) pair), each range's ops later in start order than
        every op it was given before."""
        if pos.size == 0:
            return
        if not sorted_by(pos, dev, start):
            order = np.lexsort((start, dev, pos))
            pos, dev, start, end, kernel, first = (
                a[order] for a in (pos, dev, start, end, kernel, first)
            )
        n = pos.size
        new_seg = np.ones(n, dtype=bool)
        new_seg[1:] = (pos[1:] != pos[:-1]) | (dev[1:] != dev[:-1])
        covered = np.maximum(segmented_prev_max(end, new_seg), _lookup(self._covered, dev, pos))
        busy = np.clip(end - np.maximum(start, covered), 0, None)
        heads = np.flatnonzero(np.r_[True, pos[1:] != pos[:-1]])
        ids = pos[heads]
        self.n_gpu_ops[ids] += np.add.reduceat(first.astype(np.int64), heads)
        self.n_op_rows[ids] += np.diff(np.r_[heads, n])
        self.kernel_sum_ns[ids] += np.add.reduceat(np.where(kernel, end - start, 0), heads)
        self.gpu_busy_ns[ids] += np.add.reduceat(busy, heads)
        if self.spans:
            self.proj_start_ns[ids] = np.minimum(
                self.proj_start_ns[ids], np.minimum.reduceat(start, heads)
            )
            self.proj_end_ns[ids] = np.maximum(
                self.proj_end_ns[ids], np.maximum.reduceat(end, heads)
            )
        seg = np.flatnonzero(new_seg)
        _raise(self._covered, self.n, dev[seg], pos[seg], np.maximum.reduceat(end, seg))

    def frame(self, prefix: str) -> pl.DataFrame:
        """The sums as `rule.RANGES_SCHEMA`'s columns (spans null where a range has no op)."""
        columns = {
            f"{prefix}n_gpu_ops": self.n_gpu_ops,
            f"{prefix}n_op_rows": self.n_op_rows,
            f"{prefix}kernel_sum_ns": self.kernel_sum_ns,
            f"{prefix}gpu_busy_ns": self.gpu_busy_ns,
        }
        frame = pl.DataFrame(columns)
        if not self.spans:
            return frame
        has_ops = pl.Series(self.n_op_rows > 0)
        start = pl.Series(self.proj_start_ns)
        return frame.with_columns(
            proj_start_ns=pl.when(has_ops).then(start),
            proj_duration_ns=pl.when(has_ops).then(pl.Series(self.proj_end_ns) - start),
        )


def _lookup(per_device: dict[int, np.ndarray], dev: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """The carried value of each row's (device, position), int64 min where none."""
    out = np.full(pos.size, INT64_MIN, dtype=np.int64)
    for d, rows in _by_device(dev):
        values = per_device.get(d)
        if values is not None:
            out[rows] = values[pos[rows]]
    return out


def _raise(
    per_device: dict[int, np.ndarray], n: int, dev: np.ndarray, pos: np.ndarray, value: np.ndarray
) -> None:
    """Carried value of each (device, position) raised to `value` (pairs are distinct)."""
    for d, rows in _by_device(dev):
        values = per_device.setdefault(d, np.full(n, INT64_MIN, dtype=np.int64))
        values[pos[rows]] = np.maximum(values[pos[rows]], value[rows])


def _by_device(dev: np.ndarray) -> list[tuple[int, np.ndarray | slice]]:
    """The rows of each device (all rows at once when there is one device, the usual case)."""
    if dev.size == 0:
        return []
    if dev.min() == dev.max():
        return [(int(dev[0]), slice(None))]
    return [(d, np.flatnonzero(dev == d)) for d in np.unique(dev).tolist()]


class WindowTotals:
    """The GPU view of each window over the ops of its owner range launched inside it."""

    def __init__(self, windows: pl.DataFrame, latency_rows: int) -> None:
        windows = windows.select(WINDOWS_SCHEMA.names()).cast(dict(WINDOWS_SCHEMA))  # type: ignore[arg-type]
        self.ids = windows["window_id"].to_numpy()
        self.owner = windows["owner_id"].to_numpy()
        self.w_start = windows["start_ns"].to_numpy()
        self.w_end = windows["end_ns"].to_numpy()
        # groups in order of their first window, as `hostview.breakdown` lists them
        self.group_names: list[str] = windows["group"].unique(maintain_order=True).to_list()
        self.group_of = (
            windows["group"]
            .replace_strict(self.group_names, range(len(self.group_names)))
            .cast(pl.Int64)
            .to_numpy()
        )
        self.is_step = (windows["group"] == STEP_GROUP).to_numpy()
        n = self.n = windows.height
        if n >= 1 << (63 - LATENCY_BITS):
            raise ValueError(f"{n} windows: latency codes hold fewer than 2^23")
        self.busy = np.zeros(n, dtype=np.int64)
        self.starved = np.zeros(n, dtype=np.int64)
        self.gap = np.zeros(n, dtype=np.int64)
        self.head = np.zeros(n, dtype=np.int64)
        self.members = np.zeros(n, dtype=np.int64)
        self.last_end = np.full(n, INT64_MIN, dtype=np.int64)
        self._covered: dict[int, np.ndarray] = {}  # device -> latest clamped end per window
        self.median = np.full(n, np.nan)
        self._done = np.zeros(n, dtype=bool)
        self._open = _Counts(latency_rows)  # latencies of the windows not settled, per window
        self._groups = _Counts(latency_rows)  # latencies of the settled windows, per group

    def add(
        self,
        owner: np.ndarray,
        launch: np.ndarray,
        dev: np.ndarray,
        start: np.ndarray,
        end: np.ndarray,
        op_id: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Ops with their exclusive range (`owner`) and launch; each window's ops later in start
        order than those given before. Returns the (op position, window position) pairs."""
        keep = np.flatnonzero(np.isin(owner, self.owner))
        keep = keep[np.lexsort((op_id[keep], launch[keep], owner[keep]))]
        owner, launch = owner[keep], launch[keep]
        dev, start, end = dev[keep], start[keep], end[keep]
        seg_lo = np.searchsorted(owner, self.owner, side="left")
        seg_hi = np.searchsorted(owner, self.owner, side="right")
        lo, hi = seg_lo.copy(), seg_lo.copy()
        some = np.flatnonzero(seg_hi > seg_lo)  # windows whose owner launched ops in this batch
        lo[some] += searchsorted_in(launch, seg_lo[some], seg_hi[some], self.w_start[some], "left")
        hi[some] += searchsorted_in(launch, seg_lo[some], seg_hi[some], self.w_end[some], "right")
        lengths = np.maximum(hi - lo, 0)
        total = int(lengths.sum())
        if total == 0:
            return EMPTY, EMPTY
        offsets = np.cumsum(lengths) - lengths
        member = np.arange(total, dtype=np.int64) - np.repeat(offsets - lo, lengths)
        win = np.repeat(np.arange(self.n, dtype=np.int64), lengths)
        pairs = keep[member], win
        d = dev[member].astype(np.int64)
        m_launch, raw_start = launch[member], start[member]
        m_start = np.maximum(raw_start, self.w_start[win])
        m_end = np.maximum(end[member], m_start)
        # members run by window, then (launch, op id): a stable sort by (window, device,
        # start) leaves equal starts in (launch, op id) order
        if not sorted_by(win, d, m_start):
            order = np.lexsort((m_start, d, win))
            win, d, m_start, m_end, m_launch, raw_start = (
                a[order] for a in (win, d, m_start, m_end, m_launch, raw_start)
            )
        self._sweep(win, d, m_start, m_end, m_launch)
        self._open.add(win, raw_start - m_launch, np.ones(win.size, dtype=np.int64))
        return pairs

    def _sweep(
        self, win: np.ndarray, dev: np.ndarray, m_start: np.ndarray, m_end: np.ndarray,
        launch: np.ndarray,
    ) -> None:  # fmt: skip
        n = win.size
        new_seg = np.ones(n, dtype=bool)
        new_seg[1:] = (win[1:] != win[:-1]) | (dev[1:] != dev[:-1])
        carried = _lookup(self._covered, dev, win)
        head = new_seg & (carried == INT64_MIN)  # the window's first op on this device
        covered = np.maximum(segmented_prev_max(m_end, new_seg), carried)
        covered = np.where(head, m_start, covered)
        busy = np.clip(m_end - np.maximum(m_start, covered), 0, None)
        gap = np.clip(m_start - covered, 0, None)
        starved = np.clip(launch - covered, 0, gap)
        heads = np.flatnonzero(np.r_[True, win[1:] != win[:-1]])
        ids = win[heads]
        self.busy[ids] += np.add.reduceat(busy, heads)
        self.gap[ids] += np.add.reduceat(gap, heads)
        self.starved[ids] += np.add.reduceat(starved, heads)
        self.head[ids] += np.add.reduceat(np.where(head, m_start - self.w_start[win], 0), heads)
        self.members[ids] += np.diff(np.r_[heads, n])
        self.last_end[ids] = np.maximum(self.last_end[ids], np.maximum.reduceat(m_end, heads))
        seg = np.flatnonzero(new_seg)
        _raise(self._covered, self.n, dev[seg], win[seg], np.maximum.reduceat(m_end, seg))

    def settle(self, launch_floor: int) -> None:
        """Take the launch latency medians of the windows that no later op can enter (they end
        before `launch_floor`), and fold their latencies into their groups'."""
        done = (self.w_end < launch_floor) & ~self._done
        if not bool(done.any()):
            return
        self._done |= done
        key, latency, count = self._open.take(done)
        settled, medians = _medians(key, latency, count)
        self.median[settled] = medians
        self._groups.add(self.group_of[key], latency, count)

    def frames(self) -> tuple[pl.DataFrame, pl.DataFrame]:
        """`GPU_WINDOWS_SCHEMA` and `GPU_GROUPS_SCHEMA` once every op was given."""
        self.settle(INT64_MAX)
        g_end = np.maximum(self.w_end, self.last_end)
        window = g_end - self.w_start
        edge = self.head.copy()
        for covered in self._covered.values():
            started = covered > INT64_MIN
            edge += np.where(started, g_end - np.where(started, covered, 0), 0)
        edge = np.where(self.members == 0, window - self.busy, edge)
        windows = pl.DataFrame(
            {
                "window_id": self.ids,
                "gpu_window_ns": window.astype(np.float64),
                "busy_ns": self.busy.astype(np.float64),
                "starved_ns": self.starved.astype(np.float64),
                "queued_ns": (self.gap - self.starved).astype(np.float64),
                "edge_ns": edge.astype(np.float64),
                "n_gpu_ops": self.members.astype(np.float64),
                "launch_latency_median_ns": self.median,
            }
        ).with_columns(pl.col("launch_latency_median_ns").fill_nan(None))
        medians = np.full(len(self.group_names), np.nan)
        codes, group_medians = _medians(*self._groups.take(None))
        medians[codes] = group_medians
        groups = pl.DataFrame(
            {"group": self.group_names, "launch_latency_median_ns": medians},
            schema=GPU_GROUPS_SCHEMA,
        ).with_columns(pl.col("launch_latency_median_ns").fill_nan(None))
        return windows.cast(dict(GPU_WINDOWS_SCHEMA)), groups  # type: ignore[arg-type]


class _Counts:
    """How often each launch latency occurs, per key (a window or a group): exact medians in
    memory that grows with the distinct (key, latency) pairs, not with the ops. A pair is one
    int64 code (key above `LATENCY_BITS` bits of offset latency), so summing is a sort of the
    new codes and a merge with the summed ones, done when `rows` new ones wait or on `take`."""

    def __init__(self, rows: int) -> None:
        self._cap = rows
        self._codes, self._counts = EMPTY, EMPTY  # summed: distinct codes, sorted
        self._new: list[tuple[np.ndarray, np.ndarray]] = []
        self._new_rows = 0

    def add(self, key: np.ndarray, latency: np.ndarray, count: np.ndarray) -> None:
        if key.size == 0:
            return
        if bool(np.any(np.abs(latency) >= LATENCY_OFFSET)):
            raise CorruptTraceError(
                "a GPU op starts more than 9 minutes away from its launch call, beyond what the "
                "launch latencies are summed in; the export's GPU and CPU clocks disagree: "
                "re-export it, or capture again"
            )
        self._new.append(((key << LATENCY_BITS) | (latency + LATENCY_OFFSET), count))
        self._new_rows += key.size
        if self._new_rows > self._cap:
            self._sum()

    def _sum(self) -> None:
        if not self._new:
            return
        new = np.concatenate([c for c, _ in self._new])
        order = np.argsort(new)  # any order among equal codes: their counts are summed
        new_codes, new_counts = _distinct(
            new[order], np.concatenate([n for _, n in self._new])[order]
        )
        # two sorted runs of distinct codes: a stable sort merges them in linear time
        codes = np.concatenate([self._codes, new_codes])
        order = np.argsort(codes, kind="stable")
        self._codes, self._counts = _distinct(
            codes[order], np.concatenate([self._counts, new_counts])[order]
        )
        self._new, self._new_rows = [], 0

    def take(self, keys: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Remove and return the counts of the keys flagged in `keys` (a mask over keys; None:
        all) as (key, latency, count), sorted by key then latency."""
        self._sum()
        key = self._codes >> LATENCY_BITS
        flagged = np.ones(key.size, dtype=bool) if keys is None else keys[key]
        latency = (self._codes[flagged] & ((1 << LATENCY_BITS) - 1)) - LATENCY_OFFSET
        taken = key[flagged], latency, self._counts[flagged]
        self._codes, self._counts = self._codes[~flagged], self._counts[~flagged]
        return taken


def _distinct(codes: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted codes made distinct, their counts summed."""
    if codes.size == 0:
        return codes, counts
    heads = np.flatnonzero(np.r_[True, codes[1:] != codes[:-1]])
    return codes[heads], np.add.reduceat(counts, heads)


def _medians(
    key: np.ndarray, latency: np.ndarray, count: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per key of counts sorted by (key, latency): the median latency (the mean of the two
    middle values for an even total, as polars' median), as (keys, medians)."""
    if key.size == 0:
        return EMPTY, np.zeros(0)
    heads = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
    reach = np.cumsum(count)
    total = np.add.reduceat(count, heads)
    before = reach[heads] - count[heads]
    low = latency[np.searchsorted(reach, before + (total - 1) // 2, side="right")]
    high = latency[np.searchsorted(reach, before + total // 2, side="right")]
    return key[heads], (low.astype(np.float64) + high.astype(np.float64)) / 2
