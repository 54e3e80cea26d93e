"""`nesting.ranges_around`: the ranges a report reads, with the nesting they have among all
ranges, from batches; on random overlapping ranges and on every committed trace."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

from llm_perf_opt.attribution.nesting import ranges_around, with_structure
from llm_perf_opt.trace import open_trace
from llm_perf_opt.vocab import ROLES
from tests.helpers.frames import ranges
from tests.helpers.paths import REPO

NESTING = ["range_id", "depth", "parent_id", "path"]


def _assert_nesting_kept(whole: pl.DataFrame, around: pl.DataFrame, wanted: pl.Expr) -> None:
    """`around` holds every wanted row, and each of its rows nests as among all ranges."""
    assert set(whole.filter(wanted)["event_id"]) <= set(around["event_id"])
    expected = with_structure(whole).select(NESTING)
    got = with_structure(around).select(NESTING)
    ids = got["range_id"].implode()
    assert_frame_equal(got, expected.filter(pl.col("range_id").is_in(ids)))
    assert_frame_equal(around, whole.filter(pl.col("event_id").is_in(around["event_id"].implode())))


def _batches(frame: pl.DataFrame, rows: int) -> Any:
    def read(_first: bool) -> Iterator[pl.DataFrame]:
        return (frame.slice(i, rows) for i in range(0, frame.height, rows))

    return read


@st.composite
def overlapping(draw: st.DrawFn) -> pl.DataFrame:
    """Ranges on two threads: push/pop ones nested as a stack (of any length, bounds shared
    or not), start/end ones anywhere (overlapping in part, or ending on another thread)."""
    rows: list[dict[str, Any]] = []
    names = st.sampled_from(["decode", "lib", "image", "warmup"])

    def grow(tid: int, start: int, end: int, depth: int) -> None:
        cursor = start
        for _ in range(draw(st.integers(0, 3 if depth < 4 else 0))):
            if cursor > end:
                return
            a = draw(st.integers(cursor, end))
            b = draw(st.integers(a, end))
            rows.append({"id": len(rows) + 1, "name": draw(names), "start": a, "end": b,
                         "tid": tid})  # fmt: skip
            grow(tid, a, b, depth + 1)
            cursor = b

    for tid in (1, 2):
        grow(tid, 0, 100, 0)
    for _ in range(draw(st.integers(0, 8))):
        start = draw(st.integers(0, 100))
        rows.append(
            {
                "id": len(rows) + 1,
                "name": draw(names),
                "start": start,
                "end": start + draw(st.integers(0, 40)),
                "tid": draw(st.sampled_from([1, 2])),
                "style": "StartEnd",
                "elsewhere": draw(st.booleans()) and draw(st.booleans()),
            }
        )
    draw(st.randoms()).shuffle(rows)  # export order (the ids) is not start order
    return ranges(*({**row, "id": i + 1} for i, row in enumerate(rows)))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(overlapping(), st.integers(1, 7))
def test_random_ranges_keep_their_nesting(frame: pl.DataFrame, rows: int) -> None:
    wanted = pl.col("name") == "decode"
    _assert_nesting_kept(frame, ranges_around(_batches(frame, rows), wanted), wanted)


@pytest.mark.parametrize(
    "path", sorted((REPO / "traces").glob("*.sqlite.xz")), ids=lambda p: p.name.split(".")[0]
)
def test_committed_traces_keep_the_report_ranges(path: Path) -> None:
    trace = open_trace(path)
    whole = trace.nvtx_ranges()
    wanted = pl.col("name").is_in(list(ROLES))
    around = ranges_around(lambda first: trace.nvtx_range_batches(997, warn=first), wanted)
    _assert_nesting_kept(whole, around, wanted)
