"""The files a user names: the small JSON option files read safely, and `RunFiles`, the one
declaration of everything a run reads and writes that keeps outputs off inputs.

JSON option files (`--meta`, `--static-compute`, `--config`):

Whatever the file holds, the result is its parsed value or one `ConfigError` that names the file
and the problem: a FIFO or device is refused before it is opened (reading one would block), a
file too large for an option file is refused before it is read, non-UTF-8 bytes, JSON nested too
deep for the parser, and NaN/Infinity (which `json` accepts but a report cannot hold) are errors.
"""

from __future__ import annotations

import errno
import json
import math
import stat
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Final

from llm_perf_opt.batch.stopping import track_partial, untrack_partial
from llm_perf_opt.errors import ConfigError, MissingInputError, OutputError
from llm_perf_opt.trace.files import in_scratch, table_dir_format

# Run metadata of a long run is well below a megabyte; anything this large is not an option file.
MAX_OPTION_FILE_BYTES: Final = 64 << 20


def read_text(path: str | Path, what: str) -> str:
    """The UTF-8 text of the `what` file at `path`.

    Raises:
        MissingInputError: the file does not exist.
        ConfigError: it is not a regular readable file, too large, or not UTF-8.
    """
    p = Path(path)
    try:
        info = p.stat()
    except FileNotFoundError:
        raise MissingInputError(f"{what} file {str(p)!r} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"{what} file {str(p)!r} cannot be read ({exc.strerror})") from None
    if not stat.S_ISREG(info.st_mode):
        raise ConfigError(
            f"{what} file {str(p)!r} is not a regular file (a folder, FIFO or device)"
        )
    if info.st_size > MAX_OPTION_FILE_BYTES:
        raise ConfigError(
            f"{what} file {str(p)!r} has {info.st_size:,} bytes, more than the "
            f"{MAX_OPTION_FILE_BYTES:,} an option file may have"
        )
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{what} file {str(p)!r} cannot be read ({exc.strerror})") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{what} file {str(p)!r} is not UTF-8 text (byte {exc.start}); save it as UTF-8"
        ) from None


def parse_json(text: str, what: str) -> Any:
    """`text` parsed as JSON with finite numbers only.

    Raises:
        ConfigError: not JSON, nested too deeply, or holding NaN/Infinity (also as 1e999); the
            message names the key of the first non-finite number.
    """
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{what} is not valid JSON: {exc}") from None
    except RecursionError:
        raise ConfigError(f"{what} is JSON nested too deeply to be a real file") from None
    bad = _first_non_finite(data)
    if bad is not None:
        key, value = bad
        raise ConfigError(f"{what}: `{key}` must be a finite number, got {value}")
    return data


def load_config_file(path: str | Path) -> Any:
    """The JSON value of a model config file (`--config`), with the messages config readers give.

    Raises:
        ConfigError: missing, not a regular UTF-8 file, or not JSON with finite numbers.
    """
    p = Path(path)
    try:
        text = read_text(p, "config")
    except MissingInputError:
        raise ConfigError(f"config file {p} does not exist; pass an existing JSON file") from None
    try:
        return parse_json(text, f"config file {p}")
    except ConfigError as exc:
        raise ConfigError(f"{exc} (not readable JSON); fix the file") from None


def _first_non_finite(data: Any) -> tuple[str, float] | None:
    """Dotted key path and value of the first NaN or ±Infinity in `data`, walked with a stack
    (no recursion, whatever the nesting)."""
    stack: list[tuple[str, Any]] = [("(top level)", data)]
    while stack:
        key, value = stack.pop()
        if isinstance(value, float) and not math.isfinite(value):
            return key, value
        if isinstance(value, dict):
            prefix = "" if key == "(top level)" else f"{key}."
            stack.extend((f"{prefix}{k}", v) for k, v in reversed(list(value.items())))
        elif isinstance(value, list):
            stack.extend((f"{key}[{i}]", v) for i, v in reversed(list(enumerate(value))))
    return None


# --- what a run reads and writes -----------------------------------------------------------------


@dataclass(frozen=True)
class _Input:
    """One file or folder the run reads, by resolved path and (device, inode) when it exists."""

    path: Path
    resolved: Path
    identity: tuple[int, int] | None
    folder: bool
    export: bool  # a folder that is one trace (a table export), not a folder of traces

    def same(self, resolved: Path, identity: tuple[int, int] | None) -> bool:
        return resolved == self.resolved or (identity is not None and identity == self.identity)


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        info = path.stat()
    except (OSError, ValueError):
        return None
    return info.st_dev, info.st_ino


def _input(path: Path) -> _Input:
    folder = path.is_dir()
    export = folder and table_dir_format(path) is not None
    return _Input(path, path.resolve(), _identity(path), folder, export)


