"""What the CLIs share: the one-line error contract, declared file options, safe outputs.

Contract: a command exits 0, or exits 2 with exactly one `Error: …` line on stderr (capped in
length, no traceback); a signal (Ctrl-C, SIGTERM, SIGHUP) stops it at once with 128 + the signal
number, after ending its workers and removing decompressed temporaries and half-written outputs
(`stopping`). An output never replaces an input of the run: every path option is declared with
`input_option` / `output_option` and checked by `userfiles.RunFiles`.
"""

from __future__ import annotations

import io
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final, Literal

import click
from rich.console import Console

from llm_perf_opt import vocab
from llm_perf_opt.batch.stopping import stop_on_signals
from llm_perf_opt.errors import LlmPerfOptError, OutputError
from llm_perf_opt.inputs.user_files import RunFiles, output_error
from llm_perf_opt.inputs.user_files import output_file as output_file  # the CLIs' output helpers
from llm_perf_opt.inputs.user_files import writing as writing  # live with RunFiles
from llm_perf_opt.trace import remove_scratch, scratch_dirs

# An error line longer than this is cut (a 1 MB NVTX name is not echoed whole).
MAX_ERROR_CHARS: Final = 600
# Token counts beyond this are typos, not requests (every model window is far smaller).
MAX_TOKENS: Final = 10_000_000
# Width of a rich table when stdout is not a terminal (files, pipes): wide enough not to wrap.
WIDE: Final = 160
# `--format` of each command: mfu-analyze renders the report (`report.RENDERERS`), mfu-compare
# the comparison, which has no CSV form (its rows nest metrics in stages), mfu-flops the estimate,
# which is a table or JSON only (its per-block breakdown is not one table).
ANALYZE_FORMATS: Final = ("table", "json", "csv", "md")
COMPARE_FORMATS: Final = ("table", "json", "md")
FLOPS_FORMATS: Final = ("table", "json")


def one_line(text: str, limit: int = MAX_ERROR_CHARS) -> str:
    """`text` on one line, cut to `limit` characters with a note of how much was left out."""
    flat = " ".join(text.split())
    if len(flat) <= limit:
        return flat
    return f"{flat[:limit]}… ({len(flat) - limit:,} more characters)"


class CliError(click.ClickException):
    """Bad input: one capped `Error: …` line on stderr, exit status 2 (as click's usage errors)."""

    exit_code = 2

    def __init__(self, message: str) -> None:
        super().__init__(one_line(message))


class FiniteFloat(click.ParamType):  # type: ignore[type-arg]  # generic only from click 8.3
    """The one float option type: a finite number in `(low, high]` (`[low, high]` with
    `closed=True`); NaN, ±Inf, negatives below `low` and absurd magnitudes are usage errors."""

    name = "float"

    def __init__(self, low: float, high: float, *, closed: bool = False) -> None:
        self.low = low
        self.high = high
        self.closed = closed

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        try:
            number = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number", param, ctx)
        above = number >= self.low if self.closed else number > self.low
        if not (above and number <= self.high):  # also false for NaN
            bracket = "[" if self.closed else "("
            self.fail(f"{value!r} is not in {bracket}{self.low:g}, {self.high:g}]", param, ctx)
        return number


class ByteSize(click.ParamType):  # type: ignore[type-arg]  # generic only from click 8.3
    """A memory size: bytes, or a number with K, M, G or T (powers of 1024; `MiB`, `GB` and
    the like mean the same), at least `low` bytes."""

    name = "size"
    UNITS: Final = {"": 0, "K": 1, "M": 2, "G": 3, "T": 4}

    def __init__(self, low: int) -> None:
        self.low = low

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, int):
            return value
        text = str(value).strip().upper().removesuffix("B").removesuffix("I")
        unit = text[-1:] if text[-1:] in "KMGT" else ""
        try:
            number = float(text.removesuffix(unit)) if text else float("nan")
        except ValueError:
            number = float("nan")
        if not number >= 0 or number == float("inf"):
            self.fail(f"{value!r} is not a size; write e.g. 512M or 2G", param, ctx)
        size = int(number * 1024 ** self.UNITS[unit])
        if size < self.low:
            self.fail(f"{value!r} is below the minimum of {self.low:,} bytes", param, ctx)
        return size


prefill_logits_option = click.option(
    "--prefill-logits",
    type=click.Choice(vocab.LM_HEAD_POSITIONS),
    default="last",
    show_default=True,
    help="lm_head in prefill on the last position (generate's logits_to_keep=1) or on all.",
)


