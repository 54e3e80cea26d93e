"""Write the PyTorch profiler (Kineto) Chrome trace of the run an nsys SQLite export holds.

For traces that exist only as SQLite (`gen_trace`'s): the same events as `torch.profiler` would
record of that run, in Kineto's layout, so the two readers can be held to the same report and
timed on the same run. What becomes what (the inverse of `llm_perf_opt.trace.kineto`):

- NVTX push/pop and start/end ranges (every domain) → `user_annotation` spans on their thread,
  without domain or payload (a span has neither);
- CUDA API calls → `cuda_runtime` events (name, `args.correlation`);
- kernels, memcpys, memsets → `kernel`, `gpu_memcpy`, `gpu_memset` events (pid = device, tid =
  stream, `args.device`, `args.stream`, `args.correlation`, `args.bytes`);
- CUPTI synchronization rows → `cuda_sync` events;
- TARGET_INFO_GPU → `deviceProperties`; the run-metadata mark → the top-level key
  `llm_perf_opt.run_meta`, as the runner's `--profiler torch` adds it (`add_metadata_json`).

Times are written as Kineto does: µs with exactly 3 decimals (`ns // 1000 . ns % 1000`). Events
come in Kineto's order: CPU spans, then API calls, then GPU activity kind by kind (not merged by
start). CUDA-graph executions traced whole (GRAPH_TRACE rows) have no Kineto form: a trace with
them is refused. Streams from SQLite to the file; `.gz` output is gzip-compressed.

Example:
    PYTHONPATH=src:. python3 benchmarks/sqlite_to_kineto.py /tmp/gen_1e6.sqlite \
        /tmp/gen_1e6.pt.trace.json
"""

from __future__ import annotations

import argparse
import gzip
import json
import sqlite3
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import IO, Final

if __package__ in (None, ""):  # run as a script: import from the repo root and src/
    _ROOT = Path(__file__).resolve().parents[1]
    sys.path[:0] = [str(_ROOT), str(_ROOT / "src")]

from llm_perf_opt.inputs.run_meta import meta_from_marks
from llm_perf_opt.trace import open_trace
from llm_perf_opt.vocab import RUN_META_TRACE_KEY

TID_BITS: Final = 24
RANGE_TYPES: Final = "(59, 60, 70, 71)"
OP_QUERIES: Final = {
    "kernel": (
        "CUPTI_ACTIVITY_KIND_KERNEL",
        "SELECT k.start, k.end, k.deviceId, k.streamId, k.correlationId, s.value, NULL "
        "FROM CUPTI_ACTIVITY_KIND_KERNEL k JOIN StringIds s ON s.id = k.demangledName "
        "ORDER BY k.rowid",
    ),
    "gpu_memcpy": (
        "CUPTI_ACTIVITY_KIND_MEMCPY",
        "SELECT start, end, deviceId, streamId, correlationId, 'Memcpy', bytes "
        "FROM CUPTI_ACTIVITY_KIND_MEMCPY ORDER BY rowid",
    ),
    "gpu_memset": (
        "CUPTI_ACTIVITY_KIND_MEMSET",
        "SELECT start, end, deviceId, streamId, correlationId, 'Memset (Device)', bytes "
        "FROM CUPTI_ACTIVITY_KIND_MEMSET ORDER BY rowid",
    ),
}


def us(ns: int) -> str:
    """Kineto's µs text of an integer ns: exactly 3 decimals."""
    sign = "-" if ns < 0 else ""
    whole, frac = divmod(abs(ns), 1000)
    return f"{sign}{whole}.{frac:03d}"


