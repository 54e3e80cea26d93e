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

from llm_perf_opt.nesting import ranges_around, with_structure
from llm_perf_opt.trace import open_trace
from llm_perf_opt.vocab import ROLES

from .frames import ranges

REPO = Path(__file__).resolve().parents[2]
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
    """Ranges on two threads that nest, overlap in part, share bounds or end elsewhere."""
    rows = []
    for i in range(draw(st.integers(1, 40))):
        start = draw(st.integers(0, 60))
        rows.append(
            {
                "id": i + 1,
                "name": draw(st.sampled_from(["decode", "lib", "image", "warmup"])),
                "start": start,
                "end": start + draw(st.integers(0, 40)),
                "tid": draw(st.sampled_from([1, 2])),
                "elsewhere": draw(st.booleans()) and draw(st.booleans()),
            }
        )
    return ranges(*rows)


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
