"""Speed and peak memory of the analysis on generated traces, next to NVIDIA and a raw scan.

Times, on the same file and in one run: the full `mfu-analyze --format json` (default memory
budget: the attribution fold over batches of the budget's size), the same in one batch
(`--memory-budget 1T`), the same on the trace's parquetdir twin (converted once, beside it), the
`--ranges-out` attribution alone, NVIDIA's `nsys stats -r nvtxgpuproj,nvtxkernsum` and the floor,
a raw scan of the three big tables through the sqlite3 CLI. `--baseline SRC` adds the full
analysis at both budgets run from another checkout's `src/` (an earlier commit: the ratio lines
then compare this checkout with the better of the two). Each command runs in a fresh child
of a small wrapper, so its wall time and its peak RSS (`RUSAGE_CHILDREN`: the largest process of
the command's tree) are its own. The file is read once first, so every command sees a warm cache.
Several `--kernels` sizes give one table each, then how peak memory and time grow between them.

Example:
    PYTHONPATH=src:. python3 benchmarks/bench_analysis.py --kernels 1e6 --repeats 3
    PYTHONPATH=src:. python3 benchmarks/bench_analysis.py --kernels 1e6,1e7,3e7 --repeats 1 \
        --rows full,memory,parquet,raw
    git worktree add /tmp/base 1c70de1
    PYTHONPATH=src:. python3 benchmarks/bench_analysis.py --kernels 1e6,1e7 --repeats 3 \
        --rows full,memory,raw --baseline /tmp/base/src
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shlex
import sqlite3
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):  # run as a script: import from the repo root and src/
    _ROOT = Path(__file__).resolve().parents[1]
    sys.path[:0] = [str(_ROOT), str(_ROOT / "src")]

from benchmarks.gen_trace import generate
from benchmarks.gen_trace.cli import parse_count
from benchmarks.sqlite_to_tables import convert

REPO = Path(__file__).resolve().parents[1]
GET_NSYS = REPO / "scripts" / "get-nsys-stats.sh"
DEFAULT_ANALYZE = f"{shlex.quote(sys.executable)} -m llm_perf_opt.cli.analyze"
RAW_SCAN_SQL = (
    "SELECT start, end, correlationId, globalPid FROM CUPTI_ACTIVITY_KIND_KERNEL; "
    "SELECT start, end, correlationId, globalTid FROM CUPTI_ACTIVITY_KIND_RUNTIME; "
    "SELECT start, end, globalTid FROM NVTX_EVENTS;"
)
ROWS = ("full", "memory", "base_full", "base_memory", "parquet", "ranges", "nsys", "raw")
BASELINE_ROWS = ("base_full", "base_memory")
LABELS = {
    "full": "mfu-analyze --format json (full analysis)",
    "memory": "the same, in one batch (--memory-budget 1T)",
    "base_full": "baseline checkout: full analysis",
    "base_memory": "baseline checkout: --memory-budget 1T",
    "parquet": "the same, parquetdir input",
    "ranges": "mfu-analyze --ranges-out (attribution)",
    "nsys": "nsys stats -r nvtxgpuproj,nvtxkernsum",
    "raw": "sqlite3 raw scan (floor)",
}

# Runs argv[2:] with stdout to /dev/null and stderr to the file argv[1] and a timeout of argv[0]
# seconds (its whole process group is killed then); prints wall seconds, peak RSS, exit code.
WRAPPER = """
import json, os, resource, signal, subprocess, sys, time
timeout, err, cmd = float(sys.argv[1]), sys.argv[2], sys.argv[3:]
began = time.perf_counter()
with open(err, "wb") as stderr:
    child = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True)
    try:
        rc = child.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(child.pid, signal.SIGKILL)
        child.wait()
        rc = None
