"""Per-stage MFU and MBU of DeepSeek-OCR inference from attributed GPU time (docs/mfu-math.md).

`compute_mfu` is pure: it takes the attribution frames, the stage facts (run metadata or flags),
a FLOPs model and a peak, and returns an `MfuReport`; it neither reads files nor prints.
`analyze_trace` at the bottom is the one I/O entry the CLI calls: open the trace, read the
metadata, attribute, pick the peak, then `compute_mfu`.

Time conventions: *trace* time of a stage is its GPU busy time (union of the intervals of the GPU
ops it launched); *wall* time is the runner's synchronized wall clock when the metadata has it,
else the range's CPU start → the later of its CPU end and its last GPU op end (so wall ≥ busy
always holds and mfu_wall ≤ mfu_trace).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final, Protocol

import polars as pl

from llm_perf_opt.calibration import calibration_of
from llm_perf_opt.errors import (
    ConfigError,
    LlmPerfOptError,
    MissingInputError,
    SelectionError,
)
from llm_perf_opt.flops import analytic
from llm_perf_opt.flops import traffic as traffic_model
from llm_perf_opt.flops.configs import (
    ModelConfig,
    builtin_config,
    config_from_json_dict,
    load_config_json,
)
from llm_perf_opt.flops.hf_model import HfFlops, read_hf_config
from llm_perf_opt.flops.vision_towers import default_image_size
from llm_perf_opt.hostview import (
    HostGpuView,
    breakdown,
    host_bound,
    host_view,
    stage_windows,
)
from llm_perf_opt.meta import (
    CTX_MODES,
    RunMeta,
    load_meta_file,
    load_static_compute,
    meta_from_marks,
)
from llm_perf_opt.peak_sources import PeakSources, resolve_peaks
from llm_perf_opt.peaks import TORCH_DTYPE_TO_PEAK, Dtype, PeakChoice

STAGES: Final = ("vision", "prefill", "decode")
# Range roles a user may rename with `--stage ROLE=NAME[@DOMAIN]`.
ROLES: Final = (*STAGES, "decode_step", "image")
WARMUP_PREFIX: Final = "warmup"
# Verdict rule (docs/mfu-math.md): the GPU idles more than half of the stage and kernels are
# short → the CPU cannot launch them fast enough.
IDLE_FRACTION_BOUND: Final = 0.5
SHORT_KERNEL_NS: Final = 20_000
DEFAULT_MODE: Final = "base"
DEFAULT_DTYPE: Final[Dtype] = "bf16"
# The peak column's arithmetic → the storage dtype of weights and KV cache for decode bytes.
STORAGE_DTYPE: Final[Mapping[str, str]] = {
    "bf16": "bfloat16",
    "fp16": "float16",
    "fp32": "float32",
    "tf32": "float32",
}


class AnalysisError(LlmPerfOptError):
    """The trace and the facts given for it do not fit together."""


class NoGpuTimeError(AnalysisError):
    """A stage with FLOPs has no GPU time: its ranges launched no GPU work."""


@dataclass(frozen=True)
class RangeRef:
    """An NVTX range by name, in one domain or (domain None) in any."""

    name: str
    domain: str | None = None

    @classmethod
    def parse(cls, text: str) -> RangeRef:
        """`NAME` or `NAME@DOMAIN` (an empty DOMAIN is the default domain)."""
        name, sep, domain = text.partition("@")
        if not name:
            raise SelectionError(f"empty range name in {text!r}; write NAME or NAME@DOMAIN")
        return cls(name, domain if sep else None)

    def expr(self) -> pl.Expr:
        """Boolean expression over a ranges frame."""
        match = pl.col("name") == self.name
        return match if self.domain is None else match & (pl.col("domain") == self.domain)

    def describe(self) -> str:
        if self.domain is None:
            return f"'{self.name}' (any domain)"
        return f"'{self.name}' in domain '{self.domain}'"


def parse_stage_option(text: str) -> tuple[str, RangeRef]:
    """Parse one `--stage ROLE=NAME[@DOMAIN]` value.

    Raises:
        SelectionError: malformed, or ROLE is not one of ROLES.
    """
    role, sep, rest = text.partition("=")
    if not sep or role not in ROLES:
        raise SelectionError(
            f"--stage {text!r}: expected ROLE=NAME[@DOMAIN] with ROLE one of {', '.join(ROLES)}"
        )
    return role, RangeRef.parse(rest)


def default_refs(domain: str | None) -> dict[str, RangeRef]:
    """The runner's range names, in `domain` (None: any domain)."""
    return {role: RangeRef(role, domain) for role in ROLES}


@dataclass(frozen=True)
class StageInputs:
    """Facts FLOPs need that a trace without metadata lacks; flags override metadata."""

    meta: RunMeta | None = None
    prefill_len: int | None = None
    decode_tokens: int | None = None
    mode: str | None = None
    crop_grid: tuple[int, int] | None = None


@dataclass(frozen=True)
class ContextChoice:
    """How decode FLOPs pick the context length C of each step."""

    mode: str = "auto"
    ctx_len: int | None = None


class FlopsModel(Protocol):
    """What `compute_mfu` needs from the FLOPs model (docs/mfu-math.md)."""

    @property
    def window(self) -> int:
        """Context window (max positions): C for `--ctx-mode max`."""
        ...

    def vision_flops(self, mode: str, crop_grid: tuple[int, int] | None) -> float:
        """FLOPs of the vision stage for one image."""
        ...

    def prefill_flops(self, prefill_len: int) -> float:
        """FLOPs of the prefill forward over `prefill_len` positions."""
        ...

    def decode_flops(self, ctx_lens: Sequence[int]) -> float:
        """FLOPs of decode steps attending to `ctx_lens` positions each."""
        ...

    def decode_bytes(self, ctx_lens: Sequence[int]) -> float | None:
        """Bytes the same decode steps read (weights + KV cache); None when unknown."""
        ...


class TrafficModel(Protocol):
    """Bytes each stage moves (flops/traffic.py), the roofline's denominator; None: unknown."""

    def vision_bytes_moved(self, mode: str, crop_grid: tuple[int, int] | None) -> float | None:
        """Bytes the vision stage of one image moves."""
        ...

    def prefill_bytes_moved(self, prefill_len: int) -> float | None:
        """Bytes the prefill forward over `prefill_len` positions moves."""
        ...

    def decode_bytes_moved(self, ctx_lens: Sequence[int]) -> float | None:
        """Bytes decode steps attending to `ctx_lens` positions each move."""
        ...


# --- results --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class InstanceResult:
    """One stage of one image instance."""

    stage: str
    instance: int
    image_index: int | None
    warmup: bool
    range_id: int
    flops: float
    gpu_busy_ns: int
    kernel_sum_ns: int
    n_gpu_ops: int
    n_kernels: int
    cpu_duration_ns: int
    wall_ns: float
    wall_source: str
    mfu_trace: float | None
    mfu_wall: float | None
    idle_fraction: float | None
    decode_steps: int | None = None
    decode_bytes: float | None = None
    mbu_trace: float | None = None
    mbu_wall: float | None = None
    bytes_moved: float | None = None
    n_graph_ops: int = 0
    graph_sum_ns: int = 0
    host: HostGpuView | None = None


