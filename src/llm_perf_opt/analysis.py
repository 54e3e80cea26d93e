"""Analyze one trace: the only module that opens one, and wires reader → attribution → stages →
facts → MFU (docs/architecture.md).

`analyze_trace` opens the trace, reads the run metadata (the trace's mark or `--meta`), picks the
stage ranges, attributes the GPU ops, reads the host view in a background thread meanwhile,
resolves the architecture, dtype, GPU and peak, finds the runner's static compute report, and
hands everything to the pure `mfu.compute_mfu`.

Attribution is one fold (`attribution.fold`) over the GPU ops and launch calls read in start-ordered
batches, in memory bounded by `--memory-budget`, not by the trace; the CUDA API batches also feed
the host view on their way. A trace the batches cannot be read from (tables not stored in start
order, a launch call the budget no longer holds) is folded again from its whole tables, sorted,
with a note.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import polars as pl

from llm_perf_opt.attribution import (
    CALL_BATCH_SCHEMA,
    DEFAULT_MEMORY_BUDGET_BYTES,
    GROUPS_SCHEMA,
    OpFacts,
    OpsPlan,
    RangeSelection,
    ReadAhead,
    StreamBudget,
    StreamOrderError,
    StreamResult,
    attribute_stream,
    attribute_whole,
    range_frame,
)
from llm_perf_opt.attribution.nesting import ranges_around
from llm_perf_opt.errors import (
    LlmPerfOptError,
    NoGpuOpsError,
    SelectionError,
    UnorderedTableError,
)
from llm_perf_opt.flops.flops_model import AnalyticFlops, resolve_config
from llm_perf_opt.flops.hf import HfModel, hf_model_from_dict
from llm_perf_opt.flops.hf_model import HfFlops, read_hf_config
from llm_perf_opt.flops.steps import BOUND_ASSUMPTION, step_costs
from llm_perf_opt.flops.vision_towers import default_image_size
from llm_perf_opt.hostview.stream import HostViewStream
from llm_perf_opt.inputs.facts import StageInputs, bytes_dtype, choose_context, gpu_of, peak_dtype
from llm_perf_opt.inputs.run_meta import (
    RunMeta,
    load_meta_file,
    load_static_compute,
    meta_from_marks,
)
from llm_perf_opt.inputs.stage_ranges import (
    RangeRef,
    default_refs,
    missing_stage_message,
    stage_selection_refs,
)
from llm_perf_opt.inputs.step_names import (
    StepFormat,
    StepNames,
    formats_for,
    name_filter,
    step_names,
)
from llm_perf_opt.metrics.engine_view import EngineReport, engine_report, step_windows
from llm_perf_opt.metrics.mfu import MfuReport, compute_mfu, plan_ops
from llm_perf_opt.metrics.whole_trace import trace_view
from llm_perf_opt.peaks.calibration import calibration_of
from llm_perf_opt.peaks.sources import resolve_peaks
from llm_perf_opt.peaks.table import PeakChoice
from llm_perf_opt.trace import Trace, open_trace
from llm_perf_opt.trace.columns import COMPUTE_OP_KINDS, GPU_OP_TABLES
from llm_perf_opt.vocab import FAMILIES, HF_DECODER_FAMILY, STAGES, LmHeadPositions

Progress = Callable[[str], None]


@dataclass(frozen=True)
class AnalyzeOptions:
    """Everything `mfu-analyze` can be told (docs/configuration.md)."""

    ctx_mode: str | None = None
    ctx_len: int | None = None
    peak_tflops: float | None = None
    dtype: str | None = None
    stages: Mapping[str, RangeRef] = field(default_factory=dict)
    model: str | None = None
    config_path: str | None = None
    prefill_len: int | None = None
    decode_tokens: int | None = None
    mode: str | None = None
    crop_grid: tuple[int, int] | None = None
    meta_path: str | None = None
    static_compute_path: str | None = None
    peak_source: str | float = "table"
    include_warmup: bool = False
    top_kernels: int = 10
    other_threads: bool = False
    prefill_logits: LmHeadPositions = "last"
    image_hw: tuple[int, int] | None = None
    memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET_BYTES
    # False: `Analysis.ranges` may hold only the ranges the report reads (the stage, image and
    # decode-step ranges and those open around them), which a one-pass analysis then sums alone
    every_range: bool = True
    # which serving engines' step names to read (vocab.ENGINES), or one --step-pattern REGEX
    engine: str = "auto"
    step_pattern: str | None = None


@dataclass(frozen=True)
class Analysis:
    """What `analyze_trace` found: always the attribution, the report when MFU facts sufficed."""

    ranges: pl.DataFrame
    report: MfuReport | None
    skipped_reason: str | None = None
    # What the reader left out of the trace (impossible rows), also in the report's warnings.
    trace_warnings: tuple[str, ...] = ()
    # the run metadata the analysis used (backend settings for the results database)
    meta: RunMeta | None = None


def analyze_trace(
    path: str | Path,
    options: AnalyzeOptions,
    *,
    require_mfu: bool = True,
    progress: Progress | None = None,
    then: Callable[[Trace, Analysis], None] | None = None,
) -> Analysis:
    """Open a trace, attribute its GPU ops and compute the MFU report.

    Args:
        path: the nsys SQLite export.
        options: the analysis options.
        require_mfu: False (only `--ranges-out` asked): when MFU facts are missing, return the
            attribution with `report=None` and the reason instead of raising.
        progress: called with a short status line before each slow step.
        then: called with the still open trace and the analysis once its report is made
            (`--perfetto` reads the GPU ops again from it).

    Raises:
        LlmPerfOptError: any bad input (see the subclasses), with a message naming the fix.
    """
    say = progress or (lambda _msg: None)
    formats = formats_for(options.engine, options.step_pattern)
    say(f"reading {path}")
    trace = open_trace(path)
    if require_mfu and not any(
        trace.present_columns(GPU_OP_TABLES[kind]) for kind in COMPUTE_OP_KINDS
    ):
        raise NoGpuOpsError(
            f"{path}: the export has no kernel table ({GPU_OP_TABLES['kernel']}), only copies "
            "and memsets, so no MFU can be computed from it; capture with `nsys profile -t "
            "cuda,nvtx ...` (kernels are traced with cuda), or ask only --ranges-out"
        )
    budget = StreamBudget.of(options.memory_budget_bytes)
    # the big tables' first batches load while the NVTX events are read
    batches = _Batches.open(trace, budget)
    try:
        meta = load_meta_file(options.meta_path) if options.meta_path else None
        if meta is None:
            meta = meta_from_marks(trace.nvtx_marks())
        refs = default_refs(meta.nvtx_domain if meta and trace.range_domains else None)
        refs.update(options.stages)
        pruned = not options.every_range
        raw = _report_ranges(trace, refs, budget, formats) if pruned else trace.nvtx_ranges()
    except BaseException:
        batches.close()
        raise
    present = tuple(s for s in STAGES if not raw.filter(refs[s].expr()).is_empty())
    steps = step_names(raw["name"], formats)
    # A stage named with --stage must exist; a default-named one may be absent (no vision), and
    # all of them in a trace of engine steps.
    alone = not present and steps.names.is_empty()
    # no stage or step range at all, none named: the whole-trace view alone
    whole_only = alone and not options.stages
    missing = [s for s in STAGES if s not in present and (s in options.stages or alone)]
    selection = None
    reason = None
    notes: list[str] = []
    if whole_only:  # every range selected: the report reads none of them
        notes = [
            "no stage or engine-step range: the whole-trace view alone ("
            + missing_stage_message(STAGES[0], refs[STAGES[0]], trace.nvtx_ranges())
            + "; or, for a served model's step ranges, --engine auto or --step-pattern REGEX, "
            "docs/serving.md)"
        ]
    elif missing:
        stage = missing[0]
        # the message lists every range name of the trace
        reason = missing_stage_message(stage, refs[stage], trace.nvtx_ranges())
        if alone:
            reason += (
                "; or, for a served model's step ranges, --engine auto or --step-pattern REGEX "
                "(docs/serving.md)"
            )
        if require_mfu:
            batches.close()
            raise SelectionError(reason)
    elif present:
        names, domains = stage_selection_refs(refs, present)
        selection = RangeSelection(names=names, domains=domains)
    else:  # engine steps alone: each step takes the ops launched inside it, scopes included
        selection = RangeSelection(names=tuple(steps.names["name"]), domains=None)
    # the steps' host view only where they own their ops (no stage ranges)
    windows = host_windows(raw, refs, None if present else steps) if reason is None else None
    stages = present if reason is None else ()
    base, plan = _plan(raw, selection, refs, options, stages, steps)
    mib = options.memory_budget_bytes / 2**20
    say(f"attributing GPU ops to NVTX ranges (memory budget {mib:,.0f} MiB)")
    stream = _host_stream(trace, windows)
    batches.host.start(stream)
    try:
        try:
            result = attribute_stream(
                base,
                batches.ops,
                batches.calls,
                other_threads=options.other_threads,
                groups=None if plan is None else plan.groups,
                windows=None if plan is None else plan.windows,
                memory_budget_bytes=options.memory_budget_bytes,
            )
        finally:
            batches.close()
        host_views = None if stream is None else stream.result
    except (StreamOrderError, UnorderedTableError) as exc:
        notes.append(f"attributed from the whole tables, sorted, not in batches: {exc}")
        say("attributing GPU ops to NVTX ranges from the whole tables")
        result, host_views = _fold_whole(trace, base, plan, windows, options)
    ranges, ops = result.ranges, OpFacts(result, plan)
    read_warnings = (*trace.warnings, *notes)
    if reason is not None or host_views is None:
        return Analysis(ranges, None, reason, read_warnings, meta)
    try:
        say("computing MFU")
        report = _report(
            trace, ranges, ops, meta, refs, options, path, present, host_views(), steps
        )
    except LlmPerfOptError as exc:
        if require_mfu:
            raise
        return Analysis(ranges, None, str(exc), read_warnings, meta)
    kernels = trace.kernel_names()
    view = trace_view(result.trace_kernels, result.trace_busy_ns, kernels, options.top_kernels)
    report = replace(report, warnings=(*read_warnings, *report.warnings), trace_view=view)
    analysis = Analysis(ranges, report, None, read_warnings, meta)
    if then is not None:
        then(trace, analysis)
    return analysis


@dataclass(frozen=True)
class _Batches:
    """The GPU-op and CUDA API batches of a one-pass attribution, read ahead in background
    threads from when they are opened; the API batches also feed the host view (`host`)."""

    ops: ReadAhead
    calls: ReadAhead
    host: _HostTap

    @classmethod
    def open(cls, trace: Trace, budget: StreamBudget) -> _Batches:
        host = _HostTap()
        return cls(
            ReadAhead(trace.gpu_op_batches(budget.op_batch_rows)),
            ReadAhead(host.tapped(trace.api_call_batches(budget.call_batch_rows))),
            host,
        )

    def close(self) -> None:
        self.ops.close()
        self.calls.close()
        self.host.start(None)


class _HostTap:
    """Hands each API call batch to a `HostViewStream` on its way to the attribution, so one
    reading of the API table serves both; the stream is given once the windows are known (the
    reading thread waits for it)."""

    def __init__(self) -> None:
        self._given = threading.Event()
        self._stream: HostViewStream | None = None

    def start(self, stream: HostViewStream | None) -> None:
        """The stream to feed (None: none, or stop waiting)."""
        if not self._given.is_set():
            self._stream = stream
            self._given.set()

    def tapped(self, batches: Iterable[pl.DataFrame]) -> Iterator[pl.DataFrame]:
        for batch in batches:
            self._given.wait()
            if self._stream is not None:
                self._stream.add(batch)
            yield batch.select(CALL_BATCH_SCHEMA.names())

    def result(self) -> pl.DataFrame:
        """The host view, once every batch went through."""
        assert self._stream is not None
        return self._stream.result()


def _report_ranges(
    trace: Trace,
    refs: Mapping[str, RangeRef],
    budget: StreamBudget,
    formats: Sequence[StepFormat],
) -> pl.DataFrame:
    """The NVTX ranges a report reads (`nesting.ranges_around`: the ranges of every role, the
    engine steps and those open around them), read in batches."""
    wanted = pl.any_horizontal([*(ref.expr() for ref in refs.values()), name_filter(formats)])
    rows = budget.op_batch_rows
    return ranges_around(lambda first: trace.nvtx_range_batches(rows, warn=first), wanted)


def _plan(
    raw: pl.DataFrame,
    selection: RangeSelection | None,
    refs: Mapping[str, RangeRef],
    options: AnalyzeOptions,
    stages: Sequence[str],
    steps: StepNames,
) -> tuple[pl.DataFrame, OpsPlan | None]:
    """The ranges frame the fold fills, and what it should sum: what `compute_mfu` will ask
    (`plan_ops`) of the stages' ranges, or what the engine view asks of the steps' (a trace of
    engine steps alone); no plan without either, or when planning finds the stages unusable
    (`compute_mfu` then raises the same error)."""
    base = range_frame(raw, selection)
    plan = None
    if stages:
        with contextlib.suppress(LlmPerfOptError):  # compute_mfu raises it again
            plan = plan_ops(base, refs, options.include_warmup, stages)
    elif not steps.names.is_empty():
        windows = step_windows(base, steps, options.include_warmup)
        plan = OpsPlan(pl.DataFrame(schema=GROUPS_SCHEMA), windows)
    return base, plan


def _fold_whole(
    trace: Trace,
    base: pl.DataFrame,
    plan: OpsPlan | None,
    windows: pl.DataFrame | None,
    options: AnalyzeOptions,
) -> tuple[StreamResult, Callable[[], pl.DataFrame] | None]:
    """The fold of the trace's whole tables (any order), and the host view of `windows` from
    the whole CUDA API table, sorted by start."""
    result = attribute_whole(
        base,
        trace.gpu_ops(lean=True),
        trace.launch_calls(),
        other_threads=options.other_threads,
        groups=None if plan is None else plan.groups,
        windows=None if plan is None else plan.windows,
    )
    host = _host_stream(trace, windows)
    if host is None:
        return result, None
    host.add(trace.api_call_table().sort("start_ns", maintain_order=True))
    return result, host.result


def _host_stream(trace: Trace, windows: pl.DataFrame | None) -> HostViewStream | None:
    """A host view of `windows` to feed the CUDA API calls to (None: no windows)."""
    if windows is None:
        return None
    return HostViewStream(windows, trace.sync_events(), trace.resolve_strings)


def host_windows(
    ranges: pl.DataFrame, refs: Mapping[str, RangeRef], steps: StepNames | None = None
) -> pl.DataFrame:
    """The windows of the host view: every stage, decode-step and engine-step range of `ranges`
    (`Trace.nvtx_ranges()`)."""
    roles = [refs[role].expr() for role in (*STAGES, "decode_step")]
    if steps is not None:
        roles.append(pl.col("name").is_in(steps.names["name"].implode()))
    wanted = pl.any_horizontal(roles)
    return ranges.filter(wanted).select(
        pl.col("event_id").alias("window_id"), "global_tid", "start_ns", "end_ns"
    )


def _report(
    trace: Trace,
    ranges: pl.DataFrame,
    ops: OpFacts,
    meta: RunMeta | None,
    refs: Mapping[str, RangeRef],
    options: AnalyzeOptions,
    path: str | Path,
    stages: Sequence[str],
    host_views: pl.DataFrame,
    steps: StepNames,
) -> MfuReport:
    """Resolve config, dtype, GPU and peak, the engine view when the trace has engine steps,
    then `compute_mfu`."""
    warnings: list[str] = []
    hf_model = read_hf_config(options.config_path) if options.config_path else None
    given = f"--config {options.config_path}"
    if hf_model is None and options.config_path is None and options.model is None:
        hf_model = _meta_hf_model(meta)
        given = "run metadata model.config"
    # no stage and no engine step: no FLOPs are counted, any architecture will do
    counted = bool(stages) or not steps.names.is_empty()
    if hf_model is None and not counted and options.model is None and meta is None:
        config, _ = resolve_config(model=FAMILIES[0], config_path=None, meta=None, warnings=[])
        flops_source = "none (no stage or engine-step ranges: the whole-trace view alone)"
    elif hf_model is None:
        config, flops_source = resolve_config(
            model=options.model, config_path=options.config_path, meta=meta, warnings=warnings
        )
    else:
        flops_source = f"{given} (Hugging Face {hf_model.model_type})"
        tower = hf_model.vision
        # a Qwen-VL tower takes any image size: say which one its vision FLOPs assume
        unsized = options.image_hw is None and "vision" in stages
        if tower is not None and tower.image_size is None and unsized:
            h, w = default_image_size(tower)
            warnings.append(f"vision FLOPs for {h}x{w} px images; pass --image-size HxW")
    dtype = peak_dtype(options.dtype, meta)
    ctx = choose_context(options.ctx_mode, options.ctx_len, meta, warnings)
    gpu_name, trace_bw = gpu_of(trace.gpu_info(), ops.devices(), meta)
    peak, peak_sources, peak_warnings = resolve_peaks(
        gpu_name,
        dtype,
        peak_source=options.peak_source,
        peak_tflops=options.peak_tflops,
        trace_bandwidth_Bps=trace_bw,
        calibration=calibration_of(meta),
    )
    warnings += peak_warnings
    storage = bytes_dtype(dtype, meta, warnings)
    flops_model: AnalyticFlops | HfFlops = (
        AnalyticFlops(config, storage, options.prefill_logits)
        if hf_model is None
        else HfFlops(hf_model, storage, options.prefill_logits, options.image_hw)
    )
    engine = None
    if not steps.names.is_empty():
        # the steps' host/GPU view needs them to be the selected ranges: no stage ranges
        views = (ops, host_views) if not stages else (None, None)
        engine = _engine(ranges, steps, flops_model, peak, meta, options, warnings, views)
    report = compute_mfu(
        ranges,
        ops,
        refs=refs,
        inputs=StageInputs(
            meta=meta,
            prefill_len=options.prefill_len,
            decode_tokens=options.decode_tokens,
            mode=options.mode,
            crop_grid=options.crop_grid,
        ),
        flops_model=flops_model,
        peak=peak,
        ctx=ctx,
        include_warmup=options.include_warmup,
        top_kernels=options.top_kernels,
        kernel_names=trace.kernel_names(),
        flops_source=flops_source,
        trace_path=str(path),
        static_compute=_static_compute(options, path),
        traffic=flops_model if isinstance(flops_model, AnalyticFlops) else None,
        stages=stages,
        host_views=host_views,
        engine=engine,
        trace_only=not counted,
    )
    return replace(report, warnings=(*warnings, *report.warnings), peak_sources=peak_sources)


def _engine(
    ranges: pl.DataFrame,
    steps: StepNames,
    flops_model: AnalyticFlops | HfFlops,
    peak: PeakChoice,
    meta: RunMeta | None,
    options: AnalyzeOptions,
    warnings: list[str],
    views: tuple[OpFacts | None, pl.DataFrame | None],
) -> EngineReport:
    """The engine view of the step ranges, and its warnings: malformed names, each format's
    assumption, how attention FLOPs were bounded when they were."""
    engine = engine_report(
        ranges,
        steps,
        costs=step_costs(flops_model),
        peak=peak,
        meta=meta,
        vision=_vision_per_request(meta, flops_model),
        include_warmup=options.include_warmup,
        ops=views[0],
        host_views=views[1],
    )
    warnings += [*steps.warnings(), *engine.notes]
    if any(s.attention_exact is False for s in engine.steps):
        warnings.append(BOUND_ASSUMPTION)
    warnings += [
        f"engine phase {p.phase}: trace {what} {value:.2f} > 1: the model counts more work than "
        "the GPU can do in that time; check --config and the peak"
        for p in engine.phases
        for what, value in (("MFU", p.mfu_trace), ("MBU", p.mbu_trace))
        if value is not None and value > 1
    ]
    return engine


def _meta_hf_model(meta: RunMeta | None) -> HfModel | None:
    """The Hugging Face decoder a `--serve --decoder-config` run carries in its metadata."""
    if meta is None or meta.family != HF_DECODER_FAMILY or meta.model_config is None:
        return None
    return hf_model_from_dict(dict(meta.model_config), "run metadata model.config")


def _vision_per_request(
    meta: RunMeta | None, flops_model: AnalyticFlops | HfFlops
) -> dict[int, float]:
    """Vision-encoder FLOPs of each `--serve` request's page (its mode and crop grid in the
    serve block's optional `images`), by request id; none for text requests, pages the block
    does not describe, or other runs."""
    if meta is None or meta.serve is None:
        return {}
    pages = {int(p["index"]): p for p in meta.raw["serve"].get("images") or []}
    out = {}
    for request in meta.serve.requests:
        page = pages.get(request.image_index) if request.image_index is not None else None
        if page is not None:
            grid = page["crop_grid"]
            crops = None if grid is None else (int(grid[0]), int(grid[1]))
            out[request.id] = flops_model.vision_flops(page["mode"], crops)
    return out


def _static_compute(options: AnalyzeOptions, trace_path: str | Path) -> Mapping[str, Any] | None:
    found = static_compute_source(options, trace_path)
    return None if found is None else load_static_compute(found)


def static_compute_source(options: AnalyzeOptions, trace_path: str | Path) -> Path | None:
    """The static compute report the analysis of `trace_path` reads: `--static-compute FILE`,
    else the first found of: beside the `--meta` file, `NAME.static_compute.json` next to
    `NAME.run.meta.json` (the layout of traces/meta/), then `static_compute.json` (the runner's
    `--out` folder); beside the trace `T.sqlite[.xz]`, `meta/T.static_compute.json` (the
    repository's traces/), `T.static_compute.json` or `static_compute.json`."""
    if options.static_compute_path is not None:
        return Path(options.static_compute_path)
    candidates = []
    if options.meta_path is not None:
        meta = Path(options.meta_path)
        stem = meta.name.removesuffix(".json").removesuffix(".run.meta")
        candidates += [meta.with_name(f"{stem}.static_compute.json"),
                       meta.with_name("static_compute.json")]  # fmt: skip
    trace = Path(trace_path)
    name = trace.name.removesuffix(".xz").removesuffix(".gz").removesuffix(".sqlite")
    candidates += [trace.parent / "meta" / f"{name}.static_compute.json",
                   trace.with_name(f"{name}.static_compute.json"),
                   trace.with_name("static_compute.json")]  # fmt: skip
    return next((c for c in candidates if c.is_file()), None)
