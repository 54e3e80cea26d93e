"""The Arrow/Parquet backend: nsys exports written as one typed table per file or stream.

`--type parquetdir` writes `DIR/<TABLE>.parquet`, `--type arrowdir` `DIR/<TABLE>.arrow` (an
Arrow IPC stream each), `--type arrow` one file of IPC streams, one per table, named by their
`table_name` schema metadata. Rows are in the order of the SQLite export's rowids and the columns
are the same, typed; Parquet is scanned lazily (only the columns a frame needs are decoded),
Arrow streams are memory-mapped (only the columns a frame needs are paged in).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Final, Protocol

import polars as pl
import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

from llm_perf_opt.errors import (
    CorruptTraceError,
    MissingTableError,
    TraceAccessError,
    WrongFileKindError,
)
from llm_perf_opt.trace.columns import EXPORT_MARKERS, Field, TableRead
from llm_perf_opt.trace.files import table_files
from llm_perf_opt.trace.frames import Trace

# The schema metadata key naming the table of each stream of a `--type arrow` export.
TABLE_NAME_KEY: Final = b"table_name"
EXPORT_COMMANDS: Final = {
    "parquet": "nsys export --type parquetdir",
    "arrow": "nsys export --type arrowdir",
    "stream": "nsys export --type arrow",
}


class _Tables(Protocol):
    """Where the tables of one export are, and how to read their columns."""

    def names(self) -> frozenset[str]: ...

    def columns(self, table: str) -> tuple[str, ...]: ...

    def scan(self, table: str, columns: list[str]) -> pl.LazyFrame: ...

    def batches(self, table: str, columns: list[str], rows: int) -> Iterator[pa.Table]: ...

    def where(self, table: str) -> str: ...


# Rows decoded at once when a read keeps only some event types.
EVENT_BATCH_ROWS: Final = 1 << 16


class _ParquetFiles:
    """A parquetdir: one Parquet file per table."""

    def __init__(self, files: dict[str, Path]) -> None:
        self.files = files

    def names(self) -> frozenset[str]:
        return frozenset(self.files)

    def columns(self, table: str) -> tuple[str, ...]:
        return tuple(pl.read_parquet_schema(self.files[table]))

    def scan(self, table: str, columns: list[str]) -> pl.LazyFrame:
        return pl.scan_parquet(self.files[table]).select(columns)

    def batches(self, table: str, columns: list[str], rows: int) -> Iterator[pa.Table]:
        """One row group decoded at a time, only its `columns`, in slices of `rows` (pyarrow's
        `iter_batches` peaked higher on the generated traces)."""
        with pq.ParquetFile(self.files[table]) as handle:
            for group in range(handle.metadata.num_row_groups):
                decoded = handle.read_row_group(group, columns=columns)
                for offset in range(0, decoded.num_rows, rows):
                    yield decoded.slice(offset, rows)

    def where(self, table: str) -> str:
        return str(self.files[table])


class _ArrowDir:
    """An arrowdir: one Arrow IPC stream file per table, memory-mapped when first read."""

    def __init__(self, files: dict[str, Path]) -> None:
        self.files = files
        self._tables: dict[str, pa.Table] = {}

    def table(self, name: str) -> pa.Table:
        if name not in self._tables:
            with ipc.open_stream(pa.memory_map(str(self.files[name]))) as reader:
                self._tables[name] = reader.read_all()
        return self._tables[name]

    def names(self) -> frozenset[str]:
        return frozenset(self.files)

    def columns(self, table: str) -> tuple[str, ...]:
        return tuple(self.table(table).column_names)

    def scan(self, table: str, columns: list[str]) -> pl.LazyFrame:
        frame = pl.from_arrow(self.table(table).select(columns))
        assert isinstance(frame, pl.DataFrame)
        return frame.lazy()

    def batches(self, table: str, columns: list[str], rows: int) -> Iterator[pa.Table]:
        """Slices of the mapped table (nothing copied), whatever its record batches are."""
        whole = self.table(table).select(columns)
        for offset in range(0, whole.num_rows, rows):
            yield whole.slice(offset, rows)

    def where(self, table: str) -> str:
        return str(self.files[table])


class _ArrowStreamFile(_ArrowDir):
    """A `--type arrow` export: the stream of every table in one file, memory-mapped."""

    def __init__(self, path: Path, tables: dict[str, pa.Table]) -> None:
        super().__init__(dict.fromkeys(tables, path))
        self._tables = tables

    def where(self, table: str) -> str:
        return f"{self.files[table]} (table {table})"


class TableTrace(Trace):
    """An open nsys export of typed tables: a parquetdir, an arrowdir or an arrow stream file."""

    def __init__(self, path: Path, tables: _Tables, export_command: str) -> None:
        super().__init__(path, export_command)
        self._tables = tables

    def __repr__(self) -> str:
        return f"TableTrace(path={self.path!r})"

    def _table_names(self) -> frozenset[str]:
        return self._tables.names()

    def _column_names(self, table: str) -> tuple[str, ...]:
        with self._reading(table):
            return self._tables.columns(table)

    def _max(self, table: str, columns: tuple[str, ...]) -> int | None:
        present = [c for c in columns if c in self.columns(table)]
        if not present:
            return None
        with self._reading(table):
            frame = self._tables.scan(table, present).select(pl.coalesce(present).max())
            value = frame.collect().item()
        return None if value is None else int(value)

    def _row_bound(self, table: str) -> int:
        with self._reading(table):
            first = self._tables.columns(table)[:1]
            return int(self._tables.scan(table, list(first)).select(pl.len()).collect().item())

    def _read(self, read: TableRead) -> pl.DataFrame:
        cols = frozenset(self.columns(read.table))
        if read.event_types is not None and read.order_by in (None, "rowid"):
            # a few event types of a large table (NVTX marks, domains): filtered batch by
            # batch, since the row numbers keep polars from filtering before decoding
            parts = list(self._read_batches(read, EVENT_BATCH_ROWS))
            return pl.concat(parts) if parts else pl.DataFrame(schema=read.schema)
        with self._reading(read.table, read, cols):
            frame = self._tables.scan(read.table, read.sources(cols))
            if read.order_by and read.order_by != "rowid":
                frame = frame.sort(read.order_by, maintain_order=True)
            return _selected(frame, read, cols, first_row=1).collect()

    def _read_batches(self, read: TableRead, rows: int) -> Iterator[pl.DataFrame]:
        cols = frozenset(self.columns(read.table))
        first_row = 1
        with self._reading(read.table, read, cols):
            for batch in self._tables.batches(read.table, read.sources(cols), rows):
                part = pl.from_arrow(batch)
                assert isinstance(part, pl.DataFrame)
                yield _selected(part.lazy(), read, cols, first_row).collect()
                first_row += part.height

    @contextmanager
    def _reading(
        self, table: str, read: TableRead | None = None, cols: frozenset[str] = frozenset()
    ) -> Iterator[None]:
        """Errors of reading `table` as the reader's: a file that cannot be opened or decoded,
        and a value the frame's type cannot hold (named by its column)."""
        where = self._tables.where(table)
        try:
            yield
        except PermissionError:
            raise TraceAccessError(
                f"{where}: permission denied; make the export's files readable"
            ) from None
        except pl.exceptions.InvalidOperationError as exc:
            field = _failing_field(read, cols, self._tables.scan) if read else None
            what = f"column {field.sources[0]}" if field else "a column"
            raise CorruptTraceError(
                f"{where}: {what} of table {table} holds a value that is not of type "
                f"{field.dtype if field else 'the export schema'} ({_first_line(exc)}); the "
                f"export was edited or damaged. Export it again with `{self.export_command}`."
            ) from exc
        except (OSError, pa.ArrowException, pl.exceptions.PolarsError) as exc:
            raise CorruptTraceError(
                f"{where}: cannot be read ({_first_line(exc)}); it is truncated or damaged. "
                f"Export it again with `{self.export_command} -f true`."
            ) from exc


