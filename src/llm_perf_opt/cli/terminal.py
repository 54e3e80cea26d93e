"""The report and summaries for a person at a terminal (`--format table`), as rich tables:
the only rendering that needs rich, so it lives with the commands."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from llm_perf_opt.metrics.mfu import MfuReport
from llm_perf_opt.report import sections


def rich_table(
    title: str, head: Sequence[str], rows: Iterable[Sequence[str]], left: int = 1
) -> Table:
    """A rich table whose first `left` columns are left-justified, the others right; no cell
    wraps."""
    table = Table(title=title, title_justify="left", title_style="bold")
    for i, h in enumerate(head):
        table.add_column(h, justify="left" if i < left else "right", no_wrap=True)
    for row in rows:
        table.add_row(*row)
    return table


def _table(s: sections.Section) -> Table:
    return rich_table(s.title, s.head, s.rows, s.left)


def render_table(report: MfuReport, console: Console) -> None:
    """Print the report for a person: header, stages, instances, engine phases, decode, context,
    both denominators (calibrated runs), roofline, kernels, static compute (every engine step
    is in the Markdown, CSV and JSON reports).

    Columns do not wrap; give a non-terminal console a width (the CLI uses 160)."""
    parts: list[Any] = [Text("\n".join(sections.header_lines(report)))]
    if report.stages:
        parts.append(_table(sections.stage_section(report)))
    if report.engine is not None:
        parts.append(Text("\n".join(sections.engine_lines(report))))
        parts.append(_table(sections.engine_phase_section(report)))
    if any(len(s.instances) > 1 for s in report.stages.values()):
        parts.append(_table(sections.instance_section(report)))
    parts.append(Text("\n".join(sections.decode_lines(report))))
    host = sections.host_section(report)
    if host.rows:
        parts += [_table(host), Text("\n".join(sections.host_verdicts(report)))]
    if report.stages:
        parts.append(_table(sections.context_section(report)))
    peaks = sections.peak_section(report)
    if peaks.rows:
        parts += [_table(peaks), _table(sections.calibration_section(report))]
    roofline = sections.roofline_section(report)
    if roofline.rows:
        parts.append(_table(roofline))
    parts += [_table(sections.category_section(s)) for s in report.stages.values() if s.categories]
    step = sections.step_category_section(report)
    if step is not None:
        parts.append(_table(step))
    parts += [_table(sections.kernel_section(s)) for s in report.stages.values() if s.top_kernels]
    parts += [_table(s) for s in sections.trace_sections(report)]
    if report.static_compute is not None:
        title = "Static compute (runner, fvcore): " + sections.static_note(report.static_compute)
        parts.append(_table(sections.static_section(report.static_compute, title)))
    if report.warnings:
        parts.append(Text("\n".join(f"warning: {w}" for w in report.warnings), style="yellow"))
    console.print(Group(*parts))
