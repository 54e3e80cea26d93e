"""fvcore static compute report of the real modules, and the FLOP counters the cross-checks share.

`estimate_static_compute` builds the model with random weights, runs `fvcore.nn.FlopCountAnalysis`
on the vision stage (global view + the crops of the given image size), a prefill over `seq_len`
positions and one decode step, and writes `static_compute.json` / `static_compute.md` with
parameters and FLOPs per stage and component, next to the analytic numbers
(`llm_perf_opt.flops.analytic`).

Counting conventions (docs/flops.md):
- fvcore counts one multiply-add as one flop: its numbers are multiplied by 2 here.
- fvcore has no handler for `aten::scaled_dot_product_attention` (it would count 0) nor for
  `aten::_grouped_mm`; both are registered: SDPA = b·h_q·Lq·Lk·(d + d_v) MACs (the full square,
  masks not discounted), grouped mm = S·K·N MACs.
- fvcore also counts LayerNorm/GroupNorm/upsampling as a few flops per element; the analytic model
  counts only matmuls and convs, so those are reported apart (`fvcore_other_flops`), not compared.
- `torch.utils.flop_counter.FlopCounterMode` on CPU sees SDPA as
  `aten._scaled_dot_product_flash_attention_for_cpu`, which it has no formula for;
  `FLOP_COUNTER_MAPPING` maps it (and `aten._grouped_mm`) to torch's own SDPA / matmul formulas.
"""

from __future__ import annotations

import copy
import json
import math
import re
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final, TypeVar

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from llm_perf_opt.errors import ConfigError
from llm_perf_opt.flops import analytic
from llm_perf_opt.flops.configs import ModelConfig
from llm_perf_opt.flops.context import check_length
from llm_perf_opt.runner import nvtx_stages
from llm_perf_opt.runner.models import BuiltModel, build_model
from llm_perf_opt.runner.preprocess import synthetic_page
from llm_perf_opt.schemas import check_static_compute
from llm_perf_opt.vocab import STATIC_COMPUTE_SCHEMA_ID

with warnings.catch_warnings():
    # fvcore scripts a focal loss at import time, which torch 2.13 deprecates; we only trace.
    warnings.filterwarnings("ignore", r"`torch\.jit\.script` is deprecated", DeprecationWarning)
    from fvcore.nn import FlopCountAnalysis, parameter_count

# fvcore operator names (by_operator keys) that are matrix products or convolutions.
FVCORE_MATMUL_OPS: Final = frozenset(
    {
        "addmm",
        "baddbmm",
        "bmm",
        "conv",
        "einsum",
        "matmul",
        "mm",
        "linear",
        "scaled_dot_product_attention",
        "_grouped_mm",
    }
)
_T = TypeVar("_T")
aten = torch.ops.aten


# --- counters ------------------------------------------------------------------------------------


def _cpu_sdpa_flop(
    query_shape: tuple[int, ...],
    key_shape: tuple[int, ...],
    value_shape: tuple[int, ...],
    *args: Any,
    out_shape: Any = None,
    **kwargs: Any,
) -> int:
    """torch's own SDPA formula for the CPU flash kernel it has no entry for."""
    flops: int = sdpa_flop_count(query_shape, key_shape, value_shape)  # type: ignore[no-untyped-call]
    return flops


def _grouped_mm_flop(
    a_shape: tuple[int, ...], b_shape: tuple[int, ...], *args: Any, out_shape: Any = None, **kw: Any
) -> int:
    """(S, K) rows against per-group (K, N) weights: 2·S·K·N."""
    return 2 * a_shape[0] * a_shape[-1] * b_shape[-1]


FLOP_COUNTER_MAPPING: Final[Mapping[Any, Callable[..., int]]] = {
    aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flop,
    aten._grouped_mm: _grouped_mm_flop,
}


def flop_counter_flops(fn: Callable[[], _T]) -> tuple[int, _T]:
    """Run `fn` under `FlopCounterMode` (with `FLOP_COUNTER_MAPPING`); (FLOPs, fn's result)."""
    with (
        torch.no_grad(),
        FlopCounterMode(display=False, custom_mapping=dict(FLOP_COUNTER_MAPPING)) as mode,
    ):
        result = fn()
    return int(mode.get_total_flops()), result