class DeclaredPath(click.Path):
    """A path option declared as read (`reads`), written (`writes`) or a folder written into
    (`writes_folder`): `guarded` collects every such option of the command into its `RunFiles`,
    so a new file option joins the output-versus-input contract by its declaration alone."""

    def __init__(self, role: Literal["reads", "writes", "writes_folder"], **kw: Any) -> None:
        super().__init__(path_type=Path, **kw)
        self.role = role


def input_option(*decls: str, **kw: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """A file option the run reads (never written over)."""
    return click.option(*decls, type=DeclaredPath("reads", dir_okay=False), **kw)


def output_option(
    *decls: str, folder: bool = False, **kw: Any
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """A file (or, `folder`, a folder) option the run writes, checked against every input."""
    kind = (
        DeclaredPath("writes_folder", file_okay=False)
        if folder
        else DeclaredPath("writes", dir_okay=False)
    )
    return click.option(*decls, type=kind, **kw)


def output_options(
    formats: Sequence[str], output_help: str | None = None, *, unset: bool = False
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """The main output's options: `--format`, one of `formats` (passed as `fmt`; table unless
    given, or None with `unset`, for a command whose work depends on whether it was given), and
    with `output_help` `--output`/`-o FILE` instead of stdout (`emit` writes either)."""
    where = "stdout (or --output)" if output_help else "stdout"
    fmt = click.option(
        "--format",
        "fmt",
        type=click.Choice(formats),
        default=None if unset else "table",
        show_default=not unset,
        help=f"Output on {where}." + (" [default: table]" if unset else ""),
    )
    if output_help is None:
        return fmt
    out = output_option("--output", "-o", help=output_help)
    return lambda command: fmt(out(command))


Render = Callable[[Console], None]


def emit(content: str | Render, output: Path | None, width: int = WIDE) -> None:
    """The main output on stdout, or into `output`: text as it is, or what `content` prints
    on a rich console (live on a terminal; elsewhere `width` columns wide, rendered aside and
    then written, since rich exits by itself on a closed pipe)."""
    if not isinstance(content, str):
        if output is None and Console().is_terminal:
            with stdout_errors():
                content(Console())
            return
        buffer = io.StringIO()
        content(Console(file=buffer, width=width))
        content = buffer.getvalue()
    if output is None:
        echo_stdout(content)
        return
    with output_file(output) as handle:
        handle.write(content)


def echo_stdout(text: str) -> None:
    """Write `text` to stdout; a closed pipe or full disk is one error line, not a traceback."""
    with stdout_errors():
        click.echo(text, nl=False)
        sys.stdout.flush()


@contextmanager
def stdout_errors() -> Iterator[None]:
    """Failures writing stdout (a closed pipe, /dev/full) as one OutputError; stdout is then
    pointed at /dev/null so the interpreter's final flush does not fail a second time."""
    try:
        yield
    except OSError as exc:
        _silence_stdout()
        if isinstance(exc, BrokenPipeError):
            raise OutputError("cannot write to standard output: the pipe was closed") from None
        raise output_error(Path("<stdout>"), exc) from None


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush does not fail again."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # not a real file (a test runner's buffer)
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)


def echo_err(line: str) -> None:
    """One line on stderr (notes, warnings, what was written)."""
    click.echo(line, err=True)


def declared_files(ctx: click.Context | None) -> RunFiles:
    """The `RunFiles` of the command's declared path options and their values."""
    files = RunFiles()
    if ctx is None:
        return files
    for param in ctx.command.params:
        if isinstance(param.type, DeclaredPath) and param.name is not None:
            value = ctx.params.get(param.name)
            option = max(param.opts, key=len)
            if param.type.role == "reads":
                files.reads(value)
            else:
                getattr(files, param.type.role)(option, value)
    return files


@contextmanager
def guarded() -> Iterator[RunFiles]:
    """Run a command body under the contract: the declared outputs are checked against the
    declared inputs before any work (the body declares the traces it expands and checks again),
    user errors become one `Error:` line, signals stop the run cleanly, temporaries go."""
    earlier = scratch_dirs()
    with stop_on_signals():
        try:
            files = declared_files(click.get_current_context(silent=True))
            files.check()
            yield files
        except LlmPerfOptError as exc:
            raise CliError(str(exc)) from None
        except RecursionError:
            raise CliError("the input is nested too deeply to be a real file") from None
        except OverflowError as exc:  # an absurd size in a config or the metadata
            raise CliError(f"a number in the inputs is too large to compute with ({exc})") from None
        finally:
            remove_scratch(keep=earlier)
