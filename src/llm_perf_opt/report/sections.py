"""The parts of the report a person reads, shared by the Markdown and the terminal view: the
header lines, and each table as a title, a header and rows of text."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final, NamedTuple

from llm_perf_opt.metrics.mfu import MfuReport, StageResult
from llm_perf_opt.metrics.roofline import roofline_points, utilization_by_peak
from llm_perf_opt.report.fields import cells, head
from llm_perf_opt.report.levels import instances, ridge
from llm_perf_opt.report.table_columns import (
    CATEGORY_TABLE,
    CONTEXT_TABLE,
    ENGINE_PHASE_TABLE,
    ENGINE_STEP_TABLE,
    HOST_TABLE,
    INSTANCE_TABLE,
    KERNEL_TABLE,
    MODEL_ROW,
    ROOFLINE_TABLE,
    STAGE_TABLE,
    STEP_CATEGORY_TABLE,
    host_rows,
    phase_host_rows,
)
from llm_perf_opt.report.text import count, format_pct, host_verdict, ms, num, tflops, us

HOST_TITLE: Final = (
    "Where the wall time goes: host span in launch, sync, other API calls and outside them; "
    "GPU window busy, starved, queued, edge"
)


class Section(NamedTuple):
    """A table: `left` is how many of its first columns read left-justified."""

    title: str
    head: tuple[str, ...]
    rows: Sequence[tuple[str, ...]]
    left: int = 1


def header_lines(report: MfuReport) -> list[str]:
    p = report.peak
    bw = (
        f"{p.peak_bandwidth_Bps / 1e12:.3g} TB/s ({p.bandwidth_source})"
        if p.peak_bandwidth_Bps
        else "unknown (no MBU)"
    )
    return [
        f"Trace: {report.trace_path}",
        f"GPU: {report.gpu_name or 'unknown'}",
        f"Peak: {p.peak_flops / 1e12:g} TFLOP/s {p.dtype} ({p.peak_source}); bandwidth {bw}",
        *_denominator_lines(report),
        f"FLOPs: {report.flops_source}; causal attention",
        f"Run metadata: {report.meta_source or 'none (facts from flags)'}; warmup "
        f"{'included' if report.include_warmup else 'excluded'}",
    ]


def _denominator_lines(report: MfuReport) -> list[str]:
    """Both denominators of a calibrated run: the datasheet and the measured ceiling."""
    src = report.peak_sources
    cal = src.calibration if src else None
    if src is None or cal is None:
        return []
    best = cal.best_gemm
    tb = src.table_bandwidth_Bps
    clocks = cal.clocks
    at = (
        f"; clocks SM {num(clocks.sm_mhz, '.0f')} MHz, memory {num(clocks.mem_mhz, '.0f')} MHz "
        f"({clocks.source or '?'})"
        if clocks
        else ""
    )
    return [
        f"Denominators: datasheet {tflops(src.table_flops)} TFLOP/s, "
        f"{'–' if tb is None else f'{tb / 1e12:.3g}'} TB/s; measured {cal.peak_tflops:.4g} TFLOP/s "
        f"({best.label} {best.m}×{best.n}×{best.k} {cal.dtype}), "
        f"{cal.peak_bandwidth_TBps:.3g} TB/s (copy, {cal.copy.bytes_moved / 1e9:.3g} GB read + "
        f"written){at}; "
        f"--peak-source {src.selected} in use",
    ]


def stage_section(report: MfuReport) -> Section:
    """The stages, then the model under the columns it has."""
    rows = cells(STAGE_TABLE, report.stages.values())
    rows += cells(MODEL_ROW, [report.model], under=head(STAGE_TABLE))
    return Section("MFU per stage", head(STAGE_TABLE), rows)


def instance_section(report: MfuReport) -> Section:
    return Section("Per image instance", head(INSTANCE_TABLE),
                   cells(INSTANCE_TABLE, instances(report)), 3)  # fmt: skip


def decode_lines(report: MfuReport) -> list[str]:
    d = report.stages.get("decode")
    if d is None:
        return []
    graphs = f" (+ {d.n_graph_ops:,} CUDA graph executions)" if d.n_graph_ops else ""
    lines = [
        f"Decode: {d.decode_steps} steps, {num(d.kernels_per_step)} kernels/step{graphs}, "
        f"step time {us(d.step_busy_ns)} µs GPU busy / {us(d.step_wall_ns)} µs wall",
    ]
    if d.bytes_per_step is not None:
        lines.append(
            f"Decode MBU: {format_pct(d.mbu_trace)} trace, {format_pct(d.mbu_wall)} wall "
            f"({d.bytes_per_step / 1e9:.3f} GB read per step) next to MFU "
            f"{format_pct(d.mfu_trace)} trace, {format_pct(d.mfu_wall)} wall"
        )
    return lines


def host_section(report: MfuReport) -> Section:
    """Stages (summed over instances), the median decode step and the engine phases (summed over
    their steps); host parts as shares of the host span, GPU parts as shares of the GPU
    window."""
    rows = host_rows(report.stages.values())
    if report.engine is not None:
        rows += phase_host_rows(report.engine.phases)
    return Section(HOST_TITLE, head(HOST_TABLE), cells(HOST_TABLE, rows))


def engine_lines(report: MfuReport) -> list[str]:
    """What the engine view read: the step formats, where attention FLOPs came from."""
    engine = report.engine
    if engine is None:
        return []
    exact = sum(s.attention_exact is True for s in engine.steps)
    bounded = sum(s.attention_exact is False for s in engine.steps)
    rest = f", bounded for {bounded:,} (see the warnings)" if bounded else ""
    return [
        f"Engine steps: {len(engine.steps):,} step ranges of {', '.join(engine.engines)} "
        f"({', '.join(engine.formats)}); attention FLOPs exact for {exact:,} of them "
        f"(from {engine.exact_source}){rest}",
    ]


def engine_phase_section(report: MfuReport) -> Section:
    phases = () if report.engine is None else report.engine.phases
    title = "MFU per engine phase (p50, p90, p99: GPU busy time of one step)"
    return Section(title, head(ENGINE_PHASE_TABLE),
                   cells(ENGINE_PHASE_TABLE, phases))  # fmt: skip


def engine_step_section(report: MfuReport) -> Section:
    steps = () if report.engine is None else report.engine.steps
    return Section("Engine steps", head(ENGINE_STEP_TABLE), cells(ENGINE_STEP_TABLE, steps), 2)


def host_verdicts(report: MfuReport) -> list[str]:
    return [v for s in report.stages.values() if (v := host_verdict(s)) is not None]


def context_section(report: MfuReport) -> Section:
    ctx = report.ctx
    single = "" if ctx.ctx_len is None else f", C = {ctx.ctx_len}"
    title = f"Context length: --ctx-mode {ctx.mode}{single} (window {ctx.window})"
    return Section(title, head(CONTEXT_TABLE), cells(CONTEXT_TABLE, ctx.instances), 2)


_PEAK_HEAD: Final = ("stage", "MFU trace datasheet", "MFU trace measured", "MFU wall datasheet",
                     "MFU wall measured", "MBU trace datasheet", "MBU trace measured")  # fmt: skip


def peak_section(report: MfuReport) -> Section:
    """MFU and MBU against both denominators (rows only for a calibrated run)."""
    rows: list[tuple[str, ...]] = []
    if report.peak_sources is not None and report.peak_sources.calibration is not None:
        rows = [
            (
                name,
                *(
                    format_pct(by[peak][key])
                    for key in ("mfu_trace", "mfu_wall", "mbu_trace")
                    for peak in ("table", "measured")
                ),
            )
            for name, by in utilization_by_peak(report).items()
        ]
    return Section("MFU and MBU by denominator", _PEAK_HEAD, rows)


_CALIBRATION_HEAD: Final = ("GEMM", "stage", "m×n×k", "median µs", "TFLOP/s", "repeats")


def calibration_section(report: MfuReport) -> Section:
    """Every GEMM the calibration timed (the measured peak is the fastest)."""
    src = report.peak_sources
    gemms = () if src is None or src.calibration is None else src.calibration.gemms
    rows = [
        (g.label, g.stage or "–", f"{g.m}×{g.n}×{g.k}", f"{g.median_s * 1e6:,.1f}",
         f"{g.tflops:,.4g}", str(g.repeats))
        for g in gemms
    ]  # fmt: skip
    return Section("Calibration GEMMs", _CALIBRATION_HEAD, rows, 2)


def roofline_section(report: MfuReport) -> Section:
    r = ridge(report)
    at = "" if r is None else f"; ridge {r:,.1f} FLOP/byte at the peak in use"
    rows = cells(ROOFLINE_TABLE, roofline_points(report).values())
    return Section(f"Roofline (analytic bytes{at})", head(ROOFLINE_TABLE), rows)


def category_section(s: StageResult) -> Section:
    return Section(
        f"Where the kernel time goes: {s.stage}",
        head(CATEGORY_TABLE),
        cells(CATEGORY_TABLE, s.categories),
    )


def step_category_section(report: MfuReport) -> Section | None:
    """The median decode step's kernel time per category (None without decode steps)."""
    d = report.step_categories
    if d is None or not d.categories:
        return None
    return Section(
        f"Where the kernel time goes: median decode step (step {d.step}, instance {d.instance}, "
        f"GPU busy {ms(d.gpu_busy_ns)} ms)",
        head(STEP_CATEGORY_TABLE),
        cells(STEP_CATEGORY_TABLE, d.categories),
    )


