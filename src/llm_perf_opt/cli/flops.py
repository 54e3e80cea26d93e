"""`mfu-flops`: analytic per-stage FLOPs and decode bytes of DeepSeek-OCR or a Hugging Face model
from its config.json (no torch, no GPU)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from llm_perf_opt import api, vocab
from llm_perf_opt.cli._common import (
    FLOPS_FORMATS,
    MAX_TOKENS,
    emit,
    guarded,
    input_option,
    output_options,
    prefill_logits_option,
)
from llm_perf_opt.errors import ConfigError
from llm_perf_opt.flops.configs import ModelConfig, builtin_config, load_config_json
from llm_perf_opt.flops.hf import HfModel
from llm_perf_opt.flops.hf_model import read_hf_config, supported_note

# Images per request beyond this are a typo (a request holds a handful).
MAX_IMAGES = 10_000


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option(
    "--model", "model_name", type=click.Choice(vocab.FAMILIES), help="Built-in architecture."
)
@input_option(
    "--config",
    "config_path",
    help="Model config JSON: a Hugging Face config.json ("
    + supported_note()
    + "), a DeepSeek-OCR(-2) config.json or our to_dict form.",
)
@click.option("--tiny", is_flag=True, help="Use the small CPU-test variant of --model.")
@click.option(
    "--mode",
    type=click.Choice(vocab.VISION_MODES),
    default=vocab.DEFAULT_VISION_MODE,
    show_default=True,
    help="Vision preprocessing mode.",
)
@click.option("--crops", help="Gundam crop grid WxH (crops across x down), e.g. 3x2.")
@click.option(
    "--prefill-len",
    type=click.IntRange(max=MAX_TOKENS),
    help="Lp, positions of the prefill forward. Default: the image positions of the mode alone "
    "(a real run adds its prompt's text tokens).",
)
@click.option(
    "--decode-tokens",
    type=click.IntRange(0, MAX_TOKENS),
    default=1,
    show_default=True,
    help="T, decode forward passes after prefill (generated tokens - 1).",
)
@click.option(
    "--ctx-mode",
    type=click.Choice(vocab.CTX_MODES),
    default="auto",
    show_default=True,
    help="auto: step k attends to Lp + k; fixed: --ctx-len C; max: the context window.",
)
@click.option("--ctx-len", type=click.IntRange(max=MAX_TOKENS), help="C for --ctx-mode fixed.")
@click.option(
    "--dtype",
    type=click.Choice(vocab.STORAGE_DTYPES),
    default="bfloat16",
    show_default=True,
    help="Weight and KV-cache dtype of the bytes.",
)
@output_options(FLOPS_FORMATS)
@click.option(
    "--image-size",
    metavar="HxW",
    help="Image height x width in px for a Hugging Face VLM. [default: the tower's own size; "
    "448x448 for Qwen-VL]",
)
@click.option(
    "--images",
    type=click.IntRange(1, MAX_IMAGES),
    default=1,
    show_default=True,
    help="Images per request (HF VLMs).",
)
@prefill_logits_option
def cli(
    model_name: str | None,
    config_path: Path | None,
    tiny: bool,
    mode: str,
    crops: str | None,
    prefill_len: int | None,
    decode_tokens: int,
    ctx_mode: str,
    ctx_len: int | None,
    dtype: str,
    fmt: str,
    image_size: str | None,
    images: int,
    prefill_logits: str,
) -> None:
    """Print analytic FLOPs of the vision, prefill and decode stages and decode bytes per step.

    Conventions (docs/flops.md): 1 MAC = 2 FLOPs; causal attention counts only visible keys
    (the *_full_square keys count the whole square); prefill applies lm_head to the last
    position; decode step k attends to Lp + k positions in auto mode.

    Example:

        mfu-flops --model deepseek-ocr --mode base --prefill-len 273 \\
            --decode-tokens 1 --ctx-mode fixed --ctx-len 1024 --format json
    """
    with guarded():
        model = _model(model_name, config_path, tiny)
        result = api.flops(
            model,
            mode=mode,
            crops=crops,
            prefill_len=prefill_len,
            decode_tokens=decode_tokens,
            ctx_mode=ctx_mode,
            ctx_len=ctx_len,
            dtype=dtype,
            image_size=image_size,
            images=images,
            prefill_logits="all" if prefill_logits == "all" else "last",
        )
        table = render_hf_table if isinstance(model, HfModel) else render_table
        text = json.dumps(result, indent=2, allow_nan=False) if fmt == "json" else table(result)
        emit(text + "\n", None)


def _model(model_name: str | None, config_path: Path | None, tiny: bool) -> ModelConfig | HfModel:
    """The built-in model or the config file; both given must agree on the family."""
    if config_path is None:
        if model_name is None:
            raise ConfigError(f"give --model ({' or '.join(vocab.FAMILIES)}) or --config FILE")
        return builtin_config(model_name, tiny=tiny)
    if tiny:
        raise ConfigError("--tiny selects a built-in config; drop it when passing --config")
    hf = read_hf_config(config_path)
    if hf is not None:
        if model_name is not None:
            raise ConfigError(f"--model {model_name} names a DeepSeek-OCR model; drop it for "
                              f"{config_path} ({hf.model_type})")  # fmt: skip
        return hf
    model = load_config_json(config_path)
    if model_name is not None and model_name != model.family:
        raise ConfigError(
            f"--model {model_name} disagrees with {config_path}, which describes {model.family}"
        )
    return model


def render_table(result: dict[str, Any]) -> str:
    """Human-readable summary: stage totals, then the blocks of each stage."""
    crops = result["crop_grid"]
    lines = [
        f"{result['model']}{' (tiny)' if result['tiny'] else ''}  mode {result['mode']}"
        + (f" crops {crops[0]}x{crops[1]}" if crops else "")
        + f"  vision tokens {result['vision_tokens']}  image positions {result['image_positions']}",
        f"Lp {result['prefill_len']} ({result['prefill_len_source']})  decode steps "
        f"{result['decode_steps']}  ctx {result['ctx_mode']}: C = {result['ctx_len_used']:g}"
        f"  dtype {result['dtype']}",
        "",
        f"{'quantity':<34}{'value':>22}{'full square':>22}",
    ]
    rows = [
        ("vision FLOPs / image", result["vision_flops"], result["vision_flops_full_square"]),
        ("prefill FLOPs", result["prefill_flops"], result["prefill_flops_full_square"]),
        ("decode FLOPs / token", result["decode_flops_per_token"], None),
        ("decode FLOPs total", result["decode_flops_total"], None),
        ("decode bytes / step", result["decode_bytes_per_step"], None),
    ]
    for name, value, full in rows:
        lines.append(f"{name:<34}{value:>22,}{'' if full is None else f'{full:,}':>22}")
    for stage, blocks in result["breakdown"].items():
        stage_total = sum(blocks.values()) or 1
        lines += ["", f"{stage} by block:"]
        for block, value in sorted(blocks.items(), key=lambda kv: -kv[1]):
            lines.append(f"  {block:<32}{value:>22,}{100 * value / stage_total:>9.1f}%")
    return "\n".join(lines)


def render_hf_table(result: dict[str, Any]) -> str:
    """Human-readable summary of a Hugging Face model: stage totals, then each stage's blocks."""
    lines = [f"{result['model_type']}  ({result['source']})"]
    if result["vision_flops"] is not None:
        h, w = result["image_size"]
        lines.append(
            f"{result['images']} image(s) of {h}x{w} px -> {result['image_tokens']} image tokens"
        )
    rows: list[tuple[str, int | float | None]] = [("vision FLOPs", result["vision_flops"])]
    if "active_params" in result:
        if result["prefill_len"] is None:
            lines.append(f"Lp {result['prefill_len_source']}  dtype {result['dtype']}")
        else:
            lines.append(
                f"Lp {result['prefill_len']} ({result['prefill_len_source']}, logits "
                f"{result['prefill_logits']})  decode steps {result['decode_steps']}  ctx "
                f"{result['ctx_mode']}: C = {result['ctx_len_used']:g}  dtype {result['dtype']}"
            )
        rows += [
            ("prefill FLOPs", result["prefill_flops"]),
            ("prefill FLOPs (full square)", result["prefill_flops_full_square"]),
            ("decode FLOPs / token", result["decode_flops_per_token"]),
            ("decode FLOPs total", result["decode_flops_total"]),
            ("decode FLOPs / token at C = 0", result["decode_flops_at_c0"]),
            ("decode FLOPs per context position", result["decode_flops_per_ctx"]),
            ("decode bytes / step", result["decode_bytes_per_step"]),
            ("KV cache bytes / position", result["kv_cache_bytes_per_position"]),
            ("active params / token", result["active_params"]),
        ]
    lines += ["", f"{'quantity':<38}{'value':>24}"]
    lines += [f"{name:<38}{value:>24,}" for name, value in rows if value is not None]
    for stage, blocks in result["breakdown"].items():
        stage_total = sum(blocks.values()) or 1
        lines += ["", f"{stage} by block:"]
        for block, value in sorted(blocks.items(), key=lambda kv: -kv[1]):
            lines.append(f"  {block:<32}{value:>22,}{100 * value / stage_total:>9.1f}%")
    return "\n".join(lines)


def main() -> None:
    """Console-script entry point."""
    cli()


if __name__ == "__main__":
    main()
