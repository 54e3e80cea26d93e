"""What the MFU report needs of the attributed GPU ops, from either attribution engine.

`mfu.compute_mfu` asks five things of the ops: kernel and graph counts per range, the kernels
with the most time per stage, the kernel time per category of each stage and of one decode step,
the GPU view of the stage and decode-step windows, and which device ran most of the work (and how
many CUDA graphs were traced whole). `MemoryOps` answers from `Attribution.ops` (every op in
memory); `StreamedOps` from the aggregates of a one-pass attribution (`onepass.attribute_stream`),
which sums only what `OpsPlan` asked for before the pass. Both give the same answers;
`tests/analyze/test_engines.py` holds them equal on every committed trace.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import polars as pl

from llm_perf_opt.hostview import GpuView, gpu_view
from llm_perf_opt.kernels import (
    CategoryShare,
    KernelShare,
    LaunchKinds,
    category_shares,
    kernel_entries,
    kernel_shares,
    launch_kinds,
    launch_kinds_of,
    top_kernels,
)
from llm_perf_opt.onepass import DEVICE_OPS_SCHEMA, StreamResult


@dataclass(frozen=True)
class OpsPlan:
    """What a report will ask of the ops: the top-kernel groups (`onepass.GROUPS_SCHEMA`: a
    stage and its instance ranges) and the host/GPU windows (`hostview.WINDOWS_SCHEMA`)."""

    groups: pl.DataFrame
    windows: pl.DataFrame


class OpFacts(Protocol):
    """The questions `compute_mfu` asks of the attributed ops."""

    def launch_kinds(self, range_ids: Sequence[int]) -> dict[int, LaunchKinds]:
        """Kernel and graph-execution counts, graph time, per range (exclusive attribution)."""
        ...

    def top_kernels(
        self, group: str, range_ids: Sequence[int], names: pl.DataFrame | None, k: int
    ) -> tuple[KernelShare, ...]:
        """The `k` kernels with the most time among the exclusive ops of `range_ids` (the
        ranges of `group`)."""
        ...

    def categories(
        self, group: str, range_ids: Sequence[int], names: pl.DataFrame | None
    ) -> tuple[CategoryShare, ...]:
        """Kernel time per category (`categories.RULES`) of the same ops as `top_kernels`."""
        ...

    def step_categories(
        self, window: pl.DataFrame, names: pl.DataFrame | None
    ) -> tuple[CategoryShare, ...]:
        """Kernel time per category of the ops in one decode-step window (a `WINDOWS_SCHEMA`
        row: its owner's ops launched inside it, the ops its `gpu_view` counts)."""
        ...

    def gpu_view(self, windows: pl.DataFrame) -> GpuView:
        """`hostview.gpu_view` of the windows."""
        ...

    def devices(self) -> pl.DataFrame:
        """Attributed ops per device (`onepass.DEVICE_OPS_SCHEMA`)."""
        ...

    def n_graph_ops(self) -> int:
        """CUDA graph executions traced whole, attributed or not."""
        ...


class MemoryOps:
    """`OpFacts` from `Attribution.ops`, computed when asked."""

    def __init__(self, ops: pl.DataFrame) -> None:
        self.ops = ops

    def launch_kinds(self, range_ids: Sequence[int]) -> dict[int, LaunchKinds]:
        return launch_kinds(self.ops, range_ids)

    def top_kernels(
        self, group: str, range_ids: Sequence[int], names: pl.DataFrame | None, k: int
    ) -> tuple[KernelShare, ...]:
        return top_kernels(self.ops, range_ids, names, k)

    def categories(
        self, group: str, range_ids: Sequence[int], names: pl.DataFrame | None
    ) -> tuple[CategoryShare, ...]:
        return category_shares(kernel_entries(self.ops, range_ids), names)

    def step_categories(
        self, window: pl.DataFrame, names: pl.DataFrame | None
    ) -> tuple[CategoryShare, ...]:
        w = window.row(0, named=True)
        inside = self.ops.filter(pl.col("launch_ns").is_between(w["start_ns"], w["end_ns"]))
        return category_shares(kernel_entries(inside, [w["owner_id"]]), names)

    def gpu_view(self, windows: pl.DataFrame) -> GpuView:
        return gpu_view(windows, self.ops)

    def devices(self) -> pl.DataFrame:
        return (
            self.ops.filter(pl.col("range_id").is_not_null())
            .group_by("device_id")
            .agg(n_ops=pl.len())
            .sort("device_id")
            .cast(dict(DEVICE_OPS_SCHEMA))  # type: ignore[arg-type]
        )

    def n_graph_ops(self) -> int:
        return int((self.ops["kind"] == "graph").sum())


class StreamedOps:
    """`OpFacts` from a one-pass attribution run with `plan`'s groups and windows (None: the
    pass summed none); a question outside the plan is a programming error (ValueError)."""

    def __init__(self, result: StreamResult, plan: OpsPlan | None) -> None:
        self.result = result
        self.plan = plan

    def launch_kinds(self, range_ids: Sequence[int]) -> dict[int, LaunchKinds]:
        return launch_kinds_of(self.result.launch_kinds, range_ids)

    def top_kernels(
        self, group: str, range_ids: Sequence[int], names: pl.DataFrame | None, k: int
    ) -> tuple[KernelShare, ...]:
        return kernel_shares(self._entries(group, range_ids), names, k)

    def categories(
        self, group: str, range_ids: Sequence[int], names: pl.DataFrame | None
    ) -> tuple[CategoryShare, ...]:
        return category_shares(self._entries(group, range_ids), names)

    def step_categories(
        self, window: pl.DataFrame, names: pl.DataFrame | None
    ) -> tuple[CategoryShare, ...]:
        wid = int(window["window_id"][0])
        planned = self.plan is not None and wid in self.plan.windows["window_id"].to_list()
        if not planned:
            raise ValueError(f"decode-step window {wid} was not planned")
        entries = self.result.step_kernels.filter(pl.col("window_id") == wid)
        return category_shares(entries.drop("window_id"), names)

    def _entries(self, group: str, range_ids: Sequence[int]) -> pl.DataFrame:
        """The pass's kernel entries of `group`, which must have been planned for `range_ids`."""
        planned = (
            []
            if self.plan is None
            else self.plan.groups.filter(pl.col("group") == group)["range_id"].to_list()
        )
        if sorted(planned) != sorted(range_ids):
            raise ValueError(
                f"the top kernels of group {group!r} were not planned for these ranges"
            )
        return self.result.top_kernels.filter(pl.col("group") == group).drop("group")

    def gpu_view(self, windows: pl.DataFrame) -> GpuView:
        gpu, groups = self.result.gpu_windows, self.result.gpu_groups
        if self.plan is None or gpu is None or groups is None:
            raise ValueError("the one-pass attribution ran without windows")
        planned = self.plan.windows.select("window_id", "owner_id", "group")
        if not windows.select(planned.columns).equals(planned):
            raise ValueError("the GPU view was planned for other windows")
        return GpuView(gpu, groups)

    def devices(self) -> pl.DataFrame:
        return self.result.devices

    def n_graph_ops(self) -> int:
        kinds = self.result.op_kinds.filter(pl.col("kind") == "graph")["n_ops"]
        return int(kinds.sum())
