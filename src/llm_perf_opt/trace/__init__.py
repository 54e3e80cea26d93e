"""Read an Nsight Systems export (read-only) into polars frames.

`open_trace` takes any export nsys writes: SQLite (`--type sqlite`, also .xz/.gz compressed),
Parquet (`--type parquetdir`) or Arrow (`--type arrowdir`, `--type arrow`); every backend returns
the same frames (`Trace`). Exports from nsys 2022.4 (schema 3.0) to 2026.x (3.25+) are read:
columns and tables that a version lacks, or that the lazy exporter left out because they had no
rows, come back as nulls or empty frames. Names are resolved from `StringIds` at the edge; kernel
names stay integer ids (`name_id`) until a report asks for them, because millions of demangled
names are costly.
"""

from llm_perf_opt.errors import (
    CorruptTraceError,
    MissingColumnError,
    MissingTableError,
    NoGpuOpsError,
    NoNvtxEventsError,
    TraceAccessError,
    TraceError,
    TraceLockedError,
    TraceNotFoundError,
    TraceTooLargeError,
    UnorderedTableError,
    WrongFileKindError,
)
from llm_perf_opt.trace.columns import (
    API_CALL_BATCH_SCHEMA,
    API_CALLS_SCHEMA,
    GPU_OP_TABLES,
    GPU_OPS_SCHEMA,
    LEAN_DROPS,
    MAX_OPEN_RANGES_PER_THREAD,
    NVTX_RANGES_SCHEMA,
    OP_KINDS,
    REQUIRED_COLUMNS,
    pid_of,
    process_key,
    tid_of,
)
from llm_perf_opt.trace.files import (
    DECOMPRESS_CAP_ENV,
    decompress_cap,
    in_scratch,
    remove_scratch,
    remove_scratch_of,
    scratch_dirs,
    table_dir_format,
)
from llm_perf_opt.trace.frames import Trace
from llm_perf_opt.trace.opening import open_trace
from llm_perf_opt.trace.sqlite import SqliteTrace
from llm_perf_opt.trace.table_dirs import TableTrace

__all__ = [
    "API_CALLS_SCHEMA",
    "API_CALL_BATCH_SCHEMA",
    "DECOMPRESS_CAP_ENV",
    "GPU_OPS_SCHEMA",
    "GPU_OP_TABLES",
    "LEAN_DROPS",
    "MAX_OPEN_RANGES_PER_THREAD",
    "NVTX_RANGES_SCHEMA",
    "OP_KINDS",
    "REQUIRED_COLUMNS",
    "CorruptTraceError",
    "MissingColumnError",
    "MissingTableError",
    "NoGpuOpsError",
    "NoNvtxEventsError",
    "SqliteTrace",
    "TableTrace",
    "Trace",
    "TraceAccessError",
    "TraceError",
    "TraceLockedError",
    "TraceNotFoundError",
    "TraceTooLargeError",
    "UnorderedTableError",
    "WrongFileKindError",
    "decompress_cap",
    "in_scratch",
    "open_trace",
    "pid_of",
    "process_key",
    "remove_scratch",
    "remove_scratch_of",
    "scratch_dirs",
    "table_dir_format",
    "tid_of",
]
