"""A comparison as one self-contained HTML page (`mfu-compare --html FILE`): the header, the
per-stage deltas with their noise bands as a table and as a plot, flags and regressions.

The page is `report.html.page` over `COMPARE_PARTS`; a new part joins with one entry there.
"""

from __future__ import annotations

from typing import Any, Final

from bokeh.models import ColumnDataSource, HoverTool, LayoutDOM
from bokeh.models.annotations import BoxAnnotation, Span, Whisker

from llm_perf_opt.batch.deltas import Comparison, Regressions
from llm_perf_opt.report import comparison
from llm_perf_opt.report.html import Part, new_figure, page
from llm_perf_opt.report.palette import BUSY_COLOR
from llm_perf_opt.report.sections import Section

VERDICT_COLORS: Final = {"improved": "#3a9a4a", "regressed": "#d62728", "within_noise": "#7f7f7f"}


def delta_plot(c: Comparison) -> list[LayoutDOM]:
    """Every stage's metrics: the change new/base in % as a point, its noise band as a
    whisker, the ±min-effect band shaded; hover for both sides' values."""
    rows = [(stage, name, d) for stage, deltas in c.stages.items() for name, d in deltas.items()]
    if not rows:
        return []
    labels = [f"{stage} · {comparison.label(name)}" for stage, name, _ in rows]
    data: dict[str, list[Any]] = {
        "label": labels,
        "delta": [d.delta_pct for _, _, d in rows],
        "low": [d.ci_low_pct for _, _, d in rows],
        "high": [d.ci_high_pct for _, _, d in rows],
        "verdict": [d.verdict.replace("_", " ") for _, _, d in rows],
        "color": [VERDICT_COLORS[d.verdict] for _, _, d in rows],
        "base": [comparison.shown(name, d.base) for _, name, d in rows],
        "new": [comparison.shown(name, d.new) for _, name, d in rows],
    }
    fig = new_figure(
        f"Change new vs base (%), {c.confidence:.0%} noise band; shaded: within "
        f"±{c.min_effect_pct:g}%",
        height=80 + 26 * len(rows),
        y_range=labels[::-1],
    )
    source = ColumnDataSource(data)
    fig.add_layout(BoxAnnotation(left=-c.min_effect_pct, right=c.min_effect_pct,
                                 fill_color=BUSY_COLOR, fill_alpha=0.08))  # fmt: skip
    fig.add_layout(Span(location=0, dimension="height", line_color="black", line_width=1))
    fig.add_layout(Whisker(base="label", lower="low", upper="high", dimension="width",
                           source=source, line_color="color"))  # fmt: skip
    fig.scatter("delta", "label", size=9, color="color", source=source)
    tips = [("", "@label"), ("base", "@base"), ("new", "@new"), ("change", "@delta{+0.0}%"),
            ("band", "[@low{+0.0}%, @high{+0.0}%]"), ("verdict", "@verdict")]  # fmt: skip
    fig.add_tools(HoverTool(tooltips=tips))
    fig.xaxis.axis_label = "change %"
    return [fig]


def _table(c: Comparison) -> list[Section]:
    return [Section("Base vs new per stage", comparison.HEAD, comparison.rows(c), 2)]


COMPARE_PARTS: Final[tuple[Part[Comparison], ...]] = (
    Part(None, _table, figures=delta_plot),
    Part("Flags", lines=lambda c: list(c.flags), bullets=True),
)


def compare_html(c: Comparison, regressions: Regressions) -> str:
    """The page of a comparison (`mfu-compare --html`)."""
    regression_part = Part[Comparison](
        "Regressions",
        lines=lambda _c: [f"{s} {comparison.label(m)} {p:+.1f}%" for s, m, p in regressions],
        bullets=True,
    )
    parts = (*COMPARE_PARTS, regression_part)
    return page("MFU comparison", comparison.header(c), parts, c)
