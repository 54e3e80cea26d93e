"""Per-step and per-phase MFU of a serving engine's step loop (docs/serving.md).

`engine_report` is pure: it takes the attribution's ranges (every step range carries its
inclusive GPU columns: the ops it launched, nested scopes included, by the launch-based rule, so
async overlap, CUDA graph replays and worker processes need nothing more), the recognised step
names (`engines.step_names`), the model's step constants (`flops.steps.StepCosts`) and the peak,
and returns an `EngineReport`: one `EngineStep` per step range in time order and one
`EnginePhase` per phase present. The runner's metadata `serve` block, when it names the same
steps, gives each request's (query, context) lengths: attention is then exact.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Final

import polars as pl

from llm_perf_opt.attribution import OpFacts
from llm_perf_opt.attribution.gpu_view import WINDOWS_SCHEMA
from llm_perf_opt.flops.steps import StepCosts, request_work, step_work
from llm_perf_opt.hostview.breakdown import HostGpuView, breakdown
from llm_perf_opt.inputs import facts
from llm_perf_opt.inputs.run_meta import RunMeta
from llm_perf_opt.inputs.step_names import STEP_COUNTS, StepNames, phase_expr
from llm_perf_opt.metrics.verdict import UnitCounts, classify
from llm_perf_opt.peaks.table import PeakChoice
from llm_perf_opt.vocab import STEP_PHASES, WARMUP_PREFIX

# Step-time percentiles of a phase (nearest rank of the sorted step busy times).
PERCENTILES: Final = (0.5, 0.9, 0.99)
# The host/GPU breakdown's group of a phase's step windows.
GROUP_PREFIX: Final = "step:"


@dataclass(frozen=True)
class EngineStep:
    """One engine step range: its batch, GPU time, work and utilization."""

    index: int
    range_id: int
    name: str
    engine: str
    format: str
    phase: str
    ctx_reqs: int | None
    ctx_tokens: int | None
    gen_reqs: int | None
    gen_tokens: int | None
    encoder_images: int | None
    start_ns: int
    n_gpu_ops: int
    n_op_rows: int
    gpu_busy_ns: int
    cpu_duration_ns: int
    wall_ns: float
    wall_source: str
    flops: float | None
    flops_linear: float | None
    flops_attention: float | None
    flops_attention_max: float | None
    flops_vision: float | None
    attention_exact: bool | None
    bytes: float | None
    mfu_trace: float | None
    mfu_wall: float | None
    mbu_trace: float | None
    mbu_wall: float | None

    @property
    def tokens(self) -> int | None:
        if self.ctx_tokens is None or self.gen_tokens is None:
            return None
        return self.ctx_tokens + self.gen_tokens


@dataclass(frozen=True)
class EnginePhase:
    """The steps of one phase: sums, then ratios of sums; step busy-time percentiles."""

    phase: str
    n_steps: int
    ctx_tokens: int | None
    gen_tokens: int | None
    tokens: int | None
    tokens_per_s: float | None
    flops: float | None
    flops_max: float | None
    attention_exact: bool
    n_gpu_ops: int
    n_op_rows: int
    gpu_ops_per_step: float
    gpu_busy_ns: int
    wall_ns: float
    mfu_trace: float | None
    mfu_wall: float | None
    mbu_trace: float | None
    mbu_wall: float | None
    step_busy_p50_ns: float
    step_busy_p90_ns: float
    step_busy_p99_ns: float
    # the host/GPU breakdown summed over the phase's steps, and the label it gives
    host: HostGpuView | None = None
    verdict: str | None = None


@dataclass(frozen=True)
class EngineReport:
    """The engine view of a trace: its steps in time order and each phase present."""

    engines: tuple[str, ...]
    formats: tuple[str, ...]
    steps: tuple[EngineStep, ...]
    phases: tuple[EnginePhase, ...]
    exact_source: str
    notes: tuple[str, ...] = ()


def _ratio(num: float | None, den: float) -> float | None:
    return None if num is None or den <= 0 else num / den


def step_ranges(ranges: pl.DataFrame, names: StepNames, include_warmup: bool) -> pl.DataFrame:
    """The step ranges of `ranges` with their counts and phase, in time order (CPU start, then
    range id); steps under a `warmup…` range only with `include_warmup`."""
    steps = ranges.join(names.names, on="name", how="inner").with_columns(phase=phase_expr())
    if not include_warmup:
        warm = pl.col("path").str.contains(f"(?:^|/){WARMUP_PREFIX}[^/]*/").fill_null(False)
        steps = steps.filter(~warm)
    return steps.sort("cpu_start_ns", "range_id")


def step_windows(ranges: pl.DataFrame, names: StepNames, include_warmup: bool) -> pl.DataFrame:
    """The host/GPU windows (`hostview.WINDOWS_SCHEMA`) of the step ranges: each step owns its
    ops, grouped by phase (`GROUP_PREFIX` + phase). Valid when the step ranges are the selected
    ones of the attribution (a trace of engine steps without stage ranges)."""
    steps = step_ranges(ranges, names, include_warmup)
    return steps.select(
        pl.col("range_id").alias("window_id"),
        pl.col("range_id").alias("owner_id"),
        (GROUP_PREFIX + pl.col("phase")).alias("group"),
        "global_tid",
        "start_ns",
        "end_ns",
    ).cast(dict(WINDOWS_SCHEMA))  # type: ignore[arg-type]


def _exact_entries(
    steps: pl.DataFrame,
    meta: RunMeta | None,
    costs: StepCosts | None,
    vision: Mapping[int, float],
    notes: list[str],
) -> tuple[pl.DataFrame, str]:
    """Per step (position in time order): the runner's exact attention FLOPs, keys read, encoder
    images, their vision FLOPs (`vision`: per request id) and wall seconds, from the metadata
    `serve` block when it names the same steps."""
    schema = {"index": pl.Int64, "pairs_exact": pl.Int64, "keys_exact": pl.Int64,
              "encoder_images": pl.Int64, "flops_vision": pl.Float64,
              "runner_wall_s": pl.Float64}  # fmt: skip
    none = pl.DataFrame(schema=schema)
    if meta is None or meta.serve is None or costs is None:
        return none, "step names"
    serve = meta.serve
    names = [s.name for s in serve.steps]
    if names != steps["name"].to_list():
        notes.append(
            f"run metadata serve block lists {len(names)} steps, the trace has "
            f"{steps.height} step ranges (or other names): attention bounded from the names"
        )
        return none, "step names"
    entries = pl.DataFrame(
        [
            (
                k,
                e.query_len,
                e.context_len,
                e.encoder_images,
                e.encoder_images * vision.get(e.request, 0.0),
            )
            for k, s in enumerate(serve.steps)
            for e in s.entries
        ],
        schema={
            "index": pl.Int64,
            "q": pl.Int64,
            "c": pl.Int64,
            "images": pl.Int64,
            "vision": pl.Float64,
        },
        orient="row",
    )
    flops, keys = request_work(costs, pl.col("c"), pl.col("q"))
    per_step = entries.group_by("index").agg(
        pairs_exact=flops.sum(),
        keys_exact=keys.sum(),
        encoder_images=pl.col("images").sum(),
        flops_vision=pl.col("vision").sum(),
    )
    walls = pl.DataFrame(
        {"index": range(len(serve.steps)), "runner_wall_s": [s.wall_s for s in serve.steps]},
        schema={"index": pl.Int64, "runner_wall_s": pl.Float64},
    )
    exact = walls.join(per_step, on="index", how="left").with_columns(
        pl.col("pairs_exact", "keys_exact", "encoder_images", "flops_vision").fill_null(0)
    )
    return exact.select(list(schema)), f"run metadata serve block ({meta.source})"


def engine_report(
    ranges: pl.DataFrame,
    names: StepNames,
    *,
    costs: StepCosts | None,
    peak: PeakChoice,
    meta: RunMeta | None = None,
    vision: Mapping[int, float] | None = None,
    include_warmup: bool = False,
    ops: OpFacts | None = None,
    host_views: pl.DataFrame | None = None,
) -> EngineReport:
    """The engine view of the step ranges among `ranges` (`Attribution.ranges`).

    Args:
        ranges: the attribution's ranges (inclusive GPU columns of every range).
        names: the recognised step names.
        costs: the model's step constants (None: no FLOPs, only times and counts).
        peak: the peak FLOP/s and bandwidth to divide by.
        meta: the run metadata; its `serve` block gives exact per-request lengths.
        vision: vision-encoder FLOPs of each request's image, by request id, counted in the
            steps where the metadata says the request's image is encoded.
        include_warmup: keep steps under a `warmup…` range.
        ops, host_views: the attributed ops and `analysis.read_host_views` of the step windows:
            add each phase's host/GPU breakdown (only when the step ranges were the selected
            ranges of the attribution).
    """
    notes: list[str] = []
    steps = step_ranges(ranges, names, include_warmup).with_row_index("index")
    steps = steps.with_columns(pl.col("index").cast(pl.Int64))
    exact, source = _exact_entries(steps, meta, costs, vision or {}, notes)
    steps = steps.join(exact, on="index", how="left")
    if costs is not None:
        steps = step_work(steps, costs)
    else:
        steps = steps.with_columns(
            pl.lit(None, dtype=pl.Float64).alias(c)
            for c in ("flops_linear", "flops_attention", "flops_attention_max", "bytes")
        ).with_columns(attention_exact=pl.lit(None, dtype=pl.Boolean))
    steps = steps.with_columns(pl.col("flops_vision").fill_null(0.0))
    rows = [_step(row, peak) for row in steps.iter_rows(named=True)]
    phases = [
        _phase(phase, [s for s in rows if s.phase == phase], peak)
        for phase in STEP_PHASES
        if any(s.phase == phase for s in rows)
    ]
    if ops is not None and host_views is not None:
        windows = step_windows(ranges, names, include_warmup)
        views = breakdown(windows, host_views, ops.gpu_view(windows))
        phases = [_with_view(p, views.group(GROUP_PREFIX + p.phase)) for p in phases]
    return EngineReport(
        engines=tuple(dict.fromkeys(s.engine for s in rows)),
        formats=tuple(dict.fromkeys(s.format for s in rows)),
        steps=tuple(rows),
        phases=tuple(phases),
        exact_source=source,
        notes=tuple(notes),
    )


def _step(row: Mapping[str, Any], peak: PeakChoice) -> EngineStep:
    """One step's row of the frame (counts, GPU columns, work) as an `EngineStep`."""
    wall_ns, wall_source = facts.wall_of(row["runner_wall_s"], row)
    busy = int(row["gpu_busy_ns"])
    parts = (row["flops_linear"], row["flops_attention"], row["flops_vision"])
    flops = None if any(p is None for p in parts) else sum(parts)
    bw = peak.peak_bandwidth_Bps
    moved = row["bytes"]
    return EngineStep(
        index=int(row["index"]),
        range_id=int(row["range_id"]),
        name=row["name"],
        engine=row["engine"],
        format=row["format"],
        phase=row["phase"],
        **{c: row[c] for c in STEP_COUNTS[:4]},
        encoder_images=row["encoder_images"],
        start_ns=int(row["cpu_start_ns"]),
        n_gpu_ops=int(row["n_gpu_ops"]),
        n_op_rows=int(row["n_op_rows"]),
        gpu_busy_ns=busy,
        cpu_duration_ns=int(row["cpu_duration_ns"]),
        wall_ns=wall_ns,
        wall_source=wall_source,
        flops=flops,
        flops_linear=row["flops_linear"],
        flops_attention=row["flops_attention"],
        flops_attention_max=row["flops_attention_max"],
        flops_vision=row["flops_vision"],
        attention_exact=row["attention_exact"],
        bytes=moved,
        mfu_trace=_ratio(flops, peak.peak_flops * busy * 1e-9),
        mfu_wall=_ratio(flops, peak.peak_flops * wall_ns * 1e-9),
        mbu_trace=_ratio(moved, (bw or 0) * busy * 1e-9),
        mbu_wall=_ratio(moved, (bw or 0) * wall_ns * 1e-9),
    )


