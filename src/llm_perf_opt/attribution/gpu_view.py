"""The GPU view of windows, what the attribution fold's sweep (`sweep.WindowTotals`) sums for
the host/GPU breakdown (`hostview.breakdown`): the windows it takes and the frames it returns."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import polars as pl

# Inputs. Windows: `owner_id` is the range whose attributed ops the GPU view counts (a decode
# step counts the ops of its decode range launched during the step); `group` names the set the
# window is summed into.
WINDOWS_SCHEMA: Final = pl.Schema(
    {
        "window_id": pl.Int64,
        "owner_id": pl.Int64,
        "group": pl.String,
        "global_tid": pl.Int64,
        "start_ns": pl.Int64,
        "end_ns": pl.Int64,
    }
)
# The GPU half of a breakdown's parts.
GPU_PARTS: Final = ("busy_ns", "starved_ns", "queued_ns", "edge_ns")
# The group of the decode steps' windows.
STEP_GROUP: Final = "decode_step"

# The GPU half of a breakdown: per window (in the windows' order) and the launch latency median
# per group, summed by the fold (`sweep`).
GPU_WINDOWS_SCHEMA: Final = pl.Schema(
    {
        "window_id": pl.Int64,
        "gpu_window_ns": pl.Float64,
        **dict.fromkeys(GPU_PARTS, pl.Float64),
        "n_gpu_ops": pl.Float64,
        "launch_latency_median_ns": pl.Float64,
    }
)
GPU_GROUPS_SCHEMA: Final = pl.Schema({"group": pl.String, "launch_latency_median_ns": pl.Float64})


@dataclass(frozen=True)
class GpuView:
    """The GPU view of a set of windows: `windows` (`GPU_WINDOWS_SCHEMA`), `groups`
    (`GPU_GROUPS_SCHEMA`)."""

    windows: pl.DataFrame
    groups: pl.DataFrame
