"""docs/api.md runs as written: its Python blocks, in order, in one namespace, from the
repository root, on the committed traces (the blocks assert what they show)."""

from __future__ import annotations

import contextlib
import io
import os
import re
from pathlib import Path

from tests.helpers.paths import REPO

DOC = REPO / "docs" / "api.md"


def blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```$", text, flags=re.S | re.M)


def test_the_walk_through_runs(repo_root: Path) -> None:
    code = blocks(DOC.read_text(encoding="utf-8"))
    assert len(code) >= 6
    namespace: dict[str, object] = {"__name__": "api_doc"}
    out = io.StringIO()
    cwd = Path.cwd()
    os.chdir(repo_root)
    try:
        with contextlib.redirect_stdout(out):
            for i, block in enumerate(code):
                exec(compile(block, f"docs/api.md block {i + 1}", "exec"), namespace)
    finally:
        os.chdir(cwd)
    printed = out.getvalue()
    assert "# MFU report" in printed
    assert "TraceNotFoundError: " in printed
