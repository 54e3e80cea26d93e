"""The report as Markdown (`--format md`)."""

from __future__ import annotations

from llm_perf_opt.metrics.mfu import MfuReport
from llm_perf_opt.metrics.verdict import RULE
from llm_perf_opt.report import sections
from llm_perf_opt.report.md_tables import md_table
from llm_perf_opt.report.text import WALL_SOURCES


def _section(s: sections.Section) -> list[str]:
    return [f"## {s.title}", "", md_table(s.head, s.rows), ""]


def to_markdown(report: MfuReport) -> str:
    """A Markdown report: MFU per stage, instances, the engine phases, decode MBU, the host/GPU
    breakdown, context lengths, MFU/MBU by denominator and the calibration GEMMs (calibrated
    runs), the roofline, top kernels, every engine step, the static compute table when one was
    found, and warnings."""
    out = ["# MFU report", "", *(f"- {line}" for line in sections.header_lines(report)), ""]
    if report.stages:
        out += _section(sections.stage_section(report))
        out += [
            f"Wall time: {WALL_SOURCES.get(next(iter(report.stages.values())).wall_source, '')}. "
            f"Verdict rule: {RULE}.",
            "",
        ]
        out += _section(sections.instance_section(report))
    if report.engine is not None:
        out += [*(f"- {line}" for line in sections.engine_lines(report)), ""]
        out += _section(sections.engine_phase_section(report))
    decode = sections.decode_lines(report)
    if decode:
        out += ["## Decode", "", *(f"- {line}" for line in decode), ""]
    host = sections.host_section(report)
    if host.rows:
        out += [*_section(host), *(f"- {v}" for v in sections.host_verdicts(report)), ""]
    if report.stages:
        out += _section(sections.context_section(report))
    peaks = sections.peak_section(report)
    if peaks.rows:
        out += _section(peaks) + _section(sections.calibration_section(report))
    roofline = sections.roofline_section(report)
    if roofline.rows:
        out += _section(roofline)
    for s in report.stages.values():
        if s.categories:
            out += _section(sections.category_section(s))
    step = sections.step_category_section(report)
    if step is not None:
        out += _section(step)
    for s in report.stages.values():
        if s.top_kernels:
            kernels = sections.kernel_section(s)
            # names as code: demangled C++ (`<unnamed>`, `*`) would read as HTML or emphasis
            rows = [(f"`{name}`", *rest) for name, *rest in kernels.rows]
            out += _section(kernels._replace(rows=rows))
    whole = sections.trace_sections(report)
    if whole:
        cats, kernels = whole
        out += _section(cats)
        out += _section(kernels._replace(rows=[(f"`{n}`", *rest) for n, *rest in kernels.rows]))
    if report.engine is not None:
        out += _section(sections.engine_step_section(report))
    if report.static_compute is not None:
        static = sections.static_section(report.static_compute, "Static compute (runner, fvcore)")
        note = sections.static_note(report.static_compute)
        out += [f"## {static.title}", "", note + "\n\n" + md_table(static.head, static.rows), ""]
    if report.warnings:
        out += ["## Warnings", "", *(f"- {w}" for w in report.warnings), ""]
    return "\n".join(out)
