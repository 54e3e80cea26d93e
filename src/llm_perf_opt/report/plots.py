"""PNG figures of an `MfuReport` (matplotlib, Agg backend: no display needed).

Uses `Figure` + `FigureCanvasAgg` directly rather than pyplot, so no global figure state leaks
between calls or into tests.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, MaxNLocator

from llm_perf_opt.hostview.breakdown import HostGpuView
from llm_perf_opt.metrics.engine_view import EngineStep
from llm_perf_opt.metrics.mfu import MfuReport, StageResult
from llm_perf_opt.metrics.roofline import ridge_point, roofline_points, roofs
from llm_perf_opt.report import format_pct
from llm_perf_opt.report.palette import (
    BUSY_COLOR,
    CATEGORY_COLORS,
    GPU_SEGMENTS,
    HOST_SEGMENTS,
    IDLE_COLOR,
    PHASE_COLORS,
    STAGE_COLORS,
    WALL_COLOR,
)

DPI: Final = 120
ROOF_STYLES: Final = {"table": ("-", "datasheet"), "measured": ("--", "measured")}


def _save(fig: Figure, path: Path) -> Path:
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    return path


def plot_time_split(report: MfuReport, path: Path) -> Path:
    """Per stage: wall time split into GPU busy and GPU idle, with the idle share."""
    stages = list(report.stages.values())
    fig = Figure(figsize=(7, 0.8 + 0.7 * len(stages)))
    ax = fig.add_subplot()
    names = [s.stage for s in stages]
    busy_ms = [s.gpu_busy_ns / 1e6 for s in stages]
    idle_ms = [max(0.0, s.wall_ns - s.gpu_busy_ns) / 1e6 for s in stages]
    ax.barh(names, busy_ms, color=BUSY_COLOR, label="GPU busy")
    ax.barh(names, idle_ms, left=busy_ms, color=IDLE_COLOR, label="GPU idle")
    for y, s in enumerate(stages):
        label = (
            f"{100 * s.idle_fraction:.0f}% idle · {s.verdict}"
            if s.idle_fraction is not None
            else ""
        )
        ax.text(s.wall_ns / 1e6, y, f"  {label}", va="center", fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("time (ms, summed over instances)")
    ax.set_title("Where each stage's wall time goes")
    ax.margins(x=0.35)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=2, fontsize=8, frameon=False)
    return _save(fig, path)


def plot_categories(report: MfuReport, path: Path) -> Path:
    """Per stage: one bar of its kernel time stacked by kernel category (docs/categories.md)."""
    stages = [s for s in report.stages.values() if s.categories]
    fig = Figure(figsize=(7, 0.9 + 0.7 * len(stages)))
    ax = fig.add_subplot()
    names = [s.stage for s in stages]
    left = [0.0] * len(stages)
    for category, color in CATEGORY_COLORS.items():
        ms = [sum(c.total_ns for c in s.categories if c.category == category) / 1e6
              for s in stages]  # fmt: skip
        if any(ms):
            ax.barh(names, ms, left=left, color=color, label=category)
            left = [a + b for a, b in zip(left, ms, strict=True)]
    ax.invert_yaxis()
    ax.set_xlabel("kernel time (ms, summed over instances)")
    ax.set_title("Where each stage's kernel time goes, by kernel category")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.25), ncol=5, fontsize=8, frameon=False)
    return _save(fig, path)


def plot_mfu(report: MfuReport, path: Path) -> Path:
    """MFU from GPU busy time next to MFU from wall time, per stage and for the model.

    Log scale: decode MFU (~0.03 %) sits two to three decades under vision's, and a linear axis
    would draw it as nothing. Bars of a zero or unknown MFU are left out (log has no zero)."""
    rows = [(s.stage, s.mfu_trace, s.mfu_wall) for s in report.stages.values()]
    rows.append(("model", report.model.mfu_trace, report.model.mfu_wall))
    fig = Figure(figsize=(7, 3.8))
    ax = fig.add_subplot()
    width = 0.38
    for offset, values, color, label in (
        (-width / 2, [t for _, t, _ in rows], BUSY_COLOR, "trace (GPU busy time)"),
        (width / 2, [w for _, _, w in rows], WALL_COLOR, "wall (wall-clock time)"),
    ):
        shown = [(x, v) for x, v in enumerate(values) if v]
        bars = ax.bar([x + offset for x, _ in shown], [100 * v for _, v in shown], width,
                      color=color, label=label)  # fmt: skip
        ax.bar_label(bars, labels=[format_pct(v) for _, v in shown], fontsize=8)
    positive = [100 * v for _, t, w in rows for v in (t, w) if v]
    if positive:  # log of nothing would warn
        ax.set_yscale("log")
        ax.set_ylim(min(positive) / 3, max(positive) * 4)
    ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _pos: f"{y:g}%"))
    ax.set_xticks(range(len(rows)), [name for name, _, _ in rows])
    ax.set_ylabel("MFU (% of peak, log scale)")
    ax.set_title(f"MFU, peak {report.peak.peak_flops / 1e12:g} TFLOP/s {report.peak.dtype}")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=2, fontsize=8, frameon=False)
    return _save(fig, path)


def plot_decode_steps(report: MfuReport, path: Path) -> Path:
    """Decode step time (GPU busy and wall) against the step index, one line pair per image."""
    fig = Figure(figsize=(8, 3.6))
    ax = fig.add_subplot()
    instances = sorted({d.instance for d in report.decode_steps})
    for n, inst in enumerate(instances):
        steps = [d for d in report.decode_steps if d.instance == inst]
        ks = [d.step for d in steps]
        first = n == 0  # one legend entry per series, whatever the number of images
        ax.plot(ks, [d.wall_ns / 1e6 for d in steps], color=WALL_COLOR, lw=1, alpha=0.8,
                marker="o", ms=3, label="wall" if first else None)  # fmt: skip
        ax.plot(ks, [d.gpu_busy_ns / 1e6 for d in steps], color=BUSY_COLOR, lw=1, alpha=0.8,
                marker="o", ms=3, label="GPU busy" if first else None)  # fmt: skip
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _pos: f"{y:g}"))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("decode step")
    ax.set_ylabel("time per step (ms, log)")
    ax.set_title(f"Decode step time ({len(instances)} image(s) overlaid)")
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_roofline(report: MfuReport, path: Path) -> Path:
    """Log-log roofline: compute and bandwidth roofs of the datasheet and measured peaks, one
    large point per stage (FLOPs over GPU busy time) and a small one per image instance."""
    points = roofline_points(report)
    fig = Figure(figsize=(7.5, 4.8))
    ax = fig.add_subplot()
    intensities = [p.arithmetic_intensity for p in points.values()]
    ceilings = dict(roofs(report))
    if report.peak_sources is not None and report.peak_sources.selected == "value":
        ceilings["in use"] = (report.peak.peak_flops, report.peak.peak_bandwidth_Bps or 0.0)
    ridges = [r for f, b in ceilings.values() if (r := ridge_point(f, b)) is not None]
    span = [*intensities, *ridges] or [1.0]
    x_lo, x_hi = min(span) / 4, max(span) * 4
    for name, (flops, bandwidth) in ceilings.items():
        style, label = ROOF_STYLES.get(name, (":", name))
        ridge = flops / bandwidth
        roof = f"{label}: {flops / 1e12:.4g} TFLOP/s, {bandwidth / 1e12:.3g} TB/s"
        ax.plot([x_lo, ridge, x_hi], [x_lo * bandwidth / 1e12, flops / 1e12, flops / 1e12],
                color="black", ls=style, lw=1.2, label=roof)  # fmt: skip
    for name, p in points.items():
        color = STAGE_COLORS.get(name, "gray")
        per_instance = [
            (r.flops / r.bytes_moved, r.flops / r.gpu_busy_ns * 1e-3)
            for r in report.stages[name].instances
            if r.bytes_moved and r.gpu_busy_ns > 0
        ]
        if per_instance:
            xs, ys = zip(*per_instance, strict=True)
            ax.scatter(xs, ys, s=12, color=color, alpha=0.5)
        if p.achieved_flops:
            label = f"{name} ({p.bound or '?'}-bound)"
            ax.scatter([p.arithmetic_intensity], [p.achieved_flops / 1e12], s=60, color=color,
                       edgecolor="black", zorder=3, label=label)  # fmt: skip
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(x_lo, x_hi)
    ax.set_xlabel("arithmetic intensity (FLOP / byte, analytic)")
    ax.set_ylabel("achieved TFLOP/s (over GPU busy time)")
    ax.set_title(f"Roofline, {report.gpu_name or 'unknown GPU'} {report.peak.dtype}")
    ax.grid(True, which="both", lw=0.3, alpha=0.5)
    ax.legend(fontsize=7, loc="lower right")
    return _save(fig, path)


def plot_host_breakdown(stage: StageResult, path: Path) -> Path:
    """One stage: its host span split into launch / sync / other CUDA calls / outside them, and
    its GPU window into busy / starved / queued / edge, as stacked bars (summed over instances;
    decode adds its median step)."""
    views: list[tuple[str, HostGpuView]] = []
    if stage.host is not None:
        views.append((f"{stage.stage} (all instances)", stage.host))
    if stage.per_step is not None:
        views.append(("median decode step", stage.per_step))
    fig = Figure(figsize=(8, 1.2 + 1.5 * len(views)))
    for i, (title, view) in enumerate(views):
        ax = fig.add_subplot(len(views), 1, i + 1)
        for y, segments in ((0, HOST_SEGMENTS), (1, GPU_SEGMENTS)):
            left = 0.0
            for attr, label, color in segments:
                width = getattr(view, attr) / 1e6
                ax.barh(y, width, left=left, color=color, label=label if i == 0 else None)
                left += width
        ax.set_yticks([0, 1], ["host span", "GPU window"])
        ax.invert_yaxis()
        ax.set_title(title, fontsize=9, loc="left")
        ax.set_xlabel("ms")
    fig.suptitle(f"Where the {stage.stage} wall time goes ({stage.verdict})")
    fig.legend(loc="lower center", ncol=4, fontsize=7, frameon=False, bbox_to_anchor=(0.5, -0.1))
    fig.tight_layout()
    return _save(fig, path)


def plot_engine_steps(report: MfuReport, path: Path) -> Path:
    """MFU (trace and wall) and tokens of every engine step against its start time, each phase
    in its colour: the step loop's shape over the run."""
    assert report.engine is not None
    steps = report.engine.steps
    t0 = min(s.start_ns for s in steps)
    fig = Figure(figsize=(9, 5.4))
    ax_mfu, ax_tok = fig.subplots(2, 1, sharex=True)
    for phase in dict.fromkeys(s.phase for s in steps):
        mine = [s for s in steps if s.phase == phase]
        t = [(s.start_ns - t0) / 1e6 for s in mine]
        color = PHASE_COLORS.get(phase, IDLE_COLOR)
        ax_mfu.plot(t, [100 * (s.mfu_trace or 0) for s in mine], "o", ms=3, color=color,
                    label=f"{phase} (trace)")  # fmt: skip
        ax_mfu.plot(t, [100 * (s.mfu_wall or 0) for s in mine], "x", ms=3, color=color,
                    alpha=0.6, label=f"{phase} (wall)")  # fmt: skip
        ax_tok.bar(t, [s.tokens or 0 for s in mine], width=0.6 * _step_gap_ms(steps),
                   color=color, label=phase)  # fmt: skip
    ax_mfu.set_ylabel("MFU (%)")
    ax_mfu.set_title(f"Engine steps: MFU and tokens per step ({len(steps):,} steps)")
    ax_mfu.legend(fontsize=7, ncol=4)
    ax_tok.set_ylabel("tokens in the step")
    ax_tok.set_xlabel("step start (ms from the first step)")
    ax_tok.legend(fontsize=7, ncol=4)
    return _save(fig, path)


