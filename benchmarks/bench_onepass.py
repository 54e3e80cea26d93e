"""Time and peak memory of the attribution fold over batches against the whole tables folded
at once (`attribute()`, with the per-op frame) and a raw scan.

Three rows on one generated trace (made once, then reused), each a fresh child process timed by
`bench_analysis`'s wrapper (wall time, peak RSS of the child): `raw`, the sqlite3 scan of the
columns attribution needs; `memory`, `attribute()` with the analysis's stage selection (the
whole tables in memory, each op's assignment kept); `onepass`, `attribute_stream` over the
reader's batches
(`Trace.gpu_op_batches` / `launch_call_batches`), with the stage groups and the host/GPU windows
the analysis asks for. The onepass row checks that its ranges equal a stored `attribute()` result
when `--check` is given (it then runs `attribute()` too, in a separate child).

Example:
    PYTHONPATH=src:. python3 benchmarks/bench_onepass.py --trace /tmp/gen_1e7.sqlite
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

if __package__ in (None, ""):  # run as a script: import from the repo root and src/
    _ROOT = Path(__file__).resolve().parents[1]
    sys.path[:0] = [str(_ROOT), str(_ROOT / "src")]

import polars as pl

from benchmarks.bench_analysis import RAW_SCAN_SQL, Result, measure, trace_facts
from benchmarks.gen_trace import generate
from benchmarks.gen_trace.cli import parse_count
from llm_perf_opt.attribution import DEFAULT_MEMORY_BUDGET_BYTES, StreamBudget

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
from benchmarks.bench_onepass import stage_inputs
from llm_perf_opt.attribution import RangeSelection
from llm_perf_opt.attribution import ReadAhead, StreamBudget, attribute_stream, range_frame
from llm_perf_opt.trace import open_trace
trace, budget = open_trace(sys.argv[1]), int(sys.argv[2])
rows = StreamBudget.of(budget)
# reading starts now, beside the NVTX work
ops = ReadAhead(trace.gpu_op_batches(rows.op_batch_rows))
calls = ReadAhead(trace.launch_call_batches(rows.call_batch_rows))
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
    from llm_perf_opt.hostview.breakdown import stage_windows

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
