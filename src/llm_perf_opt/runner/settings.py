"""Run settings: one frozen record merged from a YAML file and command-line flags.

YAML keys are the field names below (the plan's `context_len_mode`, `context_len_fixed`,
`warmup_rounds`, `warmup_synthetic` among them); flags given on the command line override them.
Every value is checked here so a bad setting fails before any model is built.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import yaml

from llm_perf_opt.errors import ConfigError
from llm_perf_opt.runner.preprocess import DEFAULT_PAGE_SIZE
from llm_perf_opt.vocab import CTX_MODES, DEFAULT_VISION_MODE, STORAGE_DTYPES, parse_size

ATTN_IMPLEMENTATIONS: Final = ("sdpa", "eager")
EXPERTS_IMPLEMENTATIONS: Final = ("eager", "grouped_mm", "batched_mm")
# expert backends without host synchronization inside the step, so CUDA graphs can capture it
GRAPHABLE_EXPERTS: Final = ("grouped_mm", "batched_mm")
PROFILERS: Final = ("torch",)


@dataclass(frozen=True)
class RunSettings:
    """Everything one run of the runner needs (see docs/runner.md for each key).

    `warmup_rounds`, `device` and `dtype` left as None resolve at run time: 1 warmup round on
    CUDA and 0 on CPU; CUDA when available; bfloat16 on CUDA and float32 on CPU.
    `sdpa_cudnn=False` keeps SDPA off cuDNN attention, which builds a new graph (tens of ms on
    the host) for every new KV length and so inflates each decode step it has not seen.
    `cuda_graphs` decodes through a static KV cache and a captured CUDA graph; it needs an
    expert backend in `GRAPHABLE_EXPERTS` (the eager loop syncs the host on `torch.nonzero`).
    `calibrate` measures GEMM and copy rates before the workload; `static_compute` writes the
    fvcore static compute report into `out` after it. `profiler="torch"` runs it all under
    `torch.profiler` and writes the Chrome trace to `profiler_out` (default: in `out`).
    `serve` runs the pages (or, with `decoder_config`, `num_requests` random prompts of
    `prompt_len` tokens on that Hugging Face decoder) as a serving engine's steps: request i
    arrives at step i·`arrival_every`, a step runs at most `token_budget` tokens (chunked
    prefill) of at most `max_running` requests (None: no limit).
    """

    model: str = "deepseek-ocr"
    tiny: bool = False
    mode: str = DEFAULT_VISION_MODE
    crops: tuple[int, int] | None = None
    images: tuple[str, ...] = ()
    num_images: int = 1
    page_size: tuple[int, int] = DEFAULT_PAGE_SIZE
    max_new_tokens: int = 32
    warmup_rounds: int | None = None
    warmup_synthetic: bool = True
    warmup_max_new_tokens: int = 4
    context_len_mode: str = "auto"
    context_len_fixed: int | None = None
    out: str | None = None
    nvtx: bool = True
    device: str | None = None
    dtype: str | None = None
    seed: int = 0
    attn_implementation: str = "sdpa"
    experts_implementation: str = "eager"
    sdpa_cudnn: bool = False
    cuda_graphs: bool = False
    calibrate: bool = False
    static_compute: bool = False
    serve: bool = False
    token_budget: int = 512
    max_running: int | None = None
    arrival_every: int = 0
    decoder_config: str | None = None
    num_requests: int = 8
    prompt_len: int = 128
    profiler: str | None = None
    profiler_out: str | None = None

    def __post_init__(self) -> None:
        _at_least("max_new_tokens", self.max_new_tokens, 1)
        _at_least("warmup_max_new_tokens", self.warmup_max_new_tokens, 1)
        _at_least("num_images", self.num_images, 1)
        if self.warmup_rounds is not None:
            _at_least("warmup_rounds", self.warmup_rounds, 0)
        if self.context_len_fixed is not None:
            _at_least("context_len_fixed", self.context_len_fixed, 1)
        _one_of("context_len_mode", self.context_len_mode, CTX_MODES)
        if self.context_len_mode == "fixed" and self.context_len_fixed is None:
            raise ConfigError(
                "context_len_mode 'fixed' needs context_len_fixed (--context-len-fixed C)"
            )
        if self.dtype is not None:
            _one_of("dtype", self.dtype, STORAGE_DTYPES)
        _one_of("attn_implementation", self.attn_implementation, ATTN_IMPLEMENTATIONS)
        _one_of("experts_implementation", self.experts_implementation, EXPERTS_IMPLEMENTATIONS)
        if self.cuda_graphs and self.experts_implementation not in GRAPHABLE_EXPERTS:
            raise ConfigError(
                f"cuda_graphs cannot capture experts_implementation "
                f"{self.experts_implementation!r}: its per-expert loop synchronizes the host "
                "(torch.nonzero); add --experts-implementation grouped_mm (or batched_mm)"
            )
        if self.profiler is not None:
            _one_of("profiler", self.profiler, PROFILERS)
        if self.profiler_out is not None and self.profiler is None:
            raise ConfigError("profiler_out needs a profiler; add --profiler torch")
        if self.profiler_out is not None and not self.profiler_out.endswith((".json", ".json.gz")):
            raise ConfigError(
                f"profiler_out {self.profiler_out!r} must end in .json or .json.gz "
                "(a Chrome trace; .gz compresses it)"
            )
        if not self.model:
            raise ConfigError("model is empty; use deepseek-ocr, deepseek-ocr2 or a local path")
        self._check_serve()

    def _check_serve(self) -> None:
        _at_least("token_budget", self.token_budget, 1)
        _at_least("arrival_every", self.arrival_every, 0)
        _at_least("num_requests", self.num_requests, 1)
        _at_least("prompt_len", self.prompt_len, 1)
        if self.max_running is not None:
            _at_least("max_running", self.max_running, 1)
        if self.decoder_config is not None and not self.serve:
            raise ConfigError(
                "decoder_config (--decoder-config) runs only in the serving loop; add --serve"
            )
        if self.decoder_config is not None:
            ocr = [name for name in _OCR_ONLY if getattr(self, name) != _FIELDS[name].default]
            if ocr:
                raise ConfigError(
                    f"--decoder-config serves text prompts; {', '.join(ocr)} apply to DeepSeek-OCR "
                    "pages: drop them (--num-requests and --prompt-len shape the text requests)"
                )
        if self.serve:
            clash = [name for name in _NOT_SERVED if getattr(self, name)]
            if clash:
                raise ConfigError(
                    f"--serve does not combine with {', '.join(clash)}; drop "
                    f"{'them' if len(clash) > 1 else 'it'}"
                )


_FIELDS: Final = {f.name: f for f in dataclasses.fields(RunSettings)}
# Settings of DeepSeek-OCR pages, which a `decoder_config` run has no use for.
_OCR_ONLY: Final = ("model", "tiny", "mode", "crops", "images")
# Settings of the stage-by-stage run that the serving loop does not have.
_NOT_SERVED: Final = ("cuda_graphs", "calibrate", "static_compute")
_INT_FIELDS: Final = {
    "num_images",
    "max_new_tokens",
    "warmup_rounds",
    "warmup_max_new_tokens",
    "context_len_fixed",
    "seed",
    "token_budget",
    "max_running",
    "arrival_every",
    "num_requests",
    "prompt_len",
}
_BOOL_FIELDS: Final = {
    "tiny",
    "warmup_synthetic",
    "nvtx",
    "sdpa_cudnn",
    "cuda_graphs",
    "calibrate",
    "static_compute",
    "serve",
}
_GRID_FIELDS: Final = {"crops", "page_size"}


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML settings file into a mapping of setting name → value.

    Raises:
        ConfigError: missing or unparsable file, not a mapping, or unknown keys.
    """
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file {p} does not exist; pass an existing YAML file") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(f"config file {p} is not readable YAML ({first}); fix it") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {p} must hold a mapping of setting: value")
    return {str(k): v for k, v in data.items()}


