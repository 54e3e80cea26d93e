"""Engine steps' GPU op counts against NVIDIA's `nvtx_gpu_proj_trace` (`NumGPUOps`) on H100 traces.

- The committed Llama-3.2-1B-shape capture with a vLLM-named step range laid over every
  `decode_step` range (same thread, same times, so the same launches): each step's count equals
  NVIDIA's count for the decode step under it.
- Every `--serve` capture committed as `traces/*serve*.sqlite.xz` with its oracle
  `traces/oracle/<name>_nsys2025_nvtx_gpu_proj_trace.csv.xz` (the layout of the other captures):
  every step range NVIDIA lists is recognised, with NVIDIA's count, and the bounds the names
  alone give contain the runner's exact attention on every step (docs/serving.md's worked example
  gives the numbers). Without such captures those tests are skipped (GPU data).
"""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from llm_perf_opt.analysis import AnalyzeOptions, analyze_trace
from llm_perf_opt.flops.flops_model import AnalyticFlops, resolve_config
from llm_perf_opt.flops.hf import hf_model_from_dict
from llm_perf_opt.flops.hf_model import HfFlops
from llm_perf_opt.flops.steps import step_costs
from llm_perf_opt.inputs.run_meta import RunMeta
from llm_perf_opt.inputs.step_names import formats_for, name_filter, step_names
from llm_perf_opt.metrics.engine_view import engine_report
from llm_perf_opt.metrics.mfu import MfuReport
from llm_perf_opt.vocab import HF_DECODER_FAMILY
from tests.helpers.committed import LLAMA_CONFIG
from tests.helpers.oracles import read_projection
from tests.helpers.paths import TRACES
from tests.helpers.serve_export import llama_with_steps

STEP = "execute_context_0(0)_generation_1(1)"


def oracle_of(trace: Path) -> Path:
    name = trace.name.removesuffix(".xz").removesuffix(".sqlite")
    return TRACES / "oracle" / f"{name}_nsys2025_nvtx_gpu_proj_trace.csv.xz"


CAPTURES = sorted(p for p in TRACES.glob("*serve*.sqlite.xz") if oracle_of(p).is_file())


def nvidia_steps(proj_csv: Path) -> pl.DataFrame:
    """NVIDIA's rows of step-named ranges: `RangeId` (the NVTX_EVENTS rowid, our range id),
    the name without NVIDIA's `domain:` prefix, `NumGPUOps`."""
    projection = read_projection(proj_csv).with_columns(
        name=pl.col("Name").str.replace(r"^[^:]*:", "")
    )
    return projection.filter(name_filter(formats_for("auto"))).select(
        "RangeId", "name", "NumGPUOps", "Projected Start (ns)"
    )


def ours(report: MfuReport) -> pl.DataFrame:
    assert report.engine is not None
    steps = report.engine.steps
    return pl.DataFrame(
        {"RangeId": [s.range_id for s in steps], "n_gpu_ops": [s.n_gpu_ops for s in steps]},
        schema={"RangeId": pl.Int64, "n_gpu_ops": pl.Int64},
    )


def test_steps_over_decode_steps_count_nvidias_ops(tmp_path: Path) -> None:
    path, n_steps = llama_with_steps(tmp_path / "llama_steps.sqlite", STEP)
    report = analyze_trace(path, AnalyzeOptions(config_path=str(LLAMA_CONFIG), prefill_len=512))
    assert report.report is not None and report.report.engine is not None
    steps = report.report.engine.steps
    nvidia = read_projection(oracle_of(TRACES / "llama_1b_shape.sqlite.xz")).filter(
        pl.col("Name").str.ends_with(":decode_step")
    )
    starts = nvidia["Orig Start (ns)"].cast(pl.Int64)
    by_start = dict(zip(starts, nvidia["NumGPUOps"], strict=True))
    assert len(steps) == n_steps == nvidia.height
    assert [s.n_gpu_ops for s in steps] == [by_start[s.start_ns] for s in steps]


@pytest.mark.skipif(not CAPTURES, reason="no --serve capture with its NVIDIA oracle committed")
@pytest.mark.parametrize("trace", CAPTURES or [TRACES / "none"], ids=lambda p: p.name)
def test_serve_captures_every_step_recognised_with_nvidias_count(trace: Path) -> None:
    analysis = analyze_trace(trace, AnalyzeOptions())  # the run metadata mark has every fact
    assert analysis.report is not None and analysis.report.engine is not None
    joined = nvidia_steps(oracle_of(trace)).join(ours(analysis.report), on="RangeId", how="left")
    assert joined.height == len(analysis.report.engine.steps) > 0
    assert joined.filter(pl.col("n_gpu_ops").ne_missing(pl.col("NumGPUOps"))).is_empty()
    assert all(s.attention_exact for s in analysis.report.engine.steps)


def _flops_model(meta: RunMeta) -> AnalyticFlops | HfFlops:
    """The FLOPs model the analysis takes from the run's metadata."""
    if meta.family == HF_DECODER_FAMILY:
        assert meta.model_config is not None
        return HfFlops(hf_model_from_dict(dict(meta.model_config)), meta.dtype)
    config, _ = resolve_config(model=None, config_path=None, meta=meta, warnings=[])
    return AnalyticFlops(config, meta.dtype)


@pytest.mark.skipif(not CAPTURES, reason="no --serve capture with its NVIDIA oracle committed")
@pytest.mark.parametrize("trace", CAPTURES or [TRACES / "none"], ids=lambda p: p.name)
def test_bounds_from_the_names_contain_the_runners_truth(trace: Path) -> None:
    """The same steps from their names alone: linear FLOPs equal, attention within its bounds."""
    analysis = analyze_trace(trace, AnalyzeOptions())
    assert analysis.report is not None and analysis.report.engine is not None
    assert analysis.meta is not None
    names = step_names(analysis.ranges["name"], formats_for("auto"))
    costs = step_costs(_flops_model(analysis.meta))
    bounded = engine_report(analysis.ranges, names, costs=costs, peak=analysis.report.peak)
    exact = analysis.report.engine.steps
    assert [s.name for s in bounded.steps] == [s.name for s in exact]
    for loose, truth in zip(bounded.steps, exact, strict=True):
        assert truth.attention_exact and loose.attention_exact is False
        assert loose.flops_linear == truth.flops_linear
        assert loose.flops_attention is not None and loose.flops_attention_max is not None
        assert loose.flops_attention <= truth.flops_attention <= loose.flops_attention_max


def test_the_profiler_trace_of_the_loop_gives_the_same_steps() -> None:
    """The Llama serving loop run again under torch.profiler (no nsys): the same steps, GPU ops
    and FLOPs per step; busy time per phase within 1 % (a second run on the same GPU)."""
    nsys = analyze_trace(TRACES / "llama_1b_serve.sqlite.xz", AnalyzeOptions()).report
    torch = analyze_trace(TRACES / "llama_1b_serve_torch.pt.trace.json.gz", AnalyzeOptions()).report
    assert nsys is not None and nsys.engine is not None
    assert torch is not None and torch.engine is not None
    pairs = list(zip(nsys.engine.steps, torch.engine.steps, strict=True))
    assert all((a.name, a.n_gpu_ops, a.flops) == (b.name, b.n_gpu_ops, b.flops) for a, b in pairs)
    for a, b in zip(nsys.engine.phases, torch.engine.phases, strict=True):
        assert a.phase == b.phase and a.gpu_busy_ns == pytest.approx(b.gpu_busy_ns, rel=0.01)