@dataclass(frozen=True)
class KernelShare:
    """One kernel name's (or one CUDA graph's executions') share of a stage's kernel time."""

    name: str
    count: int
    total_ns: int
    mean_ns: float
    share: float
    kind: str = "kernel"


@dataclass(frozen=True)
class StageResult:
    """A stage aggregated over its instances (sums, then ratios of sums)."""

    stage: str
    range: RangeRef
    flops: float
    gpu_busy_ns: int
    kernel_sum_ns: int
    n_gpu_ops: int
    n_kernels: int
    cpu_duration_ns: int
    wall_ns: float
    wall_source: str
    mfu_trace: float | None
    mfu_wall: float | None
    idle_fraction: float | None
    mean_kernel_ns: float | None
    verdict: str
    instances: tuple[InstanceResult, ...]
    top_kernels: tuple[KernelShare, ...]
    decode_steps: int | None = None
    kernels_per_step: float | None = None
    step_busy_ns: float | None = None
    step_wall_ns: float | None = None
    decode_bytes: float | None = None
    bytes_per_step: float | None = None
    mbu_trace: float | None = None
    mbu_wall: float | None = None
    bytes_moved: float | None = None
    n_graph_ops: int = 0
    graph_sum_ns: int = 0
    # host/GPU breakdown (hostview): summed over instances, the median decode step, the label
    # it gives, and the MFU if only the launch calls were left of the host's time
    host: HostGpuView | None = None
    per_step: HostGpuView | None = None
    host_bound: str | None = None
    mfu_launch_only: float | None = None


@dataclass(frozen=True)
class ModelResult:
    """All stages together: total FLOPs over total time; `absent_stages` had no range."""

    flops: float
    gpu_busy_ns: int
    wall_ns: float
    mfu_trace: float | None
    mfu_wall: float | None
    absent_stages: tuple[str, ...] = ()


@dataclass(frozen=True)
class DecodeStep:
    """One decode step (a nested `decode_step` range), for the step time series."""

    instance: int
    step: int
    ctx_len: int
    payload_ctx_len: int | None
    cpu_duration_ns: int
    gpu_busy_ns: int
    n_gpu_ops: int
    wall_ns: float
    wall_source: str


@dataclass(frozen=True)
class ContextInstance:
    """The context lengths one instance's decode FLOPs used."""

    instance: int
    image_index: int | None
    prefill_len: int | None
    decode_steps: int
    source: str
    ctx_lens: tuple[int, ...]


@dataclass(frozen=True)
class ContextReport:
    """The context-length section: mode, the single C of fixed/max, per-instance C values."""

    mode: str
    ctx_len: int | None
    window: int
    instances: tuple[ContextInstance, ...]


@dataclass(frozen=True)
class MfuReport:
    """Everything the renderers show; `report.to_json` documents the JSON form."""

    trace_path: str | None
    gpu_name: str | None
    peak: PeakChoice
    ctx: ContextReport
    stages: Mapping[str, StageResult]
    model: ModelResult
    decode_steps: tuple[DecodeStep, ...]
    flops_source: str
    meta_source: str | None
    include_warmup: bool
    warnings: tuple[str, ...] = ()
    static_compute: Mapping[str, Any] | None = None
    peak_sources: PeakSources | None = None


# --- pure core ------------------------------------------------------------------------------------


@dataclass
class _Instance:
    """Stage ranges (rows of the attribution frame) that belong to one image."""

    key: tuple[str, int]
    warmup: bool
    image_index: int | None
    start_ns: int
    members: dict[str, dict[str, Any]] = field(default_factory=dict)


def _is_warmup(path: str | None) -> bool:
    return any(part.startswith(WARMUP_PREFIX) for part in (path or "").split("/"))


def _contains(outer: Mapping[str, Any], inner: Mapping[str, Any]) -> bool:
    """`outer` encloses `inner` on the same thread (push/pop nesting)."""
    return bool(
        outer["range_id"] != inner["range_id"]
        and outer["pid"] == inner["pid"]
        and outer["tid"] == inner["tid"]
        and outer["cpu_start_ns"] <= inner["cpu_start_ns"]
        and outer["cpu_start_ns"] + outer["cpu_duration_ns"]
        >= inner["cpu_start_ns"] + inner["cpu_duration_ns"]
    )


def names_present(ranges: pl.DataFrame, limit: int = 30) -> str:
    """The distinct range names (with domains) for error messages."""
    pairs = ranges.select("name", "domain").unique().sort("name", "domain").rows()
    shown = [f"{n}@{d}" if d else n for n, d in pairs[:limit]]
    more = f" … ({len(pairs) - limit} more)" if len(pairs) > limit else ""
    return ", ".join(shown) + more


def _group_instances(
    ranges: pl.DataFrame,
    refs: Mapping[str, RangeRef],
    include_warmup: bool,
    stages: Sequence[str] = STAGES,
) -> list[_Instance]:
    """Pair the stage ranges into image instances: by enclosing `image` range when there is one,
    else by order of appearance per stage."""
    images = ranges.filter(refs["image"].expr()).to_dicts()
    instances: dict[tuple[str, int], _Instance] = {}
    for stage in stages:
        rows = ranges.filter(refs[stage].expr()).sort("cpu_start_ns").to_dicts()
        if not rows:
            raise SelectionError(
                f"no NVTX range {refs[stage].describe()} for stage {stage}; names present: "
                f"{names_present(ranges)}. Pass --stage {stage}=NAME[@DOMAIN]"
            )
        ordinal = 0
        for row in rows:
            warmup = _is_warmup(row["path"])
            if warmup and not include_warmup:
                continue
            enclosing = [img for img in images if _contains(img, row)]
            if enclosing:
                image = max(enclosing, key=lambda r: r["cpu_start_ns"])
                key = ("image", int(image["range_id"]))
                index = image["payload_int"]
                start = int(image["cpu_start_ns"])
            else:
                key, index, start = ("ordinal", ordinal), None, int(row["cpu_start_ns"])
                ordinal += 1
            inst = instances.setdefault(key, _Instance(key, warmup, index, start))
            if stage in inst.members:
                raise AnalysisError(
                    f"two {stage} ranges inside one image range (ids "
                    f"{inst.members[stage]['range_id']} and {row['range_id']}); each image must "
                    f"hold one {stage} range"
                )
            inst.members[stage] = row
            inst.start_ns = min(inst.start_ns, int(row["cpu_start_ns"]))
    return sorted(instances.values(), key=lambda i: i.start_ns)


