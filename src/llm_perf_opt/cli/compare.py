"""`mfu-compare BASE... -- NEW...`: did a change make the stages faster, beyond noise?"""

from __future__ import annotations

import io
import sys
from pathlib import Path
from typing import Any

import click
from rich.console import Console

from llm_perf_opt import compare_report, fanout, runs
from llm_perf_opt.analysis import AnalyzeOptions
from llm_perf_opt.cli._common import (
    FiniteFloat,
    echo_stdout,
    guarded,
    input_option,
    output_file,
    output_option,
    stdout_errors,
    writing,
)
from llm_perf_opt.compare import (
    DEFAULT_MIN_EFFECT_PCT,
    Comparison,
    Regressions,
    compare_runs,
    regressions,
)
from llm_perf_opt.errors import RunSpecError
from llm_perf_opt.resultsdb import ResultsDb, RunRows
from llm_perf_opt.userfiles import RunFiles

# Width of the table when stdout is not a terminal.
WIDE = 160
EXIT_REGRESSION = 1
# A change in percent beyond this is a typo, not a threshold.
MAX_PCT = 1e6


class _SplitAtDashes(click.Command):
    """Keeps what follows `--` as the NEW side (click itself drops the separator); options
    written after it are moved back before it."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if "--" not in args:  # --help, or an error naming the missing NEW side
            ctx.meta["new_side"] = ()
            return super().parse_args(ctx, args)
        cut = args.index("--")
        head, tail = list(args[:cut]), args[cut + 1 :]
        takes_value = {
            opt: not (p.is_flag or p.count)
            for p in self.params
            if isinstance(p, click.Option)
            for opt in p.opts + p.secondary_opts
        }
        new: list[str] = []
        i = 0
        while i < len(tail):
            token = tail[i]
            name = token.split("=", 1)[0]
            if name in takes_value:
                step = 2 if takes_value[name] and "=" not in token else 1
                head += tail[i : i + step]
                i += step
            else:
                new.append(token)
                i += 1
        ctx.meta["new_side"] = tuple(new)
        return super().parse_args(ctx, head)


def _side_traces(
    specs: tuple[str, ...], options: AnalyzeOptions, files: RunFiles, what: str
) -> list[Path]:
    """The traces one side names (declared as inputs of the run); the rest are run ids."""
    if not specs:
        raise RunSpecError(f"no {what} runs given; write mfu-compare BASE... -- NEW...")
    traces = [s for s in specs if runs.has_glob(s) or Path(s).exists() or not s.strip()]
    return runs.declare_traces(traces, options, files, _echo_err) if traces else []


def _echo_err(line: str) -> None:
    click.echo(line, err=True)


def _load_side(
    specs: tuple[str, ...], traces: list[Path], db_path: Path | None, options: AnalyzeOptions,
    jobs: int | None, dask: str | None, what: str,
) -> list[RunRows]:  # fmt: skip
    """Runs of one side: traces (files, directories, globs) analyzed now, or stored run ids."""
    given = {s for s in specs if runs.has_glob(s) or Path(s).exists() or not s.strip()}
    ids = [s for s in specs if s not in given]
    rows: list[RunRows] = []
    if ids:
        if db_path is None:
            raise RunSpecError(
                f"{ids[0]!r} is not a trace file; to compare stored runs by id pass --db FILE"
            )
        db = ResultsDb(db_path, readonly=True)
        try:
            rows += [db.load(db.resolve(token)) for token in ids]
        finally:
            db.close()
    if traces:
        results = fanout.analyze_many(traces, options, jobs=jobs, dask_address=dask)
        for result in results:
            if not result.ok:
                raise RunSpecError(f"{what} trace {result.trace}: {result.error}")
            rows.append(result.rows())
    return rows


@click.command(
    cls=_SplitAtDashes,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.argument("base", nargs=-1, metavar="BASE... -- NEW...")
@input_option("--db", help="Results database holding the runs given by id.")
@click.option(
    "--min-effect",
    type=FiniteFloat(0, MAX_PCT, closed=True),
    default=DEFAULT_MIN_EFFECT_PCT,
    show_default=True,
    help="Smallest change in % that counts as improved/regressed (beyond the noise band).",
)
@click.option(
    "--fail-on-regression",
    type=FiniteFloat(0, MAX_PCT, closed=True),
    metavar="PCT",
    help="Exit 1 when a stage's busy, wall or step time regressed beyond noise by more than "
    "PCT %, or a stage is missing on one side.",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "json", "md"]),
    default="table",
    show_default=True,
    help="Output on stdout (or --output).",
)
@output_option("--output", "-o", help="Write the output to this file.")
@output_option(
    "--plot",
    callback=lambda _ctx, _param, value: _png(value),
    help="Also write a PNG (FILE.png) with both sides per stage.",
)
@output_option(
    "--html",
    help="Also write one self-contained HTML page: the deltas with their noise bands as a table "
    "and an interactive plot (opens offline, no network request).",
)
@click.option("--include-warmup", is_flag=True, help="Traces: count warmup ranges too.")
@click.option(
    "--jobs", "-j", type=click.IntRange(min=1), help="Traces analyzed in parallel processes."
)
@click.option("--dask", metavar="ADDRESS", help="Analyze the traces on this Dask scheduler.")
@click.pass_context
def main(ctx: click.Context, /, base: tuple[str, ...], **kw: Any) -> None:
    """Compare per-stage busy time, wall time, MFU, MBU, kernels and step time of BASE runs
    against NEW runs, each delta with a 95% bootstrap noise band and a verdict (improved,
    regressed, within noise). Runs are traces (files, directories, globs; analyzed with their
    run metadata) or run ids of a results database (--db). See docs/many-runs.md.

    \b
    Example:
      mfu-compare eager.sqlite -- grouped_mm.sqlite
      mfu-compare --db results.sqlite 3f2a 9c1e -- 77b0 --format json
      mfu-compare base/*.sqlite -- new/*.sqlite --fail-on-regression 5 --plot cmp.png
      mfu-compare eager.sqlite -- grouped_mm.sqlite --html compare.html
    """
    with guarded() as files:
        options = AnalyzeOptions(include_warmup=kw["include_warmup"])
        dask = runs.dask_address_from(kw["dask"])
        named = [(specs, what) for specs, what in ((base, "BASE"), (ctx.meta["new_side"], "NEW"))]
        traces = [_side_traces(specs, options, files, what) for specs, what in named]
        n_traces = sum(map(len, traces))
        note = fanout.worker_count(kw["jobs"], n_traces)[1] if n_traces else None
        if note is not None and dask is None:
            click.echo(note, err=True)
        sides = [
            _load_side(specs, found, kw["db"], options, kw["jobs"], dask, what)
            for (specs, what), found in zip(named, traces, strict=True)
        ]
        comparison = compare_runs(sides[0], sides[1], min_effect_pct=kw["min_effect"])
        gate = kw["fail_on_regression"]
        failing = regressions(comparison, gate) if gate is not None else []
        for flag in comparison.flags:
            click.echo(f"warning: {flag}", err=True)
        _emit(comparison, failing, kw["fmt"], kw["output"])
        if kw["plot"] is not None:
            with writing(kw["plot"]):
                click.echo(f"wrote {compare_report.write_png(comparison, kw['plot'])}", err=True)
        if kw["html"] is not None:
            from llm_perf_opt.compare_html import compare_html  # bokeh: only when asked

            with output_file(kw["html"]) as handle:
                handle.write(compare_html(comparison, failing))
    if failing:
        for stage, metric, pct in failing:
            line = compare_report.regression_line(stage, metric, pct)
            click.echo(f"regression: {line}{'' if pct is None else f' (> {gate:g}%)'}", err=True)
        sys.exit(EXIT_REGRESSION)


def _png(value: Path | None) -> Path | None:
    """--plot writes PNG only: another suffix is a usage error, not a traceback later."""
    if value is not None and value.suffix.lower() != ".png":
        raise click.BadParameter(f"{value}: the plot is a PNG; name it FILE.png")
    return value


def _emit(comparison: Comparison, failing: Regressions, fmt: str,
          output: Path | None) -> None:  # fmt: skip
    if fmt == "table":
        if output is None:
            console = Console()
            if console.is_terminal:
                with stdout_errors():
                    compare_report.render_table(comparison, console, failing)
                return
            buffer = io.StringIO()
            compare_report.render_table(comparison, Console(file=buffer, width=WIDE), failing)
            echo_stdout(buffer.getvalue())
        else:
            with output_file(output) as handle:
                compare_report.render_table(comparison, Console(file=handle, width=WIDE), failing)
        return
    text = (
        compare_report.to_json_text(comparison, failing)
        if fmt == "json"
        else compare_report.to_markdown(comparison, failing)
    )
    if output is None:
        echo_stdout(text)
    else:
        with output_file(output) as handle:
            handle.write(text)


if __name__ == "__main__":
    main()
