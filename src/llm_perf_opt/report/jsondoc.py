"""The report as the JSON document of `--format json` (docs/json-output.md): each level's rows
from its frame, placed where the document nests them."""

from __future__ import annotations

import dataclasses
import json
from collections import defaultdict
from collections.abc import Sequence
from typing import Any, Final

from llm_perf_opt.errors import AnalysisError
from llm_perf_opt.hostview.breakdown import HostGpuView
from llm_perf_opt.metrics.mfu import MfuReport
from llm_perf_opt.metrics.roofline import utilization_by_peak
from llm_perf_opt.metrics.verdict import RULE
from llm_perf_opt.report.fields import JSON, pick
from llm_perf_opt.report.levels import (
    CATEGORY,
    CATEGORY_COUNT,
    CATEGORY_SHARE,
    CATEGORY_TIME,
    CONTEXT,
    DECODE_STEP,
    ENGINE_PHASE_SUMS,
    ENGINE_STEP,
    GPU_WINDOW,
    HOST_SPAN,
    HOST_VIEW,
    INSTANCE_DECODE,
    INSTANCE_SUMS,
    KERNEL,
    MODEL_ABSENT,
    MODEL_SUMS,
    ROOFLINE,
    RUN_CONTEXT,
    RUN_INPUTS,
    RUN_PEAK,
    RUN_SOURCE,
    RUN_WARNINGS,
    STAGE_DECODE,
    STAGE_HOST,
    STAGE_SUMS,
    STAGE_TRAFFIC,
    category_frame,
    context_frame,
    decode_step_frame,
    engine_phase_frame,
    engine_step_frame,
    instance_frame,
    instances,
    kernel_frame,
    model_frame,
    roofline_frame,
    run_frame,
    stage_frame,
)
from llm_perf_opt.report.text import WALL_SOURCES

JSON_SCHEMA_ID: Final = "llm_perf_opt.mfu_report/1"


def _views(views: Sequence[HostGpuView | None]) -> list[dict[str, Any] | None]:
    """The `host` and `gpu_idle` objects of each breakdown (None where there is none)."""
    rows = iter(HOST_VIEW.frame(v for v in views if v is not None).to_dicts())
    out: list[dict[str, Any] | None] = []
    for v in views:
        row = None if v is None else next(rows)
        out.append(None if row is None else {"host": pick(row, HOST_SPAN),
                                             "gpu_idle": pick(row, GPU_WINDOW)})  # fmt: skip
    return out


def _by_stage(stages: Sequence[str], docs: Sequence[dict[str, Any]]) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = defaultdict(list)
    for stage, doc in zip(stages, docs, strict=True):
        out[stage].append(doc)
    return out


def _instances_json(report: MfuReport) -> dict[str, list[Any]]:
    """Each stage's instance objects."""
    items = instances(report)
    docs = []
    for r, row, view in zip(
        items, instance_frame(report).to_dicts(), _views([r.host for r in items]), strict=True
    ):
        doc = pick(row, INSTANCE_SUMS)
        if r.stage == "decode":
            doc |= pick(row, INSTANCE_DECODE)
        docs.append(doc | (view or {}))
    return _by_stage([r.stage for r in items], docs)


def _stages_json(report: MfuReport, by_peak: dict[str, Any]) -> dict[str, Any]:
    kernels = kernel_frame(report)
    top = _by_stage(kernels["stage"].to_list(), KERNEL.rows(kernels, JSON))
    members = _instances_json(report)
    shares = category_frame(report)
    cats = _by_stage(shares["stage"].to_list(), CATEGORY.rows(shares, JSON))
    names = _by_stage(shares["stage"].to_list(), shares["category"].to_list())
    rows = stage_frame(report).join(
        roofline_frame(report), on="stage", how="left", maintain_order="left"
    )
    stages = report.stages.values()
    views = _views([s.host for s in stages])
    steps = _views([s.per_step for s in stages])
    out = {}
    for s, row, view, step in zip(stages, rows.to_dicts(), views, steps, strict=True):
        doc = pick(row, STAGE_SUMS) | {"top_kernels": top[s.stage], "instances": members[s.stage]}
        doc["categories"] = dict(zip(names[s.stage], cats[s.stage], strict=True))
        doc |= pick(row, STAGE_TRAFFIC) | pick(row, ROOFLINE.fields) | {"by_peak": by_peak[s.stage]}
        if s.stage == "decode":
            doc |= pick(row, STAGE_DECODE)
        if view is not None:
            doc |= view | pick(row, STAGE_HOST)
            if step is not None:
                doc["per_step"] = step
        out[s.stage] = doc
    return out


