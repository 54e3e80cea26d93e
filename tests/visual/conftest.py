"""Every committed trace (nsys exports and PyTorch-profiler traces) analyzed once for the
session with `--format json`, `--html` and `--perfetto` written beside it (the outputs the
visual tests read), and the headless browser that opens the pages."""

from __future__ import annotations

import json
import lzma
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import pytest
from click.testing import CliRunner

from llm_perf_opt.cli.analyze import main
from tests.helpers.paths import TRACES

LLAMA: Final = ("--config", str(TRACES / "meta" / "llama_1b_shape.config.json"),
                "--prefill-len", "512")  # fmt: skip
# The flags a committed trace needs besides its run metadata (traces/README.md says how each
# was made): the Llama-shaped decoders carry no architecture of their own.
# The serving loops (`*_serve*`) need none: their run metadata carries the model and schedule.
FLAGS: Final = {"llama_1b_shape": LLAMA, "llama_1b_compile": LLAMA}
# The committed inputs by suffix: nsys exports (decompressed for the tests that read them with
# sqlite3) and PyTorch-profiler traces (read as they are).
SQLITE: Final = ".sqlite.xz"
KINETO: Final = ".pt.trace.json.gz"
# Every committed trace, by name, with its flags.
CASES: Final = {
    p.name.removesuffix(suffix): FLAGS.get(p.name.removesuffix(suffix), ())
    for suffix in (SQLITE, KINETO)
    for p in sorted(TRACES.glob(f"*{suffix}"))
}
BROWSERS: Final = ("chromium", "chromium-browser")


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


@pytest.fixture(scope="session")
def analyzed(tmp_path_factory: pytest.TempPathFactory) -> Analyzed:
    return Analyzed(tmp_path_factory.mktemp("visual"))


def chromium_path() -> str | None:
    """Debian's chromium (`apt-get install chromium`; .ci/run installs it)."""
    return next((p for b in BROWSERS if (p := shutil.which(b)) is not None), None)


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    """Headless chromium driven by Playwright through its executable path (Playwright's own
    browser download is not used)."""
    path = chromium_path()
    if path is None:
        pytest.skip("no chromium binary on PATH: apt-get install -y chromium (as .ci/run does)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=path, args=["--no-sandbox"])
        yield chromium
        chromium.close()