def _sizes(value: Any) -> list[int]:
    sizes = value.type().sizes()
    if sizes is None:
        raise ConfigError("fvcore traced a tensor without static shape; trace on CPU or CUDA")
    return [int(s) for s in sizes]


def _sdpa_macs(inputs: list[Any], outputs: list[Any]) -> int:
    """fvcore handle: b·h_q·Lq·Lk·(d + d_v) MACs for QKᵀ and AV (full square)."""
    q, k, v = (_sizes(t) for t in inputs[:3])
    return math.prod(q[:-2]) * q[-2] * k[-2] * (q[-1] + v[-1])


def _grouped_mm_macs(inputs: list[Any], outputs: list[Any]) -> int:
    """fvcore handle: S·K·N MACs."""
    a, b = (_sizes(t) for t in inputs[:2])
    return a[0] * a[-1] * b[-1]


@dataclass(frozen=True)
class FvcoreCount:
    """fvcore's count of one forward, converted to FLOPs (×2).

    Attributes:
        flops: matmul, conv and attention FLOPs (comparable with the analytic model).
        other_flops: what fvcore adds for norms and upsampling (not in the analytic model).
        by_module: matmul-class FLOPs per module name (names of the traced wrapper).
        unsupported_ops: ops fvcore skipped, with counts (elementwise ops: 0 FLOPs by convention).
    """

    flops: int
    other_flops: int
    by_module: Mapping[str, int] = field(default_factory=dict)
    unsupported_ops: Mapping[str, int] = field(default_factory=dict)


