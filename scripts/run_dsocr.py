"""Instrumented DeepSeek-OCR runner: NVTX-annotated vision / prefill / decode + run.meta.json.

Usage: python scripts/run_dsocr.py --help (or under `nsys profile -t cuda,nvtx`); see
docs/runner.md. Works from a checkout without installing the package.
"""

from __future__ import annotations

import sys
from pathlib import Path

try:
    import llm_perf_opt  # noqa: F401
except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from llm_perf_opt.runner.cli import main

if __name__ == "__main__":
    sys.exit(main())
