"""The library is not the CLI: only cli/ (and the runner) import click, and rich is imported
only by cli/ and the report's terminal table, so the Python API runs without the CLI's code."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from tests.helpers.paths import SRC

PACKAGE = SRC / "llm_perf_opt"
# The report's rich table (`report.render_table`, `rich_table`), exported by `llm_perf_opt.report`.
RICH_OUTSIDE_CLI: set[str] = set()


def _imports(path: Path) -> set[str]:
    """Top-level package names `path` imports, at any depth of the module."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_only_cli_imports_click_and_rich() -> None:
    library = [
        p for p in PACKAGE.rglob("*.py") if p.relative_to(PACKAGE).parts[0] not in ("cli", "runner")
    ]
    assert len(library) > 50
    importing = {str(p.relative_to(PACKAGE)): _imports(p) & {"click", "rich"} for p in library}
    assert not [name for name, found in importing.items() if "click" in found]
    assert {name for name, found in importing.items() if "rich" in found} == RICH_OUTSIDE_CLI


def test_the_api_runs_without_click(probe_trace: Path) -> None:
    code = f"""
import sys
import llm_perf_opt
from llm_perf_opt.vocab import FAMILIES
a = llm_perf_opt.analyze({str(probe_trace)!r}, stages={{"vision": "vision", "prefill": "prefill",
    "decode": "decode"}}, model="deepseek-ocr", mode="base", prefill_len=273, decode_tokens=32)
assert a.to_json().startswith("{{")
assert llm_perf_opt.compare(a, a).to_markdown().startswith("# MFU comparison")
assert llm_perf_opt.flops(FAMILIES[0])["prefill_flops"] > 0
print(sorted(m for m in sys.modules if m.split(".")[0] == "click"))
"""
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == "[]"
