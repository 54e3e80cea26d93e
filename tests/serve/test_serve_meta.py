"""The run metadata's `serve` block (docs/serving.md): each request's (query, context) lengths
make attention exact, the runner's step wall time wins over the range span, encoder images add
vision FLOPs, and a block naming other steps is reported and not used."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from llm_perf_opt.analysis import AnalyzeOptions, analyze_trace
from llm_perf_opt.flops.configs import builtin_config
from llm_perf_opt.flops.flops_model import AnalyticFlops
from llm_perf_opt.flops.hf_model import HfFlops, read_hf_config
from llm_perf_opt.flops.steps import request_work, step_costs
from llm_perf_opt.inputs.run_meta import RunMeta, parse_meta
from llm_perf_opt.inputs.step_names import formats_for, step_names
from llm_perf_opt.metrics.engine_view import engine_report
from tests.helpers.committed import LLAMA_CONFIG
from tests.helpers.paths import REPO
from tests.helpers.serve_export import StepLoop, write_export
from tests.helpers.synth import PEAK

NAMES = [
    "execute_context_2(512)_generation_0(0)",
    "execute_context_1(200)_generation_1(1)",
    "execute_context_0(0)_generation_2(2)",
]
# (request, phase, query_len, context_len, encoder_images) per step, as the runner writes them:
# request 0 (a page, 282 prompt tokens) and request 1 (430 text tokens, chunked at the budget)
ENTRIES = [
    [(0, "context", 282, 0, 1), (1, "context", 230, 0, 0)],
    [(1, "context", 200, 230, 0), (0, "generation", 1, 282, 0)],
    [(0, "generation", 1, 283, 0), (1, "generation", 1, 430, 0)],
]
PAGE = {"index": 0, "source": "page.png", "width": 1024, "height": 1024, "mode": "base",
        "crop_grid": None, "n_crops": 0, "vision_tokens": 256, "image_positions": 273,
        "prefill_len": 282}  # fmt: skip


def _serve(names: list[str]) -> dict[str, Any]:
    return {
        "step_name_format": "vllm",
        "token_budget": 512,
        "max_running": 4,
        "arrival_every": 0,
        "batching": "packed_tokens_per_request_attention",
        "images": [PAGE],
        "requests": [
            {
                "id": 0,
                "prompt_len": 282,
                "image_index": 0,
                "arrival_step": 0,
                "max_new_tokens": 8,
                "generated_tokens": 3,
            },
            {
                "id": 1,
                "prompt_len": 430,
                "image_index": None,
                "arrival_step": 0,
                "max_new_tokens": 8,
                "generated_tokens": 2,
            },
        ],
        "steps": [
            {
                "index": k,
                "name": name,
                "wall_s": 0.001 * (k + 1),
                "entries": [
                    {
                        "request": r,
                        "phase": p,
                        "query_len": q,
                        "context_len": c,
                        "encoder_images": n,
                    }
                    for r, p, q, c, n in ENTRIES[k]
                ],
            }
            for k, name in enumerate(names)
        ],
    }


def _meta_json(serve: dict[str, Any]) -> dict[str, Any]:
    """The committed v1 run's metadata turned into a --serve run's: no stage images, the block."""
    data = json.loads((REPO / "traces" / "meta" / "dsocr_v1_base.run.meta.json").read_text())
    return {**data, "images": [], "serve": serve}


@pytest.fixture(scope="module")
def trace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_export(tmp_path_factory.mktemp("meta") / "steps.sqlite", StepLoop(NAMES))


@pytest.fixture(scope="module")
def attributed(trace: Path) -> pl.DataFrame:
    return analyze_trace(trace, AnalyzeOptions(config_path=str(LLAMA_CONFIG))).ranges


def _meta(serve: dict[str, Any]) -> RunMeta:
    return parse_meta(_meta_json(serve), "test")


def _costs() -> Any:
    model = read_hf_config(LLAMA_CONFIG)
    assert model is not None
    return step_costs(HfFlops(model, "bfloat16"))


def test_serve_block_makes_attention_exact(attributed: pl.DataFrame) -> None:
    names = step_names(attributed["name"], formats_for("auto"))
    costs = _costs()
    report = engine_report(
        attributed, names, costs=costs, peak=PEAK, meta=_meta(_serve(NAMES)), vision={0: 1e12}
    )
    assert report.exact_source.startswith("run metadata serve block")
    bounded = engine_report(attributed, names, costs=costs, peak=PEAK)
    for step, loose, entries in zip(report.steps, bounded.steps, ENTRIES, strict=True):
        frame = pl.DataFrame([(q, c) for _, _, q, c, _ in entries], schema=["q", "c"], orient="row")
        flops, _ = request_work(costs, pl.col("c"), pl.col("q"))
        assert step.attention_exact and loose.attention_exact is False
        assert step.flops_attention == frame.select(flops.sum()).item()
        assert loose.flops_attention <= step.flops_attention <= loose.flops_attention_max  # type: ignore[operator]
        assert step.flops_linear == loose.flops_linear
        assert step.wall_source == "runner" and loose.wall_source == "range"
    assert [s.wall_ns for s in report.steps] == pytest.approx([1e6, 2e6, 3e6])
    assert [s.flops_vision for s in report.steps] == [1e12, 0.0, 0.0]
    assert [s.flops_vision for s in bounded.steps] == [0.0, 0.0, 0.0]
    assert report.steps[0].encoder_images == 1


def test_a_serve_block_of_other_steps_is_not_used(attributed: pl.DataFrame) -> None:
    names = step_names(attributed["name"], formats_for("auto"))
    meta = _meta(_serve(NAMES))
    assert meta.serve is not None
    other = replace(meta, serve=replace(meta.serve, steps=meta.serve.steps[:2]))
    report = engine_report(attributed, names, costs=_costs(), peak=PEAK, meta=other)
    assert report.exact_source == "step names"
    assert not any(s.attention_exact for s in report.steps)
    assert report.notes and "serve block lists 2 steps" in report.notes[0]


def test_the_analysis_reads_the_serve_block_and_counts_the_page(
    trace: Path, tmp_path: Path
) -> None:
    """`--meta` of a --serve run: DeepSeek-OCR's FLOPs from its config, exact attention, the
    page's vision encoder in the step that encodes it."""
    meta_path = tmp_path / "run.meta.json"
    meta_path.write_text(json.dumps(_meta_json(_serve(NAMES))))
    report = analyze_trace(trace, AnalyzeOptions(meta_path=str(meta_path))).report
    assert report is not None and report.engine is not None
    steps = report.engine.steps
    assert all(s.attention_exact for s in steps) and not report.stages
    page = AnalyticFlops(builtin_config("deepseek-ocr"), "bfloat16").vision_flops("base", None)
    assert [s.flops_vision for s in steps] == [page, 0.0, 0.0]
    assert report.engine.exact_source == f"run metadata serve block ({meta_path})"
    assert not any("bounded" in w for w in report.warnings)
