"""The analysis path must run on a laptop with only the .sqlite: it never imports torch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.helpers.paths import SRC


def test_analysis_modules_do_not_import_torch(probe_trace: Path) -> None:
    code = f"""
import sys
from click.testing import CliRunner
from llm_perf_opt.cli.analyze import main as analyze
from llm_perf_opt.cli.flops import cli as flops
r = CliRunner().invoke(analyze, [{str(probe_trace)!r}, "--stage", "vision=vision", "--stage",
    "prefill=prefill", "--stage", "decode=decode", "--model", "deepseek-ocr", "--mode", "base",
    "--prefill-len", "273", "--decode-tokens", "32", "--format", "json"])
assert r.exit_code == 0, r.output
r = CliRunner().invoke(flops, ["--model", "deepseek-ocr", "--mode", "base", "--prefill-len",
    "273", "--decode-tokens", "8", "--ctx-mode", "auto", "--format", "json"])
assert r.exit_code == 0, r.output
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "transformers", "fvcore"))
print(heavy)
"""
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == "[]"
