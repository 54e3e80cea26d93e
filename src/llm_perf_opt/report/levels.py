"""Every level of an `MfuReport` declared once (keys in docs/json-output.md, tables of the results
database in docs/many-runs.md), and the function that flattens a report into each level's frame.

A field is listed where its level writes it; `outputs` says which of JSON, CSV and the results
database write it, and the groups (`STAGE_SUMS`, `STAGE_DECODE`, …) are the parts the JSON
document places apart, in the order every output keeps.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

import polars as pl

from llm_perf_opt.metrics.mfu import InstanceResult, MfuReport
from llm_perf_opt.metrics.roofline import ridge_point, roofline_points
from llm_perf_opt.report.fields import CSV, DB, EVERYWHERE, JSON, NOWHERE, Field, Level, Output
from llm_perf_opt.report.text import host_verdict

STR: Final = pl.String()
INT: Final = pl.Int64()
F64: Final = pl.Float64()
BOOL: Final = pl.Boolean()
JSON_ONLY: Final[frozenset[Output]] = frozenset({JSON})
JSON_CSV: Final[frozenset[Output]] = frozenset({JSON, CSV})
JSON_DB: Final[frozenset[Output]] = frozenset({JSON, DB})
FLOPS_CONVENTION: Final = (
    "analytic, 1 MAC = 2 FLOPs, matmuls and convs only, causal attention (each query counts "
    "the keys its mask lets it see); see docs/mfu-math.md"
)


def _seconds(name: str, attr: str, outputs: frozenset[Output] = EVERYWHERE) -> Field:
    """A time held in ns, written in seconds."""
    return Field(name, F64, attr=attr, per=1e9, outputs=outputs)


def _count(name: str) -> Field:
    """A count of a host view: a sum, or a median that may fall between two counts."""
    return Field(name, F64, whole=True)


def ridge(report: MfuReport) -> float | None:
    """FLOP per byte at the ridge of the peak in use (the `bound` threshold)."""
    return ridge_point(report.peak.peak_flops, report.peak.peak_bandwidth_Bps)


def _sources(attr: str) -> Callable[[MfuReport], Any]:
    return lambda r: None if r.peak_sources is None else getattr(r.peak_sources, attr)


# --- the whole run ---------------------------------------------------------------------------
RUN_SOURCE: Final = (
    Field("trace", STR, attr="trace_path", outputs=JSON_ONLY),
    Field("gpu_name", STR),
)
RUN_PEAK: Final = (
    Field("dtype", STR, attr="peak.dtype", outputs=JSON_ONLY),
    Field("peak_flops", F64, attr="peak.peak_flops"),
    Field("peak_source", STR, attr="peak.peak_source", outputs=JSON_ONLY),
    Field("peak_table_row", STR, attr="peak.table_row", outputs=JSON_ONLY),
    Field("peak_bandwidth_Bps", F64, attr="peak.peak_bandwidth_Bps", outputs=JSON_DB),
    Field("bandwidth_source", STR, attr="peak.bandwidth_source", outputs=JSON_ONLY),
    Field("peak_selected", STR, get=_sources("selected"), outputs=JSON_ONLY),
    Field("peak_flops_table", F64, get=_sources("table_flops"), outputs=JSON_ONLY),
    Field("peak_flops_measured", F64, get=_sources("measured_flops"), outputs=JSON_ONLY),
    Field("peak_bandwidth_table", F64, get=_sources("table_bandwidth_Bps"), outputs=JSON_ONLY),
    Field(
        "peak_bandwidth_measured", F64, get=_sources("measured_bandwidth_Bps"), outputs=JSON_ONLY
    ),
    Field("ridge_flops_per_byte", F64, get=ridge, outputs=JSON_ONLY),
)
RUN_CONTEXT: Final = (
    Field("ctx_mode", STR, attr="ctx.mode"),
    Field("ctx_len", INT, attr="ctx.ctx_len", outputs=JSON_CSV),
)
RUN_INPUTS: Final = (
    Field("flops_source", STR, outputs=JSON_DB),
    Field("flops_convention", STR, get=lambda _: FLOPS_CONVENTION, outputs=JSON_ONLY),
    Field("meta_source", STR, outputs=JSON_DB),
    Field("include_warmup", BOOL, outputs=JSON_ONLY),
)
RUN_WARNINGS: Final = (
    Field("warnings", pl.List(STR), get=lambda r: list(r.warnings), outputs=JSON_DB),
)
RUN: Final = Level("run", RUN_SOURCE + RUN_PEAK + RUN_CONTEXT + RUN_INPUTS + RUN_WARNINGS)

# --- stages, their instances and the model: the work of the ranges and what it achieved -------
STAGE_NAME: Final = Field("stage", STR)
INSTANCE_NO: Final = Field("instance", INT)
IMAGE_INDEX: Final = Field("image_index", INT)
FLOPS: Final = Field("flops", F64)
GPU_BUSY: Final = _seconds("gpu_busy_s", "gpu_busy_ns")
KERNEL_SUM: Final = _seconds("kernel_sum_s", "kernel_sum_ns")
CPU: Final = _seconds("cpu_s", "cpu_duration_ns")
WALL: Final = _seconds("wall_s", "wall_ns")
WALL_SOURCE: Final = Field("wall_source", STR)
MFU_TRACE: Final = Field("mfu_trace", F64)
MFU_WALL: Final = Field("mfu_wall", F64)
IDLE: Final = Field("idle_fraction", F64)
N_GPU_OPS: Final = Field("n_gpu_ops", INT)
N_KERNELS: Final = Field("n_kernels", INT)
GRAPH_OPS: Final = Field("graph_ops", INT, attr="n_graph_ops", outputs=JSON_CSV)
GRAPH_S: Final = _seconds("graph_s", "graph_sum_ns", JSON_CSV)
DECODE_STEPS: Final = Field("decode_steps", INT)
DECODE_BYTES: Final = Field("decode_bytes", F64)
MBU_TRACE: Final = Field("mbu_trace", F64)
MBU_WALL: Final = Field("mbu_wall", F64)
N_INSTANCES: Final = Field("n_instances", INT, get=lambda s: len(s.instances), outputs=JSON_DB)
MEAN_KERNEL: Final = Field("mean_kernel_us", F64, attr="mean_kernel_ns", per=1e3)
VERDICT: Final = Field("verdict", STR)
_TIMES: Final = (FLOPS, GPU_BUSY, KERNEL_SUM, CPU, WALL)
_RATIOS: Final = (MFU_TRACE, MFU_WALL, IDLE, N_GPU_OPS, N_KERNELS, GRAPH_OPS, GRAPH_S)

STAGE_SUMS: Final = (
    STAGE_NAME.only(CSV, DB),  # JSON keys the stages by it
    Field("range", STR, attr="range.name", outputs=JSON_ONLY),
    Field("domain", STR, attr="range.domain", outputs=JSON_ONLY),
    N_INSTANCES,
    *_TIMES,
    WALL_SOURCE,
    *_RATIOS,
    MEAN_KERNEL,
    VERDICT,
)
STAGE_TRAFFIC: Final = (Field("bytes_moved", F64, outputs=JSON_ONLY),)
STAGE_DECODE: Final = (
    DECODE_STEPS,
    Field("kernels_per_step", F64, outputs=JSON_DB),
    _seconds("step_gpu_busy_s", "step_busy_ns", JSON_DB),
    _seconds("step_wall_s", "step_wall_ns", JSON_DB),
    DECODE_BYTES,
    Field("bytes_per_step", F64, outputs=JSON_DB),
    MBU_TRACE,
    MBU_WALL,
)
STAGE_HOST: Final = (
    Field("advice", STR, outputs=JSON_ONLY),
    # deprecated: the verdict under its former name, kept for one release (docs/json-output.md)
    Field("host_bound", STR, attr="verdict", outputs=JSON_ONLY),
    Field("host_verdict", STR, get=host_verdict, outputs=JSON_ONLY),
    Field("mfu_launch_only", F64, outputs=JSON_ONLY),
)
STAGE: Final = Level("stage", STAGE_SUMS + STAGE_TRAFFIC + STAGE_DECODE + STAGE_HOST)

INSTANCE_SUMS: Final = (
    STAGE_NAME.only(CSV, DB),
    INSTANCE_NO,
    IMAGE_INDEX,
    Field("warmup", BOOL),
    Field("range_id", INT, outputs=JSON_ONLY),
    *_TIMES,
    WALL_SOURCE.only(JSON, CSV),  # the instances table has none
    *_RATIOS,
)
INSTANCE_DECODE: Final = (DECODE_STEPS, DECODE_BYTES, MBU_TRACE, MBU_WALL)
INSTANCE: Final = Level("instance", INSTANCE_SUMS + INSTANCE_DECODE)

MODEL_SUMS: Final = (
    Field("stage", STR, get=lambda _: "all", outputs=frozenset({CSV})),
    FLOPS,
    GPU_BUSY,
    WALL,
    MFU_TRACE,
    MFU_WALL,
)
MODEL_ABSENT: Final = (
    Field("absent_stages", pl.List(STR), get=lambda m: list(m.absent_stages), outputs=JSON_ONLY),
)
MODEL: Final = Level("model", MODEL_SUMS + MODEL_ABSENT)

# --- the other levels ----------------------------------------------------------------------------
DECODE_STEP: Final = Level(
    "decode_step",
    (
        INSTANCE_NO,
        Field("step", INT),
        Field("ctx_len", INT),
        Field("payload_ctx_len", INT, outputs=JSON_ONLY),
        GPU_BUSY,
        CPU,
        WALL,
        WALL_SOURCE,
        N_GPU_OPS,
        Field("range_id", INT, outputs=JSON_ONLY),
        FLOPS.only(JSON),
        MFU_TRACE.only(JSON),
        Field(
            "n_syncs",
            F64,
            get=lambda d: None if d.host is None else d.host.n_syncs,
            outputs=JSON_ONLY,
            whole=True,
        ),
    ),
)
KERNEL_NAME: Final = Field("name", STR)
KERNEL_COUNT: Final = Field("count", INT)
KERNEL_TOTAL: Final = _seconds("total_s", "total_ns")
KERNEL_MEAN: Final = Field("mean_us", F64, attr="mean_ns", per=1e3)
KERNEL_SHARE: Final = Field("share", F64)
KERNEL_CATEGORY: Final = Field("category", STR)
KERNEL_LABEL: Final = Field("label", STR, outputs=NOWHERE)  # the tables' short name
KERNEL: Final = Level(
    "kernel",
    (
        STAGE_NAME.only(DB),  # given: a kernel share holds neither its stage nor its rank
        Field("rank", INT, outputs=frozenset({DB})),
        KERNEL_NAME,
        KERNEL_LABEL,
        Field("kind", STR, outputs=JSON_ONLY),
        KERNEL_CATEGORY,
        KERNEL_COUNT,
        KERNEL_TOTAL,
        KERNEL_MEAN,
        KERNEL_SHARE,
    ),
)
# A stage's kernel time per category (`categories.RULES`); JSON keys them by stage and category.
CATEGORY_NAME: Final = Field("category", STR, outputs=frozenset({CSV, DB}))
CATEGORY_TIME: Final = _seconds("time_s", "total_ns")
CATEGORY_SHARE: Final = Field("share", F64)
CATEGORY_COUNT: Final = Field("n_kernels", INT)
# not in the CSV, whose `flops` and `achieved_flops_per_s` columns are the stage's
CATEGORY_FLOPS: Final = Field("flops", F64, outputs=JSON_DB)
CATEGORY_RATE: Final = Field("achieved_flops_per_s", F64, outputs=JSON_DB)
CATEGORY_PEAK: Final = Field("peak_fraction", F64, outputs=JSON_DB)
CATEGORY: Final = Level(
    "category",
    (
        STAGE_NAME.only(CSV, DB),
        CATEGORY_NAME,
        CATEGORY_TIME,
        CATEGORY_SHARE,
        CATEGORY_COUNT,
        CATEGORY_FLOPS,
        CATEGORY_RATE,
        CATEGORY_PEAK,
    ),
)
# Host and GPU view of a window (docs/mfu-math.md): JSON writes the two parts as two objects.
HOST_SPAN: Final = (
    _seconds("span_s", "span_ns"),
    _seconds("launch_s", "launch_ns"),
    _seconds("sync_s", "sync_ns"),
    _seconds("other_api_s", "other_api_ns"),
    _seconds("outside_api_s", "outside_api_ns"),
    _count("n_launches"),
    _count("n_syncs"),
    _count("n_memcpy"),
    _count("n_gpu_ops"),
    _seconds("host_per_gpu_op_s", "host_per_gpu_op_ns"),
)
GPU_WINDOW: Final = (
    _seconds("window_s", "gpu_window_ns"),
    _seconds("busy_s", "busy_ns"),
    _seconds("starved_s", "starved_ns"),
    _seconds("queued_s", "queued_ns"),
    _seconds("edge_s", "edge_ns"),
    _seconds("launch_latency_median_s", "launch_latency_median_ns"),
)
HOST_VIEW: Final = Level("host_view", HOST_SPAN + GPU_WINDOW)
# A stage's view summed over its instances (`scope` stage) or decode's median step (`step`).
HOST: Final = Level(
    "host", (STAGE_NAME.only(), Field("scope", STR, outputs=NOWHERE), *HOST_VIEW.fields)
)

PREFILL_LEN: Final = Field("prefill_len", INT)
CTX_SOURCE: Final = Field("source", STR)
CTX_FIRST: Final = Field("ctx_len_first", INT, get=lambda c: c.ctx_lens[0] if c.ctx_lens else None)
CTX_LAST: Final = Field("ctx_len_last", INT, get=lambda c: c.ctx_lens[-1] if c.ctx_lens else None)
CTX_MEAN: Final = Field(
    "ctx_len_mean", F64, get=lambda c: sum(c.ctx_lens) / len(c.ctx_lens) if c.ctx_lens else None
)
CONTEXT: Final = Level(
    "context",
    (
        INSTANCE_NO,
        IMAGE_INDEX,
        PREFILL_LEN,
        DECODE_STEPS,
        CTX_SOURCE,
        CTX_FIRST,
        CTX_LAST,
        CTX_MEAN,
        Field("ctx_lens", pl.List(INT), get=lambda c: list(c.ctx_lens)),
    ),
)
INTENSITY: Final = Field("arithmetic_intensity", F64)
ACHIEVED: Final = Field("achieved_flops_per_s", F64, attr="achieved_flops")
BOUND: Final = Field("bound", STR)
# Only the stages whose bytes moved are known; JSON writes these keys into each stage's object.
ROOFLINE: Final = Level("roofline", (STAGE_NAME.only(), INTENSITY, ACHIEVED, BOUND))

# --- serving-engine steps and phases (serving.py, docs/serving.md) ------------------------------
PHASE: Final = Field("phase", STR)
_REQUESTS: Final = tuple(
    Field(n, INT) for n in ("ctx_reqs", "ctx_tokens", "gen_reqs", "gen_tokens")
)
_STEP_WORK: Final = (
    FLOPS,
    Field("flops_linear", F64),
    Field("flops_attention", F64),
    Field("flops_attention_max", F64),
    Field("flops_vision", F64),
    Field("attention_exact", BOOL),
    Field("bytes", F64, outputs=JSON_CSV),
)
ENGINE_STEP: Final = Level(
    "engine_step",
    (
        Field("step", INT, attr="index"),
        Field("name", STR),
        PHASE,
        Field("engine", STR, outputs=JSON_CSV),
        Field("format", STR, outputs=JSON_CSV),
        *_REQUESTS,
        Field("encoder_images", INT, outputs=JSON_CSV),
        _seconds("start_s", "start_ns", JSON_CSV),
        N_GPU_OPS,
        Field("n_op_rows", INT),
        GPU_BUSY,
        CPU,
        WALL,
        WALL_SOURCE,
        *_STEP_WORK,
        MFU_TRACE,
        MFU_WALL,
        MBU_TRACE,
        MBU_WALL,
    ),
)
STEP_BUSY_P50: Final = _seconds("step_busy_p50_s", "step_busy_p50_ns")
STEP_BUSY_P90: Final = _seconds("step_busy_p90_s", "step_busy_p90_ns")
STEP_BUSY_P99: Final = _seconds("step_busy_p99_s", "step_busy_p99_ns")
ENGINE_PHASE_SUMS: Final = (
    PHASE.only(CSV, DB),  # JSON keys the phases by it
    Field("n_steps", INT),
    Field("ctx_tokens", INT),
    Field("gen_tokens", INT),
    Field("tokens", INT),
    Field("tokens_per_s", F64),
    FLOPS,
    Field("flops_max", F64),
    Field("attention_exact", BOOL),
    N_GPU_OPS,
    Field("n_op_rows", INT),
    Field("gpu_ops_per_step", F64),
    GPU_BUSY,
    WALL,
    MFU_TRACE,
    MFU_WALL,
    MBU_TRACE,
    MBU_WALL,
    STEP_BUSY_P50,
    STEP_BUSY_P90,
    STEP_BUSY_P99,
    Field("verdict", STR, outputs=JSON_DB),
)
ENGINE_PHASE: Final = Level("engine_phase", ENGINE_PHASE_SUMS)


def instances(report: MfuReport) -> list[InstanceResult]:
    """Every stage's instances, stage by stage."""
    return [r for s in report.stages.values() for r in s.instances]