def _step_gap_ms(steps: Sequence[EngineStep]) -> float:
    """The median gap between step starts (ms), the bars' width unit."""
    starts = sorted(s.start_ns for s in steps)
    gaps = sorted(b - a for a, b in itertools.pairwise(starts))
    return gaps[len(gaps) // 2] / 1e6 if gaps else 1.0


def write_plots(report: MfuReport, directory: str | Path) -> list[Path]:
    """Write the PNGs into `directory` (created when its parent exists); the decode series only
    when steps exist, the engine steps' only for a trace of a serving engine's steps."""
    out = Path(directory)
    out.mkdir(exist_ok=True)
    paths = []
    if report.stages:
        paths += [
            plot_time_split(report, out / "stage_time_split.png"),
            plot_mfu(report, out / "mfu_trace_vs_wall.png"),
        ]
    if any(s.categories for s in report.stages.values()):
        paths.append(plot_categories(report, out / "kernel_categories.png"))
    if report.engine is not None and report.engine.steps:
        paths.append(plot_engine_steps(report, out / "engine_steps.png"))
    if report.decode_steps:
        paths.append(plot_decode_steps(report, out / "decode_step_time.png"))
    if roofline_points(report):
        paths.append(plot_roofline(report, out / "roofline.png"))
    paths += [
        plot_host_breakdown(s, out / f"host_gpu_{s.stage}.png")
        for s in report.stages.values()
        if s.host is not None
    ]
    return paths
