"""Which kind of nsys export a path is, and compressed exports decompressed to private copies.

Kinds: an SQLite file (`--type sqlite`, also .xz/.gz compressed), a folder of one Parquet or
Arrow file per table (`--type parquetdir`, `--type arrowdir`), and one Arrow IPC stream holding
every table in turn (`--type arrow`). Files are told apart by their first bytes, folders by the
table files they hold.
"""

from __future__ import annotations

import errno
import gzip
import lzma
import os
import secrets
import shutil
import tempfile
from pathlib import Path
from typing import Final

from llm_perf_opt.errors import (
    CorruptTraceError,
    TraceAccessError,
    TraceError,
    TraceTooLargeError,
)
from llm_perf_opt.trace.columns import EXPORT_MARKERS, META_TABLES

SQLITE_MAGIC: Final = b"SQLite format 3\x00"
# An Arrow IPC stream message starts with this continuation marker (nsys's arrow exports).
ARROW_STREAM_MAGIC: Final = b"\xff\xff\xff\xff"
# Compressed exports are read directly (decompressed to a private temporary file first).
COMPRESSED_MAGIC: Final = {b"\xfd7zXZ\x00": "xz", b"\x1f\x8b": "gzip"}
# Table files of a parquetdir / arrowdir export, by format.
TABLE_SUFFIXES: Final = {"parquet": ".parquet", "arrow": ".arrow"}
# A compressed export may decompress to at most this multiple of its size (nsys exports compress
# about 5x), and never less than the floor; the environment variable overrides both, in bytes.
DECOMPRESS_RATIO_CAP: Final = 50
DECOMPRESS_FLOOR_BYTES: Final = 1 << 30
DECOMPRESS_CAP_ENV: Final = "LLM_PERF_OPT_MAX_DECOMPRESSED_BYTES"
SCRATCH_PREFIX: Final = "mfu-trace-"


def table_dir_format(path: Path) -> str | None:
    """ "parquet" or "arrow" when `path` is a folder holding an nsys table export (one file per
    table, at least one of the tables every export has), else None."""
    if not path.is_dir():
        return None
    for fmt, suffix in TABLE_SUFFIXES.items():
        if any((path / f"{table}{suffix}").is_file() for table in (*EXPORT_MARKERS, *META_TABLES)):
            return fmt
    return None


def table_files(path: Path) -> dict[str, dict[str, Path]]:
    """Format → table name → file, of the table files directly in the folder `path`."""
    found: dict[str, dict[str, Path]] = {fmt: {} for fmt in TABLE_SUFFIXES}
    for entry in sorted(path.iterdir()):
        for fmt, suffix in TABLE_SUFFIXES.items():
            if entry.name.endswith(suffix) and entry.is_file():
                found[fmt][entry.name.removesuffix(suffix)] = entry
    return found


def file_head(path: Path, size: int = len(SQLITE_MAGIC)) -> bytes:
    """The first `size` bytes of a file."""
    with path.open("rb") as handle:
        return handle.read(size)


def wrong_kind_message(path: Path) -> str:
    """Why a file that is not an nsys export cannot be read, and what to give instead."""
    suffix = path.suffix.lower()
    if suffix in (".nsys-rep", ".qdrep"):
        return (
            f"{path}: is an Nsight Systems report, not its SQLite export. Export it first: "
            f"`nsys export --type sqlite -o {path.with_suffix('.sqlite')} {path}`."
        )
    if suffix == ".qdstrm":
        return (
            f"{path}: is a raw .qdstrm capture stream. Let nsys finish it into a .nsys-rep "
            "(`QdstrmImporter -i FILE.qdstrm`), then `nsys export --type sqlite` that report."
        )
    if suffix == ".parquet":
        if table_dir_format(path.parent):
            return (
                f"{path}: is one table of an nsys parquetdir export; give its folder "
                f"{path.parent}, which is the trace."
            )
        return (
            f"{path}: is a Parquet file, not an nsys export. Give the folder `nsys export "
            "--type parquetdir -o DIR REPORT.nsys-rep` writes, or an SQLite export."
        )
    return (
        f"{path}: is not an SQLite file. Give the `.sqlite` export of an nsys report (or a "
        "PyTorch profiler trace, a JSON object)."
    )


