"""Small generated traces (and a damaged one) for the batch, database and comparison tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from benchmarks.gen_trace import generate

SMALL_KERNELS = 2_000
SEEDS = (1, 2, 3)


@pytest.fixture(scope="session")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory of three generated traces (seeds 1-3) and `bad.sqlite`, the first 4 kB of
    one of them (a truncated export)."""
    root = tmp_path_factory.mktemp("sweep")
    for seed in SEEDS:
        generate(root / f"g{seed}.sqlite", SMALL_KERNELS, seed=seed)
    (root / "bad.sqlite").write_bytes((root / "g1.sqlite").read_bytes()[:4096])
    return root


@pytest.fixture(scope="session")
def good_traces(sweep: Path) -> list[Path]:
    return [sweep / f"g{seed}.sqlite" for seed in SEEDS]
