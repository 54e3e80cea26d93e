"""On random nested traces that allow reading in batches, the fold in batches equals the whole
tables folded at once (`attribute_frames`) for every batch size, selection and
`other_threads`."""

from __future__ import annotations

from typing import Any

import polars as pl
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llm_perf_opt.attribution import RangeSelection
from tests.helpers.fold_compare import assert_same
from tests.helpers.frames import gpid, gtid, ranges
from tests.helpers.strategies import nested_ranges

OPS_SCHEMA = {
    "op_id": pl.Int64, "kind": pl.String, "device_id": pl.Int32, "stream_id": pl.Int32,
    "start_ns": pl.Int64, "end_ns": pl.Int64, "global_pid": pl.Int64,
    "correlation_id": pl.Int64, "name_id": pl.Int32, "graph_id": pl.UInt32,
}  # fmt: skip


@st.composite
def launches(draw: st.DrawFn) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Launch calls on three threads (correlation ids in call order) and their GPU ops, each
    starting after its call: kernels, copies, CUDA graph replays traced whole or node by node
    (or both), and ops whose call is not in the trace."""
    calls: list[tuple[int, int]] = sorted(
        (draw(st.integers(0, 10_000)), draw(st.sampled_from([1, 2, 3])))
        for _ in range(draw(st.integers(0, 30)))
    )
    ops: list[dict[str, Any]] = []

    def op(corr: int, start: int, end: int, kind: str = "kernel", graph: int | None = None) -> None:
        ops.append({"op_id": len(ops) + 1, "kind": kind, "device_id": draw(st.sampled_from([0, 1])),
                    "stream_id": draw(st.sampled_from([7, 8])), "start_ns": start, "end_ns": end,
                    "global_pid": gpid(), "correlation_id": corr,
                    "name_id": None if kind == "graph" else draw(st.integers(1, 3)),
                    "graph_id": graph})  # fmt: skip

    for i, (t, _tid) in enumerate(calls):
        corr = 1_000 + 2 * i  # odd ids have no call
        start = t + draw(st.integers(0, 3_000))
        shape = draw(st.sampled_from(["kernel", "memcpy", "nodes", "graph", "both", "none"]))
        if shape in ("kernel", "memcpy"):
            op(corr, start, start + draw(st.integers(1, 3_000)), shape)
        elif shape in ("nodes", "graph", "both"):
            nodes = [start + 100 * k for k in range(draw(st.integers(1, 3)))]
            if shape != "graph":
                for s in nodes:
                    op(corr, s, s + 80)
            if shape != "nodes":
                op(corr, nodes[0], nodes[-1] + 80, "graph", graph=draw(st.integers(1, 2)))
    for _ in range(draw(st.integers(0, 3))):  # no call: before, between or after the calls
        start = draw(st.integers(0, 13_000))
        op(draw(st.sampled_from([5, 1_001, 1_003, 9_999])), start, start + 50)
    call_frame = pl.DataFrame(
        {
            "global_tid": [gtid(tid) for _, tid in calls],
            "correlation_id": [1_000 + 2 * i for i in range(len(calls))],
            "start_ns": [t for t, _ in calls],
        },
        schema={"global_tid": pl.Int64, "correlation_id": pl.Int64, "start_ns": pl.Int64},
    )
    op_frame = pl.DataFrame(ops, schema=OPS_SCHEMA, orient="row").with_columns(
        pl.col("kind").cast(pl.Enum(["kernel", "memcpy", "memset", "graph"]))
    )
    return op_frame, call_frame


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    nested_ranges(1, 1),
    nested_ranges(2, 100),
    launches(),
    st.sampled_from([None, ("stage",), ("stage", "step")]),
    st.integers(1, 8),
    st.booleans(),
)
def test_equal_to_attribute_frames(
    first: list[dict[str, Any]],
    second: list[dict[str, Any]],
    case: tuple[pl.DataFrame, pl.DataFrame],
    names: tuple[str, ...] | None,
    rows: int,
    other_threads: bool,
) -> None:
    if not first + second:
        return
    frame = ranges(*first, *second)
    if names and not frame["name"].is_in(list(names)).any():
        return
    ops, calls = case
    assert_same(frame, ops, calls, RangeSelection(names=names), rows=rows,
                other_threads=other_threads)  # fmt: skip
