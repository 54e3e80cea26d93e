"""The host side of the host/GPU breakdown: where each window's host time goes (launch calls,
synchronizations, other CUDA calls, Python and framework time outside them), and the breakdown
that joins it with the GPU view the attribution fold sums (`attribution.gpu_view`).

- `breakdown`: the API-call classes, the host view's building blocks, `HostGpuView` and
  `Breakdown` per window and group, and the stage and decode-step windows of a ranges frame.
- `stream`: `HostViewStream`, the host view summed from the CUDA API calls in start-ordered
  batches (the carry per thread across batch borders), never the whole API table.
"""

__all__ = ["breakdown", "stream"]
