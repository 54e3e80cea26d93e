"""What both CLIs share: the one-line error contract, safe output files and signal handling.

Contract: a command exits 0, or exits 2 with exactly one `Error: …` line on stderr (capped in
length, no traceback); a signal (Ctrl-C, SIGTERM, SIGHUP) stops it at once with 128 + the signal
number, after removing decompressed temporaries and half-written outputs. An output never
replaces an input of the run.
"""

from __future__ import annotations

import errno
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from types import FrameType
from typing import IO, Any, Final

import click

from llm_perf_opt import vocab
from llm_perf_opt.errors import LlmPerfOptError, OutputError
from llm_perf_opt.trace import in_scratch, remove_scratch, scratch_dirs

# An error line longer than this is cut (a 1 MB NVTX name is not echoed whole).
MAX_ERROR_CHARS: Final = 600
# Token counts beyond this are typos, not requests (every model window is far smaller).
MAX_TOKENS: Final = 10_000_000
STOP_SIGNALS: Final = tuple(
    getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name)
)
# Outputs being written now: removed when a signal stops the run half-way.
_PARTIAL_OUTPUTS: set[Path] = set()
_STOP_LOCK = threading.Lock()


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
    """A float option in `(low, high]`: NaN, ±Inf and absurd magnitudes are usage errors."""

    name = "float"

    def __init__(self, low: float, high: float) -> None:
        self.low = low
        self.high = high

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        try:
            number = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number", param, ctx)
        if not self.low < number <= self.high:  # also false for NaN
            self.fail(f"{value!r} is not in ({self.low:g}, {self.high:g}]", param, ctx)
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


@contextmanager
def guarded(
    *, inputs: Iterable[Path | str | None] = (), outputs: Iterable[Path | None] = ()
) -> Iterator[None]:
    """Run a command body under the contract: outputs are checked against the inputs before any
    work, user errors become one `Error:` line, signals stop the run cleanly, temporaries go."""
    earlier = scratch_dirs()
    with _stop_on_signals():
        try:
            refuse_input_overwrite(outputs, inputs)
            yield
        except LlmPerfOptError as exc:
            raise CliError(str(exc)) from None
        except RecursionError:
            raise CliError("the input is nested too deeply to be a real file") from None
        except OverflowError as exc:  # an absurd size in a config or the metadata
            raise CliError(f"a number in the inputs is too large to compute with ({exc})") from None
        finally:
            remove_scratch(keep=earlier)


def refuse_input_overwrite(
    outputs: Iterable[Path | None], inputs: Iterable[Path | str | None]
) -> None:
    """Raise OutputError when an output path names an input (also through a link) or a
    decompressed copy of one, or lies in a folder that does not exist."""
    sources = [Path(p) for p in inputs if p is not None]
    for out in (Path(p) for p in outputs if p is not None):
        for source in sources:
            if _same_file(out, source):
                raise OutputError(
                    f"{out}: is the input {source} of this run; refusing to overwrite it. "
                    "Choose another output path"
                )
        if in_scratch(out):
            raise OutputError(f"{out}: is a decompressed copy of the input; choose another path")
        parent = out.parent
        if not parent.is_dir():
            raise OutputError(f"{out}: folder {parent} does not exist; create it first")


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return a.resolve() == b.resolve()


@contextmanager
def output_file(path: Path, mode: str = "w") -> Iterator[IO[Any]]:
    """`path` opened for writing (text UTF-8 or binary), with every OS failure (missing folder,
    permission, read-only disk, /dev/full) one OutputError; a file this call created is removed
    when writing it fails or a signal stops the run."""
    if in_scratch(path):
        raise OutputError(f"{path}: is a decompressed copy of the input; choose another path")
    created = not path.exists()
    try:
        handle = path.open(mode, encoding="utf-8") if "b" not in mode else path.open(mode)
    except OSError as exc:
        raise _output_error(path, exc) from None
    if created:
        _PARTIAL_OUTPUTS.add(path)
    try:
        with handle:
            yield handle
    except OSError as exc:
        if created:
            path.unlink(missing_ok=True)
        raise _output_error(path, exc) from None
    finally:
        _PARTIAL_OUTPUTS.discard(path)


@contextmanager
def writing(path: Path) -> Iterator[None]:
    """OS failures while a library call writes `path` (a file or folder) as one OutputError."""
    try:
        yield
    except OSError as exc:
        raise _output_error(path, exc) from None


def _output_error(path: Path, exc: OSError) -> OutputError:
    reasons = {
        errno.ENOENT: "its folder does not exist",
        errno.EACCES: "permission denied",
        errno.EPERM: "permission denied",
        errno.EROFS: "the file system is read-only",
        errno.ENOSPC: "no space left on the device",
        errno.EISDIR: "it is a folder",
        errno.ENOTDIR: "a part of the path is not a folder",
        errno.EPIPE: "the pipe was closed",
    }
    reason = reasons.get(exc.errno or 0, exc.strerror or str(exc))
    return OutputError(f"cannot write {path}: {reason}")


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
        raise _output_error(Path("<stdout>"), exc) from None


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush does not fail again."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # not a real file (a test runner's buffer)
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)


# --- signals -------------------------------------------------------------------------------------


def _stop(signum: int) -> None:
    """Remove temporaries and half-written outputs, say why, and exit at once (worker threads
    reading SQLite are not waited for)."""
    with _STOP_LOCK:
        remove_scratch()
        for path in list(_PARTIAL_OUTPUTS):
            path.unlink(missing_ok=True)
        name = signal.Signals(signum).name
        with suppress(OSError):
            os.write(2, f"Error: stopped by {name}; unfinished outputs removed\n".encode())
        os._exit(128 + signum)


def _handler(signum: int, _frame: FrameType | None) -> None:
    _stop(signum)


@contextmanager
def _stop_on_signals() -> Iterator[None]:
    """Ctrl-C, SIGTERM and SIGHUP stop the run within a second, whatever phase it is in: the
    Python handler runs between bytecodes, and a watcher thread woken through the wakeup fd acts
    when the main thread is inside a long native call that released the interpreter."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous: dict[int, Callable[[int, FrameType | None], Any] | int | None] = {}
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    for signum in STOP_SIGNALS:
        previous[signum] = signal.signal(signum, _handler)
    old_wakeup = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    watcher = threading.Thread(target=_watch, args=(read_fd,), daemon=True, name="stop-watch")
    watcher.start()
    try:
        yield
    finally:
        signal.set_wakeup_fd(old_wakeup)
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        os.close(write_fd)  # ends the watcher's read
        watcher.join(timeout=1)
        os.close(read_fd)


def _watch(read_fd: int) -> None:
    while True:
        try:
            data = os.read(read_fd, 1)
        except OSError:
            return
        if not data:
            return
        if data[0] in STOP_SIGNALS:
            _stop(data[0])
