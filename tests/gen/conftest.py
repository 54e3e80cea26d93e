"""A small generated trace shared by the generator's tests (benchmarks/ importable from here)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from benchmarks.gen_trace import Summary, generate

from .trace_facts import Op, Range, connect, ops, ranges

TINY_KERNELS = 2_000


@dataclass(frozen=True)
class Tiny:
    """The tiny trace and what was read back from it."""

    path: Path
    summary: Summary
    ranges: list[Range]
    ops: list[Op]


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tiny]:
    path = tmp_path_factory.mktemp("gen") / "tiny.sqlite"
    summary = generate(path, TINY_KERNELS, seed=0)
    con = connect(path)
    try:
        yield Tiny(path, summary, ranges(con), ops(con))
    finally:
        con.close()