# Private decompressed copies alive in this process: removed with their Trace, and by
# `remove_scratch()` when the process is stopped by a signal.
_SCRATCH_DIRS: set[Path] = set()


def remove_scratch_dir(scratch: Path | None) -> None:
    """Remove one decompressed copy's folder (nothing when None)."""
    if scratch is not None:
        shutil.rmtree(scratch, ignore_errors=True)
        _SCRATCH_DIRS.discard(scratch)


def scratch_prefix(pid: int | None = None) -> str:
    """Name start of the decompressed copies' folders of process `pid` (this one by default):
    a batch removes those of a worker process that died before it could."""
    return f"{SCRATCH_PREFIX}{os.getpid() if pid is None else pid}-"


def remove_scratch_of(pid: int) -> None:
    """Remove the decompressed copies a (dead) process `pid` left in the temporary folder."""
    for scratch in Path(tempfile.gettempdir()).glob(f"{scratch_prefix(pid)}*"):
        shutil.rmtree(scratch, ignore_errors=True)


def scratch_dirs() -> frozenset[Path]:
    """The folders of this process's live decompressed copies."""
    return frozenset(_SCRATCH_DIRS)


def remove_scratch(keep: frozenset[Path] = frozenset()) -> None:
    """Remove this process's decompressed copies but those in `keep` (a CLI run removes what it
    made; a signal removes everything)."""
    for scratch in _SCRATCH_DIRS - keep:
        remove_scratch_dir(scratch)


def in_scratch(path: Path) -> bool:
    """True when `path` lies in one of this process's decompressed copies' folders."""
    target = path.resolve()
    return any(target.is_relative_to(d.resolve()) for d in _SCRATCH_DIRS)


def decompress_cap(compressed_bytes: int) -> int:
    """Most bytes a compressed export of this size may decompress to (`DECOMPRESS_CAP_ENV`
    overrides).

    Raises:
        TraceError: the environment variable is not a positive integer.
    """
    override = os.environ.get(DECOMPRESS_CAP_ENV)
    if override is not None:
        try:
            value = int(override)
        except ValueError:
            value = 0
        if value <= 0:
            raise TraceError(f"{DECOMPRESS_CAP_ENV}={override!r} must be a positive byte count")
        return value
    return max(DECOMPRESS_FLOOR_BYTES, DECOMPRESS_RATIO_CAP * compressed_bytes)


def new_scratch_dir(path: Path, purpose: str) -> Path:
    """A private temporary folder for what reading `path` writes, registered (before it exists,
    so a signal arriving in between still finds it) for `remove_scratch`.

    Raises:
        TraceAccessError: no temporary folder can be made (`purpose` says what it was for).
    """
    scratch = Path(tempfile.gettempdir()) / f"{scratch_prefix()}{secrets.token_hex(8)}"
    _SCRATCH_DIRS.add(scratch)
    try:
        scratch.mkdir(mode=0o700)
    except OSError as exc:
        _SCRATCH_DIRS.discard(scratch)
        raise TraceAccessError(
            f"{path}: no temporary folder to {purpose} ({exc}); set TMPDIR"
        ) from None
    return scratch


