"""The SQLite backend: an nsys `--type sqlite` export, opened read-only, read through ADBC.

Works on exports from nsys 2022.4 (schema 3.0) to 2026.x (3.25+). Text is read as BLOB and
decoded, invalid UTF-8 with replacement; a value the declared type cannot hold is a clear error.
"""

from __future__ import annotations

import ctypes
import re
import signal
import sqlite3
import urllib.parse
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from llm_perf_opt.errors import (
    CorruptTraceError,
    MissingColumnError,
    MissingTableError,
    TraceAccessError,
    TraceError,
    TraceLockedError,
    UnorderedTableError,
    WrongFileKindError,
)
from llm_perf_opt.trace.columns import EXPORT_MARKERS, Field, TableRead
from llm_perf_opt.trace.files import (
    ARROW_STREAM_MAGIC,
    SCRATCH_PREFIX,
    SQLITE_MAGIC,
    decompressed,
    file_head,
    remove_scratch_dir,
    wrong_kind_message,
)
from llm_perf_opt.trace.frames import Trace

# Rows per Arrow record batch read from SQLite.
BATCH_ROWS: Final = str(1 << 18)
# Byte 18 of the SQLite header (file format write version): 2 means WAL journal mode.
WAL_HEADER_OFFSET: Final = 18
EXPORT_COMMAND: Final = "nsys export --type sqlite"


class SqliteTrace(Trace):
    """An open, read-only nsys SQLite export (`db_path`: the file read, a private decompressed
    copy for a compressed export)."""

    def __init__(self, path: Path, conn: sqlite3.Connection, db_path: Path) -> None:
        super().__init__(path, EXPORT_COMMAND)
        self._conn = conn
        self.db_path = db_path

    def __repr__(self) -> str:
        return f"SqliteTrace(path={self.path!r})"

    def _table_names(self) -> frozenset[str]:
        rows = self._sql("SELECT name FROM sqlite_master WHERE type IN ('table', 'view')")
        return frozenset(r[0] for r in rows)

    def _column_names(self, table: str) -> tuple[str, ...]:
        return tuple(r[1] for r in self._sql(f"PRAGMA table_info({table})"))

    def _max(self, table: str, columns: tuple[str, ...]) -> int | None:
        value = self._sql(f"SELECT max({_first_of(columns)}) FROM {table}")[0][0]
        return None if value is None else int(value)

    def _row_bound(self, table: str) -> int:
        # the largest rowid: one B-tree descent; rows are never deleted from an export
        return self._max(table, ("rowid",)) or 0

    def _read(self, read: TableRead) -> pl.DataFrame:
        query = f"SELECT {self._select(read)} FROM {read.table}{_where(read)}"
        if read.order_by:
            query += f" ORDER BY {read.order_by}"
        return self._frame(query, read.schema)

    def _read_batches(self, read: TableRead, rows: int) -> Iterator[pl.DataFrame]:
        """Consecutive rowid ranges: each query seeks past the last rowid read, no sort."""
        import adbc_driver_sqlite.dbapi as adbc

        kind = self._sql(f"SELECT type FROM sqlite_master WHERE name = '{read.table}'")
        if kind and kind[0][0] == "view":
            raise UnorderedTableError(
                f"{self.path}: {read.table} is a view, without a stored row order to read in "
                "batches; read it whole instead"
            )
        select = f"rowid AS _rowid, {self._select(read)}"
        schema = {"_rowid": pl.Int64(), **read.schema}
        after = ""
        try:
            with adbc.connect(_readonly_uri(self.db_path)) as conn, conn.cursor() as cur:
                while True:
                    where = _where(read, after)
                    query = f"SELECT {select} FROM {read.table}{where} ORDER BY rowid LIMIT {rows}"
                    part = self._fetch(cur, query, schema)
                    if part.is_empty():
                        return
                    after = f"rowid > {part['_rowid'][-1]}"
                    yield part.drop("_rowid")
                    if part.height < rows:
                        return
        except (OSError, adbc.Error) as exc:
            raise _read_error(self.path, exc, read.table) from exc
        finally:
            _release_freed_memory()

    def _select(self, read: TableRead) -> str:
        """The SELECT list of `read` over the columns the table has."""
        cols = set(self.columns(read.table))
        head = []
        if read.row_id:
            offset = f" + {read.row_id_offset}" if read.row_id_offset else ""
            head.append(f"rowid{offset} AS {read.row_id}")
        return ", ".join(head + [_sql_field(f, cols) for f in read.fields])

    def _sql(self, query: str) -> list[tuple[Any, ...]]:
        try:
            return self._conn.execute(query).fetchall()
        except sqlite3.Error as exc:
            raise _read_error(self.path, exc, _table_of(query)) from exc

    def _frame(self, query: str, schema: dict[str, Any]) -> pl.DataFrame:
        """Run `query` into a frame of `schema` through Arrow (ADBC), not Python rows.

        Record batches are converted and narrowed one at a time, so the driver's raw buffers for
        millions of rows never all exist beside the narrowed copy."""
        import adbc_driver_sqlite.dbapi as adbc

        try:
            with adbc.connect(_readonly_uri(self.db_path)) as conn, conn.cursor() as cur:
                return self._fetch(cur, query, schema)
        except (OSError, adbc.Error) as exc:  # the driver's errors, and SQLite's as OSError
            raise _read_error(self.path, exc, _table_of(query)) from exc
        finally:
            _release_freed_memory()

    def _fetch(self, cur: Any, query: str, schema: dict[str, Any]) -> pl.DataFrame:
        """One query's rows on an open ADBC cursor, narrowed batch by batch."""
        cur.adbc_statement.set_options(**{"adbc.sqlite.query.batch_rows": BATCH_ROWS})
        cur.execute(query)
        parts = []
        for batch in cur.fetch_record_batch():
            part = pl.from_arrow(batch)
            assert isinstance(part, pl.DataFrame)
            parts.append(_narrowed(part, schema, self.path, query))
        if not parts:
            return pl.DataFrame(schema=schema)
        return pl.concat(parts, rechunk=False)


