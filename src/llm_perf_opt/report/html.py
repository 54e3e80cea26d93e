"""The report as one self-contained HTML page (`--html FILE`): the tables and sentences a person
reads (`sections`), the run metadata, and Bokeh plots where a picture reads faster.

Bokeh, because its JavaScript is inlined (`resources.INLINE`, about 1.3 MB for the plots used
here) and its plots are interactive (hover values, zoom and pan on the step series) without a
server: the page makes no network request when opened. Plotly inlines a 4.6 MB script, which
would leave little of the 5 MB a page may take.

The page is a sequence of `Part`s, each built from the report's declarations: a part names the
tables (`sections.Section`), the sentences and the figures it shows. A new section of the report
joins the page by one `Part` in `REPORT_PARTS` (or `compare_report.COMPARE_PARTS`).
"""

from __future__ import annotations

import html
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final, Generic, TypeVar

import polars as pl
from bokeh.embed import file_html
from bokeh.models import ColumnDataSource, FactorRange, HoverTool, LayoutDOM, Range1d
from bokeh.models.annotations import Legend
from bokeh.plotting import figure
from bokeh.resources import INLINE

from llm_perf_opt.kernels.categories import CATEGORIES
from llm_perf_opt.metrics.mfu import MfuReport
from llm_perf_opt.metrics.roofline import ridge_point, roofline_points, roofs
from llm_perf_opt.metrics.verdict import RULE
from llm_perf_opt.report import sections
from llm_perf_opt.report.fields import Column, cells, head
from llm_perf_opt.report.levels import decode_step_frame, engine_step_frame, stage_frame
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
from llm_perf_opt.report.table_columns import ENGINE_PHASE_TABLE, host_rows
from llm_perf_opt.report.text import WALL_SOURCES

T = TypeVar("T")
Figures = Callable[[T], Sequence[LayoutDOM]]
WIDTH: Final = 900
STYLE: Final = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 1.5em auto;
       max-width: 1200px; padding: 0 1em; color: #1b1b1b; }
h1 { font-size: 1.5em; } h2 { font-size: 1.15em; margin-top: 1.8em; } h3 { font-size: 1em; }
table { border-collapse: collapse; margin: 0.6em 0; font-variant-numeric: tabular-nums; }
th, td { border-bottom: 1px solid #ddd; padding: 0.2em 0.6em; text-align: right;
         white-space: nowrap; }
