"""Which NVTX ranges are the steps of a serving engine, and what each name says of its batch.

Serving engines name every forward step with its batch composition. `STEP_FORMATS` declares
each name format once (versioned, with where the engine's source writes it); `step_names`
recognises the step names among a trace's range names, in any NVTX domain, and reads each into
the canonical counts of `STEP_COUNTS`. A name that looks like a step of an engine (its
`ENGINE_PREFIXES` pattern) but matches none of that engine's formats is reported, not fatal.
`--step-pattern REGEX` declares one more format for any other engine: its named groups are
canonical count names.

The counts (`None` where the name does not say):
- `ctx_reqs`, `ctx_tokens`: requests still in their prompt (a chunk of a chunked prefill
  included) and the tokens they run this step; `gen_reqs`, `gen_tokens`: requests generating.
- `c_sk`, `c_sqsq`, `c_sqsk` (and `g_…` for generation): per-phase sums over the requests of
  the keys attended (KV length after the step, sk), query length squared (sqsq) and query ×
  keys (sqsk), the sums vLLM's detailed and SGLang's roofline annotations carry; with them
  attention FLOPs are exact (flops/steps.py).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

import polars as pl

from llm_perf_opt.errors import ConfigError
from llm_perf_opt.vocab import ENGINES, STEP_PHASES

STEP_COUNTS: Final = (
    "ctx_reqs",
    "ctx_tokens",
    "gen_reqs",
    "gen_tokens",
    "c_sk",
    "c_sqsq",
    "c_sqsk",
    "g_sk",
    "g_sqsq",
    "g_sqsk",
)
CUSTOM: Final = "custom"


@dataclass(frozen=True)
class StepFormat:
    """One step-name format: a regex whose named groups are `STEP_COUNTS` names.

    `same` copies a count from another (SGLang's decode runs one token per request), `zero`
    sets counts the format implies are 0, `phase` fixes the phase where the counts cannot give
    it, and `assumes` is the assumption a report states when the format is used.
    """

    engine: str
    name: str
    version: str
    pattern: str
    same: Mapping[str, str] = field(default_factory=dict)
    zero: tuple[str, ...] = ()
    phase: str | None = None
    assumes: str | None = None


_N: Final = r"(\d+)"


def _g(name: str) -> str:
    return rf"(?P<{name}>\d+)"


# Sources (read December 2026; versions differ, so each format is a row of its own):
# - vLLM V1 GPU worker, `Worker.annotate_profile` in vllm/v1/worker/gpu_worker.py, counts from
#   `compute_iteration_details` in vllm/v1/utils.py (PR #31193): a request is context while it
#   has no output token, a chunk of a chunked prefill included.
# - older vLLM V1, the same method: f"execute_new_{num_new}_cached_{num_cached}" (scheduled new
#   and cached requests, no token counts).
# - vLLM's opt-in `--profiler-config.detailed_trace_annotation` (PR #37524, RFC #45069), the
#   same method: "execute_{scheduled tokens}_context_{n}(sq{tokens}sk{Σ seq_len}sqsq{Σ q²}
#   sqsk{Σ q·seq_len})_generation_{m}(sq…sk…sqsq…sqsk…)", seq_len = computed + scheduled tokens.
# - SGLang `build_step_span_name` in python/sglang/srt/utils/profile_utils.py (earlier
#   `ModelRunner._build_step_span_name`): f"step[EXTEND bs={bs} toks={toks}", else
#   f"step[{mode.name} bs={bs}"; with roofline annotations (PR #24911) `build_roofline_suffix`
#   adds `c_sqsq c_sqsk c_sk` (EXTEND), `g_sqsq g_sqsk g_sk` (DECODE) or `c= g=` and both
#   phases' `sq sk sqsq sqsk` (MIXED), where sk is prefix + extend length.
# - TensorRT-LLM PyTorch executor, `PyExecutor._forward_step` in
#   tensorrt_llm/_torch/pyexecutor/py_executor.py: f"[Executor] _forward_step {iter}: {N} ctx
#   reqs, {M} gen reqs" (older builds: no iteration number; labels with "{T} ctx tokens" seen in
#   third-party tools are read too).
def _sums(p: str, tokens: str) -> str:
    """One phase's sums in vLLM's detailed annotation: `sq{tokens}sk{Σk}sqsq{Σq²}sqsk{Σq·k}`."""
    return rf"sq{_g(tokens)}sk{_g(p + '_sk')}sqsq{_g(p + '_sqsq')}sqsk{_g(p + '_sqsk')}"


STEP_FORMATS: Final[tuple[StepFormat, ...]] = (
    StepFormat(
        "vllm",
        "vllm-v1",
        "vLLM V1 worker since PR #31193",
        rf"^execute_context_{_g('ctx_reqs')}\({_g('ctx_tokens')}\)"
        rf"_generation_{_g('gen_reqs')}\({_g('gen_tokens')}\)$",
    ),
    StepFormat(
        "vllm",
        "vllm-v1-detailed",
        "vLLM detailed_trace_annotation (opt-in)",
        rf"^execute_{_N}_context_{_g('ctx_reqs')}\({_sums('c', 'ctx_tokens')}\)"
        rf"_generation_{_g('gen_reqs')}\({_sums('g', 'gen_tokens')}\)$",
    ),
    StepFormat(
        "vllm",
        "vllm-v1-new-cached",
        "vLLM V1 before PR #31193",
        rf"^execute_new_{_g('ctx_reqs')}_cached_{_g('gen_reqs')}$",
        assumes="execute_new_N_cached_M: cached requests counted as generation (a later chunk "
        "of a chunked prefill is cached too); no token counts, so no FLOPs",
    ),
    StepFormat(
        "sglang",
        "sglang-extend",
        "SGLang step span (EXTEND)",
        rf"^step\[EXTEND bs={_g('ctx_reqs')} toks={_g('ctx_tokens')}"
        rf"(?: c_sqsq={_g('c_sqsq')} c_sqsk={_g('c_sqsk')} c_sk={_g('c_sk')})?\]$",
        zero=("gen_reqs", "gen_tokens"),
    ),
    StepFormat(
        "sglang",
        "sglang-decode",
        "SGLang step span (DECODE)",
        rf"^step\[DECODE bs={_g('gen_reqs')}"
        rf"(?: g_sqsq={_g('g_sqsq')} g_sqsk={_g('g_sqsk')} g_sk={_g('g_sk')})?\]$",
        same={"gen_tokens": "gen_reqs"},
        zero=("ctx_reqs", "ctx_tokens"),
    ),
    StepFormat(
        "sglang",
        "sglang-mixed",
        "SGLang step span (MIXED, roofline sums)",
        rf"^step\[MIXED bs={_N} c={_g('ctx_reqs')} g={_g('gen_reqs')} "
        rf"c_sq={_g('ctx_tokens')} c_sk={_g('c_sk')} c_sqsq={_g('c_sqsq')} "
        rf"c_sqsk={_g('c_sqsk')} g_sq={_g('gen_tokens')} g_sk={_g('g_sk')} "
        rf"g_sqsq={_g('g_sqsq')} g_sqsk={_g('g_sqsk')}\]$",
    ),
    StepFormat(
        "sglang",
        "sglang-mixed-plain",
        "SGLang step span (MIXED)",
        rf"^step\[MIXED bs={_N}\]$",
        phase="mixed",
        assumes="step[MIXED bs=N] does not split its requests or tokens by phase: no FLOPs",
    ),
    StepFormat(
        "sglang",
        "sglang-idle",
        "SGLang step span (IDLE)",
        r"^step\[IDLE bs=0\]$",
        zero=("ctx_reqs", "ctx_tokens", "gen_reqs", "gen_tokens"),
    ),
    StepFormat(
        "trtllm",
        "trtllm-pytorch",
        "TensorRT-LLM PyTorch executor",
        rf"^\[Executor\] _forward_step(?: {_N})?: {_g('ctx_reqs')} ctx reqs, "
        rf"(?:{_g('ctx_tokens')} ctx tokens, )?{_g('gen_reqs')} gen reqs$",
        same={"gen_tokens": "gen_reqs"},
        assumes="TensorRT-LLM names requests only: one token per generation request (no "
        "speculative decoding); context tokens unknown unless named, so no FLOPs for those steps",
    ),
)

# A name that starts like this is a step of that engine; if no format reads it, it is malformed.
ENGINE_PREFIXES: Final[Mapping[str, str]] = {
    "vllm": r"^execute_(?:context_|new_|\d+_context_)",
    "sglang": r"^step\[[A-Z_]+ ",
    "trtllm": r"^\[Executor\] _forward_step",
}

# `step_names` frame: one row per distinct step name.
STEP_NAMES_SCHEMA: Final = pl.Schema(
    {
        "name": pl.String(),
        "engine": pl.String(),
        "format": pl.String(),
        "fixed_phase": pl.String(),
        **{c: pl.Int64() for c in STEP_COUNTS},
    }
)


@dataclass(frozen=True)
class StepNames:
    """The recognised step names (`STEP_NAMES_SCHEMA`), the malformed ones, the assumptions."""

    names: pl.DataFrame
    malformed: tuple[str, ...] = ()
    assumptions: tuple[str, ...] = ()

    def warnings(self) -> list[str]:
        """One line for the malformed names (a count and a few examples), then the assumptions."""
        out = []
        if self.malformed:
            shown = ", ".join(repr(n) for n in self.malformed[:3])
            more = f" and {len(self.malformed) - 3} more" if len(self.malformed) > 3 else ""
            out.append(
                f"{len(self.malformed)} range name(s) look like engine steps but match no known "
                f"format, left out of the engine view: {shown}{more}; pass --step-pattern REGEX "
                "to read them"
            )
        return out + list(self.assumptions)


def custom_format(pattern: str) -> StepFormat:
    """The `--step-pattern` format.

    Raises:
        ConfigError: not a regex, or a named group that is not a count name.
    """
    try:
        groups = re.compile(pattern).groupindex
    except re.error as exc:
        raise ConfigError(f"--step-pattern {pattern!r} is not a regex: {exc}") from None
    unknown = sorted(set(groups) - set(STEP_COUNTS))
    if unknown:
        raise ConfigError(
            f"--step-pattern names group(s) {', '.join(unknown)}; use named groups among "
            f"{', '.join(STEP_COUNTS)}, e.g. 'fwd ctx=(?P<ctx_tokens>\\d+) gen=(?P<gen_reqs>\\d+)'"
        )
    return StepFormat(CUSTOM, CUSTOM, "--step-pattern", pattern)


def formats_for(engine: str, step_pattern: str | None = None) -> tuple[StepFormat, ...]:
    """The formats `--engine` (and `--step-pattern`, which replaces them) selects.

    Raises:
        ConfigError: an unknown engine, or a bad pattern.
    """
    if step_pattern is not None:
        return (custom_format(step_pattern),)
    if engine not in ENGINES:
        raise ConfigError(f"--engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    if engine == "none":
        return ()
    return tuple(f for f in STEP_FORMATS if engine == "auto" or f.engine == engine)


def name_filter(formats: Sequence[StepFormat]) -> pl.Expr:
    """True for a range whose name is a step of `formats` (or looks like one of their engines)."""
    patterns = [f.pattern for f in formats]
    patterns += [ENGINE_PREFIXES[e] for e in {f.engine for f in formats} if e in ENGINE_PREFIXES]
    if not patterns:
        return pl.lit(value=False)
    # one regex: the groups unnamed, as several formats name the same counts
    unnamed = (re.sub(r"\(\?P<\w+>", "(?:", p) for p in patterns)
    return pl.col("name").str.contains("|".join(f"(?:{p})" for p in unnamed))


def step_names(names: pl.Series, formats: Sequence[StepFormat]) -> StepNames:
    """Read the distinct step names among `names` (range names of a trace)."""
    distinct = names.drop_nulls().unique().sort()
    frame = pl.DataFrame({"name": distinct})
    empty = pl.DataFrame(schema=STEP_NAMES_SCHEMA)
    parts = []
    for fmt in formats:
        hits = frame.filter(pl.col("name").str.contains(fmt.pattern))
        if hits.is_empty():
            continue
        groups = re.compile(fmt.pattern).groupindex
        read = hits.with_columns(
            pl.col("name").str.extract_groups(fmt.pattern).alias("_g")
        ).with_columns(
            [
                pl.col("_g").struct.field(c).cast(pl.Int64).alias(c)
                if c in groups
                else pl.lit(0 if c in fmt.zero else None, dtype=pl.Int64).alias(c)
                for c in STEP_COUNTS
            ]
        )
        read = read.with_columns(pl.col(src).alias(dst) for dst, src in fmt.same.items())
        # a phase without requests runs no tokens, whatever the name leaves out
        read = read.with_columns(
            pl.when(pl.col(reqs) == 0).then(0).otherwise(pl.col(tokens)).alias(tokens)
            for reqs, tokens in (("ctx_reqs", "ctx_tokens"), ("gen_reqs", "gen_tokens"))
        )
        parts.append(
            read.with_columns(
                engine=pl.lit(fmt.engine),
                format=pl.lit(fmt.name),
                fixed_phase=pl.lit(fmt.phase, dtype=pl.String),
            ).select(STEP_NAMES_SCHEMA.names())
        )
    # a name two formats read (only a --step-pattern could): the first format wins
    found = pl.concat([empty, *parts]).unique("name", keep="first", maintain_order=True)
    looks = name_filter([f for f in formats if f.engine != CUSTOM])
    malformed = frame.filter(looks & ~pl.col("name").is_in(found["name"].implode()))
    used = set(found["format"].to_list())
    return StepNames(
        found.sort("name"),
        tuple(malformed["name"].to_list()),
        tuple(f.assumes for f in formats if f.name in used and f.assumes is not None),
    )


def phase_expr() -> pl.Expr:
    """The phase of a step from its counts: prefill (context only), decode (generation only),
    mixed (both), idle (neither); the format's fixed phase where the counts are unknown."""
    ctx = pl.col("ctx_reqs").fill_null(0) + pl.col("ctx_tokens").fill_null(0)
    gen = pl.col("gen_reqs").fill_null(0) + pl.col("gen_tokens").fill_null(0)
    prefill, decode, mixed, idle = STEP_PHASES
    return (
        pl.when(pl.col("fixed_phase").is_not_null())
        .then(pl.col("fixed_phase"))
        .when((ctx > 0) & (gen > 0))
        .then(pl.lit(mixed))
        .when(ctx > 0)
        .then(pl.lit(prefill))
        .when(gen > 0)
        .then(pl.lit(decode))
        .otherwise(pl.lit(idle))
    )
