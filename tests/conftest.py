"""Fixtures shared by every test: where the real traces are."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "tests" / "data"
# CI lays a copy of the team's shared/ folder beside the clone.
SHARED = REPO.parent / "shared"


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def probe_trace() -> Path:
    """NVIDIA's toy H100 trace from shared/ (nsys 2025.3): vision/prefill/decode ranges."""
    path = SHARED / "traces" / "h100_probe_nsys2025.sqlite"
    if not path.exists():
        pytest.fail(f"{path} is missing: the shared/ folder must sit beside the repository")
    return path


@pytest.fixture(scope="session")
def probes_dir() -> Path:
    return DATA / "h100_probes"
