"""One instrumented run: inputs, model, warmup, the measured images, metadata.

NVTX layout (domain `llm_perf_opt`, push/pop on the main thread):

    calibrate                    (only with --calibrate)
    warmup                       (only with warmup rounds)
      image (payload: round)  ⊃ vision, prefill, decode ⊃ decode_step (payload: C) …
    image (payload: image index)
      vision
      prefill
      graph_capture              (--cuda-graphs on CUDA: once, in the first image run)
      decode
        decode_step (payload: C = Lp + k, k = 1 .. max_new_tokens - 1)
    static_compute               (only with --static-compute, after the mark)

Under `--profiler torch` the whole run is profiled and every range is also a `record_function`
span of the same name (runner/torch_profile.py).

Each stage and each decode step is bracketed by device synchronizations: the host waits before
it starts the clock and again, inside the range, before it stops it, so wall seconds and the
range's CPU interval both cover the stage's GPU work.
"""

from __future__ import annotations

import dataclasses
import importlib
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from time import perf_counter
from types import ModuleType
from typing import Any, Final

import torch
from PIL import Image
from torch.nn.attention import SDPBackend, sdpa_kernel

from llm_perf_opt.errors import ConfigError, LlmPerfOptError
from llm_perf_opt.flops.configs import builtin_config
from llm_perf_opt.runner.calibrate import calibrate
from llm_perf_opt.runner.graph_decode import StaticDecoder
from llm_perf_opt.runner.metadata import ImageTiming, RunFacts, build_run_meta, emit, image_entry
from llm_perf_opt.runner.models import BuiltModel, build_model, load_local
from llm_perf_opt.runner.nvtx_marks import Annotator
from llm_perf_opt.runner.nvtx_stages import (
    PreparedImage,
    decode_step,
    prefill_stage,
    prepare_image,
    vision_stage,
    with_random_pixels,
)
from llm_perf_opt.runner.preprocess import load_image, synthetic_page
from llm_perf_opt.runner.settings import RunSettings
from llm_perf_opt.runner.torch_profile import PROFILE_FILENAME, torch_profile
from llm_perf_opt.vocab import FAMILIES, STORAGE_DTYPES

DTYPES: Final[dict[str, torch.dtype]] = {name: getattr(torch, name) for name in STORAGE_DTYPES}
SDPA_BACKENDS: Final = (
    SDPBackend.FLASH_ATTENTION,
    SDPBackend.EFFICIENT_ATTENTION,
    SDPBackend.CUDNN_ATTENTION,
    SDPBackend.MATH,
)


class DeviceUnavailableError(LlmPerfOptError):
    """The requested device does not exist on this machine."""


class StaticComputeUnavailableError(LlmPerfOptError):
    """The static compute report was asked for but fvcore is not installed."""


@dataclass(frozen=True)
class RunResult:
    """The metadata of a finished run and where it was written."""

    meta: dict[str, Any]
    meta_path: Path
    profile_path: Path | None = None


def run(settings: RunSettings) -> RunResult:
    """Build the model, warm up, run every image stage by stage, emit the metadata (with
    `settings.serve`, the serving loop instead: `runner.serving`).

    Unless `settings.sdpa_cudnn`, SDPA may use every backend but cuDNN attention (flash,
    memory-efficient, math) for the whole run.

    Raises:
        LlmPerfOptError: bad settings, missing or unreadable images, unavailable device.
    """
    with (
        sdpa_backends(settings.sdpa_cudnn),
        torch_profile(settings.profiler == "torch") as session,
    ):
        annotator = Annotator(settings.nvtx, session)
        if settings.serve:
            from llm_perf_opt.runner.serve_run import run_serve  # imports this module

            result = run_serve(settings, annotator)
        else:
            result = _run(settings, annotator)
    if session is None:
        return result
    out = settings.profiler_out
    path = Path(out) if out is not None else result.meta_path.parent / PROFILE_FILENAME
    return dataclasses.replace(result, profile_path=session.export(path))


@contextmanager
def sdpa_backends(sdpa_cudnn: bool) -> Iterator[None]:
    """Within the block SDPA may use flash, memory-efficient and math kernels, and cuDNN
    attention only if `sdpa_cudnn` (cuDNN builds a graph per new KV length: tens of ms of host
    time on every decode step it has not seen). Wrap direct `run_image` calls in it too."""
    if sdpa_cudnn:
        yield
        return
    with sdpa_kernel([b for b in SDPA_BACKENDS if b != SDPBackend.CUDNN_ATTENTION]):
        yield