def _decode_step_rows(
    ranges: pl.DataFrame, ref: RangeRef, decode_row: Mapping[str, Any]
) -> list[dict[str, Any]]:
    """The step ranges nested in one decode range, in order."""
    start = decode_row["cpu_start_ns"]
    end = start + decode_row["cpu_duration_ns"]
    steps = ranges.filter(
        ref.expr(),
        pl.col("pid") == decode_row["pid"],
        pl.col("tid") == decode_row["tid"],
        pl.col("cpu_start_ns") >= start,
        pl.col("cpu_start_ns") + pl.col("cpu_duration_ns") <= end,
        pl.col("range_id") != decode_row["range_id"],
    )
    return steps.sort("cpu_start_ns").to_dicts()


def _span_ns(row: Mapping[str, Any]) -> int:
    """Range CPU start → the later of its CPU end and its last GPU op end."""
    end = row["cpu_start_ns"] + row["cpu_duration_ns"]
    if row.get("proj_start_ns") is not None and row.get("proj_duration_ns") is not None:
        end = max(end, row["proj_start_ns"] + row["proj_duration_ns"])
    return int(end - row["cpu_start_ns"])


def _ratio(num: float, den: float) -> float | None:
    return num / den if den > 0 else None


def _verdict(idle: float | None, mean_kernel_ns: float | None, mfu: float | None,
             mbu: float | None) -> str:  # fmt: skip
    """Classify a stage (rule in docs/mfu-math.md)."""
    if idle is None or mean_kernel_ns is None:
        return "n/a"
    if idle > IDLE_FRACTION_BOUND:
        return "launch-bound" if mean_kernel_ns < SHORT_KERNEL_NS else "host-bound"
    if mbu is not None and mfu is not None and mbu > mfu:
        return "memory-bound"
    return "compute-bound"


@dataclass
class _Facts:
    """The FLOP and wall-clock facts of one instance, flags applied over the metadata."""

    mode: str
    crop_grid: tuple[int, int] | None
    prefill_len: int | None
    wall_s: Mapping[str, float]
    step_wall_s: tuple[float, ...]
    meta_ctx_lens: tuple[int, ...]
    meta_steps: int | None


def _instance_facts(
    instances: Sequence[_Instance],
    inputs: StageInputs,
    warnings: list[str],
    has_vision: bool = True,
) -> list[_Facts]:
    """Match instances to metadata images (by image index, else order) and apply flag overrides."""
    meta = inputs.meta
    measured = [i for i in instances if not i.warmup]
    by_instance: dict[int, Any] = {}
    if meta is not None:
        if len(measured) != len(meta.images):
            raise AnalysisError(
                f"the trace holds {len(measured)} measured image instance(s) but the run metadata "
                f"({meta.source}) lists {len(meta.images)} image(s); was the capture cut short?"
            )
        by_index = {img.index: img for img in meta.images}
        for pos, inst in enumerate(measured):
            img = by_index.get(inst.image_index) if inst.image_index is not None else None
            by_instance[id(inst)] = img if img is not None else meta.images[pos]
    if inputs.mode is None and meta is None and has_vision:
        warnings.append(f"vision mode not given: assumed '{DEFAULT_MODE}' (pass --mode)")
    facts = []
    for inst in instances:
        img = by_instance.get(id(inst))
        # warmup rounds run the shapes of the first image (run-metadata.md)
        shape = img if img is not None else (meta.images[0] if meta and meta.images else None)
        facts.append(
            _Facts(
                mode=inputs.mode or (shape.mode if shape else DEFAULT_MODE),
                crop_grid=inputs.crop_grid or (shape.crop_grid if shape else None),
                prefill_len=inputs.prefill_len or (shape.prefill_len if shape else None),
                wall_s=img.wall_s if img is not None else {},
                step_wall_s=img.decode_step_wall_s if img is not None else (),
                meta_ctx_lens=img.decode_context_lens if img is not None else (),
                meta_steps=img.decode_steps if img is not None else None,
            )
        )
    return facts


def _decode_ctx(
    pos: int,
    inst: _Instance,
    facts: _Facts,
    steps: Sequence[Mapping[str, Any]],
    inputs: StageInputs,
    ctx: ContextChoice,
    window: int,
    warnings: list[str],
) -> ContextInstance:
    """Number of decode steps and the C of each, per the context mode."""
    if steps:
        n_steps = len(steps)
        if inputs.decode_tokens is not None and inputs.decode_tokens != n_steps:
            warnings.append(
                f"instance {inst.image_index if inst.image_index is not None else '?'}: "
                f"--decode-tokens {inputs.decode_tokens} but the trace has {n_steps} nested "
                f"decode steps; using {n_steps}"
            )
    elif inputs.decode_tokens is not None:
        n_steps = inputs.decode_tokens
    elif facts.meta_steps is not None:
        n_steps = facts.meta_steps
    else:
        raise MissingInputError(
            "decode FLOPs need the number of decode steps: pass --decode-tokens T "
            "(or nest one range per step inside decode, see --stage decode_step=NAME)"
        )
    if n_steps + (facts.prefill_len or 0) > window:  # checked before any per-step list exists
        raise ConfigError(
            f"{n_steps:,} decode steps after a prefill of {facts.prefill_len or 0} positions "
            f"exceed the model window of {window} positions; check --decode-tokens (or the run "
            "metadata's decode_steps)"
        )
    payloads = [s.get("payload_int") for s in steps]
    if ctx.mode == "fixed":
        if ctx.ctx_len is None:
            raise MissingInputError("--ctx-mode fixed needs the context length: pass --ctx-len N")
        lens, source = (ctx.ctx_len,) * n_steps, f"fixed --ctx-len {ctx.ctx_len}"
    elif ctx.mode == "max":
        lens, source = (window,) * n_steps, f"max: model window {window}"
    elif steps and all(p is not None for p in payloads):
        lens, source = tuple(int(p) for p in payloads if p is not None), "decode_step payloads"
    elif len(facts.meta_ctx_lens) == n_steps and n_steps > 0:
        lens, source = facts.meta_ctx_lens, "metadata decode_context_lens"
    else:
        if facts.prefill_len is None:
            raise MissingInputError(
                "decode FLOPs in --ctx-mode auto need the prefill length (C = Lp + k): "
                "pass --prefill-len N, or --ctx-mode fixed --ctx-len N"
            )
        lens = tuple(facts.prefill_len + k for k in range(1, n_steps + 1))
        source = "Lp + k"
    return ContextInstance(
        instance=pos,
        image_index=inst.image_index,
        prefill_len=facts.prefill_len,
        decode_steps=n_steps,
        source=source,
        ctx_lens=tuple(lens),
    )


@dataclass(frozen=True)
class _LaunchKinds:
    """What one range launched, by kind: kernels, and CUDA graphs traced whole (their kernels
    are not in the trace, so they are counted and timed apart from the kernels)."""

    n_kernels: int = 0
    n_graph_ops: int = 0
    graph_sum_ns: int = 0


