"""The run metadata's `serve` block (docs/serving.md): each request's (query, context) lengths
make attention exact, the runner's step wall time wins over the range span, encoder images add
vision FLOPs, and a block naming other steps is reported and not used."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from tests.analyze.synth import PEAK
from tests.serve.export import StepLoop, write_export

from llm_perf_opt.analysis import AnalyzeOptions, analyze_trace
from llm_perf_opt.engines import formats_for, step_names
from llm_perf_opt.flops.hf_model import HfFlops, read_hf_config
from llm_perf_opt.flops.steps import request_work, step_costs
from llm_perf_opt.meta import RunMeta, load_meta_file
from llm_perf_opt.serving import engine_report

REPO = Path(__file__).resolve().parents[2]
LLAMA = REPO / "traces" / "meta" / "llama_1b_shape.config.json"
NAMES = [
    "execute_context_1(282)_generation_0(0)",
    "execute_context_1(230)_generation_1(1)",
    "execute_context_0(0)_generation_2(2)",
]
# (request, phase, query_len, context_len, encoder_images) per step, as the runner writes them
ENTRIES = [
    [(0, "context", 282, 0, 1)],
    [(1, "context", 230, 200, 0), (0, "generation", 1, 282, 0)],
    [(0, "generation", 1, 283, 0), (1, "generation", 1, 430, 0)],
]


def _serve(names: list[str]) -> dict[str, Any]:
    return {
        "step_name_format": "vllm",
        "token_budget": 512,
        "max_running": 4,
        "requests": [],
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


@pytest.fixture(scope="module")
def attributed(tmp_path_factory: pytest.TempPathFactory) -> pl.DataFrame:
    path = write_export(tmp_path_factory.mktemp("meta") / "steps.sqlite", StepLoop(NAMES))
    analysis = analyze_trace(path, AnalyzeOptions(config_path=str(LLAMA)))
    return analysis.ranges


def _meta(serve: dict[str, Any]) -> RunMeta:
    meta = load_meta_file(REPO / "traces" / "meta" / "dsocr_v1_base.run.meta.json")
    return replace(meta, raw={**meta.raw, "serve": serve})


def _costs() -> Any:
    model = read_hf_config(LLAMA)
    assert model is not None
    return step_costs(HfFlops(model, "bfloat16"))


def test_serve_block_makes_attention_exact(attributed: pl.DataFrame) -> None:
    names = step_names(attributed["name"], formats_for("auto"))
    costs = _costs()
    report = engine_report(
        attributed, names, costs=costs, peak=PEAK, meta=_meta(_serve(NAMES)), image_flops=1e12
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
    assert report.steps[0].encoder_images == 1


def test_a_serve_block_of_other_steps_is_not_used(attributed: pl.DataFrame) -> None:
    names = step_names(attributed["name"], formats_for("auto"))
    other = _serve([*NAMES[:2], "execute_context_0(0)_generation_9(9)"])
    report = engine_report(attributed, names, costs=_costs(), peak=PEAK, meta=_meta(other))
    assert report.exact_source == "step names"
    assert not any(s.attention_exact for s in report.steps)
    assert report.notes and "serve block lists 3 steps" in report.notes[0]
