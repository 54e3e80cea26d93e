"""Numbers as a person reads them (ms, µs, GFLOP, percentages) and the verdict sentence.

Times come in ns and are shown in the unit of the column; JSON and CSV keep seconds.
"""

from __future__ import annotations

import math
from typing import Final

from llm_perf_opt.metrics import verdict
from llm_perf_opt.metrics.mfu import StageResult

# Percentages below this (in %) get two significant digits instead of one decimal.
SMALL_PCT: Final = 1.0


def format_pct(x: float | None) -> str:
    """A percentage with one decimal, or two significant digits below 1 % (decode MFU is ~0.03 %):
    never a bare `0.0%` or `0.1%` for a value that has more to say."""
    if x is None:
        return "–"
    pct = 100 * x
    if pct == 0 or abs(pct) >= SMALL_PCT:
        return f"{pct:.1f}%"
    rounded = float(f"{pct:.2g}")  # rounding first: 0.00996 → 0.01, shown as 0.010
    decimals = 1 - math.floor(math.log10(abs(rounded)))
    return f"{rounded:.{decimals}f}%"


def ms(ns: float | None) -> str:
    return "–" if ns is None else f"{ns / 1e6:,.2f}"


def us(ns: float | None) -> str:
    return "–" if ns is None else f"{ns / 1e3:,.1f}"


def gflop(flops: float | None) -> str:
    return "–" if flops is None else f"{flops / 1e9:,.1f}"


def tflops(x: float | None) -> str:
    return "–" if x is None else f"{x / 1e12:,.4g}"


def num(x: float | None, fmt: str = ",.1f") -> str:
    return "–" if x is None else format(x, fmt)


def count(n: int) -> str:
    return f"{n:,}"


def short(name: str, width: int = 90) -> str:
    """Kernel name cut to `width` characters (demangled names run to hundreds)."""
    name = name.removeprefix("void ")
    return name if len(name) <= width else name[: width - 1] + "…"


def host_verdict(s: StageResult) -> str | None:
    """One sentence from the stage's breakdown: where the host span goes, the host syncs per
    decode step (per instance for the other stages), how idle the GPU is, the MFU now, with a
    perfect host (wall = GPU busy: the trace MFU) and with only the launch calls left, then the
    stage's verdict and its advice (`verdict.classify`)."""
    v = s.host
    if v is None:
        return None
    c = verdict.UnitCounts.of(v, s.per_step, len(s.instances))
    span, window = v.span_ns or 1.0, v.gpu_window_ns or 1.0
    return (
        f"{s.stage} ({s.verdict}): {format_pct(v.outside_api_ns / span)} of the host span outside "
        f"CUDA calls, {format_pct(v.launch_ns / span)} in launch calls, "
        f"{format_pct(v.sync_ns / span)} in syncs; {c.syncs:,.0f} host syncs and {c.copies:,.0f} "
        f"memcpys per {c.unit}; GPU busy {format_pct(v.busy_ns / window)} (starved "
        f"{format_pct(v.starved_ns / window)}, queued {format_pct(v.queued_ns / window)}); MFU "
        f"{format_pct(s.mfu_wall)} now, {format_pct(s.mfu_trace)} with a perfect host, "
        f"{format_pct(s.mfu_launch_only)} with launch calls alone: {s.advice}"
    )


WALL_SOURCES: Final = {
    "runner": "runner's synchronized wall clock (metadata images[i].wall_s)",
    "range": "range CPU start → later of CPU end and last GPU op end",
    "mixed": "runner where the metadata has it, else range span",
}
