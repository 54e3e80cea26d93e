"""The numbers of a report, pure functions of what attribution, inputs, FLOPs and peaks found.

- `mfu`: per-stage and model MFU/MBU, trace-based and wall-clock (`compute_mfu`, `MfuReport`).
- `verdict`: the one verdict per stage (and engine phase), from the host/GPU breakdown.
- `engine_view`: per-step and per-phase MFU of a serving engine's step loop.
- `whole_trace`: the whole trace at a glance (busy time, categories, top kernels).
- `roofline`: per-stage roofline and utilization against every known denominator.
"""

__all__ = ["engine_view", "mfu", "roofline", "verdict", "whole_trace"]