def run_frame(report: MfuReport) -> pl.DataFrame:
    return RUN.frame([report])


def model_frame(report: MfuReport) -> pl.DataFrame:
    return MODEL.frame([report.model])


def stage_frame(report: MfuReport) -> pl.DataFrame:
    return STAGE.frame(report.stages.values())


def instance_frame(report: MfuReport) -> pl.DataFrame:
    return INSTANCE.frame(instances(report))


def decode_step_frame(report: MfuReport) -> pl.DataFrame:
    return DECODE_STEP.frame(report.decode_steps)


def kernel_frame(report: MfuReport) -> pl.DataFrame:
    """Each stage's top kernels, ranked from 1."""
    return pl.concat(
        [
            KERNEL.frame((), stage=(), rank=()),
            *(
                KERNEL.frame(s.top_kernels, stage=name, rank=range(1, len(s.top_kernels) + 1))
                for name, s in report.stages.items()
            ),
        ]
    )


def category_frame(report: MfuReport) -> pl.DataFrame:
    """Each stage's kernel time per category."""
    return pl.concat(
        [
            CATEGORY.frame((), stage=()),
            *(CATEGORY.frame(s.categories, stage=name) for name, s in report.stages.items()),
        ]
    )


def host_frame(report: MfuReport) -> pl.DataFrame:
    """Each stage's host/GPU breakdown summed over its instances, then decode's median step."""
    rows = [(s.stage, "stage", s.host) for s in report.stages.values() if s.host is not None]
    rows += [(s.stage, "step", s.per_step) for s in report.stages.values() if s.per_step]
    return HOST.frame([v for *_, v in rows], stage=[r[0] for r in rows], scope=[r[1] for r in rows])


def context_frame(report: MfuReport) -> pl.DataFrame:
    return CONTEXT.frame(report.ctx.instances)


def roofline_frame(report: MfuReport) -> pl.DataFrame:
    return ROOFLINE.frame(roofline_points(report).values())


def engine_step_frame(report: MfuReport) -> pl.DataFrame:
    return ENGINE_STEP.frame(() if report.engine is None else report.engine.steps)


def engine_phase_frame(report: MfuReport) -> pl.DataFrame:
    return ENGINE_PHASE.frame(() if report.engine is None else report.engine.phases)
