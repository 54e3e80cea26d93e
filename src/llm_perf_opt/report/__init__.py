"""Render an `MfuReport`: JSON (docs/json-output.md), CSV, Markdown and a rich terminal view.

Renderers only format; every number comes from `mfu.compute_mfu`. Each level of the report is
declared once (`levels`: what JSON, CSV and the results database write; `columns`: the tables a
person reads), and every renderer takes its columns from there. Times are shown in the unit a
person reads (ms, µs) but JSON and CSV keep seconds (`*_s`) so tools can recompute ratios.
"""

from __future__ import annotations

from typing import Final

from llm_perf_opt.report.csvrows import CSV_COLUMNS, to_csv, write_ranges_csv
from llm_perf_opt.report.jsondoc import to_json, to_json_text
from llm_perf_opt.report.markdown import to_markdown
from llm_perf_opt.report.terminal import render_table
from llm_perf_opt.report.text import format_pct
from llm_perf_opt.report.text_tables import md_table, rich_table

RENDERERS: Final = {"json": to_json_text, "csv": to_csv, "md": to_markdown}

__all__ = [
    "CSV_COLUMNS",
    "RENDERERS",
    "format_pct",
    "md_table",
    "render_table",
    "rich_table",
    "to_csv",
    "to_json",
    "to_json_text",
    "to_markdown",
    "write_ranges_csv",
]