def _kernel_stats(ops: pl.DataFrame, range_ids: Sequence[int]) -> dict[int, _LaunchKinds]:
    """Kernel and graph-execution counts, and graph time, per (exclusively attributed) range."""
    is_graph = pl.col("kind") == "graph"
    counted = (
        ops.filter(
            pl.col("kind").is_in(["kernel", "graph"]), pl.col("range_id").is_in(list(range_ids))
        )
        .group_by("range_id")
        .agg(
            n_kernels=(~is_graph).sum(),
            n_graph_ops=is_graph.sum(),
            graph_sum_ns=pl.when(is_graph).then(pl.col("end_ns") - pl.col("start_ns")).sum(),
        )
    )
    return {
        int(r["range_id"]): _LaunchKinds(
            int(r["n_kernels"]), int(r["n_graph_ops"]), int(r["graph_sum_ns"])
        )
        for r in counted.iter_rows(named=True)
    }


def _top_kernels(
    ops: pl.DataFrame, range_ids: Sequence[int], names: pl.DataFrame | None, k: int
) -> tuple[KernelShare, ...]:
    """The `k` kernel names with the most GPU time among ops attributed to `range_ids`; the
    executions of one CUDA graph traced whole count as one entry, `CUDA graph <graphId>`."""
    if k <= 0:
        return ()
    kernels = ops.filter(
        pl.col("kind").is_in(["kernel", "graph"]), pl.col("range_id").is_in(list(range_ids))
    ).with_columns(graph_key=pl.when(pl.col("kind") == "graph").then(pl.col("graph_id")))
    if kernels.is_empty():
        return ()
    total = int((kernels["end_ns"] - kernels["start_ns"]).sum())
    grouped = (
        kernels.group_by("kind", "name_id", "graph_key")
        .agg(count=pl.len(), total_ns=(pl.col("end_ns") - pl.col("start_ns")).sum())
        .sort("total_ns", "name_id", "graph_key", descending=[True, False, False])
        .head(k)
    )
    if names is not None:
        grouped = grouped.join(names, on="name_id", how="left", maintain_order="left")
    else:
        grouped = grouped.with_columns(name=pl.lit(None, pl.String))
    return tuple(
        KernelShare(
            name=_entry_name(row),
            count=int(row["count"]),
            total_ns=int(row["total_ns"]),
            mean_ns=row["total_ns"] / row["count"],
            share=row["total_ns"] / total if total else 0.0,
            kind=str(row["kind"]),
        )
        for row in grouped.iter_rows(named=True)
    )


def _entry_name(row: Mapping[str, Any]) -> str:
    """A top-kernel entry's name: the kernel's, or `CUDA graph <id>` for a graph's executions."""
    if row["kind"] == "graph":
        return f"CUDA graph {row['graph_key']}"
    return row["name"] if row["name"] is not None else f"<kernel name id {row['name_id']}>"


def compute_mfu(
    ranges: pl.DataFrame,
    ops: pl.DataFrame,
    *,
    refs: Mapping[str, RangeRef],
    inputs: StageInputs,
    flops_model: FlopsModel,
    peak: PeakChoice,
    ctx: ContextChoice,
    include_warmup: bool = False,
    top_kernels: int = 10,
    kernel_names: pl.DataFrame | None = None,
    flops_source: str = "analytic",
    trace_path: str | None = None,
    static_compute: Mapping[str, Any] | None = None,
    traffic: TrafficModel | None = None,
    stages: Sequence[str] = STAGES,
    host_views: pl.DataFrame | None = None,
) -> MfuReport:
    """Per-stage, per-instance and model-level MFU (and decode MBU) of an attributed trace.

    The attribution must have been made with exactly the three stage ranges selected
    (`stage_selection_refs`), so each op counts for its innermost stage and nested library ranges
    take nothing; a stage's GPU columns are its exclusive columns (equal to the inclusive ones
    unless stages nest).

    Args:
        ranges: `Attribution.ranges`.
        ops: `Attribution.ops`.
        refs: the range for each role of ROLES.
        inputs: run metadata and flag facts (Lp, decode steps, mode, crops).
        flops_model: FLOPs and bytes per stage.
        peak: the peak FLOP/s and bandwidth to divide by.
        ctx: context mode for decode FLOPs.
        include_warmup: keep ranges under a `warmup…` range.
        top_kernels: how many kernel names to list per stage.
        kernel_names: `Trace.kernel_names()` to name them.
        flops_source: shown in reports (which config the FLOPs came from).
        trace_path: shown in reports.
        static_compute: the runner's `static_compute.json`, passed through to the reports.
        traffic: bytes moved per stage for the roofline (None: not computed).
        stages: the stages to analyze (a non-empty subset of STAGES, e.g. no vision for a
            text-only model); the model line sums them and names the others as absent.
        host_views: `read_host_views` of the trace: adds the host/GPU breakdown (hostview).

    Raises:
        SelectionError: a stage range is absent (the message lists the names present).
        MissingInputError: a FLOP fact is missing (the message names the flag).
        NoGpuTimeError: a stage with FLOPs has no GPU time.
        AnalysisError: the trace and the metadata disagree on the number of images.
    """
    if ctx.mode not in CTX_MODES:
        raise ConfigError(f"--ctx-mode must be one of {', '.join(CTX_MODES)}, got {ctx.mode!r}")
    warnings: list[str] = []
    stages = tuple(s for s in STAGES if s in stages)
    if not stages:
        raise SelectionError(f"no stage to analyze; choose some of {', '.join(STAGES)}")
    instances = _group_instances(ranges, refs, include_warmup, stages)
    if not instances:
        raise SelectionError(
            "every stage range lies under a warmup range; pass --include-warmup to analyze them"
        )
    for stage in stages:
        n = sum(stage in i.members for i in instances)
        if n != len(instances):
            warnings.append(f"{stage}: {n} range(s) for {len(instances)} instance(s)")
    facts = _instance_facts(instances, inputs, warnings, "vision" in stages)
    all_ids = [int(r["range_id"]) for i in instances for r in i.members.values()]
    n_kernels = _kernel_stats(ops, all_ids)
    window = flops_model.window

    per_stage: dict[str, list[InstanceResult]] = {s: [] for s in stages}
    contexts: list[ContextInstance] = []
    steps_out: list[DecodeStep] = []
    step_ranges: list[tuple[int, int]] = []
    for pos, (inst, fact) in enumerate(zip(instances, facts, strict=True)):
        for stage, row in inst.members.items():
            if stage != "decode":
                work = _Work(_prefill_or_vision_flops(stage, fact, flops_model))
                work = replace(work, bytes_moved=_stage_bytes(stage, fact, traffic))
            else:
                steps = _decode_step_rows(ranges, refs["decode_step"], row)
                c = _decode_ctx(pos, inst, fact, steps, inputs, ctx, flops_model.window, warnings)
                contexts.append(c)
                lens = c.ctx_lens
                work = _Work(
                    flops_model.decode_flops(lens) if lens else 0.0,
                    flops_model.decode_bytes(lens) if lens else 0.0,
                    len(lens),
                    traffic.decode_bytes_moved(lens) if traffic and lens else None,
                )
                steps_out.extend(_steps(pos, steps, lens, fact.step_wall_s))
                step_ranges += [(int(row["range_id"]), int(st["range_id"])) for st in steps]
            res = _instance_result(stage, pos, inst, fact, row, work, n_kernels, peak)
            if res.gpu_busy_ns == 0 and res.flops > 0:
                warnings.append(f"{stage} instance {pos}: no GPU time in range {res.range_id}")
            per_stage[stage].append(res)

    results = {
        stage: _aggregate(stage, refs[stage], rows, ops, kernel_names, top_kernels, peak)
        for stage, rows in per_stage.items()
    }
    if host_views is not None:
        results = _with_host_views(results, ranges, ops, host_views, step_ranges, peak.peak_flops)
    warnings.extend(_implausible(results))
    warnings.extend(_graph_level_note(ops))
    flops_total = sum(s.flops for s in results.values())
    busy_total = sum(s.gpu_busy_ns for s in results.values())
    wall_total = sum(s.wall_ns for s in results.values())
    model = ModelResult(
        flops=flops_total,
        gpu_busy_ns=busy_total,
        wall_ns=wall_total,
        mfu_trace=_ratio(flops_total, peak.peak_flops * busy_total * 1e-9),
        mfu_wall=_ratio(flops_total, peak.peak_flops * wall_total * 1e-9),
        absent_stages=tuple(s for s in STAGES if s not in stages),
    )
    return MfuReport(
        trace_path=trace_path,
        gpu_name=peak.gpu_name,
        peak=peak,
        ctx=ContextReport(
            mode=ctx.mode,
            ctx_len={"fixed": ctx.ctx_len, "max": window}.get(ctx.mode),
            window=window,
            instances=tuple(contexts),
        ),
        stages=results,
        model=model,
        decode_steps=tuple(steps_out),
        flops_source=flops_source,
        meta_source=inputs.meta.source if inputs.meta else None,
        include_warmup=include_warmup,
        warnings=tuple(warnings),
        static_compute=static_compute,
    )


