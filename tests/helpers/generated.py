"""The tiny trace benchmarks/gen_trace.py writes for the generator's tests, and what plain SQL
read back from it (tests.helpers.trace_facts)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from benchmarks.gen_trace import Summary

from tests.helpers.trace_facts import Op, Range

TINY_KERNELS = 2_000


@dataclass(frozen=True)
class Tiny:
    """The tiny trace and what was read back from it."""

    path: Path
    summary: Summary
    ranges: list[Range]
    ops: list[Op]
