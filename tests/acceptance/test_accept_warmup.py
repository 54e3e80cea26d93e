"""Warmup rounds on the real traces: excluded, they change nothing; included, they add an instance.

Each trace holds one warmup round (`warmup` ⊃ `image` ⊃ vision, prefill, decode ⊃ one
decode_step). The reference is the same trace with that round cut out of the SQLite file: the
`warmup` range, every range nested in it and the GPU work launched inside it.
"""

from __future__ import annotations

import sqlite3
from typing import Any

import pytest

from llm_perf_opt.trace import open_trace
from tests.helpers.real_traces import NAMES, STAGES, RealTraces


def _without_ids(value: Any) -> Any:
    """The report minus what names the file or the range rows (ids shift when rows go), and
    the whole-trace view (every op of the file, the warmup's too)."""
    if isinstance(value, dict):
        dropped = ("range_id", "trace", "trace_view", "trace_categories")
        return {k: _without_ids(v) for k, v in value.items() if k not in dropped}
    if isinstance(value, list):
        return [_without_ids(v) for v in value]
    return value


@pytest.mark.parametrize("name", NAMES)
def test_stripped_copy_really_lost_the_warmup(real: RealTraces, name: str) -> None:
    before, after = open_trace(real.plain(name)), open_trace(real.stripped(name))
    ranges_before, ranges_after = before.nvtx_ranges(), after.nvtx_ranges()
    assert "warmup" in ranges_before["name"].to_list()
    assert "warmup" not in ranges_after["name"].to_list()
    # one round: image, vision, prefill, decode, one decode_step, plus its CCCL ranges
    for stage in (*STAGES, "image"):
        n_before = ranges_before.filter(ranges_before["name"] == stage).height
        assert ranges_after.filter(ranges_after["name"] == stage).height == n_before - 1
    assert 0 < after.gpu_ops().height < before.gpu_ops().height
    with sqlite3.connect(real.stripped(name)) as con:
        (n_marks,) = con.execute("SELECT count(*) FROM NVTX_EVENTS WHERE eventType = 34").fetchone()
    assert n_marks == 1  # the metadata mark stays


@pytest.mark.parametrize("name", NAMES)
def test_excluded_warmup_changes_nothing(real: RealTraces, name: str) -> None:
    with_warmup = real.auto(name)
    without = real.report(name, "--ctx-mode", "auto", source="stripped")
    assert not with_warmup["include_warmup"]
    assert _without_ids(without) == _without_ids(with_warmup)


@pytest.mark.parametrize("name", NAMES)
def test_include_warmup_adds_the_warmup_instance(real: RealTraces, name: str) -> None:
    default = real.auto(name)
    included = real.report(name, "--ctx-mode", "auto", "--include-warmup")
    assert included["include_warmup"]
    meta = real.meta(name)
    for stage in STAGES:
        s, base = included["stages"][stage], default["stages"][stage]
        assert s["n_instances"] == base["n_instances"] + meta["warmup"]["rounds"] == 4
        first, *measured = s["instances"]
        assert first["warmup"] and first["wall_source"] == "range"  # no runner clock for warmup
        assert not any(i["warmup"] for i in measured)
        # the measured instances are the same numbers, one position later
        renumbered = [dict(i, instance=i["instance"] - 1) for i in measured]
        assert renumbered == base["instances"]
        assert s["gpu_busy_s"] > base["gpu_busy_s"] and s["flops"] > base["flops"]
    # warmup ran max_new_tokens 2: one decode step at the first image's C = Lp + 1
    warm_ctx = included["context"]["instances"][0]
    lp = meta["images"][0]["prefill_len"]
    assert warm_ctx["decode_steps"] == meta["warmup"]["max_new_tokens"] - 1 == 1
    assert warm_ctx["ctx_lens"] == [lp + 1]
    assert (
        included["stages"]["decode"]["decode_steps"]
        == default["stages"]["decode"]["decode_steps"] + 1
    )