def _sql_field(field: Field, cols: set[str]) -> str:
    """`field` as SQL: its first present source (coalesced), text read as BLOB (decoded by
    `_narrowed`, invalid UTF-8 too), CAST when the field converts."""
    present = tuple(c for c in field.sources if c in cols)
    if not present:
        return f"NULL AS {field.name}"
    source = _first_of(present)
    if field.dtype == pl.String:
        return f"CAST({source} AS BLOB) AS {field.name}"
    if field.convert:
        sql_type = "REAL" if field.dtype.is_float() else "INTEGER"
        return f"CAST({source} AS {sql_type}) AS {field.name}"
    return f"{source} AS {field.name}"


def _first_of(columns: tuple[str, ...]) -> str:
    return columns[0] if len(columns) == 1 else f"coalesce({', '.join(columns)})"


def _where(read: TableRead, *more: str) -> str:
    terms = [t for t in more if t]
    if read.event_types is not None:
        terms.insert(0, f"eventType IN ({','.join(str(t) for t in read.event_types)})")
    return f" WHERE {' AND '.join(terms)}" if terms else ""


def _release_freed_memory() -> None:
    """Give memory freed by the SQLite driver (C malloc) back to the system: polars allocates
    with its own allocator and cannot reuse it, so without this the peak only grows."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc: nothing to trim
        return
    libc.malloc_trim(0)


def _readonly_uri(path: Path) -> str:
    """Read-only URI; `immutable=1` (no locks, no -wal/-shm files) for a WAL-mode database, whose
    read-only opening would otherwise create those files beside it, and for private copies."""
    query = "mode=ro"
    if path.parent.name.startswith(SCRATCH_PREFIX) or _is_wal(path):
        query += "&immutable=1"
    return f"file:{urllib.parse.quote(str(path.resolve()))}?{query}"


def _is_wal(path: Path) -> bool:
    with path.open("rb") as handle:
        handle.seek(WAL_HEADER_OFFSET)
        return handle.read(1) == b"\x02"


def _narrowed(part: pl.DataFrame, schema: dict[str, Any], path: Path, query: str) -> pl.DataFrame:
    """One record batch cast to `schema`; text read as BLOB is decoded, and a value the schema
    cannot hold (text or a fraction in an id column, an id beyond int32) is a clear error."""
    decoded = [
        _decoded(part[c])
        for c, t in schema.items()
        if t == pl.String and part[c].dtype == pl.Binary
    ]
    part = part.with_columns(decoded)
    try:
        return part.cast(schema)  # type: ignore[arg-type]
    except (pl.exceptions.InvalidOperationError, pl.exceptions.ComputeError) as exc:
        alias = next((c for c, t in schema.items() if _cast_fails(part[c], t)), None)
        if alias is None:
            raise CorruptTraceError(_corrupt_message(path, exc)) from exc
        values = part[alias]
        try:
            lost = values.cast(schema[alias], strict=False).is_null() & values.is_not_null()
            bad = values.filter(lost)
        except (pl.exceptions.InvalidOperationError, pl.exceptions.ComputeError):
            bad = values.drop_nulls()  # no value of this type converts at all (bytes)
        example = repr(bad[0])[:40] if len(bad) else "?"
        source = re.search(rf"(\w+) AS {alias}\b", query)
        raise CorruptTraceError(
            f"{path}: column {source[1] if source else alias} of table {_table_of(query)} holds "
            f"{example}, not a value of type {schema[alias]}; the export was edited or damaged. "
            f"Export it again with `{EXPORT_COMMAND}`."
        ) from exc


def _cast_fails(values: pl.Series, dtype: Any) -> bool:
    try:
        values.cast(dtype)
    except (pl.exceptions.InvalidOperationError, pl.exceptions.ComputeError):
        return True
    return False


def _decoded(values: pl.Series) -> pl.Series:
    """Binary → String with invalid UTF-8 (damaged or hand-written NVTX text) decoded with
    U+FFFD replacements. Valid data is checked in one pass over the whole buffer; only the rows
    found invalid are decoded one by one."""
    arrow = values.rechunk().to_arrow()
    _, offset_buffer, data = arrow.buffers()
    width = np.int64 if arrow.type == pa.large_binary() else np.int32
    window = np.frombuffer(offset_buffer, width)[arrow.offset : arrow.offset + len(arrow) + 1]
    offsets = window.astype(np.int64)  # positions in the data buffer
    raw = data.to_pybytes() if data is not None else b""
    bad: list[int] = []
    pos, end = int(offsets[0]), int(offsets[-1])
    while pos < end:
        try:
            raw[pos:end].decode("utf-8")
            break
        except UnicodeDecodeError as exc:
            row = int(np.searchsorted(offsets, pos + exc.start, side="right")) - 1
            bad.append(row)
            pos = int(offsets[row + 1])
    # Valid as a whole, but a row may still start inside another row's character.
    starts, stops = offsets[:-1], offsets[1:]
    nonempty = np.flatnonzero(stops > starts)
    if len(nonempty):
        heads = np.frombuffer(raw, np.uint8)[starts[nonempty]]
        split = np.flatnonzero((heads & 0xC0) == 0x80)  # and the row before may end mid-char
        bad.extend(nonempty[split].tolist() + nonempty[split[split > 0] - 1].tolist())
    if not bad:
        return values.cast(pl.String)
    rows = sorted(set(bad))
    fixed = [raw[offsets[r] : offsets[r + 1]].decode("utf-8", "replace") for r in rows]
    invalid = np.zeros(len(arrow), dtype=bool)
    invalid[rows] = True
    valid_only = pc.if_else(pa.array(invalid), pa.scalar(None, arrow.type), arrow)
    text = pl.Series(values.name, valid_only.cast(pa.large_string()))
    return text.scatter(rows, fixed)


def _table_of(query: str) -> str:
    match = re.search(r"\bFROM\s+(\w+)", query)
    return match[1] if match else "?"


def _interrupted(exc: BaseException | None) -> bool:
    """Whether `exc` was raised because of a Ctrl-C: while a query runs, the ADBC driver
    manager holds SIGINT with a native handler that only asks the driver to cancel, and the
    SQLite driver's refusal (NOT_IMPLEMENTED) is raised from a KeyboardInterrupt."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, KeyboardInterrupt):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False