def _run(settings: RunSettings, annotator: Annotator) -> RunResult:
    device = resolve_device(settings.device)
    dtype = DTYPES[settings.dtype or ("bfloat16" if device.type == "cuda" else "float32")]
    if settings.model in FAMILIES:  # fail on a bad mode before building a full-size model
        builtin_config(settings.model, tiny=settings.tiny).mode(settings.mode)
    if settings.static_compute:
        static_compute_module()  # fail before the model is built
    sources = load_images(settings)
    built = build(settings, dtype, device)
    prepared = [
        prepare_image(built, image, settings.mode, settings.crops, source=source)
        for source, image in sources
    ]
    check_context(built, prepared, settings.max_new_tokens)
    sync = synchronizer(device)
    warmup_rounds = settings.warmup_rounds
    if warmup_rounds is None:
        warmup_rounds = 1 if device.type == "cuda" else 0
    calibration = None
    if settings.calibrate:
        with annotator.range("calibrate"):
            calibration = calibrate(
                built, prepared[0].prefill_len, int(prepared[0].pixel_values.shape[-1])
            )
    decoder = None
    if settings.cuda_graphs:
        tokens = max(
            settings.max_new_tokens, settings.warmup_max_new_tokens if warmup_rounds else 1
        )
        longest = max(p.prefill_len for p in prepared)
        decoder = StaticDecoder(built, longest + tokens, capture=True)
    if warmup_rounds:
        generator = torch.Generator().manual_seed(settings.seed)
        with annotator.range("warmup"):
            for r in range(warmup_rounds):
                inputs = prepared[0]
                if settings.warmup_synthetic:
                    inputs = with_random_pixels(inputs, generator)
                run_image(
                    built, inputs, settings.warmup_max_new_tokens, annotator, r, sync, decoder
                )
    entries = [
        image_entry(i, p, run_image(built, p, settings.max_new_tokens, annotator, i, sync, decoder))
        for i, p in enumerate(prepared)
    ]
    run_id = str(uuid.uuid4())
    facts = RunFacts(
        run_id=run_id,
        mode=settings.mode,
        max_new_tokens=settings.max_new_tokens,
        warmup_rounds=warmup_rounds,
        warmup_synthetic=settings.warmup_synthetic,
        warmup_max_new_tokens=settings.warmup_max_new_tokens,
        context_len_mode=settings.context_len_mode,
        context_len_fixed=settings.context_len_fixed,
        nvtx_enabled=settings.nvtx,
        seed=settings.seed,
        sdpa_cudnn=settings.sdpa_cudnn,
    )
    meta = build_run_meta(
        built,
        facts,
        entries,
        prepared[0].prompt_text_tokens,
        decode_backend=decode_backend(decoder),
        calibration=calibration,
    )
    out_dir = Path(settings.out) if settings.out is not None else Path("runs") / run_id
    meta_path = emit(meta, annotator, out_dir)
    if settings.static_compute:
        with annotator.range("static_compute"):
            first = prepared[0]
            static_compute_module().estimate_static_compute(
                first.height,
                first.width,
                first.prefill_len,
                family=built.family,
                tiny=settings.tiny,
                mode=settings.mode,
                out_dir=out_dir,
                dtype=dtype,
                device=str(device),
                seed=settings.seed,
                built=built,
            )
    return RunResult(meta, meta_path)


def static_compute_module() -> ModuleType:
    """`runner.static_compute`, imported on demand: it needs fvcore, an optional dependency.

    Raises:
        StaticComputeUnavailableError: fvcore is not installed.
    """
    try:
        static_compute = importlib.import_module("llm_perf_opt.runner.static_compute")
    except ImportError as exc:
        raise StaticComputeUnavailableError(
            f"--static-compute needs fvcore ({exc}); `pip install fvcore` or drop the flag"
        ) from None
    return static_compute


def decode_backend(decoder: StaticDecoder | None) -> dict[str, Any]:
    """The metadata's `decode_backend`: KV cache kind and whether steps were graph replays."""
    if decoder is None:
        return {
            "cuda_graphs": False,
            "kv_cache": "dynamic",
            "max_cache_len": None,
            "graph_replay": False,
            "graph_captures": 0,
            "graph_capture_s": 0.0,
        }
    return {
        "cuda_graphs": True,
        "kv_cache": "static",
        "max_cache_len": decoder.max_cache_len,
        "graph_replay": decoder.replayed,
        "graph_captures": decoder.captures,
        "graph_capture_s": decoder.capture_s,
    }


