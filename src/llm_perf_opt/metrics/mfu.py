"""Per-stage MFU and MBU of an inference run from attributed GPU time (docs/mfu-math.md).

`compute_mfu` is pure: it takes the attribution frames, the stage facts (run metadata or flags),
a FLOPs model and a peak, and returns an `MfuReport`; it neither reads files nor prints.
`analysis.analyze_trace` is the I/O entry that gathers those inputs from a trace.

Time conventions: *trace* time of a stage is its GPU busy time (union of the intervals of the GPU
ops it launched); *wall* time is the runner's synchronized wall clock when the metadata has it,
else the range's CPU start → the later of its CPU end and its last GPU op end (so wall ≥ busy
always holds and mfu_wall ≤ mfu_trace).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import polars as pl

from llm_perf_opt.attribution import OpFacts, OpsPlan
from llm_perf_opt.attribution.gpu_view import STEP_GROUP
from llm_perf_opt.errors import ConfigError, NoGpuTimeError, SelectionError
from llm_perf_opt.flops.flops_model import FlopsModel, StageWork, TrafficModel, stage_work
from llm_perf_opt.hostview.breakdown import Breakdown, HostGpuView, breakdown, stage_windows
from llm_perf_opt.inputs import facts
from llm_perf_opt.inputs.stage_ranges import Instance, RangeRef, decode_steps, group_instances
from llm_perf_opt.kernels import shares
from llm_perf_opt.kernels.shares import CategoryShare, KernelShare, LaunchKinds
from llm_perf_opt.metrics.engine_view import EngineReport
from llm_perf_opt.metrics.verdict import NO_BREAKDOWN, UnitCounts, classify
from llm_perf_opt.metrics.whole_trace import TraceView
from llm_perf_opt.peaks.sources import PeakSources
from llm_perf_opt.peaks.table import PeakChoice
from llm_perf_opt.vocab import CTX_MODES, STAGES


@dataclass(frozen=True)
class InstanceResult:
    """One stage of one image instance."""

    stage: str
    instance: int
    image_index: int | None
    warmup: bool
    range_id: int
    flops: float
    gpu_busy_ns: int
    kernel_sum_ns: int
    n_gpu_ops: int
    n_kernels: int
    cpu_duration_ns: int
    wall_ns: float
    wall_source: str
    mfu_trace: float | None
    mfu_wall: float | None
    idle_fraction: float | None
    decode_steps: int | None = None
    decode_bytes: float | None = None
    mbu_trace: float | None = None
    mbu_wall: float | None = None
    bytes_moved: float | None = None
    n_graph_ops: int = 0
    graph_sum_ns: int = 0
    host: HostGpuView | None = None
    # the part of `flops` attention kernels do (the rest: GEMMs)
    attention_flops: float = 0.0


@dataclass(frozen=True)
class StageResult:
    """A stage aggregated over its instances (sums, then ratios of sums)."""

    stage: str
    range: RangeRef
    flops: float
    gpu_busy_ns: int
    kernel_sum_ns: int
    n_gpu_ops: int
    n_kernels: int
    cpu_duration_ns: int
    wall_ns: float
    wall_source: str
    mfu_trace: float | None
    mfu_wall: float | None
    idle_fraction: float | None
    mean_kernel_ns: float | None
    # what limits the stage and what to do (`verdict.classify`, from the host/GPU breakdown)
    verdict: str
    instances: tuple[InstanceResult, ...]
    top_kernels: tuple[KernelShare, ...]
    decode_steps: int | None = None
    kernels_per_step: float | None = None
    step_busy_ns: float | None = None
    step_wall_ns: float | None = None
    decode_bytes: float | None = None
    bytes_per_step: float | None = None
    mbu_trace: float | None = None
    mbu_wall: float | None = None
    bytes_moved: float | None = None
    n_graph_ops: int = 0
    graph_sum_ns: int = 0
    advice: str = NO_BREAKDOWN.advice
    # host/GPU breakdown (hostview): summed over instances, the median decode step, and the MFU
    # if only the launch calls were left of the host's time
    host: HostGpuView | None = None
    per_step: HostGpuView | None = None
    mfu_launch_only: float | None = None
    # kernel time per category (categories.RULES), summing to kernel_sum_ns + graph_sum_ns
    categories: tuple[CategoryShare, ...] = ()


@dataclass(frozen=True)
class ModelResult:
    """All stages together: total FLOPs over total time; `absent_stages` had no range."""

    flops: float
    gpu_busy_ns: int
    wall_ns: float
    mfu_trace: float | None
    mfu_wall: float | None
    absent_stages: tuple[str, ...] = ()


@dataclass(frozen=True)
class DecodeStep:
    """One decode step (a nested `decode_step` range), for the step time series: its FLOPs at
    its C (decode FLOPs are a sum over steps, so the steps of an instance add up to it), its
    trace MFU and, with a host view, its host/GPU breakdown."""

    instance: int
    step: int
    ctx_len: int
    payload_ctx_len: int | None
    cpu_duration_ns: int
    gpu_busy_ns: int
    n_gpu_ops: int
    wall_ns: float
    wall_source: str
    range_id: int
    flops: float
    mfu_trace: float | None
    host: HostGpuView | None = None


@dataclass(frozen=True)
class ContextInstance:
    """The context lengths one instance's decode FLOPs used."""

    instance: int
    image_index: int | None
    prefill_len: int | None
    decode_steps: int
    source: str
    ctx_lens: tuple[int, ...]


