"""Properties on generated traces, checked against a brute-force reference implementation."""

from __future__ import annotations

from typing import Any

import polars as pl
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llm_perf_opt.attribution import RangeSelection, attribute_frames
from tests.helpers.frames import ops_and_calls, ranges
from tests.helpers.strategies import nested_ranges


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame, list[Any]]:
    rows = draw(nested_ranges(1, 1))
    rows += draw(nested_ranges(2, 1 + len(rows)))
    op_rows = []
    for _ in range(draw(st.integers(0, 40))):
        start = draw(st.integers(0, 20_000))
        op_rows.append(
            {
                "start": start,
                "end": start + draw(st.integers(1, 500)),
                "launch": draw(st.one_of(st.none(), st.integers(0, 10_000))),
                "tid": draw(st.sampled_from([1, 2, 3])),
                "device": draw(st.sampled_from([0, 1])),
                "stream": draw(st.sampled_from([7, 8])),
            }
        )
    ops, calls = ops_and_calls(*op_rows)
    return ranges(*rows) if rows else ranges(), ops, calls, rows


def brute_force_inclusive(
    rows: list[dict[str, Any]], ops: pl.DataFrame, calls: pl.DataFrame
) -> dict[int, tuple[int, int, int]]:
    """Per range id: (ops, kernel ns, busy ns) by direct enumeration."""
    launch = {c["correlation_id"]: c for c in calls.iter_rows(named=True)}
    out = {}
    for r in rows:
        members = []
        for op in ops.iter_rows(named=True):
            call = launch.get(op["correlation_id"])
            if (
                call
                and call["global_tid"] % (1 << 24) == r["tid"]
                and r["start"] <= call["start_ns"] <= r["end"]
            ):
                members.append(op)
        busy = 0
        for device in {m["device_id"] for m in members}:
            covered: set[int] = set()
            for m in members:
                if m["device_id"] == device:
                    covered.update(range(m["start_ns"], m["end_ns"]))
            busy += len(covered)
        kernel = sum(m["end_ns"] - m["start_ns"] for m in members)
        out[r["id"]] = (len(members), kernel, busy)
    return out


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios(), st.sampled_from([None, ("stage",), ("stage", "step")]))
def test_invariants(
    case: tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame, list[Any]], names: tuple[str, ...] | None
) -> None:
    frame, ops, calls, rows = case
    if not rows:
        return
    selection = RangeSelection(names=names)
    if names and not frame["name"].is_in(list(names)).any():
        return
    result = attribute_frames(frame, ops, calls, selection)
    stats = result.ranges
    total_kernel = int((ops["end_ns"] - ops["start_ns"]).sum())
    free = result.unattributed()
    selected = stats.filter("selected")
    # exclusive time over the selected ranges + unattributed time = all kernel time
    assert (
        int(selected["excl_kernel_sum_ns"].sum()) + int(free["kernel_sum_ns"].sum()) == total_kernel
    )
    # every op counted exclusively at most once, none dropped
    assert int(selected["excl_n_op_rows"].sum()) + int(free["n_gpu_ops"].sum()) == ops.height
    assert int(stats.filter(~pl.col("selected"))["excl_n_op_rows"].sum()) == 0
    # busy ≤ kernel sum; busy ≤ projected span per device (two devices here)
    assert (stats["gpu_busy_ns"] <= stats["kernel_sum_ns"]).all()
    assert (stats["excl_gpu_busy_ns"] <= stats["excl_kernel_sum_ns"]).all()
    spans = stats.filter(pl.col("n_op_rows") > 0)
    assert (spans["gpu_busy_ns"] <= 2 * spans["proj_duration_ns"]).all()
    # inclusive numbers equal a direct enumeration
    expected = brute_force_inclusive(rows, ops, calls)
    for r in stats.iter_rows(named=True):
        assert (r["n_op_rows"], r["kernel_sum_ns"], r["gpu_busy_ns"]) == expected[r["range_id"]]