def fvcore_flops(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> FvcoreCount:
    """Trace `module(*inputs)` with fvcore (SDPA and grouped-mm handles registered)."""
    analysis = FlopCountAnalysis(module, inputs).set_op_handle(
        "aten::scaled_dot_product_attention", _sdpa_macs, "aten::_grouped_mm", _grouped_mm_macs
    )
    analysis.unsupported_ops_warnings(False)
    analysis.uncalled_modules_warnings(False)
    analysis.tracer_warnings("none")
    with torch.no_grad():
        per_module = analysis.by_module_and_operator()
    matmul = {
        name: 2 * round(sum(v for op, v in ops.items() if op in FVCORE_MATMUL_OPS))
        for name, ops in per_module.items()
    }
    everything = 2 * round(sum(per_module[""].values()))
    return FvcoreCount(
        flops=matmul[""],
        other_flops=everything - matmul[""],
        by_module=matmul,
        unsupported_ops=dict(analysis.unsupported_ops()),
    )


# --- stage forwards with tensor inputs (traceable) ---------------------------------------------


class VisionForward(nn.Module):
    """`nvtx_stages.vision_stage` with the pixel tensors as inputs."""

    def __init__(self, built: BuiltModel, prepared: nvtx_stages.PreparedImage) -> None:
        super().__init__()
        self.model = built.model
        self._built = built
        self._prepared = prepared

    def forward(self, *pixels: torch.Tensor) -> torch.Tensor:
        """pixel_values[, pixel_values_local] → image embeddings."""
        local = pixels[1] if len(pixels) > 1 else None
        prepared = replace(self._prepared, pixel_values=pixels[0], pixel_values_local=local)
        return nvtx_stages.vision_stage(self._built, prepared)


class PrefillForward(nn.Module):
    """`nvtx_stages.prefill_stage` from the prompt embeddings: decoder + lm_head on the last
    position."""

    def __init__(self, built: BuiltModel) -> None:
        super().__init__()
        self.model = built.model

    def forward(self, inputs_embeds: torch.Tensor) -> torch.Tensor:
        """(1, Lp, hidden) embeddings → last-position logits."""
        out = self.model(inputs_embeds=inputs_embeds, use_cache=True, logits_to_keep=1)
        logits: torch.Tensor = out.logits
        return logits


class DecodeForward(nn.Module):
    """`nvtx_stages.decode_step` on a copy of a KV cache (so repeated traces see the same
    context)."""

    def __init__(self, built: BuiltModel, past: Any, position: int) -> None:
        super().__init__()
        self.model = built.model
        self._past = past
        self._position = position

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(1, 1) token id → logits, attending to position + 1 keys."""
        positions = torch.full_like(input_ids, self._position)
        out = self.model(
            input_ids=input_ids,
            past_key_values=copy.deepcopy(self._past),
            position_ids=positions,
            use_cache=True,
            logits_to_keep=1,
        )
        logits: torch.Tensor = out.logits
        return logits


@dataclass(frozen=True)
class StageRun:
    """One stage as a traceable module, its inputs and its analytic FLOPs.

    Attributes:
        name: vision, prefill or decode.
        module: the forward to count.
        inputs: its tensor inputs.
        analytic_full: analytic FLOPs in the full-square convention (what counters see), by block.
        analytic_causal: analytic FLOPs in the causal convention, by block.
        detail: geometry (tokens, positions, context length).
    """

    name: str
    module: nn.Module
    inputs: tuple[torch.Tensor, ...]
    analytic_full: analytic.Flops
    analytic_causal: analytic.Flops
    detail: Mapping[str, Any]


def stage_runs(
    built: BuiltModel, prepared: nvtx_stages.PreparedImage, seq_len: int, seed: int = 0
) -> list[StageRun]:
    """Vision of `prepared`, prefill over `seq_len` random embeddings, one decode step after it.

    Raises:
        ConfigError: seq_len outside the context window (one position is left for decode).
    """
    config = built.config
    check_length(config.text.max_position_embeddings, seq_len + 1, "seq_len + 1 decode position")
    layout = prepared.layout
    pixels: tuple[torch.Tensor, ...] = (prepared.pixel_values,)
    if prepared.pixel_values_local is not None:
        pixels = (prepared.pixel_values, prepared.pixel_values_local)
    generator = torch.Generator().manual_seed(seed)
    embeds = torch.randn(1, seq_len, config.text.hidden_size, generator=generator)
    embeds = embeds.to(device=built.device, dtype=built.dtype)
    with torch.no_grad():
        past = built.model(inputs_embeds=embeds, use_cache=True, logits_to_keep=1).past_key_values
    token = torch.tensor([[2]], dtype=torch.long, device=built.device)
    geometry = {
        "mode": prepared.mode,
        "crop_grid": list(layout.crop_grid) if layout.crop_grid else None,
        "vision_tokens": layout.vision_tokens,
        "image_positions": layout.image_positions,
    }
    return [
        StageRun(
            "vision",
            VisionForward(built, prepared),
            pixels,
            analytic.vision_flops(config, layout, "full"),
            analytic.vision_flops(config, layout, "causal"),
            geometry,
        ),
        StageRun(
            "prefill",
            PrefillForward(built),
            (embeds,),
            analytic.prefill_flops(config.text, seq_len, "full"),
            analytic.prefill_flops(config.text, seq_len, "causal"),
            {"prefill_len": seq_len, "lm_head_positions": 1},
        ),
        StageRun(
            "decode",
            DecodeForward(built, past, seq_len),
            (token,),
            analytic.decode_flops_per_token(config.text, seq_len + 1),
            analytic.decode_flops_per_token(config.text, seq_len + 1),
            {"ctx_len": seq_len + 1},
        ),
    ]


# --- components ----------------------------------------------------------------------------------


def component_patterns(config: ModelConfig) -> dict[str, str]:
    """Regexes over module names of the ForConditionalGeneration model, one per component."""
    layers = r"model\.language_model\.layers\.\d+"
    if config.family == "deepseek-ocr":
        vision = {
            "sam": r"model\.sam_model",
            "clip": r"model\.vision_model",
            "projector": r"model\.projector",
        }
    else:
        vision = {
            "sam": r"model\.vision_tower\.sam_encoder",
            "query_encoder": r"model\.vision_tower\.vision_encoder",
            "projector": r"model\.multi_modal_projector",
        }
    return {
        **vision,
        "text.embedding": r"model\.language_model\.embed_tokens",
        "text.self_attn": layers + r"\.self_attn",
        "text.mlp": layers + r"\.mlp",
        "lm_head": r"lm_head",
    }


def analytic_components(flops: analytic.Flops) -> dict[str, int]:
    """Analytic blocks grouped like `component_patterns`."""
    groups = {
        "text.attn_proj": "text.self_attn",
        "text.attn_scores": "text.self_attn",
        "text.dense_mlp": "text.mlp",
        "text.moe_routed": "text.mlp",
        "text.moe_shared": "text.mlp",
        "text.router": "text.mlp",
        "text.lm_head": "lm_head",
    }
    out: dict[str, int] = {}
    for block, value in flops.blocks.items():
        name = groups.get(block, block.split(".")[0])
        out[name] = out.get(name, 0) + value
    return out


def _match_components(values: Mapping[str, int], patterns: Mapping[str, str]) -> dict[str, int]:
    """Sum `values` (keyed by module name) over the names each component's regex matches fully."""
    out = dict.fromkeys(patterns, 0)
    for name, value in values.items():
        for component, pattern in patterns.items():
            if re.fullmatch(pattern, name):
                out[component] += value
    return out


def component_params(built: BuiltModel) -> dict[str, int]:
    """Parameters per component, plus `other` (norms, layout vectors, query tables) and `total`."""
    counts = parameter_count(built.model)
    out = _match_components(counts, component_patterns(built.config))
    out["other"] = counts[""] - sum(out.values())
    out["total"] = counts[""]
    return out


# --- report --------------------------------------------------------------------------------------


def estimate_static_compute(
    image_h: int,
    image_w: int,
    seq_len: int,
    *,
    family: str = "deepseek-ocr",
    tiny: bool = False,
    mode: str = "gundam",
    out_dir: str | Path = ".",
    dtype: torch.dtype = torch.float32,
    device: str = "cpu",
    seed: int = 0,
    built: BuiltModel | None = None,
) -> dict[str, Any]:
    """fvcore FLOPs of the vision stage, a prefill over `seq_len` and one decode step.

    The image is a synthetic page of image_w × image_h pixels preprocessed in `mode` (gundam picks
    its crop grid from the aspect ratio, as the runner does). Where fvcore cannot trace a stage,
    the analytic full-square number stands in and the report says so.

    Args:
        image_h: image height (px).
        image_w: image width (px).
        seq_len: prefill positions; the decode step attends to seq_len + 1.
        family: deepseek-ocr or deepseek-ocr2.
        tiny: the small CPU-test config.
        mode: preprocessing mode.
        out_dir: where `static_compute.json` and `static_compute.md` go.
        dtype: weight dtype (bfloat16 is fast on CPUs with AMX; FLOPs do not depend on it).
        device: cpu or cuda (fvcore needs real tensors, not meta).
        seed: weights and input seed.
        built: an already built model of `family` (skips building).

    Returns:
        The report dict written to `static_compute.json`.

    Raises:
        ConfigError: bad family, mode, sizes or seq_len.
    """
    if image_h < 1 or image_w < 1:
        raise ConfigError(f"image size {image_w}x{image_h} must be positive")
    if built is None:
        built = build_model(family, tiny=tiny, dtype=dtype, device=device, seed=seed)
    prepared = nvtx_stages.prepare_image(built, synthetic_page(0, (image_w, image_h)), mode)
    patterns = component_patterns(built.config)
    report_stages: dict[str, Any] = {}
    for run in stage_runs(built, prepared, seq_len, seed):
        entry: dict[str, Any] = {
            **run.detail,
            "analytic_flops_full_square": run.analytic_full.total_flops,
            "analytic_flops_causal": run.analytic_causal.total_flops,
            "analytic_components": analytic_components(run.analytic_full),
        }
        try:
            count = fvcore_flops(run.module, run.inputs)
        except Exception as exc:  # any tracing failure falls back to analytic, and is reported
            entry.update(
                source=f"analytic (fvcore could not trace: {type(exc).__name__}: {exc})",
                flops=run.analytic_full.total_flops,
                fvcore_flops=None,
                fvcore_other_flops=None,
                fvcore_components=None,
            )
        else:
            by_model_name = {
                name.removeprefix("model."): v
                for name, v in count.by_module.items()
                if name.startswith("model.")
            }
            entry.update(
                source="fvcore",
                flops=count.flops,
                fvcore_flops=count.flops,
                fvcore_other_flops=count.other_flops,
                fvcore_components=_match_components(by_model_name, patterns),
                fvcore_vs_analytic=count.flops / run.analytic_full.total_flops - 1,
                fvcore_skipped_ops=dict(sorted(count.unsupported_ops.items())),
            )
        report_stages[run.name] = entry
    report = {
        "schema": STATIC_COMPUTE_SCHEMA_ID,
        "family": built.family,
        "tiny": built.config.tiny,
        "dtype": str(built.dtype).removeprefix("torch."),
        "device": built.device.type,
        "image": {"height": image_h, "width": image_w, "mode": mode},
        "seq_len": seq_len,
        "params": component_params(built),
        "stages": report_stages,
        "conventions": {
            "fvcore": "fvcore MACs × 2; SDPA handle b·h·Lq·Lk·(d+dv) MACs (full square); "
            "norms/upsampling in fvcore_other_flops, not compared",
            "analytic": "llm_perf_opt.flops.analytic: matmuls and convs only; full_square counts "
            "every query-key pair like the kernels, causal only the visible ones",
            "prefill": "lm_head on the last position only (logits_to_keep=1)",
            "decode": "one step attending to seq_len + 1 positions",
        },
    }
    check_static_compute(report, "runner")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "static_compute.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "static_compute.md").write_text(render_markdown(report))
    return report


def render_markdown(report: Mapping[str, Any]) -> str:
    """The report as Markdown tables."""
    image = report["image"]
    lines = [
        f"# Static compute: {report['family']}{' (tiny)' if report['tiny'] else ''}",
        "",
        f"Image {image['width']}×{image['height']} px, mode {image['mode']}; prefill "
        f"{report['seq_len']} positions; one decode step at C = {report['seq_len'] + 1}. "
        f"Random weights, {report['dtype']} on {report['device']}.",
        "",
        "fvcore `FlopCountAnalysis` counts multiply-adds: its numbers are ×2 here. SDPA is counted "
        "by a registered handle over the full square; norms and upsampling, which the analytic "
        "model does not count, are listed apart. Analytic: `llm_perf_opt.flops.analytic`.",
        "",
        "| stage | FLOPs (fvcore×2) | analytic, full square | analytic, causal | "
        "fvcore/analytic − 1 | fvcore norms etc. | source |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for name, st in report["stages"].items():
        fv = st["fvcore_flops"]
        ratio = "" if fv is None else f"{st['fvcore_vs_analytic']:+.4%}"
        other = "" if st["fvcore_other_flops"] is None else f"{st['fvcore_other_flops']:,}"
        lines.append(
            f"| {name} | {'' if fv is None else f'{fv:,}'} | "
            f"{st['analytic_flops_full_square']:,} | {st['analytic_flops_causal']:,} | {ratio} | "
            f"{other} | {st['source']} |"
        )
    for name, st in report["stages"].items():
        lines += [
            "",
            f"## {name} by component",
            "",
            "| component | fvcore×2 | analytic (full square) |",
            "|---|---:|---:|",
        ]
        fv_parts = st["fvcore_components"] or {}
        for comp, value in st["analytic_components"].items():
            fv = fv_parts.get(comp)
            lines.append(f"| {comp} | {'' if fv is None else f'{fv:,}'} | {value:,} |")
    lines += ["", "## Parameters", "", "| component | parameters |", "|---|---:|"]
    lines += [f"| {comp} | {n:,} |" for comp, n in report["params"].items()]
    return "\n".join(lines) + "\n"