@dataclass(frozen=True)
class StepCategories:
    """The median decode step (the lower median by GPU busy time over every instance's steps,
    ties in instance and step order) and its kernel time per category."""

    instance: int
    step: int
    range_id: int
    gpu_busy_ns: int
    categories: tuple[CategoryShare, ...]


@dataclass(frozen=True)
class ContextReport:
    """The context-length section: mode, the single C of fixed/max, per-instance C values."""

    mode: str
    ctx_len: int | None
    window: int
    instances: tuple[ContextInstance, ...]


@dataclass(frozen=True)
class MfuReport:
    """Everything the renderers show; `report.to_json` documents the JSON form."""

    trace_path: str | None
    gpu_name: str | None
    peak: PeakChoice
    ctx: ContextReport
    stages: Mapping[str, StageResult]
    model: ModelResult
    decode_steps: tuple[DecodeStep, ...]
    flops_source: str
    meta_source: str | None
    include_warmup: bool
    warnings: tuple[str, ...] = ()
    static_compute: Mapping[str, Any] | None = None
    peak_sources: PeakSources | None = None
    # the serving engine's steps and phases (serving.py), when the trace has step ranges
    engine: EngineReport | None = None
    # every GPU op of the trace, attributed or not (traceview.py; set by the analysis)
    trace_view: TraceView | None = None
    # the median decode step's kernel categories (None without decode steps)
    step_categories: StepCategories | None = None


def _ratio(num: float, den: float) -> float | None:
    return num / den if den > 0 else None


def plan_ops(
    ranges: pl.DataFrame,
    refs: Mapping[str, RangeRef],
    include_warmup: bool = False,
    stages: Sequence[str] = STAGES,
) -> OpsPlan:
    """What `compute_mfu` will ask of the ops of `ranges` (a ranges frame of the attribution,
    or `attribution.range_frame` before any op is counted: only its structure is read).

    Raises:
        SelectionError, AnalysisError: as `compute_mfu` does for the same ranges.
    """
    stages = tuple(s for s in STAGES if s in stages)
    instances = group_instances(ranges, refs, include_warmup, stages)
    return _plan(ranges, instances, decode_steps(ranges, refs["decode_step"], instances), stages)


def _plan(
    ranges: pl.DataFrame,
    instances: Sequence[Instance],
    steps_of: Mapping[int, Sequence[Mapping[str, Any]]],
    stages: Sequence[str],
) -> OpsPlan:
    """Each stage's instance ranges, and the windows of those and of their decode steps."""
    members = {
        stage: [int(i.members[stage]["range_id"]) for i in instances if stage in i.members]
        for stage in stages
    }
    step_ranges = [
        (owner, int(step["range_id"])) for owner in members.get("decode", [])
        for step in steps_of[owner]
    ]  # fmt: skip
    groups = pl.DataFrame(
        [(rid, stage) for stage, ids in members.items() for rid in ids],
        schema={"range_id": pl.Int64, "group": pl.String},
        orient="row",
    )
    return OpsPlan(groups, stage_windows(ranges, members, step_ranges))