def _selected(
    frame: pl.LazyFrame, read: TableRead, cols: frozenset[str], first_row: int
) -> pl.LazyFrame:
    """`read`'s columns of a frame of the table's rows, the first being row `first_row`."""
    exprs = [_expr(f, cols) for f in read.fields]
    if read.row_id:
        frame = frame.with_row_index(read.row_id, offset=first_row)
        exprs.insert(0, pl.col(read.row_id).cast(pl.Int64) + read.row_id_offset)
    if read.event_types is not None:
        frame = frame.filter(pl.col("eventType").is_in(read.event_types))
    return frame.select(exprs)


def _expr(field: Field, cols: frozenset[str]) -> pl.Expr:
    """`field` over the table's columns: its first present source (coalesced), cast to its type."""
    present = [c for c in field.sources if c in cols]
    if not present:
        return pl.lit(None, field.dtype).alias(field.name)
    value = pl.col(present[0]) if len(present) == 1 else pl.coalesce(present)
    return value.cast(field.dtype).alias(field.name)


def _failing_field(
    read: TableRead, cols: frozenset[str], scan: Callable[[str, list[str]], pl.LazyFrame]
) -> Field | None:
    """The first field of `read` whose values its type cannot hold."""
    for field in read.fields:
        sources = [c for c in field.sources if c in cols]
        if not sources:
            continue
        try:
            scan(read.table, sources).select(_expr(field, cols)).collect()
        except pl.exceptions.InvalidOperationError:
            return field
    return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def open_table_dir(path: Path) -> TableTrace:
    """Open the folder a parquetdir or arrowdir export wrote.

    Raises:
        WrongFileKindError: the folder holds no table files, or both kinds.
        MissingTableError: its tables are not those of an nsys export.
    """
    found = {fmt: files for fmt, files in table_files(path).items() if files}
    if not found:
        raise WrongFileKindError(
            f"{path}: is a directory without nsys export tables (TABLE.parquet or TABLE.arrow "
            "files). Give an SQLite export, or the folder `nsys export --type parquetdir -o DIR "
            "REPORT.nsys-rep` wrote."
        )
    exports = [fmt for fmt, files in found.items() if EXPORT_MARKERS & set(files)]
    if len(exports) > 1:
        raise WrongFileKindError(
            f"{path}: holds both a parquetdir and an arrowdir export; give each its own folder"
        )
    if not exports:
        fmt, files = next(iter(found.items()))
        raise MissingTableError(
            f"{path}: its .{fmt} files ({len(files)}) are not an Nsight Systems export (none of "
            "NVTX_EVENTS, CUPTI_ACTIVITY_KIND_*, StringIds). Export one with "
            f"`{EXPORT_COMMANDS[fmt]} -o DIR REPORT.nsys-rep`."
        )
    fmt = exports[0]
    files = found[fmt]
    tables: _Tables = _ParquetFiles(files) if fmt == "parquet" else _ArrowDir(files)
    return TableTrace(path, tables, EXPORT_COMMANDS[fmt])


