"""`mfu-analyze`: per-stage MFU of DeepSeek-OCR inference from an nsys trace export."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
from rich.progress import Progress as Bars

from llm_perf_opt import api, vocab
from llm_perf_opt.analysis import Analysis, AnalyzeOptions, Progress
from llm_perf_opt.attribution import (
    DEFAULT_MEMORY_BUDGET_BYTES,
    MEMORY_BUDGET_FLOOR_BYTES,
    StreamBudget,
)
from llm_perf_opt.batch import runs
from llm_perf_opt.cli._common import (
    ANALYZE_FORMATS,
    MAX_TOKENS,
    ByteSize,
    CliError,
    FiniteFloat,
    echo_err,
    emit,
    guarded,
    input_option,
    one_line,
    output_file,
    output_option,
    output_options,
    prefill_logits_option,
    writing,
)
from llm_perf_opt.cli.terminal import render_table, rich_table
from llm_perf_opt.flops.estimate import parse_crops
from llm_perf_opt.flops.hf_model import parse_image_size
from llm_perf_opt.inputs.stage_ranges import parse_stage_option
from llm_perf_opt.inputs.user_files import RunFiles
from llm_perf_opt.peaks.sources import parse_peak_source
from llm_perf_opt.report import RENDERERS, write_ranges_csv
from llm_perf_opt.trace import Trace

# Show a status line on stderr for traces at least this large even when stderr is not a TTY.
LARGE_TRACE_BYTES: Final = 200 * 1024 * 1024
# Width of the batch summary when stdout is not a terminal: its twelve columns need more.
SUMMARY_WIDTH: Final = 200
# Bounds of options that size work or output: beyond them a value is a typo, not a request.
MIN_PEAK_TFLOPS: Final = 1e-3
MAX_PEAK_TFLOPS: Final = 1e6
MAX_TOP_KERNELS: Final = 10_000
# Options whose output is the MFU report (without one, --ranges-out alone needs no MFU facts).
REPORT_OUTPUTS: Final = ("fmt", "output", "csv", "markdown", "plots", "perfetto", "html")
# Options that write one trace's output (refused in batch mode, which has --outdir).
SINGLE_TRACE_OUTPUTS: Final = ("csv", "markdown", "plots", "ranges_out", "perfetto", "html")


@contextmanager
def _progress(trace: Path) -> Iterator[Progress | None]:
    """Progress on stderr (never stdout): a live rich status on a terminal; plain timed lines
    for a large trace when stderr is a file or pipe; nothing otherwise."""
    size = trace.stat().st_size if trace.is_file() else 0
    if sys.stderr.isatty():
        console = Console(stderr=True)
        with console.status(f"reading {trace.name} ({size / 1e6:,.0f} MB)") as status:
            yield lambda message: status.update(message)
    elif size >= LARGE_TRACE_BYTES:
        start = time.monotonic()
        yield lambda message: echo_err(f"[{time.monotonic() - start:6.1f} s] {message}")
    else:
        yield None


@contextmanager
def _progress_bar(total: int) -> Iterator[Callable[[str], None]]:
    """A batch's progress bar over traces on stderr when it is a terminal; nothing otherwise."""
    if not sys.stderr.isatty():
        yield lambda _name: None
        return
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())  # fmt: skip
    with Bars(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("traces", total=total)
        yield lambda name: bar.update(task, advance=1, description=name)


def _options(kw: dict[str, Any]) -> AnalyzeOptions:
    """Map click's keyword arguments to `AnalyzeOptions` (parsing --stage and --crops)."""
    return AnalyzeOptions(
        ctx_mode=kw["ctx_mode"],
        ctx_len=kw["ctx_len"],
        peak_tflops=kw["peak_tflops"],
        peak_source=parse_peak_source(kw["peak_source"]),
        dtype=kw["dtype"],
        stages=dict(parse_stage_option(s) for s in kw["stage"]),
        model=kw["model"],
        config_path=kw["config"],
        prefill_len=kw["prefill_len"],
        decode_tokens=kw["decode_tokens"],
        mode=kw["mode"],
        crop_grid=parse_crops(kw["crops"]) if kw["crops"] else None,
        meta_path=kw["meta"],
        static_compute_path=kw["static_compute"],
        include_warmup=kw["include_warmup"],
        top_kernels=kw["top_kernels"],
        other_threads=kw["other_threads"],
        prefill_logits=kw["prefill_logits"],
        image_hw=parse_image_size(kw["image_size"]) if kw["image_size"] else None,
        memory_budget_bytes=kw["memory_budget"],
        every_range=kw["ranges_out"] is not None,
        engine=kw["engine"],
        step_pattern=kw["step_pattern"],
    )


def _budget_floor(value: int) -> int:
    """--memory-budget raised to the floor below which batches are too small to be fast."""
    if value >= MEMORY_BUDGET_FLOOR_BYTES:
        return value
    floor = MEMORY_BUDGET_FLOOR_BYTES >> 20
    echo_err(
        f"note: --memory-budget {value:,} bytes raised to {floor}M (smaller batches only cost "
        "time, not memory worth saving)"
    )
    return MEMORY_BUDGET_FLOOR_BYTES


def _run(trace: Path, kw: dict[str, Any]) -> None:
    """Analyze (the Python API's `analyze`), then write every requested output."""
    wants_mfu = kw["ranges_out"] is None or any(kw[k] is not None for k in REPORT_OUTPUTS)
    timeline = None if kw["perfetto"] is None else _timeline(kw["perfetto"], kw)
    with _progress(trace) as progress:
        analyzed = api.analyze(
            trace, _options(kw), require_mfu=wants_mfu, progress=progress, then=timeline
        )
    if kw["ranges_out"] is not None:
        with output_file(kw["ranges_out"], "wb") as handle:
            write_ranges_csv(analyzed.ranges, handle)
    analysis = analyzed.runs[0].result
    report = analysis.report
    if report is None:
        for warning in analysis.trace_warnings:
            echo_err(f"warning: {warning}")
        echo_err(f"note: MFU not computed ({one_line(analysis.skipped_reason or '')})")
        return
    for warning in report.warnings:  # also in the report; stderr so they are never missed
        echo_err(f"warning: {warning}")
    fmt = kw["fmt"] or "table"
    emit(
        (lambda console: render_table(report, console))
        if fmt == "table"
        else RENDERERS[fmt](report),
        kw["output"],
    )
    for option, fmt in (("csv", "csv"), ("markdown", "md")):
        if kw[option]:
            with output_file(kw[option]) as handle:
                handle.write(RENDERERS[fmt](report))
    if kw["html"]:
        from llm_perf_opt.report.html import report_html  # bokeh costs 0.8 s: only when asked

        with output_file(kw["html"]) as handle:
            handle.write(report_html(report))
    if kw["plots"]:
        from llm_perf_opt.report.plots import write_plots  # matplotlib costs 0.3 s: only when asked

        with writing(kw["plots"]):
            for path in write_plots(report, kw["plots"]):
                echo_err(f"wrote {path}")


def _timeline(path: Path, kw: dict[str, Any]) -> Callable[[Trace, Analysis], None]:
    """What writes the Perfetto trace once the report is made, from the still open trace."""

    def write(trace: Trace, analysis: Analysis) -> None:
        from llm_perf_opt.report.perfetto import write_timeline  # protobuf: only when asked

        assert analysis.report is not None
        rows = StreamBudget.of(kw["memory_budget"]).op_batch_rows
        with output_file(path, "wb") as handle:
            write_timeline(trace, analysis.ranges, analysis.report, handle,
                           gpu_ops=kw["perfetto_gpu_ops"], batch_rows=rows)  # fmt: skip

    return write


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.argument("traces", nargs=-1, required=True, metavar="TRACE...")
@click.option(
    "--ctx-mode",
    type=click.Choice(vocab.CTX_MODES),
    help="Context length C of decode steps: auto = the real C = Lp + k of each step; fixed = "
    "--ctx-len; max = the model window. [default: the run's setting, else auto]",
)
@click.option(
    "--ctx-len", type=click.IntRange(1, MAX_TOKENS), help="C for --ctx-mode fixed (implies it)."
)
@click.option(
    "--peak-tflops",
    type=FiniteFloat(MIN_PEAK_TFLOPS, MAX_PEAK_TFLOPS),
    help="Dense peak TFLOP/s, overriding the GPU table (needed for GPUs it does not know).",
)
@click.option(
    "--peak-source",
    default="table",
    show_default=True,
    metavar="table|measured|VALUE",
    help="Denominator of MFU and MBU: the GPU table (comparable across runs), the run's "
    "calibration (achievable matmul FLOP/s and copy bandwidth, scripts/run_dsocr.py --calibrate), "
    "or dense TFLOP/s. Reports of calibrated runs show both.",
)
@click.option(
    "--dtype",
    type=click.Choice(vocab.PEAK_DTYPES),
    help="Peak column to divide by. [default: the run's dtype from its metadata, else bf16]",
)
@click.option(
    "--stage",
    multiple=True,
    metavar="ROLE=NAME[@DOMAIN]",
    help=f"NVTX range of a role ({', '.join(vocab.ROLES)}); repeatable. "
    "[default: the role's own name, in the runner's domain]",
)
@click.option(
    "--model",
    type=click.Choice(vocab.FAMILIES),
    help="Built-in architecture for FLOPs. [default: the run metadata's model]",
)
@input_option(
    "--config",
    help="Model config JSON for FLOPs: a Hugging Face config.json (llama, qwen, gemma, mixtral, "
    "deepseek_v2/v3, Qwen-VL, ...), a DeepSeek-OCR one or ours (see docs/flops.md).",
)
@prefill_logits_option
@click.option(
    "--prefill-len",
    type=click.IntRange(1, MAX_TOKENS),
    help="Lp, positions in the prefill forward (without run metadata).",
)
@click.option(
    "--decode-tokens",
    type=click.IntRange(0, MAX_TOKENS),
    help="Decode steps per image (without metadata and without nested decode_step ranges).",
)
@click.option(
    "--mode",
    type=click.Choice(vocab.VISION_MODES),
    help="Vision preprocessing mode (without run metadata). "
    f"[default: {vocab.DEFAULT_VISION_MODE}]",
)
@click.option("--crops", metavar="WxH", help="Gundam crop grid, e.g. 3x2 (without metadata).")
@click.option(
    "--image-size",
    metavar="HxW",
    help="Image size in px for a Hugging Face VLM's vision FLOPs. [default: the tower's own "
    "square; 448x448 for Qwen-VL]",
)
@input_option("--meta", help="run.meta.json to use instead of the trace's mark.")
@input_option(
    "--static-compute",
    help="The runner's static_compute.json, shown in the reports. [default: NAME.static_compute."
    "json or static_compute.json beside --meta, else meta/T.static_compute.json beside the trace]",
)
@click.option("--include-warmup", is_flag=True, help="Count ranges under warmup ranges too.")
@click.option(
    "--engine",
    type=click.Choice(vocab.ENGINES),
    default="auto",
    show_default=True,
    help="Serving engine whose step ranges (one per forward step, named with its batch: "
    "vLLM `execute_context_N(T)_generation_M(G)`, SGLang `step[EXTEND bs=… toks=…]`, "
    "TensorRT-LLM `[Executor] _forward_step …`) get per-step and per-phase MFU; auto: any of "
    "them; none: no engine view (docs/serving.md).",
)
@click.option(
    "--step-pattern",
    metavar="REGEX",
    help="Step ranges of another engine: a regex over range names whose named groups are "
    "ctx_reqs, ctx_tokens, gen_reqs, gen_tokens (and c_/g_ sk, sqsq, sqsk sums), e.g. "
    "'fwd p=(?P<ctx_tokens>\\d+)/(?P<ctx_reqs>\\d+) d=(?P<gen_reqs>\\d+)'. Replaces --engine.",
)
@output_options(ANALYZE_FORMATS, "Write the --format output to this file.", unset=True)
@output_option("--csv", help="Also write the CSV report here.")
@output_option("--markdown", help="Also write the Markdown report here.")
@output_option(
    "--plots",
    folder=True,
    help="Also write PNG plots into this directory (made when its parent exists).",
)
@output_option(
    "--html",
    help="Also write the report as one self-contained HTML page (tables, verdicts, interactive "
    "plots; opens offline, no network request).",
)
@output_option(
    "--perfetto",
    help="Also write a Perfetto trace (open it in ui.perfetto.dev): the report's ranges with "
    "FLOPs, MFU and verdict per slice, the GPU ops per stream, and per-decode-step counters.",
)
@click.option(
    "--perfetto-gpu-ops",
    type=click.Choice(vocab.PERFETTO_GPU_OPS),
    default="all",
    show_default=True,
    help="GPU ops in --perfetto: every op; only those overlapping the GPU span of a stage "
    "instance or decode step (smaller files for long traces); or none.",
)
@output_option(
    "--ranges-out",
    help="Write one CSV row per NVTX range instance (attribution columns). Alone, on a trace "
    "without stage facts, only this is done.",
)
@click.option(
    "--top-kernels",
    type=click.IntRange(0, MAX_TOP_KERNELS),
    default=10,
    show_default=True,
    help="Kernel names listed per stage.",
)
@click.option(
    "--other-threads",
    is_flag=True,
    help="Also attribute launches from range-less threads of the process by time (heuristic).",
)
@click.option(
    "--memory-budget",
    type=ByteSize(1),
    default=f"{DEFAULT_MEMORY_BUDGET_BYTES >> 20}M",
    show_default=True,
    metavar="SIZE",
    callback=lambda _ctx, _param, value: _budget_floor(value),
    help="Memory for the trace's rows, e.g. 512M or 4G (per trace of a batch). The GPU ops and "
    "CUDA calls are attributed in one pass over batches of this size, so peak memory stays near "
    "it plus the NVTX ranges, whatever the trace's length (docs/inputs.md). "
    f"Below {MEMORY_BUDGET_FLOOR_BYTES >> 20}M it is raised to that, with a note.",
)
@output_option(
    "--db",
    help="Batch: store every run in this results database (sqlite; docs/many-runs.md).",
)
@click.option(
    "--jobs",
    "-j",
    type=click.IntRange(min=1),
    help="Batch: traces analyzed in parallel local processes. [default: the CPU cores]",
)
@click.option(
    "--dask",
    metavar="ADDRESS",
    help="Batch: run on this dask.distributed scheduler (workers read the traces by path). "
    "[default: $DASK_SCHEDULER_ADDRESS, else local processes]",
)
@output_option(
    "--outdir",
    folder=True,
    help="Batch: write each trace's JSON and Markdown report into this directory (made when "
    "its parent exists).",
)
def main(traces: tuple[str, ...], **kw: Any) -> None:
    """Per-stage MFU (vision, prefill, decode: any of them) of an inference run from an nsys
    TRACE (DeepSeek-OCR, or a Hugging Face model with --config config.json): an SQLite export,
    the folder of a parquetdir or arrowdir export, an arrow export, or a PyTorch profiler
    trace (.json, .json.gz; docs/inputs.md); several TRACEs, folders of traces or globs make a
    batch (docs/many-runs.md).

    MFU = FLOPs / (peak FLOP/s × time), once with the GPU busy time of each stage's NVTX
    ranges (trace) and once with wall time (the runner's synchronized clock, or the range span);
    the gap is explained by GPU idle time, kernel counts and sizes. Traces from
    scripts/run_dsocr.py carry every fact in their metadata mark; other traces need --stage,
    --model or --config and token counts. A stage without ranges (no vision in a text-only
    model) is left out and the model line says so. See docs/mfu-math.md and docs/configuration.md.

    A served model's trace (vLLM, SGLang or TensorRT-LLM step ranges) gets MFU per engine step
    and per phase (prefill, decode, mixed) from each step's batch composition: --config alone
    suffices (docs/serving.md).

    \b
    Example:
      mfu-analyze traces/dsocr_v1_base.sqlite.xz --ctx-mode auto
      mfu-analyze run.sqlite --format json > mfu.json
      mfu-analyze run_parquet/ --format json > mfu.json   # nsys export --type parquetdir
      mfu-analyze run.pt.trace.json.gz --ctx-mode auto      # torch.profiler Chrome trace
      mfu-analyze run.sqlite --markdown report.md --plots figs/
      mfu-analyze run.sqlite --html report.html --perfetto run.pftrace   # ui.perfetto.dev
      mfu-analyze probe.sqlite --stage vision=vision --stage prefill=prefill \\
          --stage decode=decode --model deepseek-ocr --prefill-len 273 --decode-tokens 32
      mfu-analyze llama.sqlite --config config.json --prefill-len 512
      mfu-analyze vllm_serve.sqlite --config config.json   # engine steps, docs/serving.md
      mfu-analyze any.sqlite --ranges-out ranges.csv
      mfu-analyze runs/ 'sweep/*.sqlite.xz' --db results.sqlite -j 2   # batch, docs/many-runs.md
    """
    with guarded() as files:
        if runs.is_batch(traces, db=kw["db"], outdir=kw["outdir"], dask=kw["dask"]):
            sys.exit(_batch(traces, kw, files))
        (trace,) = runs.declare_traces(traces, _options(kw), files, echo_err)
        _run(trace, kw)


def _batch(traces: tuple[str, ...], kw: dict[str, Any], files: RunFiles) -> int:
    """Analyze a batch (`api.analyze_batch`), print its summary; the exit status."""
    options = _options(kw)
    single = [f"--{k.replace('_', '-')}" for k in SINGLE_TRACE_OUTPUTS if kw[k] is not None]
    if single:
        raise CliError(
            f"{single[0]} writes one trace's output; with several traces use --outdir DIR"
        )
    outcome = api.analyze_batch(
        traces,
        options,
        jobs=kw["jobs"],
        dask=kw["dask"],
        db=kw["db"],
        outdir=kw["outdir"],
        echo=echo_err,
        files=files,
        progress=_progress_bar,
    )
    fmt = kw["fmt"] or "table"
    if fmt == "table":
        table = rich_table(
            "MFU per trace and stage", runs.SUMMARY_HEAD, runs.summary_rows(outcome.entries), 3
        )
        emit(lambda console: console.print(table), kw["output"], SUMMARY_WIDTH)
    else:
        emit(runs.render_summary(outcome.entries, fmt), kw["output"])
    return outcome.exit_code


if __name__ == "__main__":
    main()
