"""The runner's CUDA work as blocks of API calls: which call launches what, and how long it takes.

A `BlockSpec` lists the calls of one stage (vision, prefill, a decode step, the second thread,
model loading) in call order, with typical CPU and GPU durations; `timeline` compiles and
simulates it. The per-layer pattern follows transformers' eager MoE decoder.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from benchmarks.gen_trace.kernels import KERNEL_KINDS
from benchmarks.gen_trace.plan import BG_KERNELS_PER_IMAGE, GRAPH_NODES, IMAGE_SIDE_PX

KIND_KEYS = tuple(KERNEL_KINDS)
KIND_INDEX = {key: i for i, key in enumerate(KIND_KEYS)}
GRAPH_NODE_KINDS = ("softmax", "argmax", "fill")  # the sampling graph replayed per decode step
GRAPH_NODE_US = ((3.0, 5.0), (3.0, 6.0), (1.5, 2.5))
GRAPH_NODE_ID_BASE = 8_589_934_592  # 2 << 32: nodes of the instantiated (cloned) graph
GRAPH_ID, GRAPH_EXEC_ID = 2, 3  # the sampling graph and its executable (graph-level rows)

# Slot opcodes: one slot is one CUDA API call on one thread.
OP_NONE, OP_KERNEL, OP_MEMCPY, OP_MEMSET, OP_GRAPH = 0, 1, 2, 3, 4
COPY_HTOD, COPY_DTOH = 1, 2
MEM_PAGEABLE, MEM_PINNED, MEM_DEVICE = 0, 1, 2
API_CLASS = {"cuLaunchKernelEx": 1}  # driver calls; the rest are runtime (eventClass 0)


@dataclass(frozen=True)
class Slot:
    """One API call of a block: what it launches and its typical CPU/GPU durations."""

    api: str
    api_us: float
    gap_us: float
    op: int = OP_NONE
    kind: str = ""
    gpu_us: tuple[float, float] = (0.0, 0.0)
    nbytes: int = 0
    copy_kind: int = 0
    src_kind: int = 0
    dst_kind: int = 0
    sync: bool = False  # returns only when the GPU work queued before it is done


@dataclass(frozen=True)
class LibRange:
    """A library (CCCL) range around slots `first..last` of a block."""

    name: str
    first: int
    last: int


@dataclass
class BlockSpec:
    """A run of API calls on one thread and one stream, in call order."""

    slots: list[Slot] = field(default_factory=list)
    lib_ranges: list[LibRange] = field(default_factory=list)

    def kernel(self, kind: str, lo_us: float, hi_us: float, gap_us: float) -> None:
        """Append a kernel launch."""
        driver = KERNEL_KINDS[kind].driver_launch
        api = "cuLaunchKernelEx" if driver else "cudaLaunchKernel_v7000"
        self.slots.append(
            Slot(api, 8.0 if driver else 5.0, gap_us, OP_KERNEL, kind, (lo_us, hi_us))
        )

    def call(self, api: str, api_us: float, gap_us: float, *, sync: bool = False) -> None:
        """Append an API call without GPU work (`sync`: it waits for the GPU)."""
        self.slots.append(Slot(api, api_us, gap_us, sync=sync))

    def memcpy(
        self, nbytes: int, copy_kind: int, src: int, dst: int, us: tuple[float, float]
    ) -> None:
        """Append a cudaMemcpyAsync."""
        self.slots.append(
            Slot("cudaMemcpyAsync_v3020", 9.0, 12.0, OP_MEMCPY, "", us, nbytes, copy_kind, src, dst)
        )

    def memset(self, nbytes: int, gap_us: float) -> None:
        """Append a cudaMemsetAsync."""
        self.slots.append(
            Slot("cudaMemsetAsync_v3020", 5.0, gap_us, OP_MEMSET, "", (1.0, 1.5), nbytes)
        )

    def graph(self, gap_us: float) -> None:
        """Append a cudaGraphLaunch of the sampling graph."""
        self.call("cudaStreamIsCapturing_v10000", 1.5, gap_us)
        self.slots.append(Slot("cudaGraphLaunch_v10000", 25.0, 3.0, OP_GRAPH))

    def library(
        self, name: str, kernels: Sequence[tuple[str, float, float]], gap_us: float
    ) -> None:
        """Append a CCCL algorithm: a range around its launches (each after a name query)."""
        first = len(self.slots)
        for kind, lo, hi in kernels:
            self.call("cuKernelGetName", 0.4, 1.0)
            self.kernel(kind, lo, hi, gap_us * 0.3)
        self.slots[first] = Slot("cuKernelGetName", 0.4, gap_us)
        self.lib_ranges.append(LibRange(name, first, len(self.slots) - 1))

    def nonzero(self, us: tuple[float, float], gap_us: float) -> None:
        """`torch.nonzero` as a real capture shows it: count, copy the count home, select."""
        lo, hi = us
        self.library(
            "cub::DeviceReduce::Sum", [("nz_reduce", lo, hi), ("nz_reduce_tile", 1.3, 2.0)], gap_us
        )
        self.memcpy(4, COPY_DTOH, MEM_DEVICE, MEM_PAGEABLE, (1.3, 1.6))
        self.call("cudaStreamSynchronize_v3020", 3.0, 1.0, sync=True)
        self.library(
            "cub::DeviceSelect::Flagged",
            [("nz_compact_init", 1.0, 1.5), ("nz_select", lo, hi)],
            gap_us,
        )

    def finish(self, api: str) -> BlockSpec:
        """Close the block with a call that waits for the GPU (stream or device sync)."""
        self.call(api, 3.0, 4.0, sync=True)
        return self

    @property
    def n_kernels(self) -> int:
        """Kernel rows this block produces (graph launches expand to their nodes)."""
        plain = sum(1 for s in self.slots if s.op == OP_KERNEL)
        return plain + GRAPH_NODES * sum(1 for s in self.slots if s.op == OP_GRAPH)


NONZERO_KERNELS = 4
Unit = tuple[str, tuple[str, float, float] | None]


def _text_layer(stage: str) -> list[Unit]:
    """One MoE decoder layer as transformers' eager experts loop runs it: kernels and nonzeros.

    Routing calls `nonzero` once for the experts hit and once per hit expert (`torch.where`);
    each waits for the GPU to copy its count home.
    """
    d = stage == "decode"
    ew = (2.0, 3.5) if d else (8.0, 30.0)
    gemm = (4.0, 12.0) if d else (50.0, 500.0)
    small = (3.0, 6.0) if d else (50.0, 80.0)
    attn = (8.0, 20.0) if d else (100.0, 300.0)
    nz = (2.0, 6.0) if d else (5.0, 20.0)

    def k(kind: str, us: tuple[float, float]) -> Unit:
        return ("k", (kind, *us))

    nonzero: Unit = ("nonzero", ("", *nz))
    norm = [k("pow", ew), k("mean", ew), k("mul", ew)]
    proj = "gemm_small" if d else "gemm_mid"
    units = [
        *norm,
        *(k(proj, gemm) for _ in range(3)),
        k("neg", ew),
        k("cat", ew),
        k("mul", ew),
        k("add", ew),
        k("cat", ew),
        k("attn_decode" if d else "attn_prefill", attn),
        k(proj, gemm),
        k("add", ew),
        *norm,
        k("gemm_small", small),
        k("softmax", ew),
        k("topk", small),
        ("memset", None),
        k("one_hot", ew),
        k("expert_sum", ew),
        k("greater", ew),
        nonzero,
    ]
    for _ in range(6):  # top-6 routed experts, one after the other
        units += [k("index", ew), nonzero, k("index_select", ew), k(proj, gemm), k("silu", ew)]
        units += [k("mul", ew), k(proj, gemm), k("mul", ew), k("index_add", ew)]
    units += [k(proj, gemm), k("silu", ew), k("mul", ew), k(proj, gemm), k("add", ew)]
    return units


def _fill_layers(block: BlockSpec, stage: str, n_kernels: int, gap_us: float) -> None:
    """Append decoder layers until exactly `n_kernels` kernels are added."""
    units = _text_layer(stage)
    ew = (2.0, 3.5) if stage == "decode" else (8.0, 30.0)
    added, i = 0, 0
    while added < n_kernels:
        tag, body = units[i % len(units)]
        i += 1
        if tag == "memset":
            block.memset(8_192, gap_us)
        elif tag == "k" and body is not None:
            block.kernel(body[0], body[1], body[2], gap_us)
            added += 1
        elif body is not None and added + NONZERO_KERNELS <= n_kernels:
            block.nonzero((body[1], body[2]), gap_us)
            added += NONZERO_KERNELS
        else:  # a nonzero that does not fit: finish with plain elementwise kernels
            block.kernel("add", *ew, gap_us)
            added += 1


def decode_step_block(n_kernels: int) -> BlockSpec:
    """One decode step: embedding, layers, norm, lm_head, sampling graph, token copy, sync."""
    gap = 22.0
    b = BlockSpec()
    b.kernel("index_select", 2.0, 3.5, gap)
    _fill_layers(b, "decode", n_kernels - 1 - 4 - GRAPH_NODES, gap)
    for kind in ("pow", "mean", "mul"):
        b.kernel(kind, 2.0, 3.5, gap)
    b.kernel("gemm_small", 15.0, 20.0, gap)  # lm_head
    b.graph(gap)
    b.memcpy(8, COPY_DTOH, MEM_DEVICE, MEM_PAGEABLE, (1.3, 1.6))
    return b.finish("cudaDeviceSynchronize_v3020")  # the runner syncs inside each range


def prefill_block(n_kernels: int) -> BlockSpec:
    """The prefill forward: layers with long GEMMs, then the first token's copy and a sync."""
    gap = 14.0
    b = BlockSpec()
    b.kernel("index_select", 8.0, 20.0, gap)
    _fill_layers(b, "prefill", n_kernels - 1 - 4, gap)
    for kind in ("pow", "mean", "mul"):
        b.kernel(kind, 8.0, 20.0, gap)
    b.kernel("gemm_large", 60.0, 120.0, gap)  # lm_head on the last position
    b.memcpy(8, COPY_DTOH, MEM_DEVICE, MEM_PAGEABLE, (1.3, 1.6))
    return b.finish("cudaDeviceSynchronize_v3020")