wall = time.perf_counter() - began
peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(json.dumps({"wall_s": wall, "peak_rss_kb": peak_kb, "rc": rc}))
"""


@dataclass
class Result:
    """Timings of one row over its repeats."""

    row: str
    command: list[str]
    pythonpath: str
    walls_s: list[float] = field(default_factory=list)
    peak_rss_kb: int = 0
    timed_out_s: float | None = None
    failed: str | None = None

    @property
    def median_s(self) -> float | None:
        """Median wall time, or None when no run completed."""
        return statistics.median(self.walls_s) if self.walls_s else None


def measure(result: Result, timeout_s: float, workdir: Path) -> None:
    """Run the row's command once and record wall time and peak RSS (or why it failed)."""
    err = workdir / f"{result.row}.stderr"
    out = subprocess.run(
        [sys.executable, "-c", WRAPPER, str(timeout_s), str(err), *result.command],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": result.pythonpath},
    )
    facts = json.loads(out.stdout)
    result.peak_rss_kb = max(result.peak_rss_kb, int(facts["peak_rss_kb"]))
    if facts["rc"] is None:
        result.timed_out_s = timeout_s
    elif facts["rc"] != 0:
        tail = err.read_text(errors="replace").strip().splitlines()[-3:]
        result.failed = f"exit {facts['rc']}: {' | '.join(tail)}"
    else:
        result.walls_s.append(float(facts["wall_s"]))


def _pythonpath(src: Path = REPO / "src") -> str:
    """`src` first (this checkout's by default), so `python3 -m llm_perf_opt.cli.analyze` runs
    that checkout."""
    parts = [str(src), str(REPO), os.environ.get("PYTHONPATH", "")]
    return os.pathsep.join(p for p in parts if p)


def _nsys_binary(given: str | None) -> str:
    """NVIDIA's nsys 2022.4 (its `stats` runs on our 3.20 exports); unpacked on first use."""
    if given:
        return given
    if env := os.environ.get("NSYS_STATS"):
        return env
    out = subprocess.run(["bash", str(GET_NSYS)], capture_output=True, text=True, check=True)
    return out.stdout.strip()


def commands(args: argparse.Namespace, trace: Path, workdir: Path) -> dict[str, list[str]]:
    """The command line of each row."""
    analyze = shlex.split(args.analyze_cmd)
    found = {
        "full": [*analyze, str(trace), "--format", "json"],
        "memory": [*analyze, str(trace), "--format", "json", "--memory-budget", "1T"],
        "parquet": [*analyze, str(parquet_twin(trace)), "--format", "json"],
        "ranges": [*analyze, str(trace), "--ranges-out", str(workdir / "ranges.csv")],
        "raw": ["sqlite3", str(trace), RAW_SCAN_SQL],
    }
    found["base_full"], found["base_memory"] = found["full"], found["memory"]
    if "nsys" in args.rows:
        nsys = _nsys_binary(args.nsys)
        report = ["-q", "-r", "nvtxgpuproj,nvtxkernsum", "-f", "csv", "--force-overwrite", "true"]
        found["nsys"] = [nsys, "stats", *report, "-o", str(workdir / "nsys"), str(trace)]
    return found


def trace_facts(trace: Path) -> dict[str, int]:
    """Row counts of the tables the analysis reads, and the file size."""
    con = sqlite3.connect(f"file:{trace}?mode=ro", uri=True)
    try:
        tables = {
            "kernels": "CUPTI_ACTIVITY_KIND_KERNEL",
            "api_calls": "CUPTI_ACTIVITY_KIND_RUNTIME",
        }
        tables["nvtx_events"] = "NVTX_EVENTS"
        facts = {
            k: con.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for k, t in tables.items()
        }
    finally:
        con.close()
    facts["bytes"] = trace.stat().st_size
    return facts


