"""Attribution: which NVTX range launched each GPU op, and what the ops of each range add up to.

One engine, a fold over ops in start order (`fold`): `attribute_stream` over batches read in
start order, in memory bounded by a budget, or `attribute_whole` over whole tables in any order.
What it applies is the rule (`rule`: the declarations, the range frame); what it sums, the
`totals` (per range, kind, reason, group, decode step) and the `sweep` (busy unions, GPU view
of windows); `calls` holds the launch calls an op batch joins; `intervals` and `nesting` are
the sorted interval and range-structure arithmetic it runs on. `queries.OpFacts` answers the
report's questions from the sums; `perop.attribute` returns the per-op frame on request;
`gpu_view` declares the GPU view of windows that the sweep sums (the host side: `hostview`).
"""

from llm_perf_opt.attribution.fold import ReadAhead, attribute_stream, attribute_whole
from llm_perf_opt.attribution.perop import Attribution, attribute, attribute_frames
from llm_perf_opt.attribution.queries import OpFacts, OpsPlan
from llm_perf_opt.attribution.rule import (
    ATTRIBUTED_BY,
    OPS_SCHEMA,
    RANGES_OUT_COLUMNS,
    RANGES_SCHEMA,
    UNATTRIBUTED_REASON,
    RangeSelection,
    range_frame,
)
from llm_perf_opt.attribution.schemas import (
    CALL_BATCH_SCHEMA,
    DEFAULT_MEMORY_BUDGET_BYTES,
    DEVICE_OPS_SCHEMA,
    GROUPS_SCHEMA,
    HOST_CALL_BATCH_SCHEMA,
    KIND_OPS_SCHEMA,
    LAUNCH_KINDS_SCHEMA,
    MEMORY_BUDGET_FLOOR_BYTES,
    MIN_MEMORY_BUDGET_BYTES,
    OP_ASSIGNMENT_SCHEMA,
    OP_BATCH_SCHEMA,
    TOP_KERNELS_SCHEMA,
    UNATTRIBUTED_SCHEMA,
    StreamBudget,
    StreamOrderError,
)
from llm_perf_opt.attribution.totals import StreamResult, StreamStats

__all__ = [
    "ATTRIBUTED_BY",
    "CALL_BATCH_SCHEMA",
    "DEFAULT_MEMORY_BUDGET_BYTES",
    "DEVICE_OPS_SCHEMA",
    "GROUPS_SCHEMA",
    "HOST_CALL_BATCH_SCHEMA",
    "KIND_OPS_SCHEMA",
    "LAUNCH_KINDS_SCHEMA",
    "MEMORY_BUDGET_FLOOR_BYTES",
    "MIN_MEMORY_BUDGET_BYTES",
    "OPS_SCHEMA",
    "OP_ASSIGNMENT_SCHEMA",
    "OP_BATCH_SCHEMA",
    "RANGES_OUT_COLUMNS",
    "RANGES_SCHEMA",
    "TOP_KERNELS_SCHEMA",
    "UNATTRIBUTED_REASON",
    "UNATTRIBUTED_SCHEMA",
    "Attribution",
    "OpFacts",
    "OpsPlan",
    "RangeSelection",
    "ReadAhead",
    "StreamBudget",
    "StreamOrderError",
    "StreamResult",
    "StreamStats",
    "attribute",
    "attribute_frames",
    "attribute_stream",
    "attribute_whole",
    "range_frame",
]
