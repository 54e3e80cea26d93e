"""The inputs `mfu.compute_mfu` takes, built from hand-made frames as the analysis builds them
from a trace: the ranges frame and the `OpFacts` of a fold planned by `mfu.plan_ops`."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import polars as pl

from llm_perf_opt.attribution import OpFacts, RangeSelection, attribute_whole, range_frame
from llm_perf_opt.errors import LlmPerfOptError
from llm_perf_opt.inputs.stage_ranges import RangeRef, stage_selection_refs
from llm_perf_opt.metrics.mfu import plan_ops
from llm_perf_opt.trace import API_CALLS_SCHEMA, GPU_OPS_SCHEMA, NVTX_RANGES_SCHEMA
from llm_perf_opt.vocab import STAGES


def report_inputs(
    ranges: pl.DataFrame,
    ops: pl.DataFrame,
    calls: pl.DataFrame,
    selection: RangeSelection,
    refs: Mapping[str, RangeRef],
    *,
    include_warmup: bool = False,
    stages: Sequence[str] = STAGES,
) -> tuple[pl.DataFrame, OpFacts]:
    """`(ranges, ops)` for `compute_mfu(ranges, ops, refs=refs, include_warmup=...,
    stages=...)` from frames shaped like `Trace.nvtx_ranges()`, `gpu_ops()` and `api_calls()`;
    no stage, or a plan that fails, leaves the fold unplanned as in the analysis (`compute_mfu`
    then raises the same error)."""
    base = range_frame(ranges, selection)
    plan = None
    if stages:
        with contextlib.suppress(LlmPerfOptError):
            plan = plan_ops(base, refs, include_warmup, stages)
    result = attribute_whole(
        base,
        ops,
        calls,
        groups=None if plan is None else plan.groups,
        windows=None if plan is None else plan.windows,
    )
    return result.ranges, OpFacts(result, plan)


class HandMade(Protocol):
    """A hand-made trace: its rows in the reader's frame schemas (`tests.helpers.synth`)."""

    ranges: list[dict[str, Any]]
    ops: list[dict[str, Any]]
    calls: list[dict[str, Any]]


def synth_inputs(
    trace: HandMade,
    refs: Mapping[str, RangeRef],
    names: Sequence[str] = STAGES,
    *,
    include_warmup: bool = False,
    stages: Sequence[str] | None = None,
) -> tuple[pl.DataFrame, OpFacts]:
    """`report_inputs` of a hand-made trace, the stage ranges `names` selected as the analysis
    selects them (`stages.stage_selection_refs`); `stages` default to `names`."""
    selected, domains = stage_selection_refs(refs, tuple(names))
    return report_inputs(
        pl.DataFrame(trace.ranges, schema=NVTX_RANGES_SCHEMA),
        pl.DataFrame(trace.ops, schema=GPU_OPS_SCHEMA),
        pl.DataFrame(trace.calls, schema=API_CALLS_SCHEMA),
        RangeSelection(names=selected, domains=domains),
        refs,
        include_warmup=include_warmup,
        stages=names if stages is None else stages,
    )
