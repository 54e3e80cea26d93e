"""A small generated trace shared by the generator's tests (benchmarks/ importable from here)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from benchmarks.gen_trace import generate

from tests.helpers.generated import TINY_KERNELS, Tiny
from tests.helpers.trace_facts import connect, ops, ranges


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tiny]:
    path = tmp_path_factory.mktemp("gen") / "tiny.sqlite"
    summary = generate(path, TINY_KERNELS, seed=0)
    con = connect(path)
    try:
        yield Tiny(path, summary, ranges(con), ops(con))
    finally:
        con.close()
