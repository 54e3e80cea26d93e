"""Time and peak memory of the one-pass attribution against `attribute()` and a raw scan.

Three rows on one generated trace (made once, then reused), each a fresh child process timed by
`bench_analysis`'s wrapper (wall time, peak RSS of the child): `raw`, the sqlite3 scan of the
columns attribution needs; `memory`, `attribute()` with the analysis's stage selection (the
whole tables in memory); `onepass`, `onepass.attribute_stream` over SQLite batches read by rowid
windows (a minimal reader kept here), with the stage groups and the host/GPU windows the
analysis asks for. The onepass row checks that its ranges equal a stored `attribute()` result
when `--check` is given (it then runs `attribute()` too, in a separate child).

Example:
    PYTHONPATH=src:. python3 benchmarks/bench_onepass.py --trace /tmp/gen_1e7.sqlite
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

if __package__ in (None, ""):  # run as a script: import from the repo root and src/
    _ROOT = Path(__file__).resolve().parents[1]
    sys.path[:0] = [str(_ROOT), str(_ROOT / "src")]

import polars as pl

from benchmarks.bench_analysis import RAW_SCAN_SQL, Result, measure, trace_facts
from benchmarks.gen_trace import generate, parse_count
from llm_perf_opt.onepass import DEFAULT_MEMORY_BUDGET_BYTES, OP_BATCH_SCHEMA, StreamBudget
from llm_perf_opt.trace import GPU_OP_TABLES, OP_KINDS, RUNTIME_TABLE, Trace

ROWS = ("raw", "memory", "onepass")
STAGES = ("vision", "prefill", "decode")

# One child per row: argv = trace, budget, output folder.
MEMORY = """
import sys
from llm_perf_opt.attribution import RangeSelection, attribute
from llm_perf_opt.trace import open_trace
selection = RangeSelection(names={stages!r}, domains=("llm_perf_opt",))
attr = attribute(open_trace(sys.argv[1]), selection)
if sys.argv[3] != "-":
    attr.ranges.write_parquet(sys.argv[3])
"""
ONEPASS = """
import sys
import polars as pl
from benchmarks.bench_onepass import call_batches, op_batches, stage_inputs
from llm_perf_opt.attribution import RangeSelection
from llm_perf_opt.onepass import ReadAhead, StreamBudget, attribute_stream, range_frame
from llm_perf_opt.trace import open_trace
trace, budget = open_trace(sys.argv[1]), int(sys.argv[2])
rows = StreamBudget.of(budget)
ops = ReadAhead(op_batches(trace, rows.op_batch_rows))  # reading starts now, beside the NVTX work
calls = ReadAhead(call_batches(trace, rows.call_batch_rows))
base = range_frame(trace.nvtx_ranges(), RangeSelection(names={stages!r}, domains=("llm_perf_opt",)))
groups, windows = stage_inputs(base)
result = attribute_stream(base, ops, calls, groups=groups, windows=windows,
                          memory_budget_bytes=budget)
print(result.stats, file=sys.stderr)
if sys.argv[3] != "-":
    from polars.testing import assert_frame_equal
    assert_frame_equal(result.ranges, pl.read_parquet(sys.argv[3]))
    print("ranges equal attribute()'s", file=sys.stderr)
"""


def stage_inputs(base: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The analysis's top-kernel groups (stage → its ranges) and host/GPU windows (each stage
    range, and each decode step owned by its decode range)."""
    from llm_perf_opt.hostview import stage_windows

    members = {s: base.filter(pl.col("name") == s)["range_id"].to_list() for s in STAGES}
    decode = base.filter(pl.col("name") == "decode").sort("start_ns")
    steps = (
        base.filter(pl.col("name") == "decode_step")
        .sort("start_ns")
        .join_asof(decode.select(owner="range_id", start_ns="start_ns"), on="start_ns")
        .filter(pl.col("owner").is_not_null())
    )
    windows = stage_windows(base, members, steps.select("owner", "range_id").rows())
    groups = pl.DataFrame(
        [(rid, s) for s, ids in members.items() for rid in ids],
        schema={"range_id": pl.Int64, "group": pl.String},
        orient="row",
    )
    return groups, windows


def _table_batches(trace: Trace, select: str, table: str, rows: int) -> Iterator[pl.DataFrame]:
    """`SELECT select FROM table` by rowid windows of `rows` rows, as Arrow batches."""
    import adbc_driver_sqlite.dbapi as adbc

    last = 0
    with adbc.connect(f"file:{trace.db_path or trace.path}?mode=ro") as conn:
        while True:
            with conn.cursor() as cur:
                cur.execute(
                    f"SELECT rowid AS _rowid, {select} FROM {table} WHERE rowid > {last} "
                    f"ORDER BY rowid LIMIT {rows}"
                )
                frame = pl.from_arrow(cur.fetch_arrow_table())
            assert isinstance(frame, pl.DataFrame)
            if frame.is_empty():
                return
            last = int(frame["_rowid"][-1])
            yield frame.drop("_rowid")


