"""NVTX overhead of the runner: the same images run with and without ranges, in one process.

Builds the model once, then alternates passes with NVTX on and off (A B A B …) so drift in clocks
or temperature hits both alike, and prints per-stage medians and the on/off ratio of each pass
pair. Run on the GPU machine (outside nsys, or inside it to see the cost with a collector):

    python3 benchmarks/bench_nvtx_overhead.py --model deepseek-ocr --mode base --pairs 5

`--profiler` measures `--profiler torch` instead: each "on" pass runs in its own
`torch.profiler` session (CPU and, on CUDA, CUDA activities) with the ranges as
`record_function` spans and no NVTX; its trace is dropped, so only the recording is timed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch

from llm_perf_opt.runner.models import build_model
from llm_perf_opt.runner.nvtx_marks import Annotator
from llm_perf_opt.runner.nvtx_stages import prepare_image
from llm_perf_opt.runner.pipeline import resolve_device, run_image, sdpa_backends, synchronizer
from llm_perf_opt.runner.preprocess import synthetic_page
from llm_perf_opt.runner.torch_profile import TorchProfile, torch_profile


def main() -> None:
    with sdpa_backends(False):  # as the runner: no per-KV-length cuDNN graph builds
        _main()


def _main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="deepseek-ocr")
    parser.add_argument("--mode", default="base")
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--images", type=int, default=3)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument(
        "--profiler", action="store_true", help="measure torch.profiler spans instead of NVTX"
    )
    args = parser.parse_args()
    on_key, off_key = ("profiler", "no_profiler") if args.profiler else ("nvtx", "no_nvtx")
    device = resolve_device(None)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    built = build_model(args.model, tiny=args.tiny, dtype=dtype, device=str(device))
    pages = [prepare_image(built, synthetic_page(i), args.mode) for i in range(args.images)]
    sync = synchronizer(device)
    annotators = {True: Annotator(not args.profiler), False: Annotator(False)}

    def session(on: bool) -> AbstractContextManager[TorchProfile | None]:
        return torch_profile(True) if on and args.profiler else nullcontext()

    run_image(built, pages[0], 4, annotators[False], 0, sync)  # warm up kernels and allocator
    totals: dict[bool, list[float]] = {True: [], False: []}
    stages: dict[bool, dict[str, list[float]]] = {
        on: {"vision": [], "prefill": [], "decode": []} for on in (True, False)
    }
    for _ in range(args.pairs):
        for on in (True, False):
            total = 0.0
            with session(on) as spans:
                annotator = Annotator(False, spans) if spans else annotators[on]
                timings = [
                    run_image(built, page, args.max_new_tokens, annotator, i, sync)
                    for i, page in enumerate(pages)
                ]
            for t in timings:
                for name, value in (
                    ("vision", t.vision_s),
                    ("prefill", t.prefill_s),
                    ("decode", t.decode_s),
                ):
                    stages[on][name].append(value)
                total += t.vision_s + t.prefill_s + t.decode_s
            totals[on].append(total)
    ratios = [a / b for a, b in zip(totals[True], totals[False], strict=True)]
    result = {
        "model": args.model,
        "mode": args.mode,
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "images": args.images,
        "max_new_tokens": args.max_new_tokens,
        "pairs": args.pairs,
        "median_total_s": {
            on_key: statistics.median(totals[True]),
            off_key: statistics.median(totals[False]),
        },
        "median_stage_s": {
            (on_key if on else off_key): {k: statistics.median(v) for k, v in stages[on].items()}
            for on in (True, False)
        },
        f"ratio_{on_key}_over_none": {
            "median": statistics.median(ratios),
            "min": min(ratios),
            "max": max(ratios),
        },
    }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
