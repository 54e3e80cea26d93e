"""`mfu-compare BASE... -- NEW...`: did a change make the stages faster, beyond noise?"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click
from rich.console import Console, Group
from rich.text import Text

from llm_perf_opt import api
from llm_perf_opt.analysis import AnalyzeOptions
from llm_perf_opt.batch import fanout, runs
from llm_perf_opt.batch.deltas import DEFAULT_MIN_EFFECT_PCT, Comparison, Regressions
from llm_perf_opt.cli._common import (
    COMPARE_FORMATS,
    FiniteFloat,
    echo_err,
    emit,
    guarded,
    input_option,
    output_file,
    output_option,
    output_options,
    writing,
)
from llm_perf_opt.cli.terminal import rich_table
from llm_perf_opt.report import comparison as comparison_report

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
@output_options(COMPARE_FORMATS, output_help="Write the output to this file.")
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

        def declare(traces: Sequence[str]) -> list[Path]:
            return runs.declare_traces(traces, options, files, echo_err)

        sides = [
            api.side_runs(specs, what, declare)
            for specs, what in ((base, "BASE"), (ctx.meta["new_side"], "NEW"))
        ]
        n_traces = sum(len(side.traces) for side in sides)
        note = fanout.worker_count(kw["jobs"], n_traces)[1] if n_traces else None
        if note is not None and dask is None:
            echo_err(note)
        compared = api.compare(
            sides[0], sides[1], db=kw["db"], min_effect_pct=kw["min_effect"],
            jobs=kw["jobs"], dask=dask, options=options,
        )  # fmt: skip
        comparison = compared.comparison
        gate = kw["fail_on_regression"]
        failing = compared.regressions(gate) if gate is not None else []
        for flag in compared.flags:
            echo_err(f"warning: {flag}")
        fmt = kw["fmt"]
        emit(
            (lambda console: _render_table(comparison, console, failing))
            if fmt == "table"
            else comparison_report.RENDERERS[fmt](comparison, failing),
            kw["output"],
        )
        if kw["plot"] is not None:
            with writing(kw["plot"]):
                echo_err(f"wrote {comparison_report.write_png(comparison, kw['plot'])}")
        if kw["html"] is not None:
            from llm_perf_opt.report.comparison_html import compare_html  # bokeh: only when asked

            with output_file(kw["html"]) as handle:
                handle.write(compare_html(comparison, failing))
    if failing:
        for stage, metric, pct in failing:
            line = comparison_report.regression_line(stage, metric, pct)
            echo_err(f"regression: {line}{'' if pct is None else f' (> {gate:g}%)'}")
        sys.exit(EXIT_REGRESSION)


def _render_table(c: Comparison, console: Console, failing: Regressions) -> None:
    """The comparison for a person at a terminal (`--format table`)."""
    parts: list[Any] = [Text("\n".join(comparison_report.header(c)))]
    parts.append(
        rich_table("Base vs new per stage", comparison_report.HEAD, comparison_report.rows(c), 2)
    )
    notes = [f"flag: {f}" for f in c.flags] + [
        f"regression: {comparison_report.regression_line(s, m, p)}" for s, m, p in failing
    ]
    if notes:
        parts.append(Text("\n".join(notes), style="yellow"))
    console.print(Group(*parts))


def _png(value: Path | None) -> Path | None:
    """--plot writes PNG only: another suffix is a usage error, not a traceback later."""
    if value is not None and value.suffix.lower() != ".png":
        raise click.BadParameter(f"{value}: the plot is a PNG; name it FILE.png")
    return value


if __name__ == "__main__":
    main()