def compute_mfu(
    ranges: pl.DataFrame,
    ops: OpFacts,
    *,
    refs: Mapping[str, RangeRef],
    inputs: facts.StageInputs,
    flops_model: FlopsModel,
    peak: PeakChoice,
    ctx: facts.ContextChoice,
    include_warmup: bool = False,
    top_kernels: int = 10,
    kernel_names: pl.DataFrame | None = None,
    flops_source: str = "analytic",
    trace_path: str | None = None,
    static_compute: Mapping[str, Any] | None = None,
    traffic: TrafficModel | None = None,
    stages: Sequence[str] = STAGES,
    host_views: pl.DataFrame | None = None,
    engine: EngineReport | None = None,
    trace_only: bool = False,
) -> MfuReport:
    """Per-stage, per-instance and model-level MFU (and decode MBU) of an attributed trace.

    The attribution must have been made with exactly the three stage ranges selected
    (`stage_selection_refs`), so each op counts for its innermost stage and nested library ranges
    take nothing; a stage's GPU columns are its exclusive columns (equal to the inclusive ones
    unless stages nest).

    Args:
        ranges: `Attribution.ranges`.
        ops: what the attributed ops say: `attribution.OpFacts` of a fold planned by
            `plan_ops(ranges, ...)`.
        refs: the range for each role of ROLES.
        inputs: run metadata and flag facts (Lp, decode steps, mode, crops).
        flops_model: FLOPs and bytes per stage.
        peak: the peak FLOP/s and bandwidth to divide by.
        ctx: context mode for decode FLOPs.
        include_warmup: keep ranges under a `warmup…` range.
        top_kernels: how many kernel names to list per stage.
        kernel_names: `Trace.kernel_names()` to name them.
        flops_source: shown in reports (which config the FLOPs came from).
        trace_path: shown in reports.
        static_compute: the runner's `static_compute.json`, passed through to the reports.
        traffic: bytes moved per stage for the roofline (None: not computed).
        stages: the stages to analyze (a non-empty subset of STAGES, e.g. no vision for a
            text-only model); the model line sums them and names the others as absent.
        host_views: `read_host_views` of the trace: adds the host/GPU breakdown (hostview).
        trace_only: with no stage and no engine, a report of the trace alone (the analysis adds
            its whole-trace view) instead of a SelectionError.
        engine: the serving engine's view (serving.engine_report), carried in the report; with
            it, `stages` may be empty (a trace of engine steps only).

    Raises:
        SelectionError: a stage range is absent (the message lists the names present).
        MissingInputError: a FLOP fact is missing (the message names the flag).
        NoGpuTimeError: a stage with FLOPs has no GPU time.
        AnalysisError: the trace and the metadata disagree on the number of images.
    """
    if ctx.mode not in CTX_MODES:
        raise ConfigError(f"--ctx-mode must be one of {', '.join(CTX_MODES)}, got {ctx.mode!r}")
    warnings: list[str] = []
    stages = tuple(s for s in STAGES if s in stages)
    if not stages and engine is None and not trace_only:
        raise SelectionError(f"no stage to analyze; choose some of {', '.join(STAGES)}")
    instances = group_instances(ranges, refs, include_warmup, stages, warnings) if stages else []
    known = facts.instance_facts(instances, inputs, warnings, "vision" in stages) if stages else []
    members = [int(r["range_id"]) for i in instances for r in i.members.values()]
    n_kernels = ops.launch_kinds(members)
    steps_of = decode_steps(ranges, refs["decode_step"], instances)
    window = flops_model.window

    per_stage: dict[str, list[InstanceResult]] = {s: [] for s in stages}
    contexts: list[ContextInstance] = []
    steps_out: list[DecodeStep] = []
    for pos, (inst, fact) in enumerate(zip(instances, known, strict=True)):
        for stage, row in inst.members.items():
            lens: tuple[int, ...] = ()
            if stage == "decode":
                steps = steps_of[int(row["range_id"])]
                c = facts.decode_context(inst, fact, steps, inputs, ctx, window, warnings)
                head = (pos, inst.image_index, fact.prefill_len)
                contexts.append(ContextInstance(*head, c.decode_steps, c.source, c.ctx_lens))
                lens = c.ctx_lens
                steps_out.extend(_steps(pos, steps, lens, fact.step_wall_s, flops_model, peak))
            work = stage_work(stage, flops_model, traffic, mode=fact.mode, crop_grid=fact.crop_grid,
                              prefill_len=fact.prefill_len, ctx_lens=lens)  # fmt: skip
            res = _instance_result(stage, pos, inst, fact, row, work, n_kernels, peak)
            if res.gpu_busy_ns == 0 and res.flops > 0:
                warnings.append(f"{stage} instance {pos}: no GPU time in range {res.range_id}")
            per_stage[stage].append(res)

    results = {
        stage: _aggregate(stage, refs[stage], rows, ops, kernel_names, top_kernels, peak)
        for stage, rows in per_stage.items()
    }
    plan = _plan(ranges, instances, steps_of, stages) if stages else None
    median_step = _median_step(steps_out, plan, ops, kernel_names)
    if host_views is not None and plan is not None:
        views = breakdown(plan.windows, host_views, ops.gpu_view(plan.windows))
        step_ids = plan.windows.filter(pl.col("group") == STEP_GROUP)["window_id"].to_list()
        results = _with_host_views(results, views, step_ids, peak.peak_flops)
        steps_out = [replace(d, host=views.window(d.range_id)) for d in steps_out]
    warnings.extend(_implausible(results))
    warnings.extend(shares.graph_level_note(ops.n_graph_ops()))
    flops_total = sum(s.flops for s in results.values())
    busy_total = sum(s.gpu_busy_ns for s in results.values())
    wall_total = sum(s.wall_ns for s in results.values())
    model = ModelResult(
        flops=flops_total,
        gpu_busy_ns=busy_total,
        wall_ns=wall_total,
        mfu_trace=_ratio(flops_total, peak.peak_flops * busy_total * 1e-9),
        mfu_wall=_ratio(flops_total, peak.peak_flops * wall_total * 1e-9),
        absent_stages=tuple(s for s in STAGES if s not in stages),
    )
    return MfuReport(
        trace_path=trace_path,
        gpu_name=peak.gpu_name,
        peak=peak,
        ctx=ContextReport(
            mode=ctx.mode,
            ctx_len={"fixed": ctx.ctx_len, "max": window}.get(ctx.mode),
            window=window,
            instances=tuple(contexts),
        ),
        stages=results,
        model=model,
        decode_steps=tuple(steps_out),
        flops_source=flops_source,
        meta_source=inputs.meta.source if inputs.meta else None,
        include_warmup=include_warmup,
        warnings=tuple(warnings),
        static_compute=static_compute,
        engine=engine,
        step_categories=median_step,
    )