def vision_block(n_kernels: int) -> BlockSpec:
    """SAM + CLIP + projector: pixel upload, a memset, transformer layers, a device sync."""
    gap = 15.0
    b = BlockSpec()
    b.memcpy(IMAGE_SIDE_PX * IMAGE_SIDE_PX * 3 * 4, COPY_HTOD, MEM_PINNED, MEM_DEVICE, (480, 560))
    b.memset(1 << 20, gap)
    layer = [
        ("layernorm", 10.0, 40.0),
        ("gemm_large", 80.0, 300.0),
        ("attn_vision", 100.0, 500.0),
        ("gemm_mid", 50.0, 150.0),
        ("add", 10.0, 30.0),
        ("layernorm", 10.0, 40.0),
        ("gemm_large", 100.0, 400.0),
        ("gelu", 20.0, 60.0),
        ("gemm_large", 100.0, 400.0),
        ("add", 10.0, 30.0),
    ]
    b.kernel("nchw2nhwc", 20.0, 60.0, gap)
    b.kernel("conv", 150.0, 400.0, gap)
    for i in range(n_kernels - 2):
        kind, lo, hi = layer[i % len(layer)]
        b.kernel(kind, lo, hi, gap)
    return b.finish("cudaDeviceSynchronize_v3020")


def bg_blocks() -> tuple[BlockSpec, BlockSpec]:
    """The second thread's work per image: inside its range, then one kernel and a sync."""
    inside = BlockSpec()
    inside.memcpy(2 << 20, COPY_HTOD, MEM_PINNED, MEM_DEVICE, (80.0, 150.0))
    for _ in range(BG_KERNELS_PER_IMAGE - 1):
        inside.kernel("copy", 20.0, 60.0, 10.0)
    outside = BlockSpec()
    outside.kernel("add", 5.0, 10.0, 10.0)
    return inside, outside.finish("cudaStreamSynchronize_v3020")


def init_blocks() -> tuple[BlockSpec, BlockSpec, BlockSpec]:
    """Before any range (3 kernels), model loading (start/end range), the run's tail (3)."""
    before = BlockSpec()
    before.call("cudaMalloc_v3020", 120.0, 50.0)
    for _ in range(3):
        before.kernel("fill", 2.0, 4.0, 30.0)
    before.call("cudaMalloc_v3020", 110.0, 40.0)
    load = BlockSpec()
    for _ in range(8):
        load.memcpy(64 << 20, COPY_HTOD, MEM_PINNED, MEM_DEVICE, (2_500.0, 2_900.0))
    for _ in range(4):
        load.kernel("copy", 50.0, 200.0, 20.0)
    load.call("cudaStreamBeginCapture_v10000", 12.0, 30.0)
    load.call("cudaStreamEndCapture_v10000", 150.0, 40.0)
    load.call("cudaGraphInstantiateWithFlags_v11040", 900.0, 20.0)
    tail = BlockSpec()
    for _ in range(3):
        tail.kernel("fill", 2.0, 4.0, 30.0)
    device_sync = "cudaDeviceSynchronize_v3020"
    return before, load.finish(device_sync), tail.finish(device_sync)
