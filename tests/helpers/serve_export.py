"""Hand-built nsys SQLite exports of a serving engine's step loop, in the real nsys schema.

The tables come from `benchmarks/nsys_schema_3_20_3.sql`; every row is written here, so each
expected number (GPU ops and busy time per step) is arithmetic on this page. Each step is one
push/pop range named as the engine names it, with vLLM's `gpu_model_runner: …` scopes nested
inside; its kernels are launched in the scopes, optionally
- on a worker process's thread other than the process that opened the trace (`worker`),
- `lag_ns` late on the GPU, so a step's kernels run while the next step's CPU range is open
  (async scheduling),
- as one CUDA graph replay (one `cudaGraphLaunch`, its node kernels sharing the correlation id).
"""

from __future__ import annotations

import lzma
import shutil
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from llm_perf_opt.vocab import SERVE_SCOPES
from tests.helpers.export import SCHEMA, gtid, insert, kernel
from tests.helpers.paths import TRACES

MAIN_PID, WORKER_PID = 1000, 2000
H100 = "NVIDIA H100 80GB HBM3"
STEP_NS = 200_000  # steps start this far apart on the CPU
STEP_CPU_NS = 100_000  # each step's CPU range
KERNEL_NS = 7_000  # each kernel's duration
# vLLM's scopes inside a step (as the runner writes them), each with its CPU offsets in the step:
# the kernels are launched in the forward scope
SCOPES = tuple(
    zip(
        SERVE_SCOPES, (1_000, 10_000, 80_000, 85_000), (10_000, 80_000, 85_000, 95_000), strict=True
    )
)


@dataclass
class StepLoop:
    """A step loop to write: step names in order and, per step, its kernel count."""

    names: Sequence[str]
    kernels: Sequence[int] = ()
    domain: str = ""
    worker: bool = False
    lag_ns: int = 0
    graph_steps: frozenset[int] = frozenset()
    # (start, end) of each kernel per step, as written: the tests' oracle
    written: list[list[tuple[int, int]]] = field(default_factory=list)

    def kernels_of(self, k: int) -> int:
        return self.kernels[k] if self.kernels else 3 + k % 4


def write_export(path: Path, loop: StepLoop) -> Path:
    """Write the step loop as an nsys SQLite export at `path` (read-only afterwards)."""
    pid = WORKER_PID if loop.worker else MAIN_PID
    thread = gtid(pid, pid + 1)
    strings = ["cudaLaunchKernel", "gemm_kernel", "cudaGraphLaunch"]
    nvtx: list[dict[str, object]] = []
    domain_id = 0
    if loop.domain:
        domain_id = 1
        nvtx.append({"start": 0, "end": None, "eventType": 75, "text": loop.domain,
                     "domainId": 1, "globalTid": thread})  # fmt: skip
    if loop.worker:  # the process that opened the trace has a range of its own, no kernels
        nvtx.append({"start": 500, "end": 900_000, "eventType": 59, "text": "engine_core",
                     "domainId": 0, "globalTid": gtid(MAIN_PID, MAIN_PID)})  # fmt: skip
    calls: list[dict[str, object]] = []
    kernels: list[dict[str, object]] = []
    corr = 0
    gpu_free = 0
    loop.written = []
    for k, name in enumerate(loop.names):
        t0 = 1_000_000 + k * STEP_NS
        nvtx.append({"start": t0, "end": t0 + STEP_CPU_NS, "eventType": 59, "text": name,
                     "domainId": domain_id, "globalTid": thread})  # fmt: skip
        for scope, a, b in SCOPES:
            nvtx.append({"start": t0 + a, "end": t0 + b, "eventType": 59, "text": scope,
                         "domainId": domain_id, "globalTid": thread})  # fmt: skip
        n = loop.kernels_of(k)
        graph = k in loop.graph_steps
        step: list[tuple[int, int]] = []
        launches = [t0 + 12_000] if graph else [t0 + 12_000 + i * 6_000 for i in range(n)]
        for i in range(n):
            if not graph or i == 0:
                corr += 1
                at = launches[i]
                calls.append({"start": at, "end": at + 2_000, "eventClass": 1,
                              "correlationId": corr, "nameId": 3 if graph else 1,
                              "returnValue": 0, "globalTid": thread})  # fmt: skip
            start = max(gpu_free, launches[0 if graph else i] + 4_000 + loop.lag_ns)
            end = start + KERNEL_NS + 1_000 * (k % 3)
            gpu_free = end
            step.append((start, end))
            node = 100 + i if graph else None
            kernels.append(kernel(start, end, corr, gpid=pid << 24, name=2, node=node))
        loop.written.append(step)
    with sqlite3.connect(path) as db:
        db.executescript(SCHEMA.read_text())
        insert(db, "StringIds", [{"id": i, "value": v} for i, v in enumerate(strings, 1)])
        insert(db, "NVTX_EVENTS", nvtx)
        insert(db, "CUPTI_ACTIVITY_KIND_RUNTIME", calls)
        insert(db, "CUPTI_ACTIVITY_KIND_KERNEL", kernels)
        insert(db, "TARGET_INFO_GPU", [{"vmId": 0, "id": 0, "name": H100, "smCount": 132,
                                          "memoryBandwidth": 3_352_320_000_000,
                                          "clockRate": 1_980_000_000,
                                          "totalMemory": 85_000_000_000}])  # fmt: skip
    path.chmod(0o444)
    return path


def llama_with_steps(path: Path, name: str) -> tuple[Path, int]:
    """The committed Llama-3.2-1B-shape H100 capture (decompressed at `path`) with a step range
    named `name` laid over every `decode_step` range: same thread, same times, so the same
    launches. Returns the path and the number of steps."""
    source = TRACES / "llama_1b_shape.sqlite.xz"
    with lzma.open(source) as src, path.open("wb") as dst:
        shutil.copyfileobj(src, dst)
    with sqlite3.connect(path) as db:
        rows = db.execute(
            "SELECT n.start, n.end, n.globalTid FROM NVTX_EVENTS n "
            "LEFT JOIN StringIds s ON s.id = n.textId "
            "WHERE coalesce(n.text, s.value) = 'decode_step' ORDER BY n.start"
        ).fetchall()
        db.executemany(
            "INSERT INTO NVTX_EVENTS (start, end, eventType, text, globalTid, domainId) "
            "VALUES (?, ?, 59, ?, ?, 0)",
            [(a, b, name, t) for a, b, t in rows],
        )
    return path, len(rows)
