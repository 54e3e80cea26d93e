"""`open_trace`: any nsys export a path names, opened read-only by the backend for its kind."""

from __future__ import annotations

import stat
from pathlib import Path

from llm_perf_opt.errors import TraceAccessError, TraceNotFoundError, WrongFileKindError
from llm_perf_opt.trace.frames import Trace
from llm_perf_opt.trace.sqlite import open_sqlite


def open_trace(path: str | Path) -> Trace:
    """Open an nsys SQLite export (`--type sqlite`, also .xz/.gz compressed) read-only; the
    export is never written, and no -wal, -shm or -journal file is created beside it.

    Raises:
        TraceNotFoundError: the path does not exist.
        TraceAccessError: permission denied, or not a regular file or folder (a FIFO or device).
        WrongFileKindError: a .nsys-rep/.qdstrm, a folder, or another file that is no export.
        CorruptTraceError: the file is truncated or damaged.
        TraceLockedError: another process is writing it.
        TraceTooLargeError: a compressed export would decompress past the size cap.
        MissingTableError: it is SQLite, but not an nsys export.
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
            raise WrongFileKindError(f"{path}: is a directory, not an nsys SQLite export.")
        if not stat.S_ISREG(info.st_mode):
            raise TraceAccessError(
                f"{path}: is not a regular file (a FIFO, socket or device); give the path of an "
                "nsys SQLite export on disk."
            )
    except PermissionError:
        raise TraceAccessError(
            f"{path}: permission denied; make it readable (`chmod u+r {path}`)."
        ) from None
    return open_sqlite(path)
