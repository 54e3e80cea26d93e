"""Synthetic Nsight Systems SQLite exports shaped like a profiled DeepSeek-OCR run, at any size.

Real captures of long runs hold millions of kernels but cannot be committed or made in CI, so the
speed benchmarks and the tests run on exports written here. The file uses the exact table
schemas of a real nsys 2025.3 export (schema 3.20.3, `nsys_schema_3_20_3.sql`, copied from real
files) and the row shapes seen in real captures of our runner's NVTX layout:

- domain `llm_perf_opt` (create event, eventType 75) with registered names (`textId`), as the
  `nvtx` package writes them: `warmup` ⊃ `image` ⊃ `vision`, `prefill`, `decode` ⊃ `decode_step`,
  then per measured image `image` (int64 payload = index) ⊃ `vision`, `prefill`, `decode` ⊃
  `decode_step` (int64 payload = context length C);
- CCCL library ranges (domain `CCCL`) nested in prefill and decode steps: every `nonzero` of the
  eager MoE routing, as `cub::DeviceReduce::Sum`, a DtoH copy of the count and a stream sync,
  then `cub::DeviceSelect::Flagged`;
- a second launching thread with its own default-domain range (`text`) and its own stream,
  overlapping the vision stage; a start/end range (eventType 60) around model loading;
- a CUDA-graph replay per decode step: one `cudaGraphLaunch` whose correlationId is shared by
  several kernel rows with `graphNodeId` set (nsys `--cuda-graph-trace=node`), or with
  `graph_level` one `CUPTI_ACTIVITY_KIND_GRAPH_TRACE` row spanning those kernels instead (nsys's
  default `graph` mode); memcpy and memset rows; kernels outside any range;
- the run-metadata mark (eventType 34, JSON per docs/run-metadata.md, consistent with the ranges).

Every GPU op starts after its launch call starts, ops on one stream never overlap, syncing calls
return after the GPU work queued before them, correlation ids are unique in the process and follow
call order. Output is deterministic for a given seed.

Modules, in the order the data flows: `plan` (the process, its GPU, the kernel split), `kernels`
(kernel functions), `workload` (each stage's API calls), `timeline` (compiled blocks simulated in
time), `writer` (rows into the export), `metadata` (the run-metadata record and the export's
metadata tables), `build` (the runner's control flow, `generate`), `cli`.

Example:
    PYTHONPATH=src python3 -m benchmarks.gen_trace --kernels 1e6 --seed 0 -o /tmp/gen_1e6.sqlite
"""

from benchmarks.gen_trace.build import generate
from benchmarks.gen_trace.plan import TracePlan, plan_trace
from benchmarks.gen_trace.writer import Summary

__all__ = ["Summary", "TracePlan", "generate", "plan_trace"]
