"""Render an `MfuReport`: JSON (docs/json-output.md), CSV, Markdown and a rich terminal view.

Renderers only format; every number comes from `mfu.compute_mfu`. Times are shown in the unit a
person reads (ms, µs) but JSON and CSV keep seconds (`*_s`) so tools can recompute ratios.
"""

from __future__ import annotations

import csv
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
from llm_perf_opt.mfu import (
    IDLE_FRACTION_BOUND,
    SHORT_KERNEL_NS,
    AnalysisError,
    ContextInstance,
    InstanceResult,
    MfuReport,
    StageResult,
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
    }
    if r.stage == "decode":
        out |= {
            "decode_steps": r.decode_steps,
            "decode_bytes": r.decode_bytes,
            "mbu_trace": r.mbu_trace,
            "mbu_wall": r.mbu_wall,
        }
    return out


def _stage_json(s: StageResult) -> dict[str, Any]:
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
        "mean_kernel_us": None if s.mean_kernel_ns is None else s.mean_kernel_ns / 1e3,
        "verdict": s.verdict,
        "top_kernels": [
            {
                "name": k.name,
                "count": k.count,
                "total_s": _s(k.total_ns),
                "mean_us": k.mean_ns / 1e3,
                "share": k.share,
            }
            for k in s.top_kernels
        ],
        "instances": [_instance_json(r) for r in s.instances],
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
    return out


def to_json(report: MfuReport) -> dict[str, Any]:
    """The JSON document `--format json` prints; every key is documented in docs/json-output.md."""
    decode = report.stages.get("decode")
    peak = report.peak
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
        "stages": {name: _stage_json(s) for name, s in report.stages.items()},
        "model": {
            "flops": report.model.flops,
            "gpu_busy_s": _s(report.model.gpu_busy_ns),
            "wall_s": _s(report.model.wall_ns),
            "mfu_trace": report.model.mfu_trace,
            "mfu_wall": report.model.mfu_wall,
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
        f"FLOPs: {report.flops_source}; causal attention",
        f"Run metadata: {report.meta_source or 'none (facts from flags)'}; warmup "
        f"{'included' if report.include_warmup else 'excluded'}",
    ]


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
            _ms(s.kernel_sum_ns),
            _ms(s.wall_ns),
            s.wall_source,
            format_pct(s.mfu_trace),
            format_pct(s.mfu_wall),
            format_pct(s.idle_fraction),
            f"{s.n_kernels:,}",
            _us(s.mean_kernel_ns),
            s.verdict,
        )
        for s in report.stages.values()
    ]
    m = report.model
    rows.append(
        (
            "model",
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
    lines = [
        f"Decode: {d.decode_steps} steps, {_num(d.kernels_per_step)} kernels/step, "
        f"step time {_us(d.step_busy_ns)} µs GPU busy / {_us(d.step_wall_ns)} µs wall",
    ]
    if d.bytes_per_step is not None:
        lines.append(
            f"Decode MBU: {format_pct(d.mbu_trace)} trace, {format_pct(d.mbu_wall)} wall "
            f"({d.bytes_per_step / 1e9:.3f} GB read per step) next to MFU "
            f"{format_pct(d.mfu_trace)} trace, {format_pct(d.mfu_wall)} wall"
        )
    return lines


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
    """Print the report for a person: header, stages, instances, decode, context, kernels.

    Columns do not wrap; give a non-terminal console a width (the CLI uses 160)."""
    parts: list[Any] = [Text("\n".join(_header_lines(report)))]
    parts.append(_rich_table("MFU per stage", _STAGE_HEAD, _stage_rows(report)))
    if any(len(s.instances) > 1 for s in report.stages.values()):
        parts.append(_rich_table("Per image instance", _INSTANCE_HEAD, _instance_rows(report), 3))
    parts.append(Text("\n".join(_decode_lines(report))))
    parts.append(_rich_table(_context_title(report), _CONTEXT_HEAD, _context_rows(report), 2))
    for s in report.stages.values():
        if s.top_kernels:
            parts.append(_rich_table(f"Top kernels: {s.stage}", _KERNEL_HEAD, _kernel_rows(s)))
    if report.warnings:
        parts.append(Text("\n".join(f"warning: {w}" for w in report.warnings), style="yellow"))
    console.print(Group(*parts))


def _md_table(head: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    def cell(value: str) -> str:
        return value.replace("|", "\\|")

    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _static_table(static: Mapping[str, Any]) -> str:
    """The runner's static compute stages (fvcore ×2 next to the analytic counts) as Markdown."""
    rows = []
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
    head = ("stage", "fvcore ×2", "analytic full square", "analytic causal", "fvcore/analytic − 1",
            "source")  # fmt: skip
    image = static.get("image", {})
    note = (
        f"One image {image.get('width')}×{image.get('height')} px ({image.get('mode')}), prefill "
        f"of {static.get('seq_len')} positions, one decode step (`static_compute.json`)."
    )
    return note + "\n\n" + _md_table(head, rows)


def to_markdown(report: MfuReport) -> str:
    """A Markdown report: MFU per stage, instances, decode MBU, context lengths, top kernels,
    the static compute table when the run metadata carries one, and warnings."""
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
    out += [f"## {_context_title(report)}", "", _md_table(_CONTEXT_HEAD, _context_rows(report)), ""]
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