def decompressed(path: Path) -> tuple[Path, Path | None]:
    """The SQLite file to open: `path` itself, or an .xz/.gz export decompressed to a private
    temporary folder that lives as long as the Trace. The copy stops at `decompress_cap` and
    must fit the free space of the temporary folder."""
    head = file_head(path, 8)
    kind = next((k for magic, k in COMPRESSED_MAGIC.items() if head.startswith(magic)), None)
    if kind is None:
        return path, None
    cap = decompress_cap(path.stat().st_size)
    declared = _xz_declared_size(path) if kind == "xz" else None
    if declared is not None and declared > cap:
        raise TraceTooLargeError(_over_cap_message(path, cap))
    scratch = new_scratch_dir(path, "decompress it into")
    target = scratch / "trace.sqlite"
    try:
        free = shutil.disk_usage(scratch).free
        if declared is not None and declared > free:
            raise TraceTooLargeError(_no_space_message(path, declared, free, scratch.parent))
        with (
            lzma.open(path) if kind == "xz" else gzip.open(path) as src,
            target.open("wb") as dst,
        ):
            written = 0
            while chunk := src.read(1 << 22):
                written += len(chunk)
                if written > cap:  # the declared size can lie, or be absent (gzip)
                    raise TraceTooLargeError(_over_cap_message(path, cap))
                if written > free:
                    raise TraceTooLargeError(_no_space_message(path, written, free, scratch.parent))
                dst.write(chunk)
    except OSError as exc:
        remove_scratch_dir(scratch)
        if exc.errno != errno.ENOSPC:
            raise _decompress_error(path, exc) from exc
        raise TraceTooLargeError(
            f"{path}: no space left in {scratch.parent} to decompress it; set TMPDIR to a "
            "larger disk or decompress it yourself"
        ) from None
    except (EOFError, lzma.LZMAError) as exc:
        remove_scratch_dir(scratch)
        raise _decompress_error(path, exc) from exc
    except BaseException:
        remove_scratch_dir(scratch)
        raise
    return target, scratch


def _over_cap_message(path: Path, cap: int) -> str:
    return (
        f"{path}: decompresses to more than {cap:,} bytes, the cap for a "
        f"{path.stat().st_size:,}-byte file; if it is a real trace, raise the cap with "
        f"{DECOMPRESS_CAP_ENV}=BYTES or decompress it yourself"
    )


def _no_space_message(path: Path, needed: int, free: int, folder: Path) -> str:
    return (
        f"{path}: decompressing it needs at least {needed:,} bytes but {folder} has {free:,} "
        "free; set TMPDIR to a larger disk or decompress it yourself"
    )


def _xz_declared_size(path: Path) -> int | None:
    """Uncompressed size the index of the file's last .xz stream declares (None when the tail
    is not a well-formed index): known before a byte is written."""
    size = path.stat().st_size
    if size < 24:
        return None
    with path.open("rb") as handle:
        handle.seek(size - 12)
        footer = handle.read(12)
        if footer[-2:] != b"YZ":
            return None
        index_size = (int.from_bytes(footer[4:8], "little") + 1) * 4
        if index_size > size - 24:
            return None
        handle.seek(size - 12 - index_size)
        index = handle.read(index_size)
    if not index or index[0] != 0:
        return None
    try:
        n_records, pos = _xz_varint(index, 1)
        total = 0
        for _ in range(n_records):  # one record per xz block: a handful, not per row
            _, pos = _xz_varint(index, pos)
            uncompressed, pos = _xz_varint(index, pos)
            total += uncompressed
    except IndexError:
        return None
    return total


def _xz_varint(data: bytes, pos: int) -> tuple[int, int]:
    """The .xz multibyte integer at `pos` and the position after it."""
    value, shift = 0, 0
    while True:
        byte = data[pos]
        value |= (byte & 0x7F) << shift
        pos += 1
        if byte < 0x80 or shift > 56:
            return value, pos
        shift += 7


def _decompress_error(path: Path, exc: BaseException) -> CorruptTraceError:
    return CorruptTraceError(
        f"{path}: the compressed export cannot be decompressed ({exc}); it is truncated or "
        "damaged. Compress it again (`xz -k FILE.sqlite`) or give the plain .sqlite."
    )