def _with_view(phase: EnginePhase, view: HostGpuView | None) -> EnginePhase:
    if view is None:
        return phase
    steps = phase.n_steps or 1
    per_step = UnitCounts(
        "step", view.n_syncs / steps, view.n_memcpy / steps, view.n_launches / steps
    )
    verdict = classify(view, per_step, phase.mfu_trace, phase.mbu_trace)
    return replace(phase, host=view, verdict=verdict.label)


def _sum_known(values: Sequence[float | int | None]) -> float | None:
    """The sum, or None when any term is unknown."""
    return None if any(v is None for v in values) else sum(v for v in values if v is not None)


def _nearest_rank(sorted_values: Sequence[int], q: float) -> float:
    """The nearest-rank percentile: the ⌈q·n⌉-th smallest value."""
    rank = math.ceil(round(q * len(sorted_values), 9))
    return float(sorted_values[max(rank, 1) - 1])


def _phase(phase: str, steps: Sequence[EngineStep], peak: PeakChoice) -> EnginePhase:
    """Sums over a phase's steps, ratios of the sums."""
    busy = sum(s.gpu_busy_ns for s in steps)
    wall = sum(s.wall_ns for s in steps)
    ctx = _sum_known([s.ctx_tokens for s in steps])
    gen = _sum_known([s.gen_tokens for s in steps])
    tokens = None if ctx is None or gen is None else int(ctx + gen)
    flops = _sum_known([s.flops for s in steps])
    flops_max = _sum_known(
        [None if s.flops is None else s.flops - (s.flops_attention or 0)
         + (s.flops_attention_max or 0) for s in steps]
    )  # fmt: skip
    moved = _sum_known([s.bytes for s in steps])
    bw = peak.peak_bandwidth_Bps or 0
    ops = sum(s.n_gpu_ops for s in steps)
    busy_sorted = sorted(s.gpu_busy_ns for s in steps)
    p50, p90, p99 = (_nearest_rank(busy_sorted, q) for q in PERCENTILES)
    return EnginePhase(
        phase=phase,
        n_steps=len(steps),
        ctx_tokens=None if ctx is None else int(ctx),
        gen_tokens=None if gen is None else int(gen),
        tokens=tokens,
        tokens_per_s=_ratio(tokens, wall * 1e-9),
        flops=flops,
        flops_max=flops_max,
        attention_exact=all(s.attention_exact for s in steps),
        n_gpu_ops=ops,
        n_op_rows=sum(s.n_op_rows for s in steps),
        gpu_ops_per_step=ops / len(steps),
        gpu_busy_ns=busy,
        wall_ns=wall,
        mfu_trace=_ratio(flops, peak.peak_flops * busy * 1e-9),
        mfu_wall=_ratio(flops, peak.peak_flops * wall * 1e-9),
        mbu_trace=_ratio(moved, bw * busy * 1e-9),
        mbu_wall=_ratio(moved, bw * wall * 1e-9),
        step_busy_p50_ns=p50,
        step_busy_p90_ns=p90,
        step_busy_p99_ns=p99,
    )
