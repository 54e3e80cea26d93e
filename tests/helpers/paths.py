"""Where the repository's files are, spelled once for every test."""

from __future__ import annotations

from pathlib import Path
from typing import Final

REPO: Final = Path(__file__).resolve().parents[2]
SRC: Final = REPO / "src"
TRACES: Final = REPO / "traces"
DATA: Final = REPO / "tests" / "data"
