"""Make a small CUDA program whose trace exercises every attribution edge case.

Run under nsys on a GPU (see traces/README.md): nested NVTX ranges in a project domain (registered
strings, int payloads) and in the default domain, CCCL/CUB ranges nested inside ours (torch.cumsum
and torch.sort call CUB), a CUDA graph replayed inside a range, a second thread launching kernels
(inside its own range and outside any), a start/end range ended on another thread, memcpy and
memset, and kernels outside any range. Under `torchrun --nproc-per-node 2` each rank does the same
on the one GPU, so correlation ids repeat across processes.
"""

from __future__ import annotations

import json
import os
import threading

import nvtx
import torch

DOMAIN = "llm_perf_opt"


def matmuls(x: torch.Tensor, n: int) -> torch.Tensor:
    for _ in range(n):
        x = torch.tanh(x @ x)
    return x


def worker(x: torch.Tensor, barrier: threading.Barrier) -> None:
    """Second launching thread: half its kernels in its own range, half outside any range."""
    torch.cuda.set_device(x.device)
    barrier.wait()
    with nvtx.annotate("worker", domain=DOMAIN):
        matmuls(x, 3)
    matmuls(x, 2)
    torch.cuda.synchronize()


def main() -> None:
    rank = int(os.environ.get("RANK", "0"))
    device = torch.device("cuda", 0)
    torch.manual_seed(rank)
    x = torch.randn(1024, 1024, device=device, dtype=torch.bfloat16) / 32
    matmuls(x, 2)  # outside any range
    torch.cuda.synchronize()

    nvtx.mark(message=json.dumps({"probe": "attribution", "rank": rank}), domain=DOMAIN)
    barrier = threading.Barrier(2)
    thread = threading.Thread(target=worker, args=(x.clone(), barrier))
    thread.start()
    handle = nvtx.start_range(message="startend_span", domain=DOMAIN)
    with nvtx.annotate("stage", domain=DOMAIN, payload=rank):
        barrier.wait()
        with nvtx.annotate("matmul", domain=DOMAIN, payload=1):
            matmuls(x, 4)
        with nvtx.annotate("cub_ops", domain=DOMAIN, payload=2):
            v = torch.rand(1 << 20, device=device)
            torch.cumsum(v, 0)
            torch.sort(v)
            torch.nonzero(v > 0.5)
        with nvtx.annotate("copies", domain=DOMAIN):
            host = torch.empty(1 << 20, pin_memory=True)
            host.copy_(v, non_blocking=True)
            v.copy_(host, non_blocking=True)
            v.zero_()
        torch.cuda.nvtx.range_push("default_domain")
        matmuls(x, 1)
        torch.cuda.nvtx.range_pop()
    thread.join()
    # a start/end range that another thread ends: NVIDIA's projection drops it
    other_end = nvtx.start_range(message="ended_elsewhere", domain=DOMAIN)
    matmuls(x, 1)
    ender = threading.Thread(target=nvtx.end_range, args=(other_end,))
    ender.start()
    ender.join()
    nvtx.end_range(handle)

    static_x = x.clone()
    graph = torch.cuda.CUDAGraph()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        matmuls(static_x, 1)
    torch.cuda.current_stream().wait_stream(stream)
    with torch.cuda.graph(graph):
        static_y = matmuls(static_x, 2)
    with nvtx.annotate("graph_replay", domain=DOMAIN):
        for _ in range(3):
            graph.replay()
    torch.cuda.synchronize()
    del static_y
    matmuls(x, 1)  # outside any range again
    torch.cuda.synchronize()


if __name__ == "__main__":
    main()