def settings_from(values: Mapping[str, Any]) -> RunSettings:
    """Check and convert raw values (from YAML and flags) into RunSettings.

    Raises:
        ConfigError: an unknown key or a value of the wrong type or range.
    """
    unknown = sorted(set(values) - set(_FIELDS))
    if unknown:
        raise ConfigError(f"unknown setting(s) {unknown}; known: {', '.join(sorted(_FIELDS))}")
    if values.get("images") and "num_images" in values:
        raise ConfigError("give images (--image) or num_images (--num-images), not both")
    kwargs = {key: _convert(key, value) for key, value in values.items()}
    return RunSettings(**kwargs)


def _convert(key: str, value: Any) -> Any:
    if value is None:
        if _FIELDS[key].default is None:
            return None
        raise ConfigError(f"setting {key} may not be empty")
    if key in _GRID_FIELDS:
        if isinstance(value, str):
            return parse_size(value, f"setting {key}")
        if isinstance(value, list | tuple) and len(value) == 2:
            return parse_size(f"{value[0]}x{value[1]}", f"setting {key}")
        raise ConfigError(f"setting {key} must be WxH (e.g. 3x2), got {value!r}")
    if key == "images":
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list | tuple) or not all(isinstance(v, str) for v in items):
            raise ConfigError(f"setting images must be a list of paths, got {value!r}")
        return tuple(items)
    if key in _INT_FIELDS:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"setting {key} must be an integer, got {value!r}")
        return value
    if key in _BOOL_FIELDS:
        if not isinstance(value, bool):
            raise ConfigError(f"setting {key} must be true or false, got {value!r}")
        return value
    if not isinstance(value, str):
        raise ConfigError(f"setting {key} must be a string, got {value!r}")
    return value


def _at_least(key: str, value: int, minimum: int) -> None:
    if value < minimum:
        raise ConfigError(f"setting {key} must be ≥ {minimum}, got {value}")


def _one_of(key: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"setting {key} must be one of {', '.join(allowed)}, got {value!r}")
