"""One `--serve` run: requests, warmup, the measured serving loop, the metadata with `serve`.

Requests are DeepSeek-OCR pages (`--model`, `--num-images`/`--image`) or, with
`--decoder-config`, `--num-requests` random prompts of `--prompt-len` tokens on a Hugging Face
decoder built from that config.json with random weights. NVTX layout (domain `llm_perf_opt`):

    warmup                                   (with warmup rounds: the same requests, each with
                                              --warmup-max-new-tokens, steps NOT named)
    execute_context_…_generation_…           one range per engine step (`serve` module)
      gpu_model_runner: preprocess | forward | postprocess | sample
    …
    (the run-metadata mark)
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Final

import torch

from llm_perf_opt.errors import ConfigError
from llm_perf_opt.flops.configs import builtin_config
from llm_perf_opt.runner import pipeline
from llm_perf_opt.runner.metadata import RunFacts, assemble_run_meta, build_run_meta, emit
from llm_perf_opt.runner.nvtx_marks import Annotator
from llm_perf_opt.runner.nvtx_stages import PreparedImage, prepare_image, with_random_pixels
from llm_perf_opt.runner.schedule import Request, Scheduler
from llm_perf_opt.runner.serve import (
    SERVE_ATTENTION,
    Engine,
    ServeTarget,
    StepRecord,
    build_decoder,
    ocr_target,
    random_prompts,
    run_schedule,
    text_target,
)
from llm_perf_opt.runner.settings import RunSettings
from llm_perf_opt.vocab import FAMILIES, HF_DECODER_FAMILY

BATCHING: Final = "packed_tokens_per_request_attention"


def run_serve(settings: RunSettings, annotator: Annotator) -> pipeline.RunResult:
    """Build, warm up, run the serving loop, emit the metadata (see the module docstring).

    Raises:
        LlmPerfOptError: bad settings, inputs or device.
    """
    device = pipeline.resolve_device(settings.device)
    dtype = pipeline.DTYPES[settings.dtype or ("bfloat16" if device.type == "cuda" else "float32")]
    sync = pipeline.synchronizer(device)
    rounds = settings.warmup_rounds
    if rounds is None:
        rounds = 1 if device.type == "cuda" else 0
    if settings.decoder_config is not None:
        work = _decoder_run(settings, dtype, device)
    else:
        work = _ocr_run(settings, dtype, device)
    if rounds:
        short = [replace(r, max_new_tokens=settings.warmup_max_new_tokens) for r in work.requests]
        with annotator.range("warmup"):
            for _ in range(rounds):
                run_schedule(Engine(work.warm, sync), _scheduler(settings, short), Annotator(False))
    scheduler = _scheduler(settings, work.requests)
    records = run_schedule(Engine(work.target, sync), scheduler, annotator)
    run_id = str(uuid.uuid4())
    facts = RunFacts(
        run_id=run_id,
        mode=None if settings.decoder_config is not None else settings.mode,
        max_new_tokens=settings.max_new_tokens,
        warmup_rounds=rounds,
        warmup_synthetic=settings.warmup_synthetic,
        warmup_max_new_tokens=settings.warmup_max_new_tokens,
        context_len_mode=settings.context_len_mode,
        context_len_fixed=settings.context_len_fixed,
        nvtx_enabled=settings.nvtx,
        seed=settings.seed,
        sdpa_cudnn=settings.sdpa_cudnn,
    )
    meta = work.meta(facts, serve_block(settings, scheduler, records, work.images))
    out_dir = Path(settings.out) if settings.out is not None else Path("runs") / run_id
    return pipeline.RunResult(meta, emit(meta, annotator, out_dir))


@dataclass(frozen=True)
class _Workload:
    """What a run serves: the target (and its warmup twin), the requests, the pages' geometry
    for `serve.images`, and how the metadata around the `serve` block is built."""

    target: ServeTarget
    warm: ServeTarget
    requests: list[Request]
    images: list[dict[str, Any]]
    meta: Callable[[RunFacts, dict[str, Any]], dict[str, Any]]


def _scheduler(settings: RunSettings, requests: list[Request]) -> Scheduler:
    return Scheduler(requests, settings.token_budget, settings.max_running)


def serve_block(
    settings: RunSettings,
    scheduler: Scheduler,
    records: list[StepRecord],
    images: list[dict[str, Any]],
) -> dict[str, Any]:
    """The metadata's `serve` object (docs/run-metadata.md)."""
    return {
        "step_name_format": "vllm",
        "token_budget": settings.token_budget,
        "max_running": settings.max_running,
        "arrival_every": settings.arrival_every,
        "batching": BATCHING,
        "images": images,
        "requests": [
            {
                "id": r.id,
                "prompt_len": r.prompt_len,
                "image_index": r.image_index,
                "arrival_step": r.arrival_step,
                "max_new_tokens": r.max_new_tokens,
                "generated_tokens": scheduler.generated.get(r.id, 0),
            }
            for r in sorted(scheduler.arrived.values(), key=lambda r: r.id)
        ],
        "steps": [
            {
                "index": rec.index,
                "name": rec.name,
                "wall_s": rec.wall_s,
                "entries": [
                    {
                        "request": e.request,
                        "phase": e.phase,
                        "query_len": e.query_len,
                        "context_len": e.context_len,
                        "encoder_images": e.encoder_images,
                    }
                    for e in rec.entries
                ],
            }
            for rec in records
        ],
    }


