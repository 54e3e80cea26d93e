"""What the MFU report needs of the attributed GPU ops, answered from the fold's sums.

`mfu.compute_mfu` asks five things of the ops: kernel and graph counts per range, the kernels
with the most time per stage, the kernel time per category of each stage and of one decode step,
the GPU view of the stage and decode-step windows, and which device ran most of the work (and how
many CUDA graphs were traced whole). The fold sums only what `OpsPlan` asked for before it ran
(`mfu.plan_ops`, planned on the range structure), so no op is kept for the report.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import polars as pl

from llm_perf_opt.attribution.gpu_view import GpuView
from llm_perf_opt.attribution.totals import StreamResult
from llm_perf_opt.kernels.shares import (
    CategoryShare,
    KernelShare,
    LaunchKinds,
    category_shares,
    kernel_shares,
    launch_kinds_of,
)


@dataclass(frozen=True)
class OpsPlan:
    """What a report will ask of the ops: the top-kernel groups (`schemas.GROUPS_SCHEMA`: a
    stage and its instance ranges) and the host/GPU windows (`gpu_view.WINDOWS_SCHEMA`)."""

    groups: pl.DataFrame
    windows: pl.DataFrame


class OpFacts:
    """What the report asks of the attributed ops, from a fold (`attribute_stream` or
    `attribute_whole`) run with `plan`'s groups and windows (None: it summed none); a question
    outside the plan is a programming error (ValueError)."""

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
