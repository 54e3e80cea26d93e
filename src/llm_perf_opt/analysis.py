"""Analyze one trace: the only module that opens one, and wires reader → attribution → stages →
facts → MFU (docs/architecture.md).

`analyze_trace` opens the trace, reads the run metadata (the trace's mark or `--meta`), picks the
stage ranges, attributes the GPU ops, reads the host view in a background thread meanwhile,
resolves the architecture, dtype, GPU and peak, finds the runner's static compute report, and
hands everything to the pure `mfu.compute_mfu`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import polars as pl

from llm_perf_opt.attribution import RangeSelection, attribute
from llm_perf_opt.calibration import calibration_of
from llm_perf_opt.errors import LlmPerfOptError, SelectionError
from llm_perf_opt.facts import StageInputs, bytes_dtype, choose_context, gpu_of, peak_dtype
from llm_perf_opt.flops.hf_model import HfFlops, read_hf_config
from llm_perf_opt.flops.model import AnalyticFlops, resolve_config
from llm_perf_opt.flops.vision_towers import default_image_size
from llm_perf_opt.hostview import host_view
from llm_perf_opt.meta import RunMeta, load_meta_file, load_static_compute, meta_from_marks
from llm_perf_opt.mfu import MfuReport, compute_mfu
from llm_perf_opt.peak_sources import resolve_peaks
from llm_perf_opt.stages import (
    RangeRef,
    default_refs,
    missing_stage_message,
    stage_selection_refs,
)
from llm_perf_opt.trace import Trace, open_trace
from llm_perf_opt.vocab import STAGES, LmHeadPositions

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
) -> Analysis:
    """Open a trace, attribute its GPU ops and compute the MFU report.

    Args:
        path: the nsys SQLite export.
        options: the analysis options.
        require_mfu: False (only `--ranges-out` asked): when MFU facts are missing, return the
            attribution with `report=None` and the reason instead of raising.
        progress: called with a short status line before each slow step.

    Raises:
        LlmPerfOptError: any bad input (see the subclasses), with a message naming the fix.
    """
    say = progress or (lambda _msg: None)
    say(f"reading {path}")
    trace = open_trace(path)
    trace.prefetch_gpu_work()  # the big tables load while the NVTX events are read
    meta = load_meta_file(options.meta_path) if options.meta_path else None
    if meta is None:
        meta = meta_from_marks(trace.nvtx_marks())
    refs = default_refs(meta.nvtx_domain if meta else None)
    refs.update(options.stages)
    raw = trace.nvtx_ranges()
    present = tuple(s for s in STAGES if not raw.filter(refs[s].expr()).is_empty())
    # A stage named with --stage must exist; a default-named one may be absent (no vision).
    missing = [s for s in STAGES if s not in present and (s in options.stages or not present)]
    selection = None
    reason = None
    if missing:
        stage = missing[0]
        reason = missing_stage_message(stage, refs[stage], raw)
        if require_mfu:
            raise SelectionError(reason)
    else:
        names, domains = stage_selection_refs(refs, present)
        selection = RangeSelection(names=names, domains=domains)
    host_read = _read_host_views(trace, raw, refs) if reason is None else None
    say("attributing GPU ops to NVTX ranges")
    attribution = attribute(trace, selection, other_threads=options.other_threads)
    read_warnings = tuple(trace.warnings)
    if reason is not None or host_read is None:
        return Analysis(attribution.ranges, None, reason, read_warnings, meta)
    try:
        say("computing MFU")
        report = _report(
            trace,
            attribution.ranges,
            attribution.ops,
            meta,
            refs,
            options,
            path,
            present,
            host_read.result(),
        )
    except LlmPerfOptError as exc:
        if require_mfu:
            raise
        return Analysis(attribution.ranges, None, str(exc), read_warnings, meta)
    report = replace(report, warnings=(*read_warnings, *report.warnings))
    return Analysis(attribution.ranges, report, None, read_warnings, meta)


def read_host_views(
    trace: Trace, ranges: pl.DataFrame, refs: Mapping[str, RangeRef]
) -> pl.DataFrame:
    """The host view (hostview.host_view) of every stage and decode-step range of `ranges`
    (`Trace.nvtx_ranges()`), from the trace's CUDA API calls and synchronization rows."""
    wanted = pl.any_horizontal([refs[role].expr() for role in (*STAGES, "decode_step")])
    windows = ranges.filter(wanted).select(
        pl.col("event_id").alias("window_id"), "global_tid", "start_ns", "end_ns"
    )
    return host_view(windows, trace.api_calls(with_names=True), trace.sync_events())


def _read_host_views(
    trace: Trace, ranges: pl.DataFrame, refs: Mapping[str, RangeRef]
) -> Future[pl.DataFrame]:
    """`read_host_views` in a background thread: the SQLite scan releases the GIL, so reading
    the API table and its host view overlap attribution, and the table is freed before it."""
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="host-view")
    future = pool.submit(read_host_views, trace, ranges, refs)
    pool.shutdown(wait=False)
    return future


def _report(
    trace: Trace,
    ranges: pl.DataFrame,
    ops: pl.DataFrame,
    meta: RunMeta | None,
    refs: Mapping[str, RangeRef],
    options: AnalyzeOptions,
    path: str | Path,
    stages: Sequence[str],
    host_views: pl.DataFrame,
) -> MfuReport:
    """Resolve config, dtype, GPU and peak, then `compute_mfu`."""
    warnings: list[str] = []
    hf_model = read_hf_config(options.config_path) if options.config_path else None
    if hf_model is None:
        config, flops_source = resolve_config(
            model=options.model, config_path=options.config_path, meta=meta, warnings=warnings
        )
    else:
        flops_source = f"--config {options.config_path} (Hugging Face {hf_model.model_type})"
        tower = hf_model.vision
        # a Qwen-VL tower takes any image size: say which one its vision FLOPs assume
        unsized = options.image_hw is None and "vision" in stages
        if tower is not None and tower.image_size is None and unsized:
            h, w = default_image_size(tower)
            warnings.append(f"vision FLOPs for {h}x{w} px images; pass --image-size HxW")
    dtype = peak_dtype(options.dtype, meta)
    ctx = choose_context(options.ctx_mode, options.ctx_len, meta, warnings)
    gpu_name, trace_bw = gpu_of(trace.gpu_info(), ops, meta)
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
    )
    return replace(report, warnings=(*warnings, *report.warnings), peak_sources=peak_sources)


def _static_compute(options: AnalyzeOptions, trace_path: str | Path) -> Mapping[str, Any] | None:
    """`--static-compute FILE`, else the first report found of: beside the `--meta` file,
    `NAME.static_compute.json` next to `NAME.run.meta.json` (the layout of traces/meta/), then
    `static_compute.json` (the runner's `--out` folder); beside the trace `T.sqlite[.xz]`,
    `meta/T.static_compute.json` (the repository's traces/), `T.static_compute.json` or
    `static_compute.json`."""
    if options.static_compute_path is not None:
        return load_static_compute(options.static_compute_path)
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
    found = next((c for c in candidates if c.is_file()), None)
    return None if found is None else load_static_compute(found)
