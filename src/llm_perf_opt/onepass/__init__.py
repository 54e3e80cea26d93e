"""Bounded-memory, one-pass attribution of GPU ops to NVTX ranges (see `onepass.engine`).

`range_frame(ranges, selection)` builds the ranges frame to fill; `attribute_stream(...)` fills it
from op and call batches in start order and returns the aggregates the analysis needs;
`StreamBudget.of(bytes)` says how many rows a batch should hold; `ReadAhead(batches)` reads the
next batches in a background thread while the pass works. `HostViewStream(windows, syncs,
resolve_names)` computes `hostview.host_view` from the API calls in start-ordered batches
(`Trace.api_call_batches`), holding the windows, a carry per thread and the current batch.
"""

from llm_perf_opt.onepass.engine import ReadAhead, attribute_stream, range_frame
from llm_perf_opt.onepass.host import HostViewStream
from llm_perf_opt.onepass.schemas import (
    CALL_BATCH_SCHEMA,
    DEFAULT_MEMORY_BUDGET_BYTES,
    DEVICE_OPS_SCHEMA,
    GROUPS_SCHEMA,
    HOST_CALL_BATCH_SCHEMA,
    KIND_OPS_SCHEMA,
    LAUNCH_KINDS_SCHEMA,
    MEMORY_BUDGET_FLOOR_BYTES,
    MIN_MEMORY_BUDGET_BYTES,
    OP_BATCH_SCHEMA,
    TOP_KERNELS_SCHEMA,
    UNATTRIBUTED_SCHEMA,
    StreamBudget,
    StreamOrderError,
)
from llm_perf_opt.onepass.totals import StreamResult, StreamStats

__all__ = [
    "CALL_BATCH_SCHEMA",
    "DEFAULT_MEMORY_BUDGET_BYTES",
    "DEVICE_OPS_SCHEMA",
    "GROUPS_SCHEMA",
    "HOST_CALL_BATCH_SCHEMA",
    "KIND_OPS_SCHEMA",
    "LAUNCH_KINDS_SCHEMA",
    "MEMORY_BUDGET_FLOOR_BYTES",
    "MIN_MEMORY_BUDGET_BYTES",
    "OP_BATCH_SCHEMA",
    "TOP_KERNELS_SCHEMA",
    "UNATTRIBUTED_SCHEMA",
    "HostViewStream",
    "ReadAhead",
    "StreamBudget",
    "StreamOrderError",
    "StreamResult",
    "StreamStats",
    "attribute_stream",
    "range_frame",
]
