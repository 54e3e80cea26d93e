"""Read the small JSON files a user passes (`--meta`, `--static-compute`, `--config`) safely.

Whatever the file holds, the result is its parsed value or one `ConfigError` that names the file
and the problem: a FIFO or device is refused before it is opened (reading one would block), a
file too large for an option file is refused before it is read, non-UTF-8 bytes, JSON nested too
deep for the parser, and NaN/Infinity (which `json` accepts but a report cannot hold) are errors.
"""

from __future__ import annotations

import json
import math
import stat
from pathlib import Path
from typing import Any, Final

from llm_perf_opt.errors import ConfigError, MissingInputError

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