def _with_host_views(
    stages: Mapping[str, StageResult],
    ranges: pl.DataFrame,
    ops: pl.DataFrame,
    host_views: pl.DataFrame,
    step_ranges: list[tuple[int, int]],
    peak_flops: float,
) -> dict[str, StageResult]:
    """Stages with their host/GPU breakdown (docs/mfu-math.md, "Where the wall time goes")."""
    members = {name: [r.range_id for r in s.instances] for name, s in stages.items()}
    views = breakdown(stage_windows(ranges, members, step_ranges), host_views, ops)
    steps = [step for _, step in step_ranges]
    out = {}
    for name, s in stages.items():
        view = views.group(name)
        if view is None:
            out[name] = s
            continue
        floor_ns = max(view.busy_ns, view.launch_ns)
        out[name] = replace(
            s,
            instances=tuple(replace(r, host=views.window(r.range_id)) for r in s.instances),
            host=view,
            per_step=views.median(steps) if name == "decode" and steps else None,
            host_bound=host_bound(view),
            mfu_launch_only=_ratio(s.flops, peak_flops * floor_ns * 1e-9),
        )
    return out


def _implausible(stages: Mapping[str, StageResult]) -> list[str]:
    """Utilizations above 1 mean the FLOPs/bytes model or the peak does not fit the trace."""
    out = []
    for s in stages.values():
        for what, value in (("MFU", s.mfu_trace), ("MBU", s.mbu_trace)):
            if value is not None and value > 1:
                out.append(
                    f"{s.stage}: trace {what} {value:.2f} > 1: the model counts more work than "
                    "the GPU can do in that time; check --model/--config, --mode, --prefill-len "
                    "and the peak"
                )
    return out


def _graph_level_note(ops: pl.DataFrame) -> list[str]:
    """One line for a trace with CUDA graphs traced whole: what the report cannot see."""
    n_graph = int((ops["kind"] == "graph").sum())
    if n_graph == 0:
        return []
    return [
        f"{n_graph:,} CUDA graph executions were traced whole (nsys --cuda-graph-trace=graph, "
        "its default): their kernels are not in the trace, so each execution counts as one "
        "entry in graph_ops/graph_s and the top kernels; capture with --cuda-graph-trace=node "
        "for the per-kernel view"
    ]


@dataclass(frozen=True)
class _Work:
    """What the model says one stage instance computes (and, for decode, reads)."""

    flops: float
    decode_bytes: float | None = None
    decode_steps: int | None = None
    bytes_moved: float | None = None


def _prefill_or_vision_flops(stage: str, fact: _Facts, flops_model: FlopsModel) -> float:
    if stage == "vision":
        return flops_model.vision_flops(fact.mode, fact.crop_grid)
    if fact.prefill_len is None:
        raise MissingInputError(
            "prefill FLOPs need the prefill length Lp (image positions + text tokens): "
            "pass --prefill-len N"
        )
    return flops_model.prefill_flops(fact.prefill_len)


def _stage_bytes(stage: str, fact: _Facts, traffic: TrafficModel | None) -> float | None:
    """Bytes a vision or prefill instance moves (counted after its FLOPs: Lp is known)."""
    if traffic is None:
        return None
    if stage == "vision":
        return traffic.vision_bytes_moved(fact.mode, fact.crop_grid)
    return traffic.prefill_bytes_moved(fact.prefill_len) if fact.prefill_len else None


def _instance_result(
    stage: str,
    pos: int,
    inst: _Instance,
    fact: _Facts,
    row: Mapping[str, Any],
    work: _Work,
    n_kernels: Mapping[int, _LaunchKinds],
    peak: PeakChoice,
) -> InstanceResult:
    """Times of one stage range (exclusive columns) against its work."""
    wall_runner = fact.wall_s.get(stage)
    wall_ns = wall_runner * 1e9 if wall_runner is not None else float(_span_ns(row))
    busy = int(row["excl_gpu_busy_ns"])
    rid = int(row["range_id"])
    kinds = n_kernels.get(rid, _LaunchKinds())
    bw = peak.peak_bandwidth_Bps if work.decode_bytes is not None else None
    return InstanceResult(
        stage=stage,
        instance=pos,
        image_index=inst.image_index,
        warmup=inst.warmup,
        range_id=rid,
        flops=work.flops,
        gpu_busy_ns=busy,
        kernel_sum_ns=int(row["excl_kernel_sum_ns"]),
        n_gpu_ops=int(row["excl_n_gpu_ops"]),
        n_kernels=kinds.n_kernels,
        n_graph_ops=kinds.n_graph_ops,
        graph_sum_ns=kinds.graph_sum_ns,
        cpu_duration_ns=int(row["cpu_duration_ns"]),
        wall_ns=wall_ns,
        wall_source="runner" if wall_runner is not None else "range",
        mfu_trace=_ratio(work.flops, peak.peak_flops * busy * 1e-9),
        mfu_wall=_ratio(work.flops, peak.peak_flops * wall_ns * 1e-9),
        idle_fraction=_idle(busy, wall_ns),
        decode_steps=work.decode_steps,
        decode_bytes=work.decode_bytes,
        mbu_trace=_ratio(work.decode_bytes or 0.0, bw * busy * 1e-9) if bw else None,
        mbu_wall=_ratio(work.decode_bytes or 0.0, bw * wall_ns * 1e-9) if bw else None,
        bytes_moved=work.bytes_moved,
    )


