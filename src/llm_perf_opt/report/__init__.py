"""Render an `MfuReport`: JSON (docs/json-output.md), CSV, Markdown, HTML, PNG plots, the Perfetto
timeline and a comparison (the terminal view is `cli.terminal`'s).

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
from llm_perf_opt.report.md_tables import md_table
from llm_perf_opt.report.text import format_pct

RENDERERS: Final = {"json": to_json_text, "csv": to_csv, "md": to_markdown}

__all__ = [
    "CSV_COLUMNS",
    "RENDERERS",
    "format_pct",
    "md_table",
    "to_csv",
    "to_json",
    "to_json_text",
    "to_markdown",
    "write_ranges_csv",
]