def trace_sections(report: MfuReport) -> list[Section]:
    """The whole trace (every GPU op, attributed or not): its categories and top kernels."""
    v = report.trace_view
    if v is None or not v.n_ops:
        return []
    what = (
        f"Whole trace: GPU busy {ms(v.gpu_busy_ns)} ms, {count(v.n_ops)} GPU ops summing "
        f"{ms(v.op_sum_ns)} ms (kernels, graphs, copies, memsets)"
    )
    return [
        Section(what, head(CATEGORY_TABLE), cells(CATEGORY_TABLE, v.categories)),
        Section(
            "Top kernels: whole trace", head(KERNEL_TABLE), cells(KERNEL_TABLE, v.top_kernels), 2
        ),
    ]


def kernel_section(s: StageResult) -> Section:
    return Section(
        f"Top kernels: {s.stage}", head(KERNEL_TABLE), cells(KERNEL_TABLE, s.top_kernels), 2
    )


_STATIC_HEAD: Final = ("stage", "fvcore ×2", "analytic full square", "analytic causal",
                        "fvcore/analytic − 1", "source")  # fmt: skip


def static_section(static: Mapping[str, Any], title: str) -> Section:
    """The runner's static compute stages: fvcore ×2 next to the analytic counts."""
    rows: list[tuple[str, ...]] = []
    for name, st in static["stages"].items():
        fv = st.get("fvcore_flops")
        ratio = st.get("fvcore_vs_analytic")
        rows.append(
            (
                name,
                "–" if fv is None else f"{fv:,}",
                f"{st['analytic_flops_full_square']:,}",
                num(st.get("analytic_flops_causal"), ",d"),
                "–" if ratio is None else f"{ratio:+.2%}",
                str(st.get("source", "")),
            )
        )
    return Section(title, _STATIC_HEAD, rows)


def static_note(static: Mapping[str, Any]) -> str:
    image = static.get("image", {})
    return (
        f"One image {image.get('width')}×{image.get('height')} px ({image.get('mode')}), prefill "
        f"of {static.get('seq_len')} positions, one decode step (`static_compute.json`)."
    )