def _idle(busy_ns: float, wall_ns: float) -> float | None:
    """GPU idle fraction inside the wall time, clamped to [0, 1]."""
    if wall_ns <= 0:
        return None
    return min(1.0, max(0.0, 1.0 - busy_ns / wall_ns))


def _steps(
    instance: int,
    rows: Sequence[Mapping[str, Any]],
    lens: Sequence[int],
    step_wall_s: Sequence[float],
) -> list[DecodeStep]:
    """Decode-step series rows; the runner's per-step wall wins over the range span."""
    use_runner = len(step_wall_s) == len(rows)
    return [
        DecodeStep(
            instance=instance,
            step=k + 1,
            ctx_len=lens[k] if k < len(lens) else 0,
            payload_ctx_len=row.get("payload_int"),
            cpu_duration_ns=int(row["cpu_duration_ns"]),
            gpu_busy_ns=int(row["gpu_busy_ns"]),
            n_gpu_ops=int(row["n_gpu_ops"]),
            wall_ns=step_wall_s[k] * 1e9 if use_runner else float(_span_ns(row)),
            wall_source="runner" if use_runner else "range",
        )
        for k, row in enumerate(rows)
    ]


def _aggregate(
    stage: str,
    ref: RangeRef,
    rows: Sequence[InstanceResult],
    ops: pl.DataFrame,
    kernel_names: pl.DataFrame | None,
    top_k: int,
    peak: PeakChoice,
) -> StageResult:
    """Sum a stage over instances; ratios are of sums (time-weighted means)."""
    flops = sum(r.flops for r in rows)
    busy = sum(r.gpu_busy_ns for r in rows)
    wall = sum(r.wall_ns for r in rows)
    if busy == 0 and flops > 0:
        raise NoGpuTimeError(
            f"stage {stage} (range {ref.describe()}, {len(rows)} instance(s)) has no GPU time: "
            "no GPU op was launched inside its ranges. Check --stage "
            f"{stage}=NAME[@DOMAIN], or pass --other-threads if another thread launches the kernels"
        )
    kernel_sum = sum(r.kernel_sum_ns for r in rows)
    n_kernels = sum(r.n_kernels for r in rows)
    sources = {r.wall_source for r in rows}
    mean_kernel = _ratio(kernel_sum, n_kernels)
    # the verdict asks how long each launch keeps the GPU busy: a graph traced whole is one launch
    n_graph = sum(r.n_graph_ops for r in rows)
    graph_sum = sum(r.graph_sum_ns for r in rows)
    mean_launch = _ratio(kernel_sum + graph_sum, n_kernels + n_graph)
    idle = _idle(busy, wall)
    mfu_trace = _ratio(flops, peak.peak_flops * busy * 1e-9)
    moved = [r.bytes_moved for r in rows if r.bytes_moved is not None]
    result = StageResult(
        stage=stage,
        range=ref,
        flops=flops,
        gpu_busy_ns=busy,
        kernel_sum_ns=kernel_sum,
        n_gpu_ops=sum(r.n_gpu_ops for r in rows),
        n_kernels=n_kernels,
        n_graph_ops=n_graph,
        graph_sum_ns=graph_sum,
        cpu_duration_ns=sum(r.cpu_duration_ns for r in rows),
        wall_ns=wall,
        wall_source=sources.pop() if len(sources) == 1 else "mixed",
        mfu_trace=mfu_trace,
        mfu_wall=_ratio(flops, peak.peak_flops * wall * 1e-9),
        idle_fraction=idle,
        mean_kernel_ns=mean_kernel,
        verdict=_verdict(idle, mean_launch, mfu_trace, None),
        instances=tuple(rows),
        top_kernels=_top_kernels(ops, [r.range_id for r in rows], kernel_names, top_k),
        bytes_moved=sum(moved) if len(moved) == len(rows) else None,
    )
    if stage != "decode":
        return result
    n_steps = sum(r.decode_steps or 0 for r in rows)
    known = [r.decode_bytes for r in rows if r.decode_bytes is not None]
    n_bytes = sum(known) if len(known) == len(rows) else None
    bw = peak.peak_bandwidth_Bps if n_bytes is not None else None
    mbu_trace = _ratio(n_bytes, bw * busy * 1e-9) if bw and n_bytes is not None else None
    return replace(
        result,
        decode_steps=n_steps,
        kernels_per_step=_ratio(n_kernels, n_steps),
        step_busy_ns=_ratio(busy, n_steps),
        step_wall_ns=_ratio(wall, n_steps),
        decode_bytes=n_bytes,
        bytes_per_step=_ratio(n_bytes, n_steps) if n_bytes is not None else None,
        mbu_trace=mbu_trace,
        mbu_wall=_ratio(n_bytes, bw * wall * 1e-9) if bw and n_bytes is not None else None,
        verdict=_verdict(idle, mean_launch, mfu_trace, mbu_trace),
    )


def stage_selection_refs(
    refs: Mapping[str, RangeRef], stages: Sequence[str] = STAGES
) -> tuple[tuple[str, ...], tuple[str, ...] | None]:
    """Names and domains of the stage ranges, for `RangeSelection`."""
    names = tuple(dict.fromkeys(refs[s].name for s in stages))
    domains = [refs[s].domain for s in stages]
    if any(d is None for d in domains):
        return names, None
    return names, tuple(dict.fromkeys(d for d in domains if d is not None))


# --- I/O entry ------------------------------------------------------------------------------------

Progress = Callable[[str], None]


@dataclass(frozen=True)
class AnalyzeOptions:
    """Everything `mfu-analyze` can be told (docs/configuration.md)."""

    ctx_mode: str | None = None
    ctx_len: int | None = None
    peak_tflops: float | None = None
    dtype: str | None = None
    stages: Mapping[str, RangeRef] = field(default_factory=dict)
    model: str | None = None
    config_path: str | None = None
    prefill_len: int | None = None
    decode_tokens: int | None = None
    mode: str | None = None
    crop_grid: tuple[int, int] | None = None
    meta_path: str | None = None
    static_compute_path: str | None = None
    peak_source: str | float = "table"
    include_warmup: bool = False
    top_kernels: int = 10
    other_threads: bool = False
    prefill_logits: analytic.LmHeadPositions = "last"
    image_hw: tuple[int, int] | None = None


@dataclass(frozen=True)
class Analysis:
    """What `analyze_trace` found: always the attribution, the report when MFU facts sufficed."""

    ranges: pl.DataFrame
    report: MfuReport | None
    skipped_reason: str | None = None
    # What the reader left out of the trace (impossible rows), also in the report's warnings.
    trace_warnings: tuple[str, ...] = ()
    # the run metadata the analysis used (backend settings for the results database)
    meta: RunMeta | None = None


