"""The generator's command line: `python -m benchmarks.gen_trace --kernels N -o FILE`."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from benchmarks.gen_trace.build import generate

DESCRIPTION = "Synthetic Nsight Systems SQLite exports shaped like a profiled DeepSeek-OCR run."


def parse_count(text: str) -> int:
    """Parse `1e6`, `1000000` or `1_000_000`."""
    value = float(text.replace("_", ""))
    if value != int(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"not a positive whole number: {text}")
    return int(value)


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: generate one trace and print what was written."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gen_trace", description=DESCRIPTION)
    parser.add_argument("--kernels", type=parse_count, required=True, help="kernel rows, e.g. 1e6")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--cuda-graph-trace",
        choices=("node", "graph"),
        default="node",
        help="how graph replays are recorded, as nsys's option of that name (default: node)",
    )
    parser.add_argument("-o", "--output", type=Path, required=True, help="the .sqlite to write")
    args = parser.parse_args(argv)
    try:
        summary = generate(
            args.output, args.kernels, args.seed, graph_level=args.cuda_graph_trace == "graph"
        )
    except ValueError as exc:
        parser.error(str(exc))
    size_mb = summary.path.stat().st_size / 1e6
    plan = summary.plan
    print(
        f"{summary.path}: {summary.n_kernels} kernels, {summary.n_memcpy} memcpy, "
        f"{summary.n_memset} memset, {summary.n_graph_replays} graph-level replays, "
        f"{summary.n_api} API calls, {summary.n_nvtx} NVTX events; "
        f"{plan.n_images} images x {plan.decode_steps} decode steps of ~{plan.kernels_per_step} "
        f"kernels; {summary.duration_ns / 1e9:.1f} s of trace, {size_mb:.0f} MB, "
        f"written in {summary.seconds:.1f} s"
    )
    return 0