def _read_error(path: Path, exc: Exception, table: str = "?") -> TraceError:
    """The error a failed SQLite read means, said plainly. A read stopped by Ctrl-C is no
    error of the trace: the signal the driver took is delivered again to the process's own
    handler (the command stops with 130; a notebook gets KeyboardInterrupt)."""
    if _interrupted(exc):
        signal.raise_signal(signal.SIGINT)
    text = str(exc)
    lower = text.lower()
    if "locked" in lower or "busy" in lower:
        return TraceLockedError(
            f"{path}: the trace is locked by another process (it is being written); wait for "
            "that process to finish, or analyze a copy"
        )
    column = re.search(r"no such column:\s*(\S+)", text)
    if column:
        return MissingColumnError(
            f"{path}: trace lacks column {column[1]} of table {table}; export the "
            f"report again with `{EXPORT_COMMAND}`"
        )
    missing = re.search(r"no such table:\s*(\S+)", text)
    if missing:
        return MissingTableError(
            f"{path}: trace lacks table {missing[1]} (a view or table refers to it); export the "
            f"report again with `{EXPORT_COMMAND}`"
        )
    if "type mismatch" in lower:
        return CorruptTraceError(
            f"{path}: a column of table {table} mixes text and numbers ({text}); the "
            f"export was edited or damaged. Export it again with `{EXPORT_COMMAND}`."
        )
    if "permission" in lower or "readonly" in lower or "unable to open" in lower:
        return TraceAccessError(
            f"{path}: SQLite cannot open the trace ({text}); check its permissions"
        )
    return CorruptTraceError(_corrupt_message(path, exc))