def analyze_trace(
    path: str | Path,
    options: AnalyzeOptions,
    *,
    require_mfu: bool = True,
    progress: Progress | None = None,
) -> Analysis:
    """Open a trace, attribute its GPU ops and compute the MFU report.

    Args:
        path: the nsys SQLite export.
        options: the analysis options.
        require_mfu: False (only `--ranges-out` asked): when MFU facts are missing, return the
            attribution with `report=None` and the reason instead of raising.
        progress: called with a short status line before each slow step.

    Raises:
        LlmPerfOptError: any bad input (see the subclasses), with a message naming the fix.
    """
    from llm_perf_opt.attribution import RangeSelection, attribute
    from llm_perf_opt.trace import open_trace

    say = progress or (lambda _msg: None)
    say(f"reading {path}")
    trace = open_trace(path)
    trace.prefetch_gpu_work()  # the big tables load while the NVTX events are read
    meta = load_meta_file(options.meta_path) if options.meta_path else None
    if meta is None:
        meta = meta_from_marks(trace.nvtx_marks())
    refs = default_refs(meta.nvtx_domain if meta else None)
    refs.update(options.stages)
    raw = trace.nvtx_ranges()
    present = tuple(s for s in STAGES if not raw.filter(refs[s].expr()).is_empty())
    # A stage named with --stage must exist; a default-named one may be absent (no vision).
    missing = [s for s in STAGES if s not in present and (s in options.stages or not present)]
    selection = None
    reason = None
    if missing:
        stage = missing[0]
        reason = (
            f"no NVTX range {refs[stage].describe()} for stage {stage}; names present: "
            f"{names_present(raw)}. Pass --stage {stage}=NAME[@DOMAIN]"
        )
        if require_mfu:
            raise SelectionError(reason)
    else:
        names, domains = stage_selection_refs(refs, present)
        selection = RangeSelection(names=names, domains=domains)
    host_read = _read_host_views(trace, raw, refs) if reason is None else None
    say("attributing GPU ops to NVTX ranges")
    attribution = attribute(trace, selection, other_threads=options.other_threads)
    read_warnings = tuple(trace.warnings)
    if reason is not None or host_read is None:
        return Analysis(attribution.ranges, None, reason, read_warnings, meta)
    try:
        say("computing MFU")
        report = _report(
            trace,
            attribution.ranges,
            attribution.ops,
            meta,
            refs,
            options,
            path,
            present,
            host_read.result(),
        )
    except LlmPerfOptError as exc:
        if require_mfu:
            raise
        return Analysis(attribution.ranges, None, str(exc), read_warnings, meta)
    report = replace(report, warnings=(*read_warnings, *report.warnings))
    return Analysis(attribution.ranges, report, None, read_warnings, meta)


def read_host_views(trace: Any, ranges: pl.DataFrame, refs: Mapping[str, RangeRef]) -> pl.DataFrame:
    """The host view (hostview.host_view) of every stage and decode-step range of `ranges`
    (`Trace.nvtx_ranges()`), from the trace's CUDA API calls and synchronization rows."""
    wanted = pl.any_horizontal([refs[role].expr() for role in (*STAGES, "decode_step")])
    windows = ranges.filter(wanted).select(
        pl.col("event_id").alias("window_id"), "global_tid", "start_ns", "end_ns"
    )
    return host_view(windows, trace.api_calls(with_names=True), trace.sync_events())


def _read_host_views(
    trace: Any, ranges: pl.DataFrame, refs: Mapping[str, RangeRef]
) -> Future[pl.DataFrame]:
    """`read_host_views` in a background thread: the SQLite scan releases the GIL, so reading
    the API table and its host view overlap attribution, and the table is freed before it."""
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="host-view")
    future = pool.submit(read_host_views, trace, ranges, refs)
    pool.shutdown(wait=False)
    return future


def _report(
    trace: Any,
    ranges: pl.DataFrame,
    ops: pl.DataFrame,
    meta: RunMeta | None,
    refs: Mapping[str, RangeRef],
    options: AnalyzeOptions,
    path: str | Path,
    stages: Sequence[str],
    host_views: pl.DataFrame,
) -> MfuReport:
    """Resolve config, dtype, GPU and peak, then `compute_mfu`."""
    warnings: list[str] = []
    hf_model = read_hf_config(options.config_path) if options.config_path else None
    if hf_model is None:
        config, flops_source = resolve_config(
            model=options.model, config_path=options.config_path, meta=meta, warnings=warnings
        )
    else:
        flops_source = f"--config {options.config_path} (Hugging Face {hf_model.model_type})"
        tower = hf_model.vision
        # a Qwen-VL tower takes any image size: say which one its vision FLOPs assume
        unsized = options.image_hw is None and "vision" in stages
        if tower is not None and tower.image_size is None and unsized:
            h, w = default_image_size(tower)
            warnings.append(f"vision FLOPs for {h}x{w} px images; pass --image-size HxW")
    dtype = _dtype(options.dtype, meta)
    if options.ctx_len is not None and options.ctx_mode not in (None, "fixed"):
        warnings.append(
            f"--ctx-len is used only with --ctx-mode fixed; ignored in {options.ctx_mode}"
        )
    gpu_name, trace_bw = _gpu(trace.gpu_info(), ops, meta)
    peak, peak_sources, peak_warnings = resolve_peaks(
        gpu_name,
        dtype,
        peak_source=options.peak_source,
        peak_tflops=options.peak_tflops,
        trace_bandwidth_Bps=trace_bw,
        calibration=calibration_of(meta),
    )
    warnings += peak_warnings
    bytes_dtype = _bytes_dtype(dtype, meta, warnings)
    flops_model: AnalyticFlops | HfFlops = (
        AnalyticFlops(config, bytes_dtype, options.prefill_logits)
        if hf_model is None
        else HfFlops(hf_model, bytes_dtype, options.prefill_logits, options.image_hw)
    )
    # --ctx-len alone means fixed; else the run's configured mode, else auto.
    implied = "fixed" if options.ctx_len is not None else None
    ctx = ContextChoice(
        mode=options.ctx_mode or implied or (meta.context_len_mode if meta else "auto"),
        ctx_len=options.ctx_len
        if options.ctx_len is not None
        else (meta.context_len_fixed if meta else None),
    )
    report = compute_mfu(
        ranges,
        ops,
        refs=refs,
        inputs=StageInputs(
            meta=meta,
            prefill_len=options.prefill_len,
            decode_tokens=options.decode_tokens,
            mode=options.mode,
            crop_grid=options.crop_grid,
        ),
        flops_model=flops_model,
        peak=peak,
        ctx=ctx,
        include_warmup=options.include_warmup,
        top_kernels=options.top_kernels,
        kernel_names=trace.kernel_names(),
        flops_source=flops_source,
        trace_path=str(path),
        static_compute=_static_compute(options, path),
        traffic=flops_model if isinstance(flops_model, AnalyticFlops) else None,
        stages=stages,
        host_views=host_views,
    )
    return replace(report, warnings=(*warnings, *report.warnings), peak_sources=peak_sources)