def op_batches(trace: Trace, rows: int) -> Iterator[pl.DataFrame]:
    """The lean GPU ops of every op table merged in start order, at most `rows` per batch."""
    streams = []
    for kind_index, (kind, table) in enumerate(GPU_OP_TABLES.items()):
        cols = trace.present_columns(table)
        if not cols:
            continue
        name = "coalesce(demangledName, shortName)" if kind == "kernel" else "NULL"
        graph = "graphId" if "graphId" in cols else "NULL"
        select = (
            f"rowid + {kind_index << 40} AS op_id, deviceId AS device_id, streamId AS stream_id, "
            "start AS start_ns, end AS end_ns, globalPid AS global_pid, "
            f"correlationId AS correlation_id, {name} AS name_id, {graph} AS graph_id"
        )
        streams.append(_typed(_table_batches(trace, select, table, rows), kind))
    yield from _merged(streams, rows)


def _typed(frames: Iterator[pl.DataFrame], kind: str) -> Iterator[pl.DataFrame]:
    """Op rows of one table with their kind, in `OP_BATCH_SCHEMA`."""
    for frame in frames:
        yield (
            frame.with_columns(kind=pl.lit(kind, OP_KINDS))
            .select(OP_BATCH_SCHEMA.names())
            .cast(dict(OP_BATCH_SCHEMA))  # type: ignore[arg-type]
        )


def _merged(streams: list[Iterator[pl.DataFrame]], rows: int) -> Iterator[pl.DataFrame]:
    """Start-ordered batches of several start-ordered streams (ties: the earlier stream first)."""
    heads: list[pl.DataFrame | None] = [next(s, None) for s in streams]
    while any(h is not None for h in heads):
        # every row up to the smallest last start of the streams still going is final
        bound = min(int(h["start_ns"][-1]) for h in heads if h is not None)
        parts = []
        for i, head in enumerate(heads):
            if head is None:
                continue
            n = int(head["start_ns"].search_sorted(bound, side="right"))
            parts.append(head.slice(0, n))
            rest = head.slice(n)
            heads[i] = rest if not rest.is_empty() else next(streams[i], None)
        merged = pl.concat(parts).sort("start_ns", maintain_order=True)
        for offset in range(0, merged.height, rows):
            yield merged.slice(offset, rows)


def call_batches(trace: Trace, rows: int) -> Iterator[pl.DataFrame]:
    """`Trace.launch_calls()` rows by rowid windows (the export lists calls in start order)."""
    select = "globalTid AS global_tid, correlationId AS correlation_id, start AS start_ns"
    schema = {"global_tid": pl.Int64, "correlation_id": pl.Int64, "start_ns": pl.Int64}
    for frame in _table_batches(trace, select, RUNTIME_TABLE, rows):
        yield frame.cast(schema).filter(  # type: ignore[arg-type]
            pl.col("global_tid").is_not_null(), pl.col("start_ns").is_not_null()
        )


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: generate (or reuse) the trace, run each row once, print wall time and peak RSS."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trace", type=Path, default=Path("/tmp/gen_1e7.sqlite"))
    parser.add_argument("--kernels", type=parse_count, default=10_000_000, help="if generated")
    parser.add_argument("--budget", type=int, default=DEFAULT_MEMORY_BUDGET_BYTES, help="bytes")
    parser.add_argument("--rows", default=",".join(ROWS), type=lambda s: tuple(s.split(",")))
    parser.add_argument("--check", action="store_true", help="onepass ranges == attribute()'s")
    parser.add_argument("--timeout", type=float, default=3_600.0, help="seconds per run")
    args = parser.parse_args(argv)
    if not args.trace.exists():
        generate(args.trace, args.kernels, 0)
    facts = trace_facts(args.trace)
    with args.trace.open("rb") as warm:  # every row reads a warm page cache
        while warm.read(1 << 24):
            pass
    budget = StreamBudget.of(args.budget)
    print(f"{args.trace}: {facts['kernels']:,} kernels, {facts['api_calls']:,} API calls, "
          f"budget {args.budget / 2**20:.0f} MiB = {budget}", flush=True)  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="bench_onepass_") as tmp:
        stored = str(Path(tmp) / "ranges.parquet") if args.check else "-"
        python = [sys.executable, "-c"]
        commands = {
            "raw": ["sqlite3", str(args.trace), RAW_SCAN_SQL],
            "memory": [*python, MEMORY.format(stages=STAGES), str(args.trace), "0", stored],
            "onepass": [
                *python,
                ONEPASS.format(stages=STAGES),
                str(args.trace),
                str(args.budget),
                stored,
            ],
        }
        for row in ROWS:
            if row not in args.rows and not (row == "memory" and args.check):
                continue
            result = Result(row, commands[row])
            measure(result, args.timeout, Path(tmp))
            err = (Path(tmp) / f"{row}.stderr").read_text().strip()
            rss = result.peak_rss_kb / 1024
            wall = f"{result.median_s:.1f} s" if result.median_s is not None else result.failed
            print(f"{row:<8} {wall:>10} {rss:>9,.0f} MB peak RSS  {err[-300:]}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
