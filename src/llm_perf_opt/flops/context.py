"""How many positions a forward may attend to: the context length C of each decode step under a
context mode, and the check that a length fits the model window.

`auto`: step k attends to Lp + k positions (itself included, docs/run-metadata.md); `fixed`: one
given C; `max`: the window. `mfu-flops`, the Hugging Face models and the analysis all take C here.
"""

from __future__ import annotations

from llm_perf_opt.errors import ConfigError
from llm_perf_opt.vocab import CTX_MODES


def check_length(window: int, length: int, what: str) -> None:
    """Raise a ConfigError unless 1 ≤ length ≤ window (the model's max_position_embeddings)."""
    if length < 1:
        raise ConfigError(f"{what} must be ≥ 1, got {length}")
    if length > window:
        raise ConfigError(
            f"{what} {length} exceeds the context window of {window} positions; use a shorter "
            "length"
        )


def decode_context_lens(prefill_len: int, steps: int) -> list[int]:
    """C of each decode step: prefill_len + k for k = 1..steps (docs/run-metadata.md)."""
    return [prefill_len + k for k in range(1, steps + 1)]


def context_lens(
    ctx_mode: str, window: int, prefill_len: int, steps: int, ctx_len: int | None
) -> list[int]:
    """C of each decode step under `ctx_mode`: auto Lp + k, fixed `ctx_len`, max the window.

    Raises:
        ConfigError: unknown mode, no steps, or a missing or unused --ctx-len.
    """
    if ctx_mode not in CTX_MODES:
        raise ConfigError(
            f"context mode {ctx_mode!r} is unknown; use one of {', '.join(CTX_MODES)}"
        )
    if steps < 1:
        raise ConfigError(f"decode tokens must be ≥ 1, got {steps}")
    if ctx_mode == "fixed":
        if ctx_len is None:
            raise ConfigError("context mode 'fixed' needs a context length (--ctx-len C)")
        return [ctx_len] * steps
    if ctx_len is not None:
        raise ConfigError(f"--ctx-len is only used with context mode 'fixed', not {ctx_mode!r}")
    if ctx_mode == "max":
        return [window] * steps
    return decode_context_lens(prefill_len, steps)