def run_image(
    built: BuiltModel,
    prepared: PreparedImage,
    max_new_tokens: int,
    annotator: Annotator,
    index: int,
    sync: Callable[[], None],
    decoder: StaticDecoder | None = None,
) -> ImageTiming:
    """Vision, prefill and `max_new_tokens - 1` decode steps of one image, timed and annotated.

    With `decoder` the prefill's KV cache is copied into its static cache (inside `prefill`) and
    the steps run through it; a first CUDA-graph capture gets its own `graph_capture` range.
    """
    lp = prepared.prefill_len
    with annotator.range("image", payload=index):
        sync()
        start = perf_counter()
        with annotator.range("vision"):
            embeds = vision_stage(built, prepared)
            sync()
        vision_s = perf_counter() - start
        start = perf_counter()
        with annotator.range("prefill"):
            token, past = prefill_stage(built, prepared, embeds)
            if decoder is not None:
                decoder.start(past, lp)
            sync()
        prefill_s = perf_counter() - start
        if decoder is not None and decoder.capture and not decoder.replayed:
            with annotator.range("graph_capture"):
                decoder.capture_once()
        tokens, step_s, contexts = [token], [], []
        start = perf_counter()
        with annotator.range("decode"):
            for k in range(1, max_new_tokens):
                context = lp + k
                step_start = perf_counter()
                with annotator.range("decode_step", payload=context):
                    if decoder is None:
                        token, past = decode_step(built, token, past, context - 1)
                    else:
                        token = decoder.step(token, context - 1)
                    sync()
                step_s.append(perf_counter() - step_start)
                tokens.append(token)
                contexts.append(context)
        decode_s = perf_counter() - start
    return ImageTiming(vision_s, prefill_s, decode_s, tuple(step_s), tuple(contexts), tuple(tokens))


def resolve_device(requested: str | None) -> torch.device:
    """`requested` as a torch device (CUDA when available if None).

    Raises:
        ConfigError: not a cpu or cuda device name.
        DeviceUnavailableError: CUDA (or that CUDA index) is not available here.
    """
    if requested is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(requested)
    except (RuntimeError, ValueError):
        device = torch.device("meta")  # anything torch cannot parse fails the check below
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"device {requested!r} is not supported; use cuda, cuda:N or cpu")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceUnavailableError(
                f"device {requested!r} was asked for but CUDA is not available on this machine "
                "(torch.cuda.is_available() is False); use --device cpu (with --tiny)"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DeviceUnavailableError(
                f"device {requested!r} does not exist: this machine has "
                f"{torch.cuda.device_count()} CUDA device(s)"
            )
    return device


def build(settings: RunSettings, dtype: torch.dtype, device: torch.device) -> BuiltModel:
    """Random-weight model for a family name, else the local snapshot at that path."""
    attn: Any = settings.attn_implementation
    experts: Any = settings.experts_implementation
    if settings.model in FAMILIES:
        return build_model(
            settings.model,
            tiny=settings.tiny,
            dtype=dtype,
            device=device,
            seed=settings.seed,
            attn_implementation=attn,
            experts_implementation=experts,
        )
    if settings.tiny:
        raise ConfigError("--tiny applies to a family name, not to a local snapshot path")
    return load_local(Path(settings.model), dtype, device, attn, experts)


def synchronizer(device: torch.device) -> Callable[[], None]:
    """A function that waits for the device's queued work (a no-op on CPU)."""
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def load_images(settings: RunSettings) -> list[tuple[str, Image.Image]]:
    """(source, image) pairs: the given files, else `num_images` synthetic pages."""
    if settings.images:
        return [(path, load_image(path)) for path in settings.images]
    return [
        ("synthetic", synthetic_page(i, settings.page_size)) for i in range(settings.num_images)
    ]


def check_context(built: BuiltModel, prepared: list[PreparedImage], max_new_tokens: int) -> None:
    window = built.config.text.max_position_embeddings
    longest = max(p.prefill_len for p in prepared)
    if longest + max_new_tokens > window:
        raise ConfigError(
            f"the prompt ({longest} positions) plus max_new_tokens ({max_new_tokens}) exceeds the "
            f"model's context window ({window}); lower --max-new-tokens or use a smaller mode"
        )