def _static_compute(options: AnalyzeOptions, trace_path: str | Path) -> Mapping[str, Any] | None:
    """`--static-compute FILE`, else the first report found of: beside the `--meta` file,
    `NAME.static_compute.json` next to `NAME.run.meta.json` (the layout of traces/meta/), then
    `static_compute.json` (the runner's `--out` folder); beside the trace `T.sqlite[.xz]`,
    `meta/T.static_compute.json` (the repository's traces/), `T.static_compute.json` or
    `static_compute.json`."""
    if options.static_compute_path is not None:
        return load_static_compute(options.static_compute_path)
    candidates = []
    if options.meta_path is not None:
        meta = Path(options.meta_path)
        stem = meta.name.removesuffix(".json").removesuffix(".run.meta")
        candidates += [meta.with_name(f"{stem}.static_compute.json"),
                       meta.with_name("static_compute.json")]  # fmt: skip
    trace = Path(trace_path)
    name = trace.name.removesuffix(".xz").removesuffix(".gz").removesuffix(".sqlite")
    candidates += [trace.parent / "meta" / f"{name}.static_compute.json",
                   trace.with_name(f"{name}.static_compute.json"),
                   trace.with_name("static_compute.json")]  # fmt: skip
    found = next((c for c in candidates if c.is_file()), None)
    return None if found is None else load_static_compute(found)


def _dtype(flag: str | None, meta: RunMeta | None) -> Dtype:
    """--dtype, else the run's dtype from the metadata, else bf16."""
    if flag is not None:
        return TORCH_DTYPE_TO_PEAK[flag]
    if meta is not None:
        dtype = TORCH_DTYPE_TO_PEAK.get(meta.dtype)
        if dtype is None:
            raise ConfigError(f"run metadata dtype {meta.dtype!r} has no peak column; pass --dtype")
        return dtype
    return DEFAULT_DTYPE


def _gpu(
    info: pl.DataFrame, ops: pl.DataFrame, meta: RunMeta | None
) -> tuple[str | None, float | None]:
    """Name and bandwidth of the GPU that ran the attributed work (most ops), from the trace;
    the metadata's device name when the trace has no GPU table."""
    if not info.is_empty():
        used = ops.filter(pl.col("range_id").is_not_null())["device_id"].mode()
        row = info.filter(pl.col("device_id").is_in(used.to_list()))
        pick = (row if not row.is_empty() else info).row(0, named=True)
        bw = pick.get("memory_bandwidth_Bps")
        return pick["name"], float(bw) if bw else None
    if meta is not None and meta.device_name and meta.device_name != "cpu":
        return meta.device_name, None
    return None, None


def _bytes_dtype(dtype: Dtype, meta: RunMeta | None, warnings: list[str]) -> str | None:
    """Storage dtype of weights and KV cache: the run's, else the one the peak column implies."""
    if meta is not None and meta.dtype in STORAGE_DTYPE.values():
        return meta.dtype
    storage = STORAGE_DTYPE.get(dtype)
    if storage is None:
        warnings.append(f"no storage dtype known for {dtype}: decode MBU not computed")
    return storage


@dataclass(frozen=True)
class AnalyticFlops:
    """`FlopsModel` over `llm_perf_opt.flops.analytic` (causal attention convention)."""

    config: ModelConfig
    bytes_dtype: str | None
    lm_head_positions: analytic.LmHeadPositions = "last"

    @property
    def window(self) -> int:
        return self.config.text.max_position_embeddings

    def vision_flops(self, mode: str, crop_grid: tuple[int, int] | None) -> float:
        layout = analytic.image_layout(self.config, mode, crop_grid)
        return float(analytic.vision_flops(self.config, layout).total_flops)

    def prefill_flops(self, prefill_len: int) -> float:
        text, positions = self.config.text, self.lm_head_positions
        return float(analytic.prefill_flops(text, prefill_len, "causal", positions).total_flops)

    def decode_flops(self, ctx_lens: Sequence[int]) -> float:
        text = self.config.text
        return float(
            sum(
                n * analytic.decode_flops_per_token(text, c).total_flops
                for c, n in Counter(ctx_lens).items()
            )
        )

    def decode_bytes(self, ctx_lens: Sequence[int]) -> float | None:
        if self.bytes_dtype is None:
            return None
        text, dtype = self.config.text, self.bytes_dtype
        return float(
            sum(
                n * sum(analytic.decode_bytes_per_step(text, c, dtype).values())
                for c, n in Counter(ctx_lens).items()
            )
        )

    def vision_bytes_moved(self, mode: str, crop_grid: tuple[int, int] | None) -> float | None:
        if self.bytes_dtype is None:
            return None
        layout = analytic.image_layout(self.config, mode, crop_grid)
        moved = traffic_model.vision_bytes(self.config, layout, self.bytes_dtype)
        return float(sum(moved.values()))

    def prefill_bytes_moved(self, prefill_len: int) -> float | None:
        if self.bytes_dtype is None:
            return None
        moved = traffic_model.decoder_bytes(self.config.text, prefill_len, prefill_len,
                                            self.bytes_dtype)  # fmt: skip
        return float(sum(moved.values()))

    def decode_bytes_moved(self, ctx_lens: Sequence[int]) -> float | None:
        if self.bytes_dtype is None:
            return None
        text, dtype = self.config.text, self.bytes_dtype
        return float(
            sum(
                n * sum(traffic_model.decoder_bytes(text, 1, c, dtype).values())
                for c, n in Counter(ctx_lens).items()
            )
        )


def resolve_config(
    *,
    model: str | None,
    config_path: str | None,
    meta: RunMeta | None,
    warnings: list[str],
) -> tuple[ModelConfig, str]:
    """The architecture FLOPs are counted on, and where it came from.

    Order: `--config FILE`, `--model NAME`, the run metadata's `model.config` (or its family's
    built-in config when that does not parse).

    Raises:
        MissingInputError: none of them is available.
        ConfigError: the given file or name is invalid.
    """
    if config_path is not None:
        return load_config_json(config_path), f"--config {config_path}"
    if model is not None:
        if meta is not None and meta.family != model:
            warnings.append(f"--model {model} overrides the run's model family {meta.family}")
        return builtin_config(model), f"--model {model} (built-in config)"
    if meta is None:
        raise MissingInputError(
            "FLOPs need the model architecture and the trace has no run metadata: pass "
            "--model deepseek-ocr|deepseek-ocr2, --config FILE or --meta run.meta.json"
        )
    if meta.model_config is not None:
        try:
            return config_from_json_dict(dict(meta.model_config), "run metadata model.config"), (
                "run metadata model.config"
            )
        except ConfigError as exc:
            warnings.append(f"run metadata model.config unreadable ({exc}); used the built-in")
    tiny = " tiny" if meta.tiny else ""
    return builtin_config(meta.family, tiny=meta.tiny), f"built-in {meta.family}{tiny} config"
