"""The interval helpers against brute-force answers on small hand-made arrays."""

from __future__ import annotations

import numpy as np

from llm_perf_opt.attribution.intervals import (
    chunk_bounds,
    count_in,
    covered_between,
    searchsorted_in,
    segmented_prev_max,
    sorted_by,
    union_parts,
)


def test_union_parts_sum_to_the_union_of_each_segment() -> None:
    start = np.array([0, 5, 6, 20, 0, 3])
    end = np.array([10, 8, 12, 25, 4, 5])
    new_seg = np.array([True, False, False, False, True, False])
    covered, added = union_parts(start, end, new_seg)
    assert added.tolist() == [10, 0, 2, 5, 4, 1]  # [0, 12] ∪ [20, 25]; [0, 5]
    assert covered[1:4].tolist() == [10, 10, 12] and covered[5] == 4
    assert covered[0] == covered[4] == np.iinfo(np.int64).min


def test_segmented_prev_max_never_crosses_a_segment() -> None:
    end = np.array([100, 1, 2, 3])
    new_seg = np.array([True, True, False, False])
    assert segmented_prev_max(end, new_seg)[2:].tolist() == [1, 2]


def test_covered_between_counts_only_flagged_pieces_inside_the_window() -> None:
    ps, pe = np.array([0, 10, 20]), np.array([5, 15, 30])
    mine = np.array([True, False, True])
    got = covered_between(ps, pe, mine, np.array([2, 0, 25]), np.array([22, 100, 26]))
    assert got.tolist() == [3 + 2, 5 + 10, 1]


def test_counts_and_searches_inside_slices() -> None:
    flags = np.array([1, 0, 1, 1])
    assert count_in(flags, np.array([0, 1]), np.array([4, 2])).tolist() == [3, 0]
    values = np.array([1, 5, 9, 2, 4])
    lo, hi = np.array([0, 3]), np.array([3, 5])
    assert searchsorted_in(values, lo, hi, np.array([6, 3]), "left").tolist() == [2, 1]


def test_sorted_by_three_keys_and_chunk_bounds() -> None:
    assert sorted_by(np.array([1, 1, 2]), np.array([0, 1, 0]), np.array([9, 0, 0]))
    assert not sorted_by(np.array([1, 1]), np.array([0, 0]), np.array([5, 4]))
    assert chunk_bounds(np.array([3, 3, 10, 1]), 6) == [0, 2, 3, 4]
