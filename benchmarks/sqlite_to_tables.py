"""Convert an nsys SQLite export (a generated one, say) into the folder `nsys export --type
parquetdir` or `--type arrowdir` writes, and time reading each.

nsys itself writes the same tables with the same columns and rows (in rowid order) for every
export type; this converter does so from the SQLite file, for traces that exist only as SQLite
(`gen_trace.py`'s). Column types follow the SQLite declared types (INTEGER → int64, REAL →
float64, TEXT → string); nsys's own files use narrower and unsigned types, which the reader casts
alike. `--time N` then times `open_trace + nvtx_ranges + gpu_ops + launch_calls` (what every
analysis reads, through `prefetch_gpu_work`) on the SQLite file and on the folder, N fresh
processes each, and prints the medians.

Example:
    PYTHONPATH=src:. python3 benchmarks/sqlite_to_tables.py /tmp/gen_1e6.sqlite \
        /tmp/gen_1e6_parquet --time 5
"""

from __future__ import annotations

import argparse
import shutil
import sqlite3
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Final

if __package__ in (None, ""):  # run as a script: import from the repo root and src/
    _ROOT = Path(__file__).resolve().parents[1]
    sys.path[:0] = [str(_ROOT), str(_ROOT / "src")]

import adbc_driver_sqlite.dbapi as adbc
import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

from llm_perf_opt.trace import SqliteTrace, open_trace

# Rows per Parquet row group (nsys writes whole tables as one; smaller groups test batches).
DEFAULT_ROW_GROUP_ROWS: Final = 1 << 20
DECLARED_TYPES: Final = {"INTEGER": pa.int64(), "REAL": pa.float64(), "TEXT": pa.large_string()}
# One timed read, run in a fresh process: seconds from open_trace to the last frame.
READ_ONCE: Final = """
import sys, time
from llm_perf_opt.trace import open_trace
began = time.perf_counter()
trace = open_trace(sys.argv[1])
trace.prefetch_gpu_work()
trace.nvtx_ranges()
trace.take_gpu_work()
print(time.perf_counter() - began)
"""


def convert(
    sqlite: Path,
    out: Path,
    fmt: str = "parquet",
    row_group_rows: int = DEFAULT_ROW_GROUP_ROWS,
    tables: Sequence[str] | None = None,
) -> dict[str, int]:
    """Write every table of `sqlite` (or those named) as `out/<TABLE>.parquet` or `.arrow`;
    returns table → rows. `out` is replaced."""
    trace = open_trace(sqlite)
    assert isinstance(trace, SqliteTrace), f"{sqlite} is not an SQLite export"
    names = sorted(tables if tables is not None else trace.tables)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    written = {}
    uri = f"file:{trace.db_path.resolve()}?mode=ro"
    with adbc.connect(uri) as conn, conn.cursor() as cur:
        for name in names:
            cur.execute(f"SELECT * FROM {name} ORDER BY rowid")
            table = _declared(cur.fetch_arrow_table(), trace.db_path, name).combine_chunks()
            if fmt == "parquet":
                pq.write_table(table, out / f"{name}.parquet", row_group_size=row_group_rows)
            else:
                schema = table.schema.with_metadata({"table_name": name})
                with ipc.new_stream(out / f"{name}.arrow", schema) as writer:
                    writer.write_table(table.cast(schema))
            written[name] = table.num_rows
    return written


def _declared(table: pa.Table, db: Path, name: str) -> pa.Table:
    """`table` with each column in the type its SQLite declaration names."""
    with sqlite3.connect(f"file:{db.resolve()}?mode=ro", uri=True) as conn:
        declared = {r[1]: r[2].upper() for r in conn.execute(f"PRAGMA table_info({name})")}
    fields = [
        pa.field(col, DECLARED_TYPES.get(declared.get(col, ""), table.schema.field(col).type))
        for col in table.column_names
    ]
    return table.cast(pa.schema(fields))


def time_reads(paths: Sequence[Path], repeats: int) -> dict[Path, list[float]]:
    """Seconds of `READ_ONCE` per path, `repeats` fresh processes each, interleaved."""
    seconds: dict[Path, list[float]] = {p: [] for p in paths}
    for _ in range(repeats):
        for path in paths:
            done = subprocess.run(
                [sys.executable, "-c", READ_ONCE, str(path)],
                capture_output=True,
                text=True,
                check=True,
            )
            seconds[path].append(float(done.stdout))
    return seconds


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: convert, then optionally time both inputs."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sqlite", type=Path, help="the SQLite export (.sqlite, .xz or .gz)")
    parser.add_argument("out", type=Path, help="the folder to write (replaced)")
    parser.add_argument("--format", choices=("parquet", "arrow"), default="parquet")
    parser.add_argument("--row-group-rows", type=int, default=DEFAULT_ROW_GROUP_ROWS)
    parser.add_argument("--time", type=int, default=0, metavar="N", help="timed reads of each")
    args = parser.parse_args(argv)
    began = time.perf_counter()
    written = convert(args.sqlite, args.out, args.format, args.row_group_rows)
    size = sum(f.stat().st_size for f in args.out.iterdir())
    print(
        f"{args.out}: {len(written)} tables, {sum(written.values()):,} rows, "
        f"{size / 1e6:,.0f} MB, written in {time.perf_counter() - began:.1f} s"
    )
    if args.time:
        for path, seconds in time_reads([args.sqlite, args.out], args.time).items():
            print(
                f"read {path}: median {statistics.median(seconds):.2f} s "
                f"(min {min(seconds):.2f}, max {max(seconds):.2f}, {len(seconds)} runs)"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
