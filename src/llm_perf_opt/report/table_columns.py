"""The tables a person reads (Markdown and the terminal view), one per level: each column's
header and how its cell shows the level's fields."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Final, NamedTuple

from llm_perf_opt.hostview.breakdown import HostGpuView
from llm_perf_opt.metrics.engine_view import EnginePhase
from llm_perf_opt.metrics.mfu import InstanceResult, ModelResult, StageResult
from llm_perf_opt.report.fields import Column, Field, shown
from llm_perf_opt.report.levels import (
    ACHIEVED,
    BOUND,
    CATEGORY_COUNT,
    CATEGORY_NAME,
    CATEGORY_PEAK,
    CATEGORY_RATE,
    CATEGORY_SHARE,
    CATEGORY_TIME,
    CTX_FIRST,
    CTX_LAST,
    CTX_MEAN,
    CTX_SOURCE,
    DECODE_STEPS,
    FLOPS,
    GPU_BUSY,
    GRAPH_OPS,
    GRAPH_S,
    IDLE,
    IMAGE_INDEX,
    INSTANCE_NO,
    INTENSITY,
    KERNEL_CATEGORY,
    KERNEL_COUNT,
    KERNEL_LABEL,
    KERNEL_MEAN,
    KERNEL_SHARE,
    KERNEL_SUM,
    KERNEL_TOTAL,
    MBU_TRACE,
    MEAN_KERNEL,
    MFU_TRACE,
    MFU_WALL,
    N_GPU_OPS,
    N_INSTANCES,
    N_KERNELS,
    PHASE,
    PREFILL_LEN,
    STAGE_NAME,
    STEP_BUSY_P50,
    STEP_BUSY_P90,
    STEP_BUSY_P99,
    VERDICT,
    WALL,
    WALL_SOURCE,
)
from llm_perf_opt.report.text import count, format_pct, gflop, ms, num, tflops, us


def _with_graphs(label: str, field: Field, graphs: Field, fmt: Callable[[Any], str]) -> Column:
    """A kernel figure and, for a stage that ran CUDA graphs traced whole, the graphs' own."""
    return Column(
        label,
        lambda s: fmt(field.raw(s)) + (f" + {fmt(graphs.raw(s))} graph" if s.n_graph_ops else ""),
    )


def _blank(x: object) -> str:
    return "" if x is None else str(x)


def _dash(x: object) -> str:
    return "–" if x is None else str(x)


_GFLOP: Final = shown("GFLOP", FLOPS, gflop)
_BUSY: Final = shown("busy ms", GPU_BUSY, ms)
_WALL: Final = shown("wall ms", WALL, ms)
_MFU_TRACE: Final = shown("MFU trace", MFU_TRACE, format_pct)
_MFU_WALL: Final = shown("MFU wall", MFU_WALL, format_pct)
_IDLE: Final = shown("GPU idle", IDLE, format_pct)
_STAGE: Final = shown("stage", STAGE_NAME, str)

STAGE_TABLE: Final = (
    _STAGE,
    shown("inst", N_INSTANCES, str),
    _GFLOP,
    _BUSY,
    _with_graphs("kernel ms", KERNEL_SUM, GRAPH_S, ms),
    _WALL,
    shown("wall from", WALL_SOURCE, str),
    _MFU_TRACE,
    _MFU_WALL,
    _IDLE,
    _with_graphs("kernels", N_KERNELS, GRAPH_OPS, count),
    shown("µs/kernel", MEAN_KERNEL, us),
    shown("verdict", VERDICT, str),
)


def _model_name(m: ModelResult) -> str:
    return f"model (no {', '.join(m.absent_stages)})" if m.absent_stages else "model"


# The model's row of the stage table: the columns it has.
MODEL_ROW: Final = (Column("stage", _model_name), _GFLOP, _BUSY, _WALL, _MFU_TRACE, _MFU_WALL)


def _image(r: InstanceResult) -> str:
    return ("warmup " if r.warmup else "") + _blank(r.image_index)


INSTANCE_TABLE: Final = (
    _STAGE,
    shown("inst", INSTANCE_NO, str),
    Column("image", _image),
    _GFLOP,
    _BUSY,
    _WALL,
    _MFU_TRACE,
    _MFU_WALL,
    _IDLE,
)
KERNEL_TABLE: Final = (
    shown("kernel", KERNEL_LABEL, str),
    shown("category", KERNEL_CATEGORY, str),
    shown("count", KERNEL_COUNT, count),
    shown("total ms", KERNEL_TOTAL, ms),
    shown("mean µs", KERNEL_MEAN, us),
    shown("share", KERNEL_SHARE, format_pct),
)
# One stage's kernel time per category (the stage is the section's row label).
CATEGORY_TABLE: Final = (
    shown("category", CATEGORY_NAME, str),
    shown("total ms", CATEGORY_TIME, ms),
    shown("share", CATEGORY_SHARE, format_pct),
    shown("kernels", CATEGORY_COUNT, count),
    shown("TFLOP/s while running", CATEGORY_RATE, tflops),
    shown("% of peak while running", CATEGORY_PEAK, format_pct),
)
# one decode step's categories: no FLOPs are counted per category of a step
STEP_CATEGORY_TABLE: Final = CATEGORY_TABLE[:4]
CONTEXT_TABLE: Final = (
    shown("inst", INSTANCE_NO, str),
    shown("image", IMAGE_INDEX, _blank),
    shown("Lp", PREFILL_LEN, _dash),
    shown("steps", DECODE_STEPS, str),
    shown("C first", CTX_FIRST, lambda x: num(x, "d")),
    shown("C last", CTX_LAST, lambda x: num(x, "d")),
    shown("C mean", CTX_MEAN, lambda x: num(x, ".1f")),
    shown("C from", CTX_SOURCE, str),
)
ROOFLINE_TABLE: Final = (
    _STAGE,
    _GFLOP,
    Column("GB moved", lambda p: f"{p.bytes_moved / 1e9:,.3f}"),
    shown("FLOP/byte", INTENSITY, lambda x: f"{x:,.1f}"),
    shown("achieved TFLOP/s", ACHIEVED, tflops),
    Column("roof TFLOP/s", lambda p: tflops(p.attainable_flops)),
    shown("bound", BOUND, lambda b: b or "–"),
)


