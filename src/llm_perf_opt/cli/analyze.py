"""`mfu-analyze`: per-stage MFU of DeepSeek-OCR inference from an nsys SQLite trace."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final

import click
from rich.console import Console

from llm_perf_opt import runs
from llm_perf_opt.errors import LlmPerfOptError
from llm_perf_opt.flops.estimate import parse_crops
from llm_perf_opt.mfu import AnalyzeOptions, MfuReport, Progress, analyze_trace, parse_stage_option
from llm_perf_opt.peaks import DTYPES
from llm_perf_opt.report import RENDERERS, render_table, write_ranges_csv

# Show a status line on stderr for traces at least this large even when stderr is not a TTY.
LARGE_TRACE_BYTES: Final = 200 * 1024 * 1024
# Width of the table when stdout is not a terminal (files, pipes): wide enough not to wrap.
WIDE: Final = 160


class AnalyzeError(click.ClickException):
    """Bad input: one `Error: …` line on stderr, exit code 2 (as click's usage errors)."""

    exit_code = 2


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
        yield lambda message: click.echo(f"[{time.monotonic() - start:6.1f} s] {message}", err=True)
    else:
        yield None


def _options(kw: dict[str, Any]) -> AnalyzeOptions:
    """Map click's keyword arguments to `AnalyzeOptions` (parsing --stage and --crops)."""
    return AnalyzeOptions(
        ctx_mode=kw["ctx_mode"],
        ctx_len=kw["ctx_len"],
        peak_tflops=kw["peak_tflops"],
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
    )


def _run(trace: Path, kw: dict[str, Any]) -> None:
    """Analyze, then write every requested output."""
    wants_mfu = kw["ranges_out"] is None or any(
        kw[k] is not None for k in ("format", "output", "csv", "markdown", "plots")
    )
    with _progress(trace) as progress:
        analysis = analyze_trace(trace, _options(kw), require_mfu=wants_mfu, progress=progress)
    if kw["ranges_out"] is not None:
        write_ranges_csv(analysis.ranges, kw["ranges_out"])
    report = analysis.report
    if report is None:
        click.echo(f"note: MFU not computed ({analysis.skipped_reason})", err=True)
        return
    _emit(report, kw["format"] or "table", kw["output"])
    if kw["csv"]:
        kw["csv"].write_text(RENDERERS["csv"](report), encoding="utf-8")
    if kw["markdown"]:
        kw["markdown"].write_text(RENDERERS["md"](report), encoding="utf-8")
    if kw["plots"]:
        from llm_perf_opt.plots import write_plots  # matplotlib costs 0.3 s: only when asked

        for path in write_plots(report, kw["plots"]):
            click.echo(f"wrote {path}", err=True)


def _emit(report: MfuReport, fmt: str, output: Path | None) -> None:
    """The main output: rich table or a text format, on stdout or into `output`."""
    if fmt != "table":
        text = RENDERERS[fmt](report)
        if output is None:
            click.echo(text, nl=False)
        else:
            output.write_text(text, encoding="utf-8")
        return
    if output is None:
        console = Console()
        render_table(report, console if console.is_terminal else Console(width=WIDE))
        return
    with output.open("w", encoding="utf-8") as handle:
        render_table(report, Console(file=handle, width=WIDE))


_FILE = click.Path(dir_okay=False, path_type=Path)


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.argument("traces", nargs=-1, required=True, metavar="TRACE...")
@click.option(
    "--ctx-mode",
    type=click.Choice(["auto", "max", "fixed"]),
    help="Context length C of decode steps: auto = the real C = Lp + k of each step; fixed = "
    "--ctx-len; max = the model window. [default: the run's setting, else auto]",
)
@click.option("--ctx-len", type=click.IntRange(min=1), help="C for --ctx-mode fixed (implies it).")
@click.option(
    "--peak-tflops",
    type=click.FloatRange(min=0, min_open=True),
    help="Dense peak TFLOP/s, overriding the GPU table (needed for GPUs it does not know).",
)
@click.option(
    "--dtype",
    type=click.Choice(DTYPES),
    help="Peak column to divide by. [default: the run's dtype from its metadata, else bf16]",
)
@click.option(
    "--stage",
    multiple=True,
    metavar="ROLE=NAME[@DOMAIN]",
    help="NVTX range of a role (vision, prefill, decode, decode_step, image); repeatable. "
    "[default: the role's own name, in the runner's domain]",
)
@click.option(
    "--model",
    type=click.Choice(["deepseek-ocr", "deepseek-ocr2"]),
    help="Built-in architecture for FLOPs. [default: the run metadata's model]",
)
@click.option("--config", type=_FILE, help="Model config JSON for FLOPs (see docs/flops.md).")
@click.option(
    "--prefill-len",
    type=click.IntRange(min=1),
    help="Lp, positions in the prefill forward (without run metadata).",
)
@click.option(
    "--decode-tokens",
    type=click.IntRange(min=0),
    help="Decode steps per image (without metadata and without nested decode_step ranges).",
)
@click.option(
    "--mode",
    type=click.Choice(["tiny", "small", "base", "large", "gundam"]),
    help="Vision preprocessing mode (without run metadata). [default: base]",
)
@click.option("--crops", metavar="WxH", help="Gundam crop grid, e.g. 3x2 (without metadata).")
@click.option("--meta", type=_FILE, help="run.meta.json to use instead of the trace's mark.")
@click.option(
    "--static-compute",
    type=_FILE,
    help="The runner's static_compute.json, shown in --markdown. [default: the one beside --meta]",
)
@click.option("--include-warmup", is_flag=True, help="Count ranges under warmup ranges too.")
@click.option(
    "--format",
    "format",
    type=click.Choice(["table", "json", "csv", "md"]),
    help="Output on stdout (or --output). [default: table]",
)
@click.option("--output", "-o", type=_FILE, help="Write the --format output to this file.")
@click.option("--csv", type=_FILE, help="Also write the CSV report here.")
@click.option("--markdown", type=_FILE, help="Also write the Markdown report here.")
@click.option(
    "--plots",
    type=click.Path(file_okay=False, path_type=Path),
    help="Also write PNG plots into this directory.",
)
@click.option(
    "--ranges-out",
    type=_FILE,
    help="Write one CSV row per NVTX range instance (attribution columns). Alone, on a trace "
    "without stage facts, only this is done.",
)
@click.option(
    "--top-kernels",
    type=click.IntRange(min=0),
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
    "--db",
    type=_FILE,
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
@click.option(
    "--outdir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Batch: write each trace's JSON and Markdown report into this directory.",
)
def main(traces: tuple[str, ...], **kw: Any) -> None:
    """Per-stage MFU (vision, prefill, decode) of a DeepSeek-OCR run from an nsys SQLite TRACE.

    MFU = FLOPs / (peak FLOP/s × time), once with the GPU busy time of each stage's NVTX
    ranges (trace) and once with wall time (the runner's synchronized clock, or the range span);
    the gap is explained by GPU idle time, kernel counts and sizes. Traces from
    scripts/run_dsocr.py carry every fact in their metadata mark; other traces need --stage,
    --model and token counts. See docs/mfu-math.md and docs/configuration.md.

    \b
    Example:
      mfu-analyze traces/dsocr_v1_base.sqlite.xz --ctx-mode auto
      mfu-analyze run.sqlite --format json > mfu.json
      mfu-analyze run.sqlite --markdown report.md --plots figs/
      mfu-analyze probe.sqlite --stage vision=vision --stage prefill=prefill \\
          --stage decode=decode --model deepseek-ocr --prefill-len 273 --decode-tokens 32
      mfu-analyze any.sqlite --ranges-out ranges.csv
      mfu-analyze runs/ 'sweep/*.sqlite.xz' --db results.sqlite -j 2   # batch, docs/many-runs.md
    """
    try:
        if runs.is_batch(traces, kw):
            request = runs.batch_request(traces, _options(kw), kw)
            sys.exit(runs.run_batch(request, lambda line: click.echo(line, err=True)))
        _run(Path(traces[0]), kw)
    except LlmPerfOptError as exc:
        raise AnalyzeError(str(exc)) from exc


if __name__ == "__main__":
    main()