th { background: #f3f5f7; } td.l, th.l { text-align: left; }
.scroll { overflow-x: auto; } ul.meta { list-style: none; padding: 0; color: #333; }
p.note, li.note { color: #444; } code { font-size: 0.92em; }
"""


@dataclass(frozen=True)
class Part(Generic[T]):
    """One part of the page: tables, sentences under them and figures, each from the subject
    (a report or a comparison); empty tables are left out."""

    title: str | None = None
    tables: Callable[[T], Sequence[sections.Section]] = lambda _s: ()
    lines: Callable[[T], Sequence[str]] = lambda _s: ()
    figures: Figures[T] = lambda _s: ()
    bullets: bool = False


def page(title: str, header: Sequence[str], parts: Iterable[Part[T]], subject: T) -> str:
    """The HTML page of `subject`: a title, the header lines, then each part."""
    blocks: list[tuple[str, list[str]]] = []
    models: list[LayoutDOM] = []
    for part in parts:
        tables = [t for t in part.tables(subject) if t.rows]
        lines = list(part.lines(subject))
        figures = list(part.figures(subject))
        if not (tables or lines or figures):
            continue
        text = f"<h2>{html.escape(part.title)}</h2>" if part.title else ""
        level = "h3" if part.title else "h2"
        shown = part.title is None or len(tables) > 1  # one table under its part's title: no own
        text += "".join(_table(t, level if shown else None) for t in tables)
        text += _lines(lines, part.bullets)
        names = []
        for fig in figures:
            fig.name = f"figure{len(models)}"
            names.append(fig.name)
            models.append(fig)
        blocks.append((text, names))
    head = f"<h1>{html.escape(title)}</h1>" + _lines(header, bullets=True, cls="meta")
    if not models:  # Bokeh renders no page without a plot
        body = head + "".join(text for text, _ in blocks)
        return (
            f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>'
            f"{html.escape(title)}</title><style>{STYLE}</style></head><body>{body}</body></html>\n"
        )
    template = (
        "{% block postamble %}<style>" + STYLE + "</style>{% endblock %}"
        "{% block contents %}{{ head | safe }}{% for text, names in blocks %}{{ text | safe }}"
        "{% for name in names %}{{ embed(roots[name]) }}{% endfor %}{% endfor %}{% endblock %}"
    )
    return file_html(
        models,
        INLINE,
        title,
        template=template,
        template_variables={"head": head, "blocks": blocks},
    )


def _lines(lines: Sequence[str], bullets: bool, cls: str = "note") -> str:
    if not lines:
        return ""
    if bullets:
        items = "".join(f'<li class="{cls}">{html.escape(x)}</li>' for x in lines)
        return f'<ul class="{cls}">{items}</ul>'
    return "".join(f'<p class="{cls}">{html.escape(x)}</p>' for x in lines)


def _table(s: sections.Section, heading: str | None) -> str:
    """A section as an HTML table: its first `left` columns left-aligned, as in the terminal."""

    def cells(row: Sequence[str], tag: str) -> str:
        return "".join(
            f"<{tag}{' class=l' if i < s.left else ''}>{html.escape(v)}</{tag}>"
            for i, v in enumerate(row)
        )

    body = "".join(f"<tr>{cells(r, 'td')}</tr>" for r in s.rows)
    title = f"<{heading}>{html.escape(s.title)}</{heading}>" if heading else ""
    return (
        f'{title}<div class="scroll"><table><thead><tr>{cells(s.head, "th")}</tr></thead>'
        f"<tbody>{body}</tbody></table></div>"
    )


def new_figure(title: str, height: int = 300, **kw: Any) -> Any:
    """A figure with the tools the page offers (pan, box and wheel zoom, reset, save) and no
    Bokeh logo (its link would be the page's only address)."""
    fig = figure(
        title=title,
        width=WIDTH,
        height=height,
        tools="pan,box_zoom,wheel_zoom,reset,save",
        toolbar_location="right",
        **kw,
    )
    fig.toolbar.logo = None
    return fig


# --- the figures of one report ------------------------------------------------------------------


def time_split(report: MfuReport) -> list[LayoutDOM]:
    """Per stage: wall time split into GPU busy and GPU idle (`stage` level)."""
    rows = stage_frame(report).select(
        "stage",
        "verdict",
        busy=pl.col("gpu_busy_s") * 1e3,
        idle=((pl.col("wall_s") - pl.col("gpu_busy_s")) * 1e3).clip(lower_bound=0.0),
        wall=pl.col("wall_s") * 1e3,
        idle_pct=pl.col("idle_fraction") * 100,
    )
    stages = rows["stage"].to_list()
    fig = new_figure(
        "Where each stage's wall time goes (ms, summed over instances)",
        height=90 + 50 * len(stages),
        y_range=stages[::-1],
    )
    source = ColumnDataSource(rows.to_dict(as_series=False))
    fig.hbar_stack(
        ["busy", "idle"],
        y="stage",
        height=0.6,
        color=[BUSY_COLOR, IDLE_COLOR],
        source=source,
        legend_label=["GPU busy", "GPU idle"],
    )
    fig.add_tools(
        HoverTool(
            tooltips=[
                ("stage", "@stage"),
                ("GPU busy ms", "@busy{0,0.00}"),
                ("wall ms", "@wall{0,0.00}"),
                ("idle", "@idle_pct{0.0}%"),
                ("verdict", "@verdict"),
            ]
        )
    )
    fig.legend.location = "bottom_right"
    fig.xaxis.axis_label = "ms"
    return [fig]


def mfu_bars(report: MfuReport) -> list[LayoutDOM]:
    """MFU from GPU busy time next to MFU from wall time, per stage and for the model, on a log
    axis (decode MFU sits decades under vision's); a zero or unknown MFU has no bar."""
    frame = stage_frame(report).select("stage", "mfu_trace", "mfu_wall")
    model = report.model
    rows = [*frame.iter_rows(), ("model", model.mfu_trace, model.mfu_wall)]
    names = [r[0] for r in rows]
    bars = [
        {"x": (name, what), "mfu": 100 * v, "what": what, "name": name}
        for name, trace, wall in rows
        for what, v in (("trace", trace), ("wall", wall))
        if v
    ]
    fig = new_figure(
        f"MFU trace vs wall (% of {report.peak.peak_flops / 1e12:g} TFLOP/s "
        f"{report.peak.dtype}, log scale)",
        x_range=FactorRange(factors=[(n, w) for n in names for w in ("trace", "wall")]),
        y_axis_type="log",
    )
    if bars:
        low = min(b["mfu"] for b in bars) / 3
        source = ColumnDataSource({k: [b[k] for b in bars] for k in bars[0]})
        colors = [BUSY_COLOR if b["what"] == "trace" else WALL_COLOR for b in bars]
        source.data["color"] = colors
        fig.vbar(x="x", top="mfu", bottom=low, width=0.8, color="color", source=source)
        fig.y_range = Range1d(start=low, end=max(b["mfu"] for b in bars) * 4)
    fig.add_tools(HoverTool(tooltips=[("", "@name @what"), ("MFU", "@mfu{0.000}%")]))
    fig.yaxis.axis_label = "MFU %"
    return [fig]


def step_series(report: MfuReport) -> list[LayoutDOM]:
    """Decode steps: GPU busy and wall time per step, and the trace MFU per step, against the
    step index (zoom with the wheel or a box; hover for a step's figures)."""
    steps = decode_step_frame(report)
    if steps.is_empty():
        return []
    data = steps.select(
        "instance",
        "step",
        "ctx_len",
        "n_gpu_ops",
        busy=pl.col("gpu_busy_s") * 1e3,
        wall=pl.col("wall_s") * 1e3,
        mfu=pl.col("mfu_trace") * 100,
        syncs=pl.col("n_syncs"),
    )
    tips = [
        ("instance", "@instance"),
        ("step", "@step"),
        ("C", "@ctx_len"),
        ("GPU busy ms", "@busy{0,0.000}"),
        ("wall ms", "@wall{0,0.000}"),
        ("MFU trace", "@mfu{0.0000}%"),
        ("GPU ops", "@n_gpu_ops"),
        ("host syncs", "@syncs"),
    ]
    times = new_figure("Decode step time (ms, log; one line per image)", y_axis_type="log")
    mfu = new_figure("Decode step MFU (trace, %)", height=240, x_range=times.x_range)
    times.add_layout(Legend(), "right")
    for n, (_key, group) in enumerate(data.group_by("instance", maintain_order=True)):
        source = ColumnDataSource(group.to_dict(as_series=False))
        first = n == 0
        for col, color, label in (("wall", WALL_COLOR, "wall"), ("busy", BUSY_COLOR, "GPU busy")):
            kw = {"legend_label": label} if first else {}
            times.line("step", col, color=color, alpha=0.8, source=source, **kw)
            times.scatter("step", col, color=color, size=4, source=source)
        mfu.line("step", "mfu", color=BUSY_COLOR, source=source)
        mfu.scatter("step", "mfu", color=BUSY_COLOR, size=4, source=source)
    for fig in (times, mfu):
        fig.add_tools(HoverTool(tooltips=tips, mode="vline"))
        fig.xaxis.axis_label = "decode step"
    return [times, mfu]


# The engine phase table of the terminal and Markdown reports, with each phase's verdict (which
# they show in the host table).
PHASE_TABLE: Final = (*ENGINE_PHASE_TABLE, Column("verdict", lambda p: p.verdict or ""))


def engine_phases(report: MfuReport) -> list[sections.Section]:
    """Per engine phase (prefill, decode, mixed, idle): MFU trace vs wall and the verdict."""
    phases = () if report.engine is None else report.engine.phases
    title = sections.engine_phase_section(report).title
    return [sections.Section(title, head(PHASE_TABLE), cells(PHASE_TABLE, phases))]


def engine_series(report: MfuReport) -> list[LayoutDOM]:
    """Engine steps in time order: wall and GPU busy time, MFU (trace and wall) and tokens per
    step against the step index, each step coloured by its phase (zoom together; hover for a
    step's figures)."""
    steps = engine_step_frame(report)
    if steps.is_empty():
        return []
    data = steps.select(
        "step",
        "name",
        "phase",
        "n_gpu_ops",
        ctx=pl.col("ctx_tokens"),
        gen=pl.col("gen_tokens"),
        tokens=pl.col("ctx_tokens") + pl.col("gen_tokens"),
        busy=pl.col("gpu_busy_s") * 1e3,
        wall=pl.col("wall_s") * 1e3,
        mfu=pl.col("mfu_trace") * 100,
        mfu_wall=pl.col("mfu_wall") * 100,
        color=pl.col("phase").replace_strict(PHASE_COLORS, default="gray"),
    )
    tips = [
        ("step", "@step (@phase)"),
        ("range", "@name"),
        ("tokens", "@tokens (context @ctx, generation @gen)"),
        ("GPU busy ms", "@busy{0,0.000}"),
        ("wall ms", "@wall{0,0.000}"),
        ("MFU trace", "@mfu{0.000}%"),
        ("MFU wall", "@mfu_wall{0.000}%"),
        ("GPU ops", "@n_gpu_ops"),
    ]
    times = new_figure("Engine step time (ms, log)", y_axis_type="log")
    mfu = new_figure("Engine step MFU (%, log; dots: trace, squares: wall)", height=260,
                     x_range=times.x_range, y_axis_type="log")  # fmt: skip
    tokens = new_figure("Tokens per engine step (context + generation)", height=240,
                        x_range=times.x_range)  # fmt: skip
    source = ColumnDataSource(data.to_dict(as_series=False))
    for fig in (times, mfu, tokens):
        fig.add_layout(Legend(), "right")
    for col, color, label in (("wall", WALL_COLOR, "wall"), ("busy", BUSY_COLOR, "GPU busy")):
        times.line("step", col, color=color, alpha=0.8, source=source, legend_label=label)
    times.scatter("step", "busy", color="color", size=6, source=source)
    times.scatter("step", "wall", color="color", size=6, marker="square", source=source)
    mfu.line("step", "mfu", color=BUSY_COLOR, alpha=0.6, source=source)
    mfu.scatter("step", "mfu", color="color", size=6, source=source, legend_field="phase")
    mfu.scatter("step", "mfu_wall", color="color", size=5, marker="square", alpha=0.6,
                source=source)  # fmt: skip
    tokens.vbar(x="step", top="tokens", width=0.8, color="color", source=source,
                legend_field="phase")  # fmt: skip
    for fig in (times, mfu, tokens):
        fig.add_tools(HoverTool(tooltips=tips, mode="vline"))
        fig.xaxis.axis_label = "engine step (marker colour: its phase)"
    return [times, mfu, tokens]


def host_split(report: MfuReport) -> list[LayoutDOM]:
    """Where the wall time goes: each stage's host span split into launch / sync / other CUDA
    calls / outside them, and its GPU window into busy / starved / queued / edge, as shares."""
    rows = host_rows(report.stages.values())
    if not rows:
        return []
    out = []
    for segments, whole, title in (
        (HOST_SEGMENTS, "span_ns", "Host span (%)"),
        (GPU_SEGMENTS, "gpu_window_ns", "GPU window (%)"),
    ):
        names = [r.name for r in rows]
        data: dict[str, list[Any]] = {"name": names}
        for attr, _label, _color in segments:
            data[attr] = [
                100 * getattr(r.view, attr) / (getattr(r.view, whole) or 1.0) for r in rows
            ]
        fig = new_figure(
            f"Where the wall time goes: {title}",
            height=110 + 40 * len(rows),
            y_range=names[::-1],
            x_range=Range1d(start=0, end=100),
        )
        fig.add_layout(Legend(), "right")
        fig.hbar_stack(
            [a for a, _, _ in segments],
            y="name",
            height=0.6,
            color=[c for _, _, c in segments],
            source=ColumnDataSource(data),
            legend_label=[lab for _, lab, _ in segments],
        )
        tips = [(lab, f"@{a}{{0.0}}%") for a, lab, _ in segments]
        fig.add_tools(HoverTool(tooltips=[("", "@name"), *tips]))
        out.append(fig)
    return out


def roofline(report: MfuReport) -> list[LayoutDOM]:
    """Log-log roofline: the roofs of every denominator, a point per stage and per instance."""
    points = roofline_points(report)
    if not points:
        return []
    fig = new_figure(
        f"Roofline, {report.gpu_name or 'unknown GPU'} {report.peak.dtype}",
        height=380,
        x_axis_type="log",
        y_axis_type="log",
    )
    ceilings = dict(roofs(report))
    ridges = [r for f, b in ceilings.values() if (r := ridge_point(f, b)) is not None]
    span = [p.arithmetic_intensity for p in points.values()] + ridges
    lo, hi = min(span) / 4, max(span) * 4
    fig.add_layout(Legend(), "right")
    for name, (flops, bandwidth) in ceilings.items():
        ridge = flops / bandwidth
        fig.line(
            [lo, ridge, hi],
            [lo * bandwidth / 1e12, flops / 1e12, flops / 1e12],
            color="black",
            line_dash="solid" if name == "table" else "dashed",
            legend_label=f"{name}: {flops / 1e12:.4g} TFLOP/s, {bandwidth / 1e12:.3g} TB/s",
        )
    for name, p in points.items():
        color = STAGE_COLORS.get(name, "gray")
        inst = [
            (r.flops / r.bytes_moved, r.flops / r.gpu_busy_ns * 1e-3)
            for r in report.stages[name].instances
            if r.bytes_moved and r.gpu_busy_ns > 0
        ]
        if inst:
            xs, ys = zip(*inst, strict=True)
            fig.scatter(list(xs), list(ys), size=5, color=color, alpha=0.5)
        if p.achieved_flops:
            source = ColumnDataSource(
                {
                    "x": [p.arithmetic_intensity],
                    "y": [p.achieved_flops / 1e12],
                    "stage": [name],
                    "bound": [p.bound or "?"],
                }
            )
            fig.scatter(
                "x",
                "y",
                size=12,
                color=color,
                line_color="black",
                source=source,
                legend_label=f"{name} ({p.bound or '?'}-bound)",
            )
    fig.add_tools(
        HoverTool(
            tooltips=[
                ("", "@stage"),
                ("FLOP/byte", "@x{0,0.0}"),
                ("TFLOP/s", "@y{0,0.000}"),
                ("bound", "@bound"),
            ]
        )
    )
    fig.xaxis.axis_label = "arithmetic intensity (FLOP / byte, analytic)"
    fig.yaxis.axis_label = "achieved TFLOP/s (over GPU busy time)"
    return [fig]


def category_bars(report: MfuReport) -> list[LayoutDOM]:
    """Per stage, the median decode step and the whole trace: kernel time stacked by category,
    as % of that range's kernel time, with each category's ms, kernel count and GEMM/attention
    rate on hover."""
    ranges = [(s.stage, s.categories) for s in report.stages.values() if s.categories]
    if report.step_categories is not None and report.step_categories.categories:
        ranges.append(("median decode step", report.step_categories.categories))
    if report.trace_view is not None and report.trace_view.categories:
        ranges.append(("whole trace", report.trace_view.categories))
    if not ranges:
        return []
    present = [
        c for c in CATEGORIES if any(x.category == c for _, shares in ranges for x in shares)
    ]
    rows = pl.DataFrame(
        [
            {
                "range": name,
                "category": x.category,
                "share": x.share * 100,
                "ms": x.total_ns / 1e6,
                "n_kernels": x.n_kernels,
                "tflops": (x.achieved_flops_per_s or float("nan")) / 1e12,
                "peak_pct": (x.peak_fraction or float("nan")) * 100,
            }
            for name, shares in ranges
            for x in shares
        ],
        schema={
            "range": pl.String,
            "category": pl.String,
            "share": pl.Float64,
            "ms": pl.Float64,
            "n_kernels": pl.Int64,
            "tflops": pl.Float64,
            "peak_pct": pl.Float64,
        },
    )
    names = [name for name, _ in ranges]
    fig = new_figure(
        "Where the kernel time goes, by category (% of each range's kernel time)",
        height=110 + 45 * len(names),
        y_range=names[::-1],
        x_range=Range1d(start=0, end=100),
    )
    # each category's bar starts where the categories before it (in CATEGORIES order) end
    rank = {c: i for i, c in enumerate(CATEGORIES)}
    rows = (
        rows.sort(pl.col("category").replace_strict(rank), maintain_order=True)
        .with_columns(right=pl.col("share").cum_sum().over("range"))
        .with_columns(left=pl.col("right") - pl.col("share"))
    )
    for category in present:
        part = rows.filter(pl.col("category") == category)
        fig.hbar(
            y="range",
            left="left",
            right="right",
            height=0.6,
            color=CATEGORY_COLORS[category],
            source=ColumnDataSource(part.to_dict(as_series=False)),
            legend_label=category,
        )
    fig.add_tools(
        HoverTool(
            tooltips=[
                ("", "@range: @category"),
                ("share", "@share{0.0}%"),
                ("kernel ms", "@ms{0,0.000}"),
                ("kernels", "@n_kernels{0,0}"),
                ("TFLOP/s while running", "@tflops{0,0.0}"),
                ("% of peak while running", "@peak_pct{0.0}"),
            ]
        )
    )
    fig.legend.orientation = "horizontal"
    fig.add_layout(fig.legend[0], "below")
    fig.xaxis.axis_label = "% of kernel time"
    return [fig]


def _category_tables(report: MfuReport) -> list[sections.Section]:
    stages = [sections.category_section(s) for s in report.stages.values() if s.categories]
    step = sections.step_category_section(report)
    return [*stages, *([step] if step else []), *sections.trace_sections(report)[:1]]


def _stage_notes(report: MfuReport) -> list[str]:
    first = next(iter(report.stages.values()), None)
    if first is None:  # a trace of engine steps only
        return []
    return [
        f"Wall time: {WALL_SOURCES.get(first.wall_source, first.wall_source)}.",
        f"Verdict rule: {RULE}.",
    ]


def _static(report: MfuReport) -> list[sections.Section]:
    if report.static_compute is None:
        return []
    title = "Static compute (runner, fvcore): " + sections.static_note(report.static_compute)
    return [sections.static_section(report.static_compute, title)]


def _peaks(report: MfuReport) -> list[sections.Section]:
    peaks = sections.peak_section(report)
    return [peaks, sections.calibration_section(report)] if peaks.rows else []


# The parts of a report's page, in order; a new section of the report joins with one entry.
REPORT_PARTS: Final[tuple[Part[MfuReport], ...]] = (
    Part(
        "MFU per stage",
        lambda r: [sections.stage_section(r)] if r.stages else [],
        _stage_notes,
        lambda r: [*time_split(r), *mfu_bars(r)] if r.stages else [],
    ),
    Part("Per image instance", lambda r: [sections.instance_section(r)]),
    Part("Decode", lines=sections.decode_lines, figures=step_series, bullets=True),
    Part("Engine steps", engine_phases, sections.engine_lines, engine_series),
    Part(
        sections.HOST_TITLE,
        lambda r: [sections.host_section(r)],
        sections.host_verdicts,
        host_split,
        bullets=True,
    ),
    Part(None, lambda r: [sections.context_section(r)]),
    Part("MFU and MBU by denominator", _peaks),
    Part(None, lambda r: [sections.roofline_section(r)], figures=roofline),
    Part("Kernel categories", _category_tables, figures=category_bars),
    Part(
        "Top kernels",
        lambda r: [
            *(sections.kernel_section(s) for s in r.stages.values() if s.top_kernels),
            *sections.trace_sections(r)[1:],
        ],
    ),
    Part("Static compute", _static),
    Part("Warnings", lines=lambda r: list(r.warnings), bullets=True),
)


def report_html(report: MfuReport) -> str:
    """The page of one report (`mfu-analyze --html`)."""
    return page("MFU report", sections.header_lines(report), REPORT_PARTS, report)