def _name(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def _split(global_tid: int) -> tuple[int, int]:
    return (global_tid >> TID_BITS) & ((1 << TID_BITS) - 1), global_tid & ((1 << TID_BITS) - 1)


def _tables(db: sqlite3.Connection) -> set[str]:
    return {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def _ranges(db: sqlite3.Connection) -> Iterable[str]:
    rows = db.execute(
        "SELECT e.start, e.end, e.globalTid, COALESCE(e.text, s.value, '') FROM NVTX_EVENTS e "
        f"LEFT JOIN StringIds s ON s.id = e.textId WHERE e.eventType IN {RANGE_TYPES} "
        "AND e.end IS NOT NULL ORDER BY e.rowid"
    )
    for start, end, gtid, text in rows:
        pid, tid = _split(gtid)
        yield (
            f'{{"ph": "X", "cat": "user_annotation", "name": {_name(text)}, "pid": {pid}, '
            f'"tid": {tid}, "ts": {us(start)}, "dur": {us(end - start)}, "args": {{}}}}'
        )


def _api_calls(db: sqlite3.Connection) -> Iterable[str]:
    rows = db.execute(
        "SELECT r.start, r.end, r.globalTid, r.correlationId, s.value "
        "FROM CUPTI_ACTIVITY_KIND_RUNTIME r JOIN StringIds s ON s.id = r.nameId ORDER BY r.rowid"
    )
    for start, end, gtid, corr, name in rows:
        pid, tid = _split(gtid)
        yield (
            f'{{"ph": "X", "cat": "cuda_runtime", "name": {_name(name)}, "pid": {pid}, '
            f'"tid": {tid}, "ts": {us(start)}, "dur": {us(end - start)}, '
            f'"args": {{"External id": {corr}, "correlation": {corr}}}}}'
        )


def _gpu_ops(db: sqlite3.Connection, tables: set[str]) -> Iterable[str]:
    for cat, (table, query) in OP_QUERIES.items():
        if table not in tables:
            continue
        for start, end, device, stream, corr, name, n_bytes in db.execute(query):
            extra = "" if n_bytes is None else f', "bytes": {n_bytes}'
            yield (
                f'{{"ph": "X", "cat": "{cat}", "name": {_name(name)}, "pid": {device}, '
                f'"tid": {stream}, "ts": {us(start)}, "dur": {us(end - start)}, '
                f'"args": {{"device": {device}, "stream": {stream}, '
                f'"correlation": {corr}{extra}}}}}'
            )


def _syncs(db: sqlite3.Connection, tables: set[str]) -> Iterable[str]:
    if "CUPTI_ACTIVITY_KIND_SYNCHRONIZATION" not in tables:
        return
    rows = db.execute(
        "SELECT start, end, deviceId, streamId, correlationId "
        "FROM CUPTI_ACTIVITY_KIND_SYNCHRONIZATION ORDER BY rowid"
    )
    for start, end, device, stream, corr in rows:
        yield (
            f'{{"ph": "X", "cat": "cuda_sync", "name": "Sync", "pid": {device}, '
            f'"tid": {stream}, "ts": {us(start)}, "dur": {us(end - start)}, '
            f'"args": {{"device": {device}, "stream": {stream}, "correlation": {corr}}}}}'
        )


def _device_properties(db: sqlite3.Connection) -> list[dict[str, object]]:
    rows = db.execute(
        "SELECT id, name, smCount, totalMemory, computeMajor, computeMinor FROM TARGET_INFO_GPU"
    )
    keys = ("id", "name", "numSms", "totalGlobalMem", "computeMajor", "computeMinor")
    return [dict(zip(keys, row, strict=True)) for row in rows]


def convert(db_path: Path, out: Path) -> int:
    """Write the Kineto trace of the export at `db_path` to `out`; returns the events written.

    Raises:
        ValueError: the export holds CUDA graphs traced whole (no Kineto form).
    """
    meta = meta_from_marks(open_trace(db_path).nvtx_marks())
    db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    tables = _tables(db)
    if "CUPTI_ACTIVITY_KIND_GRAPH_TRACE" in tables:
        raise ValueError(f"{db_path}: CUDA graphs traced whole have no profiler-trace form")
    head: dict[str, object] = {
        "schemaVersion": 1,
        "deviceProperties": _device_properties(db),
    }
    if meta is not None:
        head[RUN_META_TRACE_KEY] = meta.raw
    tmp = out.with_name(out.name + ".partial")
    n = 0
    with tmp.open("wb") as raw:
        handle: IO[bytes] = raw
        if out.suffix == ".gz":
            handle = gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=1)
        write = handle.write
        write(b"{\n")
        for key, value in head.items():
            write(f"  {json.dumps(key)}: {json.dumps(value)},\n".encode())
        write(b'  "traceEvents": [\n')
        streams = (_ranges(db), _api_calls(db), _gpu_ops(db, tables), _syncs(db, tables))
        first = True
        for stream in streams:
            for line in stream:
                write(b"  " + line.encode() if first else b",\n  " + line.encode())
                first = False
                n += 1
        write(b'\n  ],\n  "traceName": ' + json.dumps(str(out)).encode() + b"\n}\n")
        if handle is not raw:
            handle.close()
    tmp.replace(out)
    db.close()
    return n


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sqlite", type=Path, help="an nsys SQLite export")
    parser.add_argument("out", type=Path, help="the trace to write (.json or .json.gz)")
    args = parser.parse_args(argv)
    n = convert(args.sqlite, args.out)
    print(f"{args.out}: {n:,} events")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