def _fmt_s(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def report(results: dict[str, Result], facts: dict[str, int], trace: Path) -> list[str]:
    """The table and ratio lines."""
    lines = [
        f"trace {trace}: {facts['kernels']:,} kernels, {facts['api_calls']:,} API calls, "
        f"{facts['nvtx_events']:,} NVTX events, {facts['bytes'] / 1e6:,.0f} MB",
        f"{'row':<44} {'median s':>9} {'min s':>8} {'max s':>8} {'peak RSS MB':>12} {'runs':>5}",
    ]
    for row, r in results.items():
        runs = len(r.walls_s)
        if r.walls_s:
            cells = f"{_fmt_s(r.median_s):>9} {min(r.walls_s):>8.2f} {max(r.walls_s):>8.2f}"
        elif r.timed_out_s is not None:
            cells = f"{'>' + format(r.timed_out_s, '.0f'):>9} {'-':>8} {'-':>8}"
        else:
            cells = f"{'failed':>9} {'-':>8} {'-':>8}"
        rss = f"{r.peak_rss_kb / 1024:,.0f}" if r.peak_rss_kb else "-"
        lines.append(f"{LABELS[row]:<44} {cells} {rss:>12} {runs:>5}")
        if r.failed:
            lines.append(f"    {row} failed: {r.failed}")
    pairs = (("full", "nsys"), ("full", "raw"), ("memory", "raw"), ("full", "parquet"),
             ("memory", "full"), ("ranges", "nsys"), ("ranges", "raw"),
             ("full", "base_full"), ("memory", "base_memory"))  # fmt: skip
    for num, den in pairs:
        line = _ratio(results.get(num), results.get(den))
        if line:
            lines.append(f"{num} / {den}: {line}")
    done = [results[r] for r in BASELINE_ROWS if r in results and results[r].median_s is not None]
    if done and results.get("full") is not None:
        best = min(done, key=lambda r: r.median_s or 0.0)
        line = _ratio(results["full"], best)
        if line:
            lines.append(f"full / best baseline ({best.row}): {line}")
    return lines


def _ratio(num: Result | None, den: Result | None) -> str | None:
    """num/den of medians; a bound when the denominator timed out."""
    if num is None or den is None or num.median_s is None:
        return None
    if den.median_s is not None:
        return f"{num.median_s / den.median_s:.3g}"
    if den.timed_out_s is not None:
        return f"< {num.median_s / den.timed_out_s:.3g} ({den.row} timed out)"
    return None


def run_rows(results: dict[str, Result], args: argparse.Namespace, workdir: Path) -> None:
    """Interleave repeats so drift hits all rows alike; stop a row that fails or times out."""
    for i in range(max(args.repeats, args.nsys_repeats)):
        for row, result in results.items():
            wanted = args.nsys_repeats if row == "nsys" else args.repeats
            if i < wanted and not result.failed and result.timed_out_s is None:
                measure(result, args.timeout, workdir)
                last = result.walls_s[-1] if len(result.walls_s) > i else None
                print(f"  {row} run {i + 1}: {_fmt_s(last)} s", flush=True)


def write_json(path: Path, results: dict[str, Result], facts: dict[str, int], trace: Path) -> None:
    """The results, for the note."""
    rows = {
        row: {
            "command": r.command,
            "walls_s": r.walls_s,
            "median_s": r.median_s,
            "peak_rss_mb": r.peak_rss_kb / 1024,
            "timed_out_s": r.timed_out_s,
            "failed": r.failed,
        }
        for row, r in results.items()
    }
    path.write_text(json.dumps({"trace": str(trace), **facts, "rows": rows}, indent=2) + "\n")


def parquet_twin(trace: Path) -> Path:
    """Where the trace's parquetdir export lies (`T_parquet/` beside `T.sqlite`)."""
    return trace.with_name(f"{trace.stem}_parquet")


def _sizes(text: str) -> list[int]:
    return [parse_count(part) for part in text.split(",")]


def bench_one(args: argparse.Namespace, kernels: int) -> tuple[dict[str, Result], list[str]]:
    """Generate (or reuse) the trace of `kernels` kernels and time every row on it."""
    label = f"{kernels:.0e}".replace("e+0", "e").replace("e+", "e")
    trace: Path = args.trace or Path(f"/tmp/gen_{label}.sqlite")
    if args.regenerate or not trace.exists():
        summary = generate(trace, kernels, args.seed)
        print(f"generated {trace} in {summary.seconds:.1f} s", flush=True)
    facts = trace_facts(trace)
    if facts["kernels"] != kernels:
        raise SystemExit(f"{trace} holds {facts['kernels']} kernels, not {kernels}: --regenerate")
    if "parquet" in args.rows and (args.regenerate or not parquet_twin(trace).exists()):
        convert(trace, parquet_twin(trace))
        print(f"wrote {parquet_twin(trace)}", flush=True)
    with trace.open("rb") as warm:  # page cache: every row reads a warm file
        while warm.read(1 << 24):
            pass
    with tempfile.TemporaryDirectory(prefix="bench_analysis_") as tmp:
        workdir = Path(tmp)
        cmds = commands(args, trace, workdir)
        wanted = [r for r in ROWS if r in args.rows and (args.baseline or r not in BASELINE_ROWS)]
        results = {
            row: Result(
                row,
                cmds[row],
                _pythonpath(args.baseline) if row in BASELINE_ROWS else _pythonpath(),
            )
            for row in wanted
        }
        before = trace.stat().st_mtime_ns
        run_rows(results, args, workdir)
        if trace.stat().st_mtime_ns != before:
            print(f"warning: a command modified {trace}", file=sys.stderr)
    lines = report(results, facts, trace)
    print("\n".join(lines), flush=True)
    if args.json_out:
        out = args.json_out.with_name(f"{args.json_out.stem}_{label}{args.json_out.suffix}")
        write_json(out, results, facts, trace)
    return results, lines


def growth(sizes: list[int], runs: list[dict[str, Result]]) -> list[str]:
    """How the full analysis's peak memory and time grow from one size to the next."""
    lines = []
    pairs = list(zip(sizes, runs, strict=True))
    for (n0, r0), (n1, r1) in itertools.pairwise(pairs):
        for row in ("full", "memory", "base_full", "base_memory", "parquet"):
            a, b = r0.get(row), r1.get(row)
            if a is None or b is None or not a.peak_rss_kb or a.median_s is None:
                continue
            time_ratio = f"{b.median_s / a.median_s:.2f}" if b.median_s is not None else "-"
            lines.append(
                f"{row} {n0:.0e} -> {n1:.0e} kernels ({n1 / n0:.1f}x): peak RSS "
                f"{a.peak_rss_kb / 1024:,.0f} -> {b.peak_rss_kb / 1024:,.0f} MB "
                f"({b.peak_rss_kb / a.peak_rss_kb:.2f}x), time {time_ratio}x"
            )
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: generate (or reuse) each trace, time every row, print the tables."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kernels", type=_sizes, default=[1_000_000], help="e.g. 1e6 or 1e6,1e7")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--trace", type=Path, help="default /tmp/gen_<kernels>.sqlite (reused)")
    parser.add_argument("--regenerate", action="store_true", help="rewrite an existing --trace")
    parser.add_argument("--repeats", type=int, default=3, help="runs per row (median reported)")
    parser.add_argument("--nsys-repeats", type=int, default=1, help="runs of the slow nsys row")
    parser.add_argument("--timeout", type=float, default=3_600.0, help="seconds per run")
    parser.add_argument(
        "--rows",
        default=",".join(ROWS),
        type=lambda s: tuple(s.split(",")),
        help=f"comma-separated subset of {','.join(ROWS)}",
    )
    parser.add_argument(
        "--analyze-cmd",
        default=DEFAULT_ANALYZE,
        help="command that analyzes a trace (the trace path and options are appended)",
    )
    parser.add_argument(
        "--baseline",
        type=Path,
        help="src/ of another checkout: adds its full analysis at both budgets (base_* rows)",
    )
    parser.add_argument("--nsys", help="nsys binary (default: $NSYS_STATS or get-nsys-stats.sh)")
    parser.add_argument("--json-out", type=Path, help="also write the results as JSON here")
    args = parser.parse_args(argv)
    if unknown := set(args.rows) - set(ROWS):
        parser.error(f"unknown rows {sorted(unknown)}; choose from {','.join(ROWS)}")
    if args.baseline is not None and not (args.baseline / "llm_perf_opt").is_dir():
        parser.error(f"--baseline {args.baseline}: no llm_perf_opt package there; give a src/")
    if args.trace is not None and len(args.kernels) > 1:
        parser.error("--trace names one trace: give one --kernels size with it")
    runs = [bench_one(args, kernels)[0] for kernels in args.kernels]
    if len(runs) > 1:
        print("\n".join(growth(args.kernels, runs)))
    return 0 if all(not r.failed for results in runs for r in results.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
