"""Every committed trace analyzed once for the session with `--format json`, `--html` and
`--perfetto` written beside it (the outputs the visual tests read), and the headless browser
that opens the pages."""

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

REPO: Final = Path(__file__).resolve().parents[2]
TRACES: Final = REPO / "traces"
LLAMA: Final = ("--config", str(TRACES / "meta" / "llama_1b_shape.config.json"),
                "--prefill-len", "512")  # fmt: skip
# The flags a committed trace needs besides its run metadata (traces/README.md says how each
# was made): the Llama-shaped decoders carry no architecture of their own.
FLAGS: Final = {"llama_1b_shape": LLAMA, "llama_1b_compile": LLAMA}
# Committed traces mfu-analyze cannot analyze yet, and why.
PENDING: Final = {
    "dsocr_v1_serve": "a serving loop: its engine steps are not read yet",
    "llama_1b_serve": "a serving loop: its engine steps are not read yet",
}
# Every other committed nsys export, with its flags.
CASES: Final = {
    name: FLAGS.get(name, ())
    for name in sorted(p.name.removesuffix(".sqlite.xz") for p in TRACES.glob("*.sqlite.xz"))
    if name not in PENDING
}
BROWSERS: Final = ("chromium", "chromium-browser")


@dataclass(frozen=True)
class Outputs:
    """One trace's analysis: the decompressed export, the JSON report and both files."""

    name: str
    sqlite: Path
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
            sqlite = out / f"{name}.sqlite"
            with lzma.open(TRACES / f"{name}.sqlite.xz") as src, sqlite.open("wb") as dst:
                shutil.copyfileobj(src, dst)
            html, perfetto = out / f"{name}.html", out / f"{name}.pftrace"
            args = [str(sqlite), *CASES[name], "--format", "json", "--html", str(html),
                    "--perfetto", str(perfetto)]  # fmt: skip
            result = CliRunner().invoke(main, args)
            assert result.exit_code == 0, result.output
            self._done[name] = Outputs(name, sqlite, json.loads(result.stdout), html, perfetto)
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