def _requests(settings: RunSettings, prompt_lens: list[int], images: bool) -> list[Request]:
    return [
        Request(i, n, i * settings.arrival_every, settings.max_new_tokens, i if images else None)
        for i, n in enumerate(prompt_lens)
    ]


def _ocr_run(settings: RunSettings, dtype: torch.dtype, device: torch.device) -> _Workload:
    if settings.model in FAMILIES:  # fail on a bad mode before building a full-size model
        builtin_config(settings.model, tiny=settings.tiny).mode(settings.mode)
    sources = pipeline.load_images(settings)
    built = pipeline.build(settings, dtype, device)
    pages = [
        prepare_image(built, image, settings.mode, settings.crops, source=source)
        for source, image in sources
    ]
    pipeline.check_context(built, pages, settings.max_new_tokens)
    target = ocr_target(built, pages)
    warm = target
    if settings.warmup_synthetic:
        generator = torch.Generator().manual_seed(settings.seed)
        warm = ocr_target(built, [with_random_pixels(p, generator) for p in pages])
    requests = _requests(settings, [p.prefill_len for p in pages], images=True)

    def meta(facts: RunFacts, serve: dict[str, Any]) -> dict[str, Any]:
        return build_run_meta(built, facts, [], pages[0].prompt_text_tokens, serve=serve)

    return _Workload(
        target,
        warm,
        requests,
        [_page(i, p) for i, p in enumerate(pages)],
        meta,
    )


def _page(index: int, page: PreparedImage) -> dict[str, Any]:
    grid = page.layout.crop_grid
    return {
        "index": index,
        "source": page.source,
        "width": page.width,
        "height": page.height,
        "mode": page.mode,
        "crop_grid": None if grid is None else list(grid),
        "n_crops": page.layout.n_crops,
        "vision_tokens": page.layout.vision_tokens,
        "image_positions": page.layout.image_positions,
        "prefill_len": page.prefill_len,
    }


def _decoder_run(settings: RunSettings, dtype: torch.dtype, device: torch.device) -> _Workload:
    path = str(settings.decoder_config)
    built = build_decoder(path, dtype, device, settings.seed, settings.experts_implementation)
    config = built.model.config
    window = int(config.max_position_embeddings)
    if settings.prompt_len + settings.max_new_tokens > window:
        raise ConfigError(
            f"--prompt-len {settings.prompt_len} plus --max-new-tokens {settings.max_new_tokens} "
            f"exceeds the decoder's context window ({window}); lower one of them"
        )
    prompts = random_prompts(
        settings.num_requests, settings.prompt_len, int(config.vocab_size), settings.seed
    )
    target = text_target(built, prompts)
    requests = _requests(settings, [settings.prompt_len] * settings.num_requests, images=False)

    def meta(facts: RunFacts, serve: dict[str, Any]) -> dict[str, Any]:
        model = {
            "name": path,
            "family": HF_DECODER_FAMILY,
            "tiny": False,
            "config": built.config_json,
            "hf_config": config.to_dict(),
            "n_params": built.n_params,
            "random_weights": True,
            "attn_implementation": SERVE_ATTENTION,
            "experts_implementation": str(getattr(config, "_experts_implementation", None)),
            "sdpa_cudnn": facts.sdpa_cudnn,
        }
        return assemble_run_meta(model, dtype, device, facts, [], settings.prompt_len, serve=serve)

    return _Workload(target, target, requests, [], meta)