def open_arrow_stream(path: Path) -> TableTrace:
    """Open a `--type arrow` export: every table's stream found by its `table_name` metadata,
    memory-mapped (nothing is copied).

    Raises:
        CorruptTraceError: the streams cannot be read (truncated or damaged).
        WrongFileKindError: the file holds one table of an arrowdir export, or unnamed streams.
        MissingTableError: its tables are not those of an nsys export.
    """
    tables: dict[str, pa.Table] = {}
    source = pa.memory_map(str(path))
    try:
        while source.tell() < source.size():
            with ipc.open_stream(source) as reader:
                name = (reader.schema.metadata or {}).get(TABLE_NAME_KEY)
                if name is None:
                    raise WrongFileKindError(
                        f"{path}: is an Arrow stream without nsys table names; give an nsys "
                        "export (`nsys export --type arrow`, `arrowdir` or `parquetdir`)"
                    )
                tables[name.decode()] = reader.read_all()
    except (OSError, pa.ArrowException) as exc:
        raise CorruptTraceError(
            f"{path}: the Arrow export cannot be read ({_first_line(exc)}); it is truncated or "
            f"damaged. Export it again with `{EXPORT_COMMANDS['stream']} -f true`."
        ) from exc
    if len(tables) == 1:
        raise WrongFileKindError(
            f"{path}: holds only table {next(iter(tables))}, one file of an arrowdir export; "
            "give the folder that holds it."
        )
    if not EXPORT_MARKERS & set(tables):
        raise MissingTableError(
            f"{path}: this Arrow file is not an Nsight Systems export (none of NVTX_EVENTS, "
            f"CUPTI_ACTIVITY_KIND_*, StringIds). Export one with `{EXPORT_COMMANDS['stream']}`."
        )
    return TableTrace(path, _ArrowStreamFile(path, tables), EXPORT_COMMANDS["stream"])
