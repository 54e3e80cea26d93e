"""Fixtures shared by every test: where the real traces are."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.paths import DATA, REPO


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def probe_trace() -> Path:
    """The toy H100 trace of tests/data/h100_probe_toy (nsys 2025.3): vision/prefill/decode."""
    return DATA / "h100_probe_toy" / "h100_probe_nsys2025.sqlite"


@pytest.fixture(scope="session")
def probes_dir() -> Path:
    return DATA / "h100_probes"
