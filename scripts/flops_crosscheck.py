"""Three-way FLOP comparison on the full-size models: analytic vs FlopCounterMode vs fvcore×2.

For each model and mode it builds the architecture with random weights, preprocesses a synthetic
page (1000×1414 px by default: gundam picks a 2×3 crop grid in both models), and counts the vision
stage, the prefill over the prompt (image positions + the runner's fixed text tokens) and one decode
step after it. The counters see the full attention square, so the ratios compare them with the
analytic full-square number; the causal column is what `mfu-flops` reports.

Usage (under 2 minutes on one H100; on CPU expect minutes per model, ~7 GB of RAM in bfloat16;
FLOPs do not depend on the dtype):

    PYTHONPATH=src python3 scripts/flops_crosscheck.py [--device cpu|cuda] [--dtype bfloat16]
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from functools import partial

import torch

from llm_perf_opt.runner import nvtx_stages
from llm_perf_opt.runner.models import build_model
from llm_perf_opt.runner.preprocess import synthetic_page
from llm_perf_opt.runner.static_compute import flop_counter_flops, fvcore_flops, stage_runs

MODES = {"deepseek-ocr": ("base", "gundam"), "deepseek-ocr2": ("base", "gundam")}
DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}


def main() -> int:
    """Print the comparison table (Markdown) to stdout."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--dtype", default="bfloat16", choices=sorted(DTYPES))
    parser.add_argument("--tiny", action="store_true", help="tiny configs (a quick smoke run)")
    parser.add_argument("--page", default="1000x1414", help="synthetic page size WxH in px")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    width, height = (int(v) for v in args.page.lower().split("x"))
    print(
        "| model | mode | stage | geometry | analytic (causal) | analytic (full square) "
        "| FlopCounterMode | fvcore×2 | FCM / full − 1 | fvcore / full − 1 |"
    )
    print("|---|---|---|---|---:|---:|---:|---:|---:|---:|")
    for family, modes in MODES.items():
        built = build_model(
            family, tiny=args.tiny, dtype=DTYPES[args.dtype], device=args.device, seed=0
        )
        for mode in modes:
            prepared = nvtx_stages.prepare_image(built, synthetic_page(0, (width, height)), mode)
            runs = stage_runs(built, prepared, prepared.prefill_len)
            for run in runs:
                started = time.perf_counter()
                counted, _ = flop_counter_flops(partial(run.module, *run.inputs))
                fv = fvcore_flops(run.module, run.inputs)
                full = run.analytic_full.total_flops
                geometry = ", ".join(f"{k}={v}" for k, v in run.detail.items() if k != "mode")
                print(
                    f"| {family} | {mode} | {run.name} | {geometry} "
                    f"| {run.analytic_causal.total_flops:,} | {full:,} | {counted:,} "
                    f"| {fv.flops:,} | {counted / full - 1:+.5%} | {fv.flops / full - 1:+.5%} |",
                    flush=True,
                )
                print(
                    f"{family} {mode} {run.name}: {time.perf_counter() - started:.1f} s",
                    file=sys.stderr,
                )
        del built
        gc.collect()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
