"""`open_trace`: any nsys export or PyTorch profiler trace a path names, opened read-only by the
backend for its kind."""

from __future__ import annotations

import stat
from pathlib import Path

from llm_perf_opt.errors import TraceAccessError, TraceNotFoundError
from llm_perf_opt.trace.files import ARROW_STREAM_MAGIC, file_head
from llm_perf_opt.trace.frames import Trace
from llm_perf_opt.trace.kineto import is_json_object, json_head, open_kineto
from llm_perf_opt.trace.sqlite import open_sqlite
from llm_perf_opt.trace.table_dirs import open_arrow_stream, open_table_dir


def open_trace(path: str | Path) -> Trace:
    """Open an nsys export read-only: an SQLite file (`--type sqlite`, also .xz/.gz compressed),
    a folder written by `--type parquetdir` or `--type arrowdir`, a `--type arrow` file, or a
    PyTorch profiler Chrome trace (a JSON object, also .gz; `kineto.py`). The input is never
    written, and no -wal, -shm or -journal file is created beside it.

    Raises:
        TraceNotFoundError: the path does not exist.
        TraceAccessError: permission denied, or not a regular file or folder (a FIFO or device).
        WrongFileKindError: a .nsys-rep/.qdstrm, a folder without export tables, one table file
            of a table export, a JSON that is no profiler trace, or another file that is no
            export.
        CorruptTraceError: the file is truncated or damaged.
        TraceLockedError: another process is writing it.
        TraceTooLargeError: a compressed export would decompress past the size cap.
        MissingTableError: it is SQLite, Parquet or Arrow, but not an nsys export.
    """
    path = Path(path)
    try:
        info = path.stat()
    except FileNotFoundError:
        raise TraceNotFoundError(
            f"{path}: no such file. Give the path of an nsys SQLite export."
        ) from None
    except OSError as exc:
        raise TraceAccessError(f"{path}: cannot be read ({exc.strerror}).") from None
    try:
        if stat.S_ISDIR(info.st_mode):
            return open_table_dir(path)
        if not stat.S_ISREG(info.st_mode):
            raise TraceAccessError(
                f"{path}: is not a regular file (a FIFO, socket or device); give the path of an "
                "nsys SQLite export on disk."
            )
        if file_head(path, len(ARROW_STREAM_MAGIC)) == ARROW_STREAM_MAGIC:
            return open_arrow_stream(path)
        if is_json_object(json_head(path)):
            return open_kineto(path)
    except PermissionError:
        raise TraceAccessError(
            f"{path}: permission denied; make it readable (`chmod u+r {path}`)."
        ) from None
    return open_sqlite(path)