def _corrupt_message(path: Path, exc: Exception) -> str:
    return (
        f"{path}: the SQLite file cannot be read ({exc}); it is truncated or damaged. "
        "Export it again with `nsys export --type sqlite -f true -o FILE.sqlite REPORT.nsys-rep`."
    )


def open_sqlite(path: Path) -> SqliteTrace:
    """Open the SQLite export at `path` (a regular file, maybe compressed) read-only; the file
    is never written, and no -wal, -shm or -journal file is created beside it.

    Raises:
        TraceAccessError: permission denied.
        WrongFileKindError: not an SQLite file.
        CorruptTraceError: the file is truncated or damaged.
        TraceLockedError: another process is writing it.
        TraceTooLargeError: a compressed export would decompress past the size cap.
        MissingTableError: it is SQLite, but not an nsys export.
    """
    try:
        db_path, scratch = decompressed(path)
        magic = file_head(db_path)
    except PermissionError:
        raise TraceAccessError(
            f"{path}: permission denied; make the file readable (`chmod u+r {path}`)."
        ) from None
    if magic != SQLITE_MAGIC:
        remove_scratch_dir(scratch)
        if scratch is not None and magic.startswith(ARROW_STREAM_MAGIC):
            raise WrongFileKindError(
                f"{path}: is a compressed Arrow export; only SQLite exports are read compressed. "
                f"Decompress it (`xz -dk {path}`) and give the file."
            )
        raise WrongFileKindError(wrong_kind_message(path))
    if _is_wal(db_path) and _has_pending_wal(db_path):
        remove_scratch_dir(scratch)
        raise TraceLockedError(
            f"{path}: is in WAL mode with changes still in {db_path.name}-wal (another process "
            "may be writing it); let that process finish, or analyze a copy made with "
            "`sqlite3 FILE '.backup copy.sqlite'`."
        )
    try:
        conn = sqlite3.connect(
            _readonly_uri(db_path), uri=True, check_same_thread=False, timeout=1.0
        )
        conn.text_factory = lambda raw: raw.decode("utf-8", "replace")
        trace = SqliteTrace(path, conn, db_path)
        if scratch is not None:  # the decompressed copy goes when the Trace does
            weakref.finalize(trace, remove_scratch_dir, scratch)
        tables = trace.tables
    except sqlite3.Error as exc:
        remove_scratch_dir(scratch)
        raise _read_error(path, exc) from exc
    if not tables & EXPORT_MARKERS:
        raise MissingTableError(
            f"{path}: this SQLite file is not an Nsight Systems export (none of NVTX_EVENTS, "
            "CUPTI_ACTIVITY_KIND_*, StringIds). Export one with `nsys export --type sqlite`."
        )
    return trace


def _has_pending_wal(db_path: Path) -> bool:
    wal = db_path.with_name(db_path.name + "-wal")
    return wal.is_file() and wal.stat().st_size > 0
