"""Interval arithmetic over numpy arrays, shared by the attribution and the host view.

Rows run in segments (one range on one device, one thread's calls): a running maximum of the end
times of each segment gives what every interval adds to their union (`union_parts`); prefix sums
give the length or count of flagged pieces between two points (`covered_between`, `count_in`);
sorted searches place points in slices (`searchsorted_in`) and keys in tables (`first_match`).
No Python loop over rows: loops run over segments or chunks at most.
"""

from __future__ import annotations

import numpy as np
import polars as pl


def sorted_by(rid: np.ndarray, dev: np.ndarray, start: np.ndarray) -> bool:
    """True when rows already run by (range, device, start) — or any three such keys: launch
    order on one stream usually does, and skipping the sort of millions of rows is what matters."""
    d_r, d_d, d_s = np.diff(rid), np.diff(dev), np.diff(start)
    return bool(np.all((d_r > 0) | ((d_r == 0) & ((d_d > 0) | ((d_d == 0) & (d_s >= 0))))))


def segmented_prev_max(end: np.ndarray, new_seg: np.ndarray) -> np.ndarray:
    """For each row, the largest `end` of the earlier rows of its segment (int64 min at a
    segment's first row). Segments are lifted apart by a per-segment offset so one running
    maximum over the whole array never crosses a segment boundary."""
    seg = np.cumsum(new_seg) - 1
    low = int(end.min())
    span = int(end.max()) - low + 1
    floor = np.iinfo(np.int64).min
    if (int(seg[-1]) + 1) * span >= 1 << 62:  # would overflow: fall back to polars windows
        frame = pl.DataFrame({"seg": seg, "end": end})
        windowed = frame.select(pl.col("end").cum_max().shift(1).over("seg").fill_null(floor))
        return windowed.to_series().to_numpy()
    lifted = (end - low) + seg * span
    running: np.ndarray = np.maximum.accumulate(lifted)
    prev = np.empty_like(running)
    prev[0] = 0
    prev[1:] = running[:-1]
    out: np.ndarray = prev - seg * span + low
    out[new_seg] = floor
    return out


def union_parts(
    start: np.ndarray, end: np.ndarray, new_seg: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """For rows sorted by start within each segment: how far earlier rows of the segment reach
    (`segmented_prev_max` of the ends) and the time each row adds to the segment's union (its
    part after that reach); the second sums to the union's length."""
    covered = segmented_prev_max(end, new_seg)
    added: np.ndarray = np.clip(end - np.maximum(start, covered), 0, None)
    return covered, added


def covered_between(
    ps: np.ndarray, pe: np.ndarray, mine: np.ndarray, a: np.ndarray, b: np.ndarray
) -> np.ndarray:
    """Length of the disjoint, sorted pieces `[ps, pe)` flagged `mine` inside each `[a, b]`."""
    inside: np.ndarray = covered_before(ps, pe, mine, b) - covered_before(ps, pe, mine, a)
    return inside


def covered_before(ps: np.ndarray, pe: np.ndarray, mine: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Length of the flagged pieces before time t: whole pieces ended by t, plus the part of the
    piece that t falls into."""
    lengths = np.where(mine, pe - ps, 0)
    prefix = np.r_[0, np.cumsum(lengths)]
    k = np.searchsorted(pe, t, side="right")
    total: np.ndarray = prefix[k].astype(np.float64)
    inside = k < len(ps)
    kk = np.minimum(k, max(len(ps) - 1, 0))
    if len(ps):
        partial = np.where(inside & mine[kk], np.clip(t - ps[kk], 0, None), 0)
        total += partial
    return total


def count_in(flags: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Sum of `flags[lo:hi]` for each pair, by prefix sums."""
    prefix = np.r_[0, np.cumsum(flags.astype(np.int64))]
    counts: np.ndarray = (prefix[hi] - prefix[lo]).astype(np.float64)
    return counts


def searchsorted_in(
    values: np.ndarray, lo: np.ndarray, hi: np.ndarray, queries: np.ndarray, side: str
) -> np.ndarray:
    """Position of each query inside its own sorted slice `values[lo:hi]` (offset from lo).

    Slices are few (one per owner range), so a loop over distinct slices, not over queries."""
    result = np.zeros(len(queries), dtype=np.int64)
    pairs = np.stack([lo, hi], axis=1)
    for a, b in np.unique(pairs, axis=0).tolist():
        rows = np.flatnonzero((lo == a) & (hi == b))
        result[rows] = np.searchsorted(values[a:b], queries[rows], side=side)  # type: ignore[call-overload]
    return result


def first_match(keys: np.ndarray, values: np.ndarray | None, queries: np.ndarray) -> np.ndarray:
    """values[i] (i itself when `values` is None) for the first i with keys[i] == query, or -1:
    a direct table for dense non-negative keys, else a sorted search."""
    if len(keys) == 0:
        return np.full(len(queries), -1, dtype=np.int64)
    if values is None:
        values = np.arange(len(keys), dtype=np.int64)
    valid = keys >= 0
    top = int(keys.max())
    if top < 4 * len(keys) + (1 << 20):
        table = np.full(top + 2, -1, dtype=np.int64)
        table[keys[valid][::-1]] = values[valid][::-1]  # reversed: the first occurrence wins
        inside = (queries >= 0) & (queries <= top)
        return np.where(inside, table[np.clip(queries, 0, top + 1)], -1)
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    pos = np.clip(np.searchsorted(sorted_keys, queries, side="left"), 0, len(keys) - 1)
    hit = (sorted_keys[pos] == queries) & (queries >= 0)
    return np.where(hit, values[order][pos], -1)


def chunk_bounds(lengths: np.ndarray, max_rows: int) -> list[int]:
    """Split consecutive ranges into chunks of about `max_rows` member rows (a long range is a
    chunk of its own)."""
    cumulative = np.cumsum(lengths)
    bounds = [0]
    while bounds[-1] < len(lengths):
        base = int(cumulative[bounds[-1] - 1]) if bounds[-1] else 0
        nxt = int(np.searchsorted(cumulative, base + max_rows, side="right"))
        bounds.append(max(nxt, bounds[-1] + 1))
    return bounds
