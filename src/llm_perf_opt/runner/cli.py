"""Command line of the instrumented runner (`scripts/run_dsocr.py`); see docs/runner.md.

argparse, not click: the runner lives apart from the analysis CLIs (`llm_perf_opt.cli`). Every
failure caused by the input — a bad flag included — prints one `Error: …` line on stderr and
exits with status 2, without a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from llm_perf_opt.errors import LlmPerfOptError


class UsageError(LlmPerfOptError):
    """The command line itself is malformed (unknown flag, bad number)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see --help)")


def build_parser() -> argparse.ArgumentParser:
    """The runner's argument parser; absent flags stay absent so YAML values show through."""
    p = _Parser(
        prog="run_dsocr.py",
        description=(
            "Run DeepSeek-OCR inference stage by stage (vision, prefill, decode) with NVTX ranges "
            "in domain llm_perf_opt and write run.meta.json. Example: "
            "nsys profile -t cuda,nvtx -o run python scripts/run_dsocr.py --mode base"
        ),
        argument_default=argparse.SUPPRESS,
    )
    p.add_argument("--config", metavar="FILE.yaml", help="settings file; flags override it")
    p.add_argument(
        "--model",
        metavar="NAME|PATH",
        help="deepseek-ocr (default), deepseek-ocr2, or a local DeepSeek-OCR-2 snapshot directory",
    )
    p.add_argument("--tiny", action="store_true", help="small test config (CPU-friendly)")
    p.add_argument("--mode", help="tiny, small, base (default), large or gundam")
    p.add_argument("--crops", metavar="WxH", help="force a gundam crop grid, e.g. 3x2")
    p.add_argument("--image", dest="images", nargs="+", metavar="PATH", help="input image file(s)")
    p.add_argument(
        "--num-images",
        type=int,
        metavar="N",
        help="N deterministic synthetic pages (default 1) when no --image is given",
    )
    p.add_argument("--page-size", metavar="WxH", help="synthetic page size (default 1000x1414)")
    p.add_argument(
        "--max-new-tokens",
        type=int,
        metavar="T",
        help="tokens per image (default 32): 1 from prefill, T-1 decode steps",
    )
    p.add_argument("--warmup-rounds", type=int, metavar="N", help="default: 1 on CUDA, 0 on CPU")
    p.add_argument(
        "--warmup-synthetic",
        dest="warmup_synthetic",
        action="store_true",
        help="warm up on random pixels of the first image's shapes (default)",
    )
    p.add_argument(
        "--warmup-real",
        dest="warmup_synthetic",
        action="store_false",
        help="warm up on the first measured image",
    )
    p.add_argument(
        "--warmup-max-new-tokens", type=int, metavar="T", help="tokens per warmup round (4)"
    )
    p.add_argument(
        "--context-len-mode", help="auto (default), max or fixed: recorded for the analysis"
    )
    p.add_argument(
        "--context-len-fixed", type=int, metavar="C", help="C for --context-len-mode fixed"
    )
    p.add_argument("--out", metavar="DIR", help="where run.meta.json goes (default runs/<run_id>)")
    p.add_argument(
        "--no-nvtx", dest="nvtx", action="store_false", help="emit no NVTX ranges and no mark"
    )
    p.add_argument("--device", help="cuda, cuda:N or cpu (default: cuda when available)")
    p.add_argument("--dtype", help="bfloat16 (CUDA default), float16 or float32 (CPU default)")
    p.add_argument("--seed", type=int, help="seed of the random weights (default 0)")
    p.add_argument("--attn-implementation", help="sdpa (default) or eager")
    p.add_argument(
        "--experts-implementation",
        help="eager (default: per-expert loop like the reference code), grouped_mm or batched_mm",
    )
    p.add_argument(
        "--sdpa-cudnn",
        action="store_true",
        help="let SDPA use cuDNN attention (off by default: it rebuilds a graph per KV length)",
    )
    p.add_argument(
        "--cuda-graphs",
        action="store_true",
        help="decode through a static KV cache, the step captured once as a CUDA graph and "
        "replayed (needs --experts-implementation grouped_mm or batched_mm)",
    )
    p.add_argument(
        "--calibrate",
        action="store_true",
        help="before the workload, in a `calibrate` range: measure GEMM TFLOP/s (large square "
        "and the model's own shapes) and copy bandwidth; recorded as `calibration`",
    )
    p.add_argument(
        "--profiler",
        metavar="torch",
        help="torch: also run under torch.profiler (CPU and CUDA activities); every range "
        "becomes a record_function span of the same name and the metadata goes into the trace, "
        "which the analyzer reads like an nsys export",
    )
    p.add_argument(
        "--profiler-out",
        metavar="FILE.json.gz",
        help="where --profiler writes its Chrome trace (default: run.pt.trace.json.gz in --out)",
    )
    p.add_argument(
        "--static-compute",
        action="store_true",
        help="after the run, write static_compute.json/.md (fvcore FLOPs per stage) into --out",
    )
    serve = p.add_argument_group(
        "serving loop (--serve)",
        "Run the requests as a serving engine does: continuous batching with chunked prefill, "
        "one NVTX range per engine step named as vLLM names it "
        "(execute_context_N(T)_generation_M(G)) with vLLM's gpu_model_runner scopes, and the "
        "schedule with every step's per-request query and context lengths in the metadata's "
        "`serve` block. Example: --serve --num-images 4 --token-budget 256 --arrival-every 2",
    )
    serve.add_argument(
        "--serve", action="store_true", help="run the serving loop instead of stage by stage"
    )
    serve.add_argument(
        "--token-budget",
        type=int,
        metavar="N",
        help="most tokens scheduled in one step (default 512); a longer prompt is chunked",
    )
    serve.add_argument(
        "--max-running", type=int, metavar="N", help="most requests in flight (default: no limit)"
    )
    serve.add_argument(
        "--arrival-every",
        type=int,
        metavar="K",
        help="request i arrives at step i*K (default 0: all at the first step)",
    )
    serve.add_argument(
        "--decoder-config",
        metavar="config.json",
        help="serve random text prompts on this Hugging Face decoder (llama, mistral, qwen2, "
        "qwen3, mixtral, qwen2_moe, qwen3_moe; random weights) instead of DeepSeek-OCR pages",
    )
    serve.add_argument(
        "--num-requests",
        type=int,
        metavar="N",
        help="text requests with --decoder-config (default 8)",
    )
    serve.add_argument(
        "--prompt-len",
        type=int,
        metavar="L",
        help="random prompt tokens per text request with --decoder-config (default 128)",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Parse flags, run, print a summary; 2 on bad input (one `Error:` line on stderr)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for the Hub from here
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import torch

    from llm_perf_opt.runner.pipeline import run
    from llm_perf_opt.runner.settings import load_yaml, settings_from

    try:
        flags = vars(build_parser().parse_args(argv))
        values: dict[str, Any] = load_yaml(flags.pop("config")) if "config" in flags else {}
        if "images" in flags or "num_images" in flags:
            values.pop("images", None)
            values.pop("num_images", None)
        result = run(settings_from({**values, **flags}))
    except LlmPerfOptError as exc:
        return _fail(str(exc))
    except torch.OutOfMemoryError as exc:
        first = str(exc).splitlines()[0] if str(exc) else "CUDA out of memory"
        return _fail(
            f"out of GPU memory ({first}); use a smaller --mode, fewer --num-images or "
            "--max-new-tokens, or a GPU with more memory"
        )
    _print_summary(result.meta, str(result.meta_path))
    if result.profile_path is not None:
        print(f"profiler trace: {result.profile_path}")
    return 0


def _fail(message: str) -> int:
    print(f"Error: {' '.join(message.split())}", file=sys.stderr)
    return 2


def _print_summary(meta: dict[str, Any], path: str) -> None:
    model = meta["model"]
    print(
        f"{model['name']} ({model['n_params']:,} params, {meta['dtype']}, "
        f"{meta['device']['name']}), mode {meta['mode']}, warmup {meta['warmup']['rounds']}"
    )
    if "serve" in meta:
        _print_serve(meta["serve"])
    for img in meta["images"]:
        wall = img["wall_s"]
        steps = img["decode_steps"]
        per_step = f", {1e3 * wall['decode'] / steps:.1f} ms/step" if steps else ""
        print(
            f"image {img['index']}: Lp={img['prefill_len']} T={len(img['generated_token_ids'])} "
            f"vision {1e3 * wall['vision']:.1f} ms, prefill {1e3 * wall['prefill']:.1f} ms, "
            f"decode {1e3 * wall['decode']:.1f} ms{per_step}"
        )
    print(f"metadata: {path}")


def _print_serve(serve: dict[str, Any]) -> None:
    steps = serve["steps"]
    tokens = sum(e["query_len"] for s in steps for e in s["entries"])
    wall = sum(s["wall_s"] for s in steps)
    print(
        f"serve: {len(serve['requests'])} requests, {len(steps)} steps, {tokens} tokens, "
        f"{wall:.3f} s of steps (token budget {serve['token_budget']})"
    )
    for step in steps:
        print(f"  step {step['index']}: {step['name']} {1e3 * step['wall_s']:.1f} ms")