def _trace_json(report: MfuReport) -> dict[str, Any]:
    """The `trace_view` and `trace_categories` keys: every GPU op of the trace (traceview.py)."""
    v = report.trace_view
    if v is None:
        return {"trace_view": None, "trace_categories": None}
    shares = CATEGORY.frame(v.categories, stage="")
    kernels = KERNEL.frame(v.top_kernels, stage="", rank=range(1, len(v.top_kernels) + 1))
    return {
        "trace_view": {
            "gpu_busy_s": v.gpu_busy_ns / 1e9,
            "op_sum_s": v.op_sum_ns / 1e9,
            "n_ops": v.n_ops,
            "top_kernels": KERNEL.rows(kernels, JSON),
        },
        "trace_categories": dict(
            zip(shares["category"].to_list(), CATEGORY.rows(shares, JSON), strict=True)
        ),
    }


def _step_categories_json(report: MfuReport) -> dict[str, Any] | None:
    """The `decode_step_categories` key: the median decode step's kernel time per category."""
    d = report.step_categories
    if d is None:
        return None
    rows = CATEGORY.frame(d.categories, stage="").to_dicts()
    fields = (CATEGORY_TIME, CATEGORY_SHARE, CATEGORY_COUNT)  # no FLOPs per step category
    return {
        "instance": d.instance,
        "step": d.step,
        "range_id": d.range_id,
        "gpu_busy_s": d.gpu_busy_ns / 1e9,
        "categories": {r["category"]: pick(r, fields) for r in rows},
    }


def _engine_json(report: MfuReport) -> dict[str, Any]:
    """The `engine`, `engine_steps` and `engine_phases` keys (docs/serving.md)."""
    engine = report.engine
    phases = {}
    if engine is not None:
        views = _views([p.host for p in engine.phases])
        for p, row, view in zip(
            engine.phases, engine_phase_frame(report).to_dicts(), views, strict=True
        ):
            phases[p.phase] = pick(row, ENGINE_PHASE_SUMS) | (view or {})
    return {
        "engine": None
        if engine is None
        else {
            "engines": list(engine.engines),
            "formats": list(engine.formats),
            "attention_source": engine.exact_source,
        },
        "engine_steps": ENGINE_STEP.rows(engine_step_frame(report), JSON),
        "engine_phases": phases,
    }


def to_json(report: MfuReport) -> dict[str, Any]:
    """The JSON document `--format json` prints; every key is documented in docs/json-output.md."""
    run = run_frame(report).row(0, named=True)
    model = model_frame(report).row(0, named=True)
    by_peak = utilization_by_peak(report)
    cal = report.peak_sources.calibration if report.peak_sources else None
    ctx = report.ctx
    model_doc = pick(model, MODEL_SUMS) | {"by_peak": by_peak["model"]} | pick(model, MODEL_ABSENT)
    decode = report.stages.get("decode")
    mbu = (
        {
            "trace": decode.mbu_trace,
            "wall": decode.mbu_wall,
            "bytes_per_step": decode.bytes_per_step,
            "peak_bandwidth_Bps": report.peak.peak_bandwidth_Bps,
        }
        if decode
        else None
    )
    return {
        "schema": JSON_SCHEMA_ID,
        **pick(run, RUN_SOURCE + RUN_PEAK),
        "calibration": dataclasses.asdict(cal) if cal else None,
        **pick(run, RUN_CONTEXT),
        "context": {
            "mode": ctx.mode,
            "ctx_len": ctx.ctx_len,
            "window": ctx.window,
            "instances": CONTEXT.rows(context_frame(report), JSON),
        },
        **pick(run, RUN_INPUTS),
        "wall_sources": dict(WALL_SOURCES),
        "verdict_rule": RULE,
        "stages": _stages_json(report, by_peak),
        "model": model_doc,
        "mbu": {"decode": mbu},
        "decode_steps": DECODE_STEP.rows(decode_step_frame(report), JSON),
        "decode_step_categories": _step_categories_json(report),
        **_engine_json(report),
        **_trace_json(report),
        "static_compute": report.static_compute,
        **pick(run, RUN_WARNINGS),
    }


def to_json_text(report: MfuReport) -> str:
    """`to_json` as indented text with a final newline; a non-finite number (only absurd inputs
    make one) is an error, never `NaN` or `Infinity` in the document."""
    try:
        return json.dumps(to_json(report), indent=2, allow_nan=False) + "\n"
    except ValueError as exc:
        raise AnalysisError(
            f"the report holds a non-finite number ({exc}); check the peak, metadata and "
            "lengths given"
        ) from None
