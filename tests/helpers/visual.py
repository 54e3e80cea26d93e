"""Every committed trace (nsys exports and PyTorch-profiler traces) analyzed with `--format json`,
`--html` and `--perfetto` written beside it: the outputs the visual tests read."""

from __future__ import annotations

import json
import lzma
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from llm_perf_opt.cli.analyze import main
from tests.helpers.committed import CASES, KINETO, SQLITE
from tests.helpers.paths import TRACES


@dataclass(frozen=True)
class Outputs:
    """One trace's analysis: the input analyzed (a decompressed nsys export or a PyTorch-profiler
    trace), the JSON report and both files."""

    name: str
    trace: Path
    doc: dict[str, Any]
    html: Path
    perfetto: Path


class Analyzed:
    """The outputs of each committed trace, made on first use."""

    def __init__(self, scratch: Path) -> None:
        self.scratch = scratch
        self._done: dict[str, Outputs] = {}

    def __call__(self, name: str) -> Outputs:
        if name not in self._done:
            out = self.scratch / name
            out.mkdir()
            trace = TRACES / f"{name}{KINETO}"
            if not trace.exists():
                trace = out / f"{name}.sqlite"
                with lzma.open(TRACES / f"{name}{SQLITE}") as src, trace.open("wb") as dst:
                    shutil.copyfileobj(src, dst)
            html, perfetto = out / f"{name}.html", out / f"{name}.pftrace"
            args = [str(trace), *CASES[name], "--format", "json", "--html", str(html),
                    "--perfetto", str(perfetto)]  # fmt: skip
            result = CliRunner().invoke(main, args)
            assert result.exit_code == 0, result.output
            self._done[name] = Outputs(name, trace, json.loads(result.stdout), html, perfetto)
        return self._done[name]
