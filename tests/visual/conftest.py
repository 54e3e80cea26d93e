"""Every committed trace (nsys exports and PyTorch-profiler traces) analyzed once for the
session with `--format json`, `--html` and `--perfetto` written beside it (the outputs the
visual tests read), and the headless browser that opens the pages."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from typing import Any, Final

import pytest

from tests.helpers.visual import Analyzed

BROWSERS: Final = ("chromium", "chromium-browser")


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
