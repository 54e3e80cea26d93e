"""The one verdict of a stage: what limits it, from its measured host/GPU breakdown, and what to
do about it (docs/mfu-math.md, "Verdict").

`classify` is the only rule: every output (the stage and host tables, the verdict sentences,
JSON, CSV, Markdown, the results database, the plots) shows the label and advice it returns.
It reads the breakdown of `hostview` (how much of the stage's GPU window the GPU was busy,
starved or queued; where the host span went; how many syncs and launches), and the stage's
trace MFU and MBU to tell the two GPU-side limits apart.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from llm_perf_opt.hostview.breakdown import HostGpuView

# A stage whose GPU is busy at least this share of its GPU window is limited by its kernels.
GPU_BOUND_SHARE: Final = 0.5
# Host syncs on at least this share of the launches, and at least MIN_SYNCS of them per step (or
# instance), make removing them the first thing to fix: each one drains the GPU queue and keeps
# CUDA graphs from capturing the loop.
SYNCS_PER_LAUNCH: Final = 0.05
MIN_SYNCS: Final = 10
# Every label, each with its advice; `n/a` is a stage without a breakdown.
ADVICE: Final = {
    "compute-bound": "faster kernels or more work per launch lift MFU",
    "memory-bound": "the kernels wait on memory: more tokens per weight read (batching) or "
    "fewer bytes (fusion, narrower weights) lift MFU",
    "sync-bound": "remove the host syncs (fuse, e.g. grouped_mm experts) to lift MFU",
    "launch-bound": "fewer, larger kernels or CUDA graphs cut the launch time",
    "framework-bound": "capture CUDA graphs or compile to take Python off the critical path",
    "api-bound": "look at the other CUDA calls (allocations, attribute queries) first",
    "queue-bound": "ops wait in the GPU queue (launch latency, gaps between dependent kernels): "
    "fewer, longer kernels help",
    "n/a": "no host/GPU breakdown of this stage (no CUDA API calls in its ranges)",
}
VERDICTS: Final = tuple(ADVICE)
RULE: Final = (
    f"GPU busy ≥ {GPU_BOUND_SHARE:g} of the stage's GPU window: memory-bound when trace MBU > "
    f"trace MFU, else compute-bound; otherwise sync-bound when the host syncs ≥ {MIN_SYNCS} "
    f"times per decode step (per instance elsewhere) on ≥ {SYNCS_PER_LAUNCH:.0%} of the "
    "launches; else, when the host was late (starved ≥ queued + edge), the largest host part "
    "(launch-, framework- (outside CUDA calls), sync- or api-bound); else queue-bound"
)


@dataclass(frozen=True)
class Verdict:
    """A stage's label (one of `VERDICTS`) and the advice that goes with it."""

    label: str
    advice: str

    @classmethod
    def of(cls, label: str) -> Verdict:
        return cls(label, ADVICE[label])


NO_BREAKDOWN: Final = Verdict.of("n/a")


@dataclass(frozen=True)
class UnitCounts:
    """Host syncs, memcpys and launches of one decode step (the median step) or, outside decode,
    of one instance (the stage's sums over its instances)."""

    unit: str
    syncs: float
    copies: float
    launches: float

    @classmethod
    def of(cls, total: HostGpuView, per_step: HostGpuView | None, n_instances: int) -> UnitCounts:
        if per_step is not None:
            return cls("step", per_step.n_syncs, per_step.n_memcpy, per_step.n_launches)
        n = n_instances or 1
        return cls("instance", total.n_syncs / n, total.n_memcpy / n, total.n_launches / n)


def many_syncs(counts: UnitCounts) -> bool:
    """Whether the host syncs often enough, per step or instance, to be the first thing to fix
    (`MIN_SYNCS`, `SYNCS_PER_LAUNCH`)."""
    return counts.syncs >= MIN_SYNCS and counts.syncs >= SYNCS_PER_LAUNCH * counts.launches


def classify(
    view: HostGpuView | None,
    counts: UnitCounts | None,
    mfu_trace: float | None,
    mbu_trace: float | None,
) -> Verdict:
    """The verdict of a stage from its breakdown summed over its instances (`view`), its syncs
    and launches per step or instance (`counts`), and its trace MFU and MBU (`RULE`)."""
    if view is None or counts is None:
        return NO_BREAKDOWN
    window = view.gpu_window_ns
    if window <= 0 or view.busy_ns >= GPU_BOUND_SHARE * window:
        memory = mbu_trace is not None and mfu_trace is not None and mbu_trace > mfu_trace
        return Verdict.of("memory-bound" if memory else "compute-bound")
    if many_syncs(counts):
        return Verdict.of("sync-bound")
    if view.starved_ns < view.queued_ns + view.edge_ns:
        return Verdict.of("queue-bound")
    parts = {
        "sync-bound": view.sync_ns,
        "launch-bound": view.launch_ns,
        "framework-bound": view.outside_api_ns,
        "api-bound": view.other_api_ns,
    }
    return Verdict.of(max(parts, key=lambda k: parts[k]))