class HostRow(NamedTuple):
    """A row of the host table: a stage's summed view, or its median decode step."""

    name: str
    view: HostGpuView
    bound: str


def host_rows(stages: Iterable[StageResult]) -> list[HostRow]:
    rows = []
    for s in stages:
        if s.host is not None:
            rows.append(HostRow(s.stage, s.host, s.verdict))
        if s.per_step is not None:
            rows.append(HostRow(f"{s.stage}/step", s.per_step, "(median)"))
    return rows


def _share(label: str, part: str, whole: str) -> Column:
    """A part of the host span or of the GPU window, as a share of it."""
    return Column(
        label, lambda r: format_pct(getattr(r.view, part) / (getattr(r.view, whole) or 1.0))
    )


def _view(label: str, attr: str, fmt: Callable[[Any], str]) -> Column:
    return Column(label, lambda r: fmt(getattr(r.view, attr)))


HOST_TABLE: Final = (
    Column("stage", lambda r: r.name),
    _view("span ms", "span_ns", ms),
    _share("launch", "launch_ns", "span_ns"),
    _share("sync", "sync_ns", "span_ns"),
    _share("API", "other_api_ns", "span_ns"),
    _share("no API", "outside_api_ns", "span_ns"),
    _view("launches", "n_launches", lambda x: f"{x:,.0f}"),
    _view("syncs", "n_syncs", lambda x: f"{x:,.0f}"),
    _view("copies", "n_memcpy", lambda x: f"{x:,.0f}"),
    _share("busy", "busy_ns", "gpu_window_ns"),
    _share("starved", "starved_ns", "gpu_window_ns"),
    _share("queued", "queued_ns", "gpu_window_ns"),
    _share("edge", "edge_ns", "gpu_window_ns"),
    _view("lat µs", "launch_latency_median_ns", us),
    _view("µs/op", "host_per_gpu_op_ns", us),
    Column("bound", lambda r: r.bound),
)


def _tokens(reqs: int | None, tokens: int | None) -> str:
    """`requests (tokens)` as the step names write them; `?` where unknown."""
    return f"{_q(reqs)} ({_q(tokens)})"


def _q(x: int | None) -> str:
    return "?" if x is None else f"{x:,}"


def _exact(x: bool | None) -> str:
    return {True: "exact", False: "bounded", None: "–"}[x]


_MBU_TRACE: Final = shown("MBU trace", MBU_TRACE, format_pct)
ENGINE_PHASE_TABLE: Final = (
    shown("phase", PHASE, str),
    Column("steps", lambda p: count(p.n_steps)),
    Column("tokens", lambda p: _q(p.tokens)),
    Column("tok/s", lambda p: num(p.tokens_per_s, ",.0f")),
    _GFLOP,
    _BUSY,
    _WALL,
    _MFU_TRACE,
    _MFU_WALL,
    _MBU_TRACE,
    shown("p50 µs", STEP_BUSY_P50, us),
    shown("p90 µs", STEP_BUSY_P90, us),
    shown("p99 µs", STEP_BUSY_P99, us),
    Column("ops/step", lambda p: num(p.gpu_ops_per_step, ",.1f")),
    Column("attn", lambda p: _exact(p.attention_exact)),
)
ENGINE_STEP_TABLE: Final = (
    Column("step", lambda s: str(s.index)),
    shown("phase", PHASE, str),
    Column("ctx reqs (tok)", lambda s: _tokens(s.ctx_reqs, s.ctx_tokens)),
    Column("gen reqs (tok)", lambda s: _tokens(s.gen_reqs, s.gen_tokens)),
    shown("GPU ops", N_GPU_OPS, count),
    Column("busy µs", lambda s: us(s.gpu_busy_ns)),
    Column("wall µs", lambda s: us(s.wall_ns)),
    _GFLOP,
    _MFU_TRACE,
    _MFU_WALL,
    _MBU_TRACE,
    Column("attn", lambda s: _exact(s.attention_exact)),
)


def phase_host_rows(phases: Iterable[EnginePhase]) -> list[HostRow]:
    """The host table's rows of the engine phases (summed over each phase's steps)."""
    return [HostRow(f"{p.phase} steps", p.host, p.verdict or "") for p in phases
            if p.host is not None]  # fmt: skip
