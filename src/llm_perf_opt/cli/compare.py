"""`mfu-compare BASE... -- NEW...`: did a change make the stages faster, beyond noise?"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click
from rich.console import Console

import llm_perf_opt
from llm_perf_opt import compare_report, runs
from llm_perf_opt.cli._common import guarded, output_file
from llm_perf_opt.compare import DEFAULT_MIN_EFFECT_PCT, Comparison, Regressions, regressions

# Width of the table when stdout is not a terminal.
WIDE = 160
EXIT_REGRESSION = 1


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


_FILE = click.Path(dir_okay=False, path_type=Path)


@click.command(
    cls=_SplitAtDashes,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.argument("base", nargs=-1, metavar="BASE... -- NEW...")
@click.option("--db", type=_FILE, help="Results database holding the runs given by id.")
@click.option(
    "--min-effect",
    type=click.FloatRange(min=0),
    default=DEFAULT_MIN_EFFECT_PCT,
    show_default=True,
    help="Smallest change in % that counts as improved/regressed (beyond the noise band).",
)
@click.option(
    "--fail-on-regression",
    type=click.FloatRange(min=0),
    metavar="PCT",
    help="Exit 1 when a stage's busy, wall or step time regressed beyond noise by more than PCT %.",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "json", "md"]),
    default="table",
    show_default=True,
    help="Output on stdout (or --output).",
)
@click.option("--output", "-o", type=_FILE, help="Write the output to this file.")
@click.option("--plot", type=_FILE, help="Also write a PNG with both sides per stage.")
@click.option(
    "--html",
    type=_FILE,
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
    new_side = ctx.meta["new_side"]
    with guarded(inputs=[*base, *new_side, kw["db"]], outputs=[kw["html"]]):
        comparison = llm_perf_opt.compare(
            list(base),
            list(new_side),
            db=kw["db"],
            min_effect_pct=kw["min_effect"],
            jobs=kw["jobs"],
            dask=runs.dask_address_from(kw["dask"]),
            include_warmup=kw["include_warmup"],
        ).comparison
        gate = kw["fail_on_regression"]
        failing = regressions(comparison, gate) if gate is not None else []
        if kw["html"] is not None:
            from llm_perf_opt.compare_html import compare_html  # bokeh: only when asked

            with output_file(kw["html"]) as handle:
                handle.write(compare_html(comparison, failing))
    _emit(comparison, failing, kw["fmt"], kw["output"])
    if kw["plot"] is not None:
        click.echo(f"wrote {compare_report.write_png(comparison, kw['plot'])}", err=True)
    for flag in comparison.flags:
        click.echo(f"warning: {flag}", err=True)
    if failing:
        for stage, metric, pct in failing:
            click.echo(f"regression: {stage} {metric} {pct:+.1f}% (> {gate:g}%)", err=True)
        sys.exit(EXIT_REGRESSION)


def _emit(comparison: Comparison, failing: Regressions, fmt: str,
          output: Path | None) -> None:  # fmt: skip
    if fmt == "table":
        if output is None:
            console = Console()
            console = console if console.is_terminal else Console(width=WIDE)
            compare_report.render_table(comparison, console, failing)
        else:
            with output.open("w", encoding="utf-8") as handle:
                compare_report.render_table(comparison, Console(file=handle, width=WIDE), failing)
        return
    text = (
        compare_report.to_json_text(comparison, failing)
        if fmt == "json"
        else compare_report.to_markdown(comparison, failing)
    )
    if output is None:
        click.echo(text, nl=False)
    else:
        output.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