def _median_step(
    steps: Sequence[DecodeStep],
    plan: OpsPlan | None,
    ops: OpFacts,
    kernel_names: pl.DataFrame | None,
) -> StepCategories | None:
    """The lower median step by GPU busy time, with the categories of its window's ops."""
    if not steps or plan is None:
        return None
    ranked = sorted(steps, key=lambda d: (d.gpu_busy_ns, d.instance, d.step))
    d = ranked[(len(ranked) - 1) // 2]
    window = plan.windows.filter(pl.col("window_id") == d.range_id)
    cats = ops.step_categories(window, kernel_names)
    return StepCategories(d.instance, d.step, d.range_id, d.gpu_busy_ns, cats)


def _with_host_views(
    stages: Mapping[str, StageResult],
    views: Breakdown,
    steps: list[int],
    peak_flops: float,
) -> dict[str, StageResult]:
    """Stages with their host/GPU breakdown (docs/mfu-math.md, "Where the wall time goes")."""
    out = {}
    for name, s in stages.items():
        view = views.group(name)
        if view is None:
            out[name] = s
            continue
        floor_ns = max(view.busy_ns, view.launch_ns)
        per_step = views.median(steps) if name == "decode" and steps else None
        counts = UnitCounts.of(view, per_step, len(s.instances))
        verdict = classify(view, counts, s.mfu_trace, s.mbu_trace)
        out[name] = replace(
            s,
            instances=tuple(replace(r, host=views.window(r.range_id)) for r in s.instances),
            host=view,
            per_step=per_step,
            verdict=verdict.label,
            advice=verdict.advice,
            mfu_launch_only=_ratio(s.flops, peak_flops * floor_ns * 1e-9),
        )
    return out


def _implausible(stages: Mapping[str, StageResult]) -> list[str]:
    """Utilizations above 1 mean the FLOPs/bytes model or the peak does not fit the trace."""
    out = []
    for s in stages.values():
        for what, value in (("MFU", s.mfu_trace), ("MBU", s.mbu_trace)):
            if value is not None and value > 1:
                out.append(
                    f"{s.stage}: trace {what} {value:.2f} > 1: the model counts more work than "
                    "the GPU can do in that time; check --model/--config, --mode, --prefill-len "
                    "and the peak"
                )
    return out


def _instance_result(
    stage: str,
    pos: int,
    inst: Instance,
    fact: facts.InstanceFacts,
    row: Mapping[str, Any],
    work: StageWork,
    n_kernels: Mapping[int, LaunchKinds],
    peak: PeakChoice,
) -> InstanceResult:
    """Times of one stage range (exclusive columns) against its work."""
    wall_ns, wall_source = facts.wall_of(fact.wall_s.get(stage), row)
    busy = int(row["excl_gpu_busy_ns"])
    rid = int(row["range_id"])
    kinds = n_kernels.get(rid, LaunchKinds())
    bw = peak.peak_bandwidth_Bps if work.decode_bytes is not None else None
    return InstanceResult(
        stage=stage,
        instance=pos,
        image_index=inst.image_index,
        warmup=inst.warmup,
        range_id=rid,
        flops=work.flops,
        gpu_busy_ns=busy,
        kernel_sum_ns=int(row["excl_kernel_sum_ns"]),
        n_gpu_ops=int(row["excl_n_gpu_ops"]),
        n_kernels=kinds.n_kernels,
        n_graph_ops=kinds.n_graph_ops,
        graph_sum_ns=kinds.graph_sum_ns,
        cpu_duration_ns=int(row["cpu_duration_ns"]),
        wall_ns=wall_ns,
        wall_source=wall_source,
        mfu_trace=_ratio(work.flops, peak.peak_flops * busy * 1e-9),
        mfu_wall=_ratio(work.flops, peak.peak_flops * wall_ns * 1e-9),
        idle_fraction=_idle(busy, wall_ns),
        decode_steps=work.decode_steps,
        decode_bytes=work.decode_bytes,
        mbu_trace=_ratio(work.decode_bytes or 0.0, bw * busy * 1e-9) if bw else None,
        mbu_wall=_ratio(work.decode_bytes or 0.0, bw * wall_ns * 1e-9) if bw else None,
        bytes_moved=work.bytes_moved,
        attention_flops=work.attention_flops,
    )


def _with_flops(
    shares: Sequence[CategoryShare], flops: float, attention: float, peak_flops: float
) -> tuple[CategoryShare, ...]:
    """The stage's FLOPs split between its GEMM and attention kernels (`StageWork`), each
    over that category's own kernel time: how fast they run while they run."""
    if flops <= 0:
        return tuple(shares)
    split = {"gemm": flops - attention, "attention": attention}
    out = []
    for c in shares:
        part = split.get(c.category)
        if part is not None and c.total_ns > 0:
            rate = part / (c.total_ns * 1e-9)
            c = replace(c, flops=part, achieved_flops_per_s=rate, peak_fraction=rate / peak_flops)
        out.append(c)
    return tuple(out)


def _idle(busy_ns: float, wall_ns: float) -> float | None:
    """GPU idle fraction inside the wall time, clamped to [0, 1]."""
    if wall_ns <= 0:
        return None
    return min(1.0, max(0.0, 1.0 - busy_ns / wall_ns))


def _steps(
    instance: int,
    rows: Sequence[Mapping[str, Any]],
    lens: Sequence[int],
    step_wall_s: Sequence[float],
    flops_model: FlopsModel,
    peak: PeakChoice,
) -> list[DecodeStep]:
    """Decode-step series rows; the runner's per-step wall wins over the range span."""
    use_runner = len(step_wall_s) == len(rows)
    out = []
    for k, row in enumerate(rows):
        c = lens[k] if k < len(lens) else 0
        busy = int(row["gpu_busy_ns"])
        flops = flops_model.decode_flops([c]) if c else 0.0
        out.append(
            DecodeStep(
                instance,
                k + 1,
                c,
                row.get("payload_int"),
                int(row["cpu_duration_ns"]),
                busy,
                int(row["n_gpu_ops"]),
                *facts.wall_of(step_wall_s[k] if use_runner else None, row),
                range_id=int(row["range_id"]),
                flops=flops,
                mfu_trace=_ratio(flops, peak.peak_flops * busy * 1e-9),
            )
        )
    return out


def _aggregate(
    stage: str,
    ref: RangeRef,
    rows: Sequence[InstanceResult],
    ops: OpFacts,
    kernel_names: pl.DataFrame | None,
    top_k: int,
    peak: PeakChoice,
) -> StageResult:
    """Sum a stage over instances; ratios are of sums (time-weighted means)."""
    flops = sum(r.flops for r in rows)
    busy = sum(r.gpu_busy_ns for r in rows)
    wall = sum(r.wall_ns for r in rows)
    if busy == 0 and flops > 0:
        raise NoGpuTimeError(
            f"stage {stage} (range {ref.describe()}, {len(rows)} instance(s)) has no GPU time: "
            "no GPU op was launched inside its ranges. Check --stage "
            f"{stage}=NAME[@DOMAIN], or pass --other-threads if another thread launches the kernels"
        )
    kernel_sum = sum(r.kernel_sum_ns for r in rows)
    n_kernels = sum(r.n_kernels for r in rows)
    sources = {r.wall_source for r in rows}
    mean_kernel = _ratio(kernel_sum, n_kernels)
    n_graph = sum(r.n_graph_ops for r in rows)
    graph_sum = sum(r.graph_sum_ns for r in rows)
    mfu_trace = _ratio(flops, peak.peak_flops * busy * 1e-9)
    moved = [r.bytes_moved for r in rows if r.bytes_moved is not None]
    result = StageResult(
        stage=stage,
        range=ref,
        flops=flops,
        gpu_busy_ns=busy,
        kernel_sum_ns=kernel_sum,
        n_gpu_ops=sum(r.n_gpu_ops for r in rows),
        n_kernels=n_kernels,
        n_graph_ops=n_graph,
        graph_sum_ns=graph_sum,
        cpu_duration_ns=sum(r.cpu_duration_ns for r in rows),
        wall_ns=wall,
        wall_source=sources.pop() if len(sources) == 1 else "mixed",
        mfu_trace=mfu_trace,
        mfu_wall=_ratio(flops, peak.peak_flops * wall * 1e-9),
        idle_fraction=_idle(busy, wall),
        mean_kernel_ns=mean_kernel,
        verdict=NO_BREAKDOWN.label,
        instances=tuple(rows),
        top_kernels=ops.top_kernels(stage, [r.range_id for r in rows], kernel_names, top_k),
        categories=_with_flops(
            ops.categories(stage, [r.range_id for r in rows], kernel_names),
            flops,
            sum(r.attention_flops for r in rows),
            peak.peak_flops,
        ),
        bytes_moved=sum(moved) if len(moved) == len(rows) else None,
    )
    if stage != "decode":
        return result
    n_steps = sum(r.decode_steps or 0 for r in rows)
    known = [r.decode_bytes for r in rows if r.decode_bytes is not None]
    n_bytes = sum(known) if len(known) == len(rows) else None
    bw = peak.peak_bandwidth_Bps if n_bytes is not None else None
    mbu_trace = _ratio(n_bytes, bw * busy * 1e-9) if bw and n_bytes is not None else None
    return replace(
        result,
        decode_steps=n_steps,
        kernels_per_step=_ratio(n_kernels, n_steps),
        step_busy_ns=_ratio(busy, n_steps),
        step_wall_ns=_ratio(wall, n_steps),
        decode_bytes=n_bytes,
        bytes_per_step=_ratio(n_bytes, n_steps) if n_bytes is not None else None,
        mbu_trace=mbu_trace,
        mbu_wall=_ratio(n_bytes, bw * wall * 1e-9) if bw and n_bytes is not None else None,
    )
