"""Render an `MfuReport`: JSON (docs/json-output.md), CSV, Markdown and a rich terminal view.

Renderers only format; every number comes from `mfu.compute_mfu`. Times are shown in the unit a
person reads (ms, µs) but JSON and CSV keep seconds (`*_s`) so tools can recompute ratios.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any, Final

import polars as pl
from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from llm_perf_opt.attribution import RANGES_OUT_COLUMNS
from llm_perf_opt.errors import AnalysisError
from llm_perf_opt.hostview import ADVICE, HostGpuView, many_syncs
from llm_perf_opt.mfu import (
    IDLE_FRACTION_BOUND,
    SHORT_KERNEL_NS,
    ContextInstance,
    InstanceResult,
    MfuReport,
    StageResult,
)
from llm_perf_opt.roofline import (
    RooflinePoint,
    ridge_point,
    roofline_points,
    utilization_by_peak,
)

JSON_SCHEMA_ID: Final = "llm_perf_opt.mfu_report/1"
# Percentages below this (in %) get two significant digits instead of one decimal.
SMALL_PCT: Final = 1.0
FLOPS_CONVENTION: Final = (
    "analytic, 1 MAC = 2 FLOPs, matmuls and convs only, causal attention (each query counts "
    "the keys its mask lets it see); see docs/mfu-math.md"
)
WALL_SOURCES: Final = {
    "runner": "runner's synchronized wall clock (metadata images[i].wall_s)",
    "range": "range CPU start → later of CPU end and last GPU op end",
    "mixed": "runner where the metadata has it, else range span",
}
CSV_COLUMNS: Final = (
    "level",
    "stage",
    "instance",
    "image_index",
    "warmup",
    "flops",
    "gpu_busy_s",
    "kernel_sum_s",
    "cpu_s",
    "wall_s",
    "wall_source",
    "mfu_trace",
    "mfu_wall",
    "idle_fraction",
    "n_gpu_ops",
    "n_kernels",
    "graph_ops",
    "graph_s",
    "mean_kernel_us",
    "verdict",
    "decode_steps",
    "decode_bytes",
    "mbu_trace",
    "mbu_wall",
    "gpu_name",
    "peak_flops",
    "ctx_mode",
    "ctx_len",
)


def _s(ns: float | None) -> float | None:
    return None if ns is None else ns / 1e9


def _context_json(c: ContextInstance) -> dict[str, Any]:
    lens = c.ctx_lens
    return {
        "instance": c.instance,
        "image_index": c.image_index,
        "prefill_len": c.prefill_len,
        "decode_steps": c.decode_steps,
        "source": c.source,
        "ctx_len_first": lens[0] if lens else None,
        "ctx_len_last": lens[-1] if lens else None,
        "ctx_len_mean": sum(lens) / len(lens) if lens else None,
        "ctx_lens": list(lens),
    }


def _count_json(x: float) -> float | int:
    """A count: an int for sums, a number for medians (which may fall between two)."""
    return int(x) if float(x).is_integer() else x


def _view_json(v: HostGpuView) -> dict[str, Any]:
    """`host` and `gpu_idle` objects of a breakdown (docs/json-output.md)."""
    return {
        "host": {
            "span_s": _s(v.span_ns),
            "launch_s": _s(v.launch_ns),
            "sync_s": _s(v.sync_ns),
            "other_api_s": _s(v.other_api_ns),
            "outside_api_s": _s(v.outside_api_ns),
            "n_launches": _count_json(v.n_launches),
            "n_syncs": _count_json(v.n_syncs),
            "n_memcpy": _count_json(v.n_memcpy),
            "n_gpu_ops": _count_json(v.n_gpu_ops),
            "host_per_gpu_op_s": _s(v.host_per_gpu_op_ns),
        },
        "gpu_idle": {
            "window_s": _s(v.gpu_window_ns),
            "busy_s": _s(v.busy_ns),
            "starved_s": _s(v.starved_ns),
            "queued_s": _s(v.queued_ns),
            "edge_s": _s(v.edge_ns),
            "launch_latency_median_s": _s(v.launch_latency_median_ns),
        },
    }


def _counts(v: HostGpuView) -> tuple[float, float, float]:
    return v.n_syncs, v.n_memcpy, v.n_launches


def host_verdict(s: StageResult) -> str | None:
    """One sentence from the stage's breakdown: where the host span goes, the host syncs per
    decode step (per instance for the other stages), how idle the GPU is, the MFU now, with a
    perfect host (wall = GPU busy: the trace MFU) and with only the launch calls left, and the
    advice of its `host_bound` label."""
    v, label = s.host, s.host_bound
    if v is None or label is None:
        return None
    n = len(s.instances) or 1
    if s.per_step is not None:
        unit, syncs, copies, launches = "step", *_counts(s.per_step)
    else:
        unit, syncs, copies, launches = "instance", *(x / n for x in _counts(v))
    span, window = v.span_ns or 1.0, v.gpu_window_ns or 1.0
    advice = ADVICE["sync-bound" if many_syncs(syncs, launches) and label != "gpu-bound" else label]
    return (
        f"{s.stage} ({label}): {format_pct(v.outside_api_ns / span)} of the host span outside CUDA "
        f"calls, {format_pct(v.launch_ns / span)} in launch calls, "
        f"{format_pct(v.sync_ns / span)} in syncs; {syncs:,.0f} host syncs and {copies:,.0f} "
        f"memcpys per {unit}; GPU busy {format_pct(v.busy_ns / window)} (starved "
        f"{format_pct(v.starved_ns / window)}, queued {format_pct(v.queued_ns / window)}); MFU "
        f"{format_pct(s.mfu_wall)} now, {format_pct(s.mfu_trace)} with a perfect host, "
        f"{format_pct(s.mfu_launch_only)} with launch calls alone: {advice}"
    )


def _instance_json(r: InstanceResult) -> dict[str, Any]:
    out: dict[str, Any] = {
        "instance": r.instance,
        "image_index": r.image_index,
        "warmup": r.warmup,
        "range_id": r.range_id,
        "flops": r.flops,
        "gpu_busy_s": _s(r.gpu_busy_ns),
        "kernel_sum_s": _s(r.kernel_sum_ns),
        "cpu_s": _s(r.cpu_duration_ns),
        "wall_s": _s(r.wall_ns),
        "wall_source": r.wall_source,
        "mfu_trace": r.mfu_trace,
        "mfu_wall": r.mfu_wall,
        "idle_fraction": r.idle_fraction,
        "n_gpu_ops": r.n_gpu_ops,
        "n_kernels": r.n_kernels,
        "graph_ops": r.n_graph_ops,
        "graph_s": _s(r.graph_sum_ns),
    }
    if r.stage == "decode":
        out |= {
            "decode_steps": r.decode_steps,
            "decode_bytes": r.decode_bytes,
            "mbu_trace": r.mbu_trace,
            "mbu_wall": r.mbu_wall,
        }
    if r.host is not None:
        out |= _view_json(r.host)
    return out


def _stage_json(
    s: StageResult, point: RooflinePoint | None, by_peak: dict[str, Any]
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "range": s.range.name,
        "domain": s.range.domain,
        "n_instances": len(s.instances),
        "flops": s.flops,
        "gpu_busy_s": _s(s.gpu_busy_ns),
        "kernel_sum_s": _s(s.kernel_sum_ns),
        "cpu_s": _s(s.cpu_duration_ns),
        "wall_s": _s(s.wall_ns),
        "wall_source": s.wall_source,
        "mfu_trace": s.mfu_trace,
        "mfu_wall": s.mfu_wall,
        "idle_fraction": s.idle_fraction,
        "n_gpu_ops": s.n_gpu_ops,
        "n_kernels": s.n_kernels,
        "graph_ops": s.n_graph_ops,
        "graph_s": _s(s.graph_sum_ns),
        "mean_kernel_us": None if s.mean_kernel_ns is None else s.mean_kernel_ns / 1e3,
        "verdict": s.verdict,
        "top_kernels": [
            {
                "name": k.name,
                "kind": k.kind,
                "count": k.count,
                "total_s": _s(k.total_ns),
                "mean_us": k.mean_ns / 1e3,
                "share": k.share,
            }
            for k in s.top_kernels
        ],
        "instances": [_instance_json(r) for r in s.instances],
        "bytes_moved": s.bytes_moved,
        "arithmetic_intensity": point.arithmetic_intensity if point else None,
        "achieved_flops_per_s": point.achieved_flops if point else None,
        "bound": point.bound if point else None,
        "by_peak": by_peak,
    }
    if s.stage == "decode":
        out |= {
            "decode_steps": s.decode_steps,
            "kernels_per_step": s.kernels_per_step,
            "step_gpu_busy_s": _s(s.step_busy_ns),
            "step_wall_s": _s(s.step_wall_ns),
            "decode_bytes": s.decode_bytes,
            "bytes_per_step": s.bytes_per_step,
            "mbu_trace": s.mbu_trace,
            "mbu_wall": s.mbu_wall,
        }
    if s.host is not None:
        out |= _view_json(s.host) | {
            "host_bound": s.host_bound,
            "host_verdict": host_verdict(s),
            "mfu_launch_only": s.mfu_launch_only,
        }
        if s.per_step is not None:
            out["per_step"] = _view_json(s.per_step)
    return out


def to_json(report: MfuReport) -> dict[str, Any]:
    """The JSON document `--format json` prints; every key is documented in docs/json-output.md."""
    decode = report.stages.get("decode")
    peak = report.peak
    points = roofline_points(report)
    by_peak = utilization_by_peak(report)
    src = report.peak_sources
    cal = src.calibration if src else None
    return {
        "schema": JSON_SCHEMA_ID,
        "trace": report.trace_path,
        "gpu_name": report.gpu_name,
        "dtype": peak.dtype,
        "peak_flops": peak.peak_flops,
        "peak_source": peak.peak_source,
        "peak_table_row": peak.table_row,
        "peak_bandwidth_Bps": peak.peak_bandwidth_Bps,
        "bandwidth_source": peak.bandwidth_source,
        "peak_selected": src.selected if src else None,
        "peak_flops_table": src.table_flops if src else None,
        "peak_flops_measured": src.measured_flops if src else None,
        "peak_bandwidth_table": src.table_bandwidth_Bps if src else None,
        "peak_bandwidth_measured": src.measured_bandwidth_Bps if src else None,
        "ridge_flops_per_byte": _ridge(report),
        "calibration": dataclasses.asdict(cal) if cal else None,
        "ctx_mode": report.ctx.mode,
        "ctx_len": report.ctx.ctx_len,
        "context": {
            "mode": report.ctx.mode,
            "ctx_len": report.ctx.ctx_len,
            "window": report.ctx.window,
            "instances": [_context_json(c) for c in report.ctx.instances],
        },
        "flops_source": report.flops_source,
        "flops_convention": FLOPS_CONVENTION,
        "meta_source": report.meta_source,
        "include_warmup": report.include_warmup,
        "wall_sources": dict(WALL_SOURCES),
        "verdict_rule": _verdict_rule(),
        "stages": {
            name: _stage_json(s, points.get(name), by_peak[name])
            for name, s in report.stages.items()
        },
        "model": {
            "flops": report.model.flops,
            "gpu_busy_s": _s(report.model.gpu_busy_ns),
            "wall_s": _s(report.model.wall_ns),
            "mfu_trace": report.model.mfu_trace,
            "mfu_wall": report.model.mfu_wall,
            "by_peak": by_peak["model"],
            "absent_stages": list(report.model.absent_stages),
        },
        "mbu": {
            "decode": {
                "trace": decode.mbu_trace,
                "wall": decode.mbu_wall,
                "bytes_per_step": decode.bytes_per_step,
                "peak_bandwidth_Bps": peak.peak_bandwidth_Bps,
            }
            if decode
            else None
        },
        "decode_steps": [
            {
                "instance": d.instance,
                "step": d.step,
                "ctx_len": d.ctx_len,
                "payload_ctx_len": d.payload_ctx_len,
                "gpu_busy_s": _s(d.gpu_busy_ns),
                "cpu_s": _s(d.cpu_duration_ns),
                "wall_s": _s(d.wall_ns),
                "wall_source": d.wall_source,
                "n_gpu_ops": d.n_gpu_ops,
            }
            for d in report.decode_steps
        ],
        "static_compute": report.static_compute,
        "warnings": list(report.warnings),
    }


def _ridge(report: MfuReport) -> float | None:
    """FLOP per byte at the ridge of the peak in use (the `bound` threshold)."""
    return ridge_point(report.peak.peak_flops, report.peak.peak_bandwidth_Bps)


def _verdict_rule() -> str:
    return (
        f"idle fraction > {IDLE_FRACTION_BOUND} and mean kernel < {SHORT_KERNEL_NS / 1e3:g} µs: "
        f"launch-bound; idle > {IDLE_FRACTION_BOUND} otherwise: host-bound; else memory-bound "
        "when trace MBU > trace MFU, compute-bound otherwise"
    )


def to_json_text(report: MfuReport) -> str:
    """`to_json` as indented text with a final newline; a non-finite number (only absurd inputs
    make one) is an error, never `NaN` or `Infinity` in the document."""
    try:
        return json.dumps(to_json(report), indent=2, allow_nan=False) + "\n"
    except ValueError as exc:
        raise AnalysisError(
            f"the report holds a non-finite number ({exc}); check the peak, metadata and "
            "lengths given"
        ) from None


def _csv_row(level: str, stage: str, item: Any, report: MfuReport) -> dict[str, Any]:
    row: dict[str, Any] = dict.fromkeys(CSV_COLUMNS)
    row |= {
        "level": level,
        "stage": stage,
        "gpu_name": report.gpu_name,
        "peak_flops": report.peak.peak_flops,
        "ctx_mode": report.ctx.mode,
        "ctx_len": report.ctx.ctx_len,
        "flops": item.flops,
        "gpu_busy_s": _s(item.gpu_busy_ns),
        "wall_s": _s(item.wall_ns),
        "mfu_trace": item.mfu_trace,
        "mfu_wall": item.mfu_wall,
    }
    if isinstance(item, InstanceResult | StageResult):
        row |= {
            "kernel_sum_s": _s(item.kernel_sum_ns),
            "cpu_s": _s(item.cpu_duration_ns),
            "wall_source": item.wall_source,
            "idle_fraction": item.idle_fraction,
            "n_gpu_ops": item.n_gpu_ops,
            "n_kernels": item.n_kernels,
            "graph_ops": item.n_graph_ops,
            "graph_s": _s(item.graph_sum_ns),
            "decode_steps": item.decode_steps,
            "decode_bytes": item.decode_bytes,
            "mbu_trace": item.mbu_trace,
            "mbu_wall": item.mbu_wall,
        }
    if isinstance(item, InstanceResult):
        row |= {"instance": item.instance, "image_index": item.image_index, "warmup": item.warmup}
    if isinstance(item, StageResult):
        mean = item.mean_kernel_ns
        row |= {"mean_kernel_us": None if mean is None else mean / 1e3, "verdict": item.verdict}
    return row


def to_csv(report: MfuReport) -> str:
    """One row per stage instance, per stage (`level=stage`) and for the model (`level=model`)."""
    rows: list[dict[str, Any]] = []
    for name, s in report.stages.items():
        rows += [_csv_row("instance", name, r, report) for r in s.instances]
        rows.append(_csv_row("stage", name, s, report))
    rows.append(_csv_row("model", "all", report.model, report))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def write_ranges_csv(ranges: pl.DataFrame, target: str | Path | IO[bytes]) -> None:
    """The `--ranges-out` file (a path or a binary handle): exactly `RANGES_OUT_COLUMNS`, in
    order, one row per range."""
    ranges.select(RANGES_OUT_COLUMNS).write_csv(
        target if not isinstance(target, str | Path) else Path(target)
    )


# --- human-readable ------------------------------------------------------------------------------


def format_pct(x: float | None) -> str:
    """A percentage with one decimal, or two significant digits below 1 % (decode MFU is ~0.03 %):
    never a bare `0.0%` or `0.1%` for a value that has more to say."""
    if x is None:
        return "–"
    pct = 100 * x
    if pct == 0 or abs(pct) >= SMALL_PCT:
        return f"{pct:.1f}%"
    rounded = float(f"{pct:.2g}")  # rounding first: 0.00996 → 0.01, shown as 0.010
    decimals = 1 - math.floor(math.log10(abs(rounded)))
    return f"{rounded:.{decimals}f}%"


def _ms(ns: float | None) -> str:
    return "–" if ns is None else f"{ns / 1e6:,.2f}"


def _us(ns: float | None) -> str:
    return "–" if ns is None else f"{ns / 1e3:,.1f}"


def _gflop(flops: float) -> str:
    return f"{flops / 1e9:,.1f}"


def _num(x: float | None, fmt: str = ",.1f") -> str:
    return "–" if x is None else format(x, fmt)


def _header_lines(report: MfuReport) -> list[str]:
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


def _tflops(x: float | None) -> str:
    return "–" if x is None else f"{x / 1e12:,.4g}"


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
        f"; clocks SM {_num(clocks.sm_mhz, '.0f')} MHz, memory {_num(clocks.mem_mhz, '.0f')} MHz "
        f"({clocks.source or '?'})"
        if clocks
        else ""
    )
    return [
        f"Denominators: datasheet {_tflops(src.table_flops)} TFLOP/s, "
        f"{'–' if tb is None else f'{tb / 1e12:.3g}'} TB/s; measured {cal.peak_tflops:.4g} TFLOP/s "
        f"({best.label} {best.m}×{best.n}×{best.k} {cal.dtype}), "
        f"{cal.peak_bandwidth_TBps:.3g} TB/s (copy, {cal.copy.bytes_moved / 1e9:.3g} GB read + "
        f"written){at}; "
        f"--peak-source {src.selected} in use",
    ]


_CALIBRATION_HEAD: Final = ("GEMM", "stage", "m×n×k", "median µs", "TFLOP/s", "repeats")


def _calibration_rows(report: MfuReport) -> list[tuple[str, ...]]:
    """Every GEMM the calibration timed (the measured peak is the fastest)."""
    src = report.peak_sources
    if src is None or src.calibration is None:
        return []
    return [
        (g.label, g.stage or "–", f"{g.m}×{g.n}×{g.k}", f"{g.median_s * 1e6:,.1f}",
         f"{g.tflops:,.4g}", str(g.repeats))
        for g in src.calibration.gemms
    ]  # fmt: skip


_PEAK_HEAD: Final = ("stage", "MFU trace datasheet", "MFU trace measured", "MFU wall datasheet",
                     "MFU wall measured", "MBU trace datasheet", "MBU trace measured")  # fmt: skip


def _peak_rows(report: MfuReport) -> list[tuple[str, ...]]:
    """MFU and MBU against both denominators (only for a calibrated run)."""
    if report.peak_sources is None or report.peak_sources.calibration is None:
        return []
    return [
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


_ROOFLINE_HEAD: Final = ("stage", "GFLOP", "GB moved", "FLOP/byte", "achieved TFLOP/s",
                         "roof TFLOP/s", "bound")  # fmt: skip


def _roofline_rows(report: MfuReport) -> list[tuple[str, ...]]:
    return [
        (
            p.stage,
            _gflop(p.flops),
            f"{p.bytes_moved / 1e9:,.3f}",
            f"{p.arithmetic_intensity:,.1f}",
            _tflops(p.achieved_flops),
            _tflops(p.attainable_flops),
            p.bound or "–",
        )
        for p in roofline_points(report).values()
    ]


def _roofline_title(report: MfuReport) -> str:
    ridge = _ridge(report)
    at = "" if ridge is None else f"; ridge {ridge:,.1f} FLOP/byte at the peak in use"
    return f"Roofline (analytic bytes{at})"


_STAGE_HEAD: Final = (
    "stage",
    "inst",
    "GFLOP",
    "busy ms",
    "kernel ms",
    "wall ms",
    "wall from",
    "MFU trace",
    "MFU wall",
    "GPU idle",
    "kernels",
    "µs/kernel",
    "verdict",
)


def _stage_rows(report: MfuReport) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = [
        (
            s.stage,
            str(len(s.instances)),
            _gflop(s.flops),
            _ms(s.gpu_busy_ns),
            _ms(s.kernel_sum_ns) + (f" + {_ms(s.graph_sum_ns)} graph" if s.n_graph_ops else ""),
            _ms(s.wall_ns),
            s.wall_source,
            format_pct(s.mfu_trace),
            format_pct(s.mfu_wall),
            format_pct(s.idle_fraction),
            f"{s.n_kernels:,}" + (f" + {s.n_graph_ops:,} graph" if s.n_graph_ops else ""),
            _us(s.mean_kernel_ns),
            s.verdict,
        )
        for s in report.stages.values()
    ]
    m = report.model
    absent = m.absent_stages
    rows.append(
        (
            f"model (no {', '.join(absent)})" if absent else "model",
            "",
            _gflop(m.flops),
            _ms(m.gpu_busy_ns),
            "",
            _ms(m.wall_ns),
            "",
            format_pct(m.mfu_trace),
            format_pct(m.mfu_wall),
            "",
            "",
            "",
            "",
        )
    )
    return rows


_INSTANCE_HEAD: Final = (
    "stage",
    "inst",
    "image",
    "GFLOP",
    "busy ms",
    "wall ms",
    "MFU trace",
    "MFU wall",
    "GPU idle",
)


def _instance_rows(report: MfuReport) -> list[tuple[str, ...]]:
    return [
        (
            r.stage,
            str(r.instance),
            ("warmup " if r.warmup else "") + ("" if r.image_index is None else str(r.image_index)),
            _gflop(r.flops),
            _ms(r.gpu_busy_ns),
            _ms(r.wall_ns),
            format_pct(r.mfu_trace),
            format_pct(r.mfu_wall),
            format_pct(r.idle_fraction),
        )
        for s in report.stages.values()
        for r in s.instances
    ]


def _decode_lines(report: MfuReport) -> list[str]:
    d = report.stages.get("decode")
    if d is None:
        return []
    graphs = f" (+ {d.n_graph_ops:,} CUDA graph executions)" if d.n_graph_ops else ""
    lines = [
        f"Decode: {d.decode_steps} steps, {_num(d.kernels_per_step)} kernels/step{graphs}, "
        f"step time {_us(d.step_busy_ns)} µs GPU busy / {_us(d.step_wall_ns)} µs wall",
    ]
    if d.bytes_per_step is not None:
        lines.append(
            f"Decode MBU: {format_pct(d.mbu_trace)} trace, {format_pct(d.mbu_wall)} wall "
            f"({d.bytes_per_step / 1e9:.3f} GB read per step) next to MFU "
            f"{format_pct(d.mfu_trace)} trace, {format_pct(d.mfu_wall)} wall"
        )
    return lines


_HOST_HEAD: Final = (
    "stage",
    "span ms",
    "launch",
    "sync",
    "API",
    "no API",
    "launches",
    "syncs",
    "copies",
    "busy",
    "starved",
    "queued",
    "edge",
    "lat µs",
    "µs/op",
    "bound",
)


def _host_row(name: str, v: HostGpuView, bound: str) -> tuple[str, ...]:
    span, window = v.span_ns or 1.0, v.gpu_window_ns or 1.0
    host = (v.launch_ns, v.sync_ns, v.other_api_ns, v.outside_api_ns)
    gpu = (v.busy_ns, v.starved_ns, v.queued_ns, v.edge_ns)
    return (
        name,
        _ms(v.span_ns),
        *(format_pct(x / span) for x in host),
        *(f"{x:,.0f}" for x in (v.n_launches, v.n_syncs, v.n_memcpy)),
        *(format_pct(x / window) for x in gpu),
        _us(v.launch_latency_median_ns),
        _us(v.host_per_gpu_op_ns),
        bound,
    )


def _host_rows(report: MfuReport) -> list[tuple[str, ...]]:
    """Stages (summed over instances) and the median decode step; host parts as shares of the
    host span, GPU parts as shares of the GPU window."""
    rows = []
    for s in report.stages.values():
        if s.host is not None:
            rows.append(_host_row(s.stage, s.host, s.host_bound or ""))
        if s.per_step is not None:
            rows.append(_host_row(f"{s.stage}/step", s.per_step, "(median)"))
    return rows


_HOST_TITLE: Final = (
    "Where the wall time goes: host span in launch, sync, other API calls and outside them; "
    "GPU window busy, starved, queued, edge"
)


def _host_verdicts(report: MfuReport) -> list[str]:
    return [v for s in report.stages.values() if (v := host_verdict(s)) is not None]


_CONTEXT_HEAD: Final = ("inst", "image", "Lp", "steps", "C first", "C last", "C mean", "C from")


def _context_rows(report: MfuReport) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
    for c in report.ctx.instances:
        j = _context_json(c)
        rows.append(
            (
                str(c.instance),
                "" if c.image_index is None else str(c.image_index),
                "–" if c.prefill_len is None else str(c.prefill_len),
                str(c.decode_steps),
                _num(j["ctx_len_first"], "d"),
                _num(j["ctx_len_last"], "d"),
                _num(j["ctx_len_mean"], ".1f"),
                c.source,
            )
        )
    return rows


def _context_title(report: MfuReport) -> str:
    ctx = report.ctx
    single = "" if ctx.ctx_len is None else f", C = {ctx.ctx_len}"
    return f"Context length: --ctx-mode {ctx.mode}{single} (window {ctx.window})"


def _kernel_rows(s: StageResult) -> list[tuple[str, ...]]:
    return [
        (
            _short(k.name, 72),
            f"{k.count:,}",
            _ms(k.total_ns),
            _us(k.mean_ns),
            format_pct(k.share),
        )
        for k in s.top_kernels
    ]


_KERNEL_HEAD: Final = ("kernel", "count", "total ms", "mean µs", "share")


def _short(name: str, width: int = 90) -> str:
    """Kernel name cut to `width` characters (demangled names run to hundreds)."""
    name = name.removeprefix("void ")
    return name if len(name) <= width else name[: width - 1] + "…"


def _rich_table(
    title: str, head: Sequence[str], rows: Iterable[Sequence[str]], left: int = 1
) -> Table:
    table = Table(title=title, title_justify="left", title_style="bold")
    for i, h in enumerate(head):
        table.add_column(h, justify="left" if i < left else "right", no_wrap=True)
    for row in rows:
        table.add_row(*row)
    return table


def render_table(report: MfuReport, console: Console) -> None:
    """Print the report for a person: header, stages, instances, decode, context, both
    denominators (calibrated runs), roofline, kernels, static compute.

    Columns do not wrap; give a non-terminal console a width (the CLI uses 160)."""
    parts: list[Any] = [Text("\n".join(_header_lines(report)))]
    parts.append(_rich_table("MFU per stage", _STAGE_HEAD, _stage_rows(report)))
    if any(len(s.instances) > 1 for s in report.stages.values()):
        parts.append(_rich_table("Per image instance", _INSTANCE_HEAD, _instance_rows(report), 3))
    parts.append(Text("\n".join(_decode_lines(report))))
    if host_rows := _host_rows(report):
        parts.append(_rich_table(_HOST_TITLE, _HOST_HEAD, host_rows))
        parts.append(Text("\n".join(_host_verdicts(report))))
    parts.append(_rich_table(_context_title(report), _CONTEXT_HEAD, _context_rows(report), 2))
    peak_rows = _peak_rows(report)
    if peak_rows:
        parts.append(_rich_table("MFU and MBU by denominator", _PEAK_HEAD, peak_rows))
        parts.append(
            _rich_table("Calibration GEMMs", _CALIBRATION_HEAD, _calibration_rows(report), 2)
        )
    roofline = _roofline_rows(report)
    if roofline:
        parts.append(_rich_table(_roofline_title(report), _ROOFLINE_HEAD, roofline))
    for s in report.stages.values():
        if s.top_kernels:
            parts.append(_rich_table(f"Top kernels: {s.stage}", _KERNEL_HEAD, _kernel_rows(s)))
    if report.static_compute is not None:
        static = report.static_compute
        title = "Static compute (runner, fvcore): " + _static_note(static)
        parts.append(_rich_table(title, _STATIC_HEAD, _static_rows(static)))
    if report.warnings:
        parts.append(Text("\n".join(f"warning: {w}" for w in report.warnings), style="yellow"))
    console.print(Group(*parts))


def _md_table(head: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    def cell(value: str) -> str:
        return value.replace("|", "\\|")

    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


_STATIC_HEAD: Final = ("stage", "fvcore ×2", "analytic full square", "analytic causal",
                        "fvcore/analytic − 1", "source")  # fmt: skip


def _static_rows(static: Mapping[str, Any]) -> list[tuple[str, ...]]:
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
                _num(st.get("analytic_flops_causal"), ",d"),
                "–" if ratio is None else f"{ratio:+.2%}",
                str(st.get("source", "")),
            )
        )
    return rows


def _static_note(static: Mapping[str, Any]) -> str:
    image = static.get("image", {})
    return (
        f"One image {image.get('width')}×{image.get('height')} px ({image.get('mode')}), prefill "
        f"of {static.get('seq_len')} positions, one decode step (`static_compute.json`)."
    )


def _static_table(static: Mapping[str, Any]) -> str:
    """The static compute section as Markdown."""
    return _static_note(static) + "\n\n" + _md_table(_STATIC_HEAD, _static_rows(static))


def to_markdown(report: MfuReport) -> str:
    """A Markdown report: MFU per stage, instances, decode MBU, context lengths, MFU/MBU by
    denominator and the calibration GEMMs (calibrated runs), the roofline, top kernels, the
    static compute table when one was found, and warnings."""
    out = ["# MFU report", "", *(f"- {line}" for line in _header_lines(report)), ""]
    out += ["## MFU per stage", "", _md_table(_STAGE_HEAD, _stage_rows(report)), ""]
    out += [
        f"Wall time: {WALL_SOURCES.get(next(iter(report.stages.values())).wall_source, '')}. "
        f"Verdict rule: {_verdict_rule()}.",
        "",
    ]
    out += ["## Per image instance", "", _md_table(_INSTANCE_HEAD, _instance_rows(report)), ""]
    decode = _decode_lines(report)
    if decode:
        out += ["## Decode", "", *(f"- {line}" for line in decode), ""]
    if host_rows := _host_rows(report):
        out += [f"## {_HOST_TITLE}", "", _md_table(_HOST_HEAD, host_rows), ""]
        out += [*(f"- {v}" for v in _host_verdicts(report)), ""]
    out += [f"## {_context_title(report)}", "", _md_table(_CONTEXT_HEAD, _context_rows(report)), ""]
    peak_rows = _peak_rows(report)
    if peak_rows:
        out += ["## MFU and MBU by denominator", "", _md_table(_PEAK_HEAD, peak_rows), ""]
        gemms = _md_table(_CALIBRATION_HEAD, _calibration_rows(report))
        out += ["## Calibration GEMMs", "", gemms, ""]
    roofline = _roofline_rows(report)
    if roofline:
        out += [f"## {_roofline_title(report)}", "", _md_table(_ROOFLINE_HEAD, roofline), ""]
    for s in report.stages.values():
        if s.top_kernels:
            # names as code: demangled C++ (`<unnamed>`, `*`) would read as HTML or emphasis
            rows = [(f"`{name}`", *rest) for name, *rest in _kernel_rows(s)]
            out += [f"## Top kernels: {s.stage}", "", _md_table(_KERNEL_HEAD, rows), ""]
    if report.static_compute is not None:
        out += ["## Static compute (runner, fvcore)", "", _static_table(report.static_compute), ""]
    if report.warnings:
        out += ["## Warnings", "", *(f"- {w}" for w in report.warnings), ""]
    return "\n".join(out)


RENDERERS: Final = {"json": to_json_text, "csv": to_csv, "md": to_markdown}