@dataclass
class RunFiles:
    """Every file a run reads and every file or folder it writes, declared before any work.

    The CLIs declare the path options (`cli._common.input_option` / `output_option`), the batch
    and compare steps the traces a glob or folder expanded to and the files found beside them
    (`runs.declare_traces`); `check()` then refuses any output that is an input (by resolved
    path and by inode, so links count), lies inside an input folder (writing into a table
    export changes its identity), names another output, or lies in a missing folder. A new
    output or input joins the contract by being declared here, nothing else.
    """

    inputs: list[_Input] = field(default_factory=list)
    outputs: list[tuple[str, Path]] = field(default_factory=list)
    folders: list[tuple[str, Path]] = field(default_factory=list)

    def reads(self, *paths: Path | str | None) -> None:
        """Declare inputs; a folder's files are inputs too (a table export is its files)."""
        for raw in paths:
            if raw is None or str(raw) == "":
                continue
            path = Path(raw)
            self.inputs.append(_input(path))
            if path.is_dir():
                with suppress(OSError):
                    self.inputs.extend(_input(p) for p in sorted(path.iterdir()) if p.is_file())

    def writes(self, option: str, path: Path | str | None) -> None:
        """Declare a file the run writes (`option` names it in messages)."""
        if path is not None:
            self.outputs.append((option, Path(path)))

    def writes_folder(self, option: str, path: Path | str | None) -> None:
        """Declare a folder the run writes files into (created when its parent exists); declare
        the files themselves with `writes` once their names are known."""
        if path is not None:
            self.folders.append((option, Path(path)))

    def check(self) -> None:
        """Raise OutputError for the first output that breaks the contract (see the class)."""
        for option, folder in self.folders:
            self._check_place(option, folder, folder=True)
        written: list[tuple[str, _Input]] = []
        for option, out in self.outputs:
            self._check_place(option, out, folder=False)
            if out.exists() and not out.is_file():
                continue  # a device such as /dev/null may take several outputs
            mine = _input(out)
            other = next((o for o, w in written if w.same(mine.resolved, mine.identity)), None)
            if other is not None and other != option:
                raise OutputError(
                    f"{option} {out}: is also the {other} output; give each output its own path"
                )
            written.append((option, mine))

    def _check_place(self, option: str, out: Path, *, folder: bool) -> None:
        resolved = out.resolve()
        identity = _identity(out)
        for source in self.inputs:
            if source.export and resolved.is_relative_to(source.resolved):
                raise OutputError(
                    f"{option} {out}: lies inside the table export {source.path}, an input of "
                    "this run; writing there changes that trace. Choose another folder"
                )
            if source.same(resolved, identity) and not (folder and source.folder):
                raise OutputError(
                    f"{option} {out}: is the input {source.path} of this run; refusing to "
                    "overwrite it. Choose another output path"
                )
        if in_scratch(out):
            raise OutputError(
                f"{option} {out}: is a decompressed copy of the input; choose another path"
            )
        if folder:
            if out.exists() and not out.is_dir():
                raise OutputError(f"{option} {out}: is a file, not a folder; give a folder")
            parent = out if out.is_dir() else out.parent
        else:
            if out.is_dir():
                raise OutputError(f"{option} {out}: is a folder; give a file path")
            parent = out.parent
        made = {f.resolve() for _, f in self.folders}  # checked above, created before writing
        if parent.exists() and not parent.is_dir():
            raise OutputError(f"{option} {out}: cannot write there, {parent} is not a folder")
        if not parent.is_dir() and not (not folder and parent.resolve() in made):
            raise OutputError(f"{option} {out}: folder {parent} does not exist; create it first")


# --- writing outputs -----------------------------------------------------------------------------


@contextmanager
def output_file(path: Path, mode: str = "w") -> Iterator[IO[Any]]:
    """`path` opened for writing (text UTF-8 or binary), with every OS failure (missing folder,
    permission, read-only disk, /dev/full) one OutputError; a file this call created is removed
    when writing it fails or a signal stops the run."""
    if in_scratch(path):
        raise OutputError(f"{path}: is a decompressed copy of the input; choose another path")
    if not path.exists() and not path.parent.is_dir():
        raise output_error(path, FileNotFoundError(errno.ENOENT, "missing"))
    created = not path.exists()
    try:
        handle = path.open(mode, encoding="utf-8") if "b" not in mode else path.open(mode)
    except OSError as exc:
        raise output_error(path, exc) from None
    if created:
        track_partial(path)
    try:
        with handle:
            yield handle
    except OSError as exc:
        if created:
            path.unlink(missing_ok=True)
        raise output_error(path, exc) from None
    finally:
        untrack_partial(path)


@contextmanager
def writing(path: Path) -> Iterator[None]:
    """OS failures while a library call writes `path` (a file or folder) as one OutputError."""
    try:
        yield
    except OSError as exc:
        raise output_error(path, exc) from None


def output_error(path: Path, exc: OSError) -> OutputError:
    """An OS failure writing `path` as one OutputError that says why in words."""
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
    if exc.errno == errno.ENOENT and path.parent.is_dir():  # e.g. a new file in /proc
        reason = f"{path.parent} does not take new files"
    return OutputError(f"cannot write {path}: {reason}")
