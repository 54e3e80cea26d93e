"""Colours and the parts of the host/GPU breakdown, shared by the PNG plots (plots.py) and the
HTML report (report/html.py) so a stage or a part reads the same in both."""

from __future__ import annotations

from typing import Final

BUSY_COLOR: Final = "#2a7ab9"
IDLE_COLOR: Final = "#d9d9d9"
WALL_COLOR: Final = "#e08a2c"
STAGE_COLORS: Final = {"vision": "#2a7ab9", "prefill": "#e08a2c", "decode": "#3a9a4a"}
# Engine-step phases (docs/serving.md): prefill and decode read as the stages of those names.
PHASE_COLORS: Final = {
    "prefill": STAGE_COLORS["prefill"],
    "decode": STAGE_COLORS["decode"],
    "mixed": "#6a3d9a",
    "idle": "#999999",
}
# Host parts, then GPU parts: (attribute of HostGpuView, legend label, colour).
HOST_SEGMENTS: Final = (
    ("launch_ns", "launch calls", "#6a3d9a"),
    ("sync_ns", "sync calls", "#e31a1c"),
    ("other_api_ns", "other CUDA calls", "#fb9a99"),
    ("outside_api_ns", "outside CUDA calls", "#fdbf6f"),
)
GPU_SEGMENTS: Final = (
    ("busy_ns", "GPU busy", BUSY_COLOR),
    ("starved_ns", "GPU starved (host late)", "#b2df8a"),
    ("queued_ns", "GPU queued (launch latency)", "#a6cee3"),
    ("edge_ns", "GPU idle at the edges", IDLE_COLOR),
)
# Kernel categories (categories.CATEGORIES), in their order.
CATEGORY_COLORS: Final = {
    "gemm": "#1f78b4",
    "attention": "#6a3d9a",
    "norm": "#b2df8a",
    "elementwise": "#fdbf6f",
    "reduction": "#e31a1c",
    "memory": "#a6cee3",
    "communication": "#33a02c",
    "other": "#999999",
    "graph": "#555555",
}
