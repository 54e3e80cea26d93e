"""Traces per second of a batch `mfu-analyze DIR --db FILE` with -j 1, -j 2 and on Dask.

Writes `--traces` small generated traces (`gen_trace.generate`, one seed each), then times the
whole command as a user runs it (a fresh process: imports, fan-out, database writes) with
`-j 1`, `-j 2` and `--dask ADDRESS` of a `dask.distributed.LocalCluster` with 2 worker
processes started beforehand (a user's cluster is already up: its start is not timed). The three
databases must hold the same rows (all but the `analyzed_at`/`analysis_s` columns). Each mode
runs `--repeats` times; the medians are printed with the ratios to -j 1, next to the CPU seconds
the command used and the machine's load average (on a shared machine a parallel run gets only the
cores the other users leave).

Example:
    PYTHONPATH=src:. python3 benchmarks/bench_many.py --traces 200 --repeats 3
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as a script: import from the repo root and src/
    _ROOT = Path(__file__).resolve().parents[1]
    sys.path[:0] = [str(_ROOT), str(_ROOT / "src")]

from benchmarks.gen_trace import generate
from llm_perf_opt.batch.resultsdb import ResultsDb

REPO = Path(__file__).resolve().parents[1]
MODES = ("-j 1", "-j 2", "dask 2 workers")


def make_traces(root: Path, n: int, kernels: int) -> None:
    for seed in range(n):
        generate(root / f"t{seed:04d}.sqlite", kernels, seed=seed)


@dataclass(frozen=True)
class Timing:
    wall_s: float
    cpu_s: float  # user + sys of the command and its worker processes (not of Dask workers)
    load_1min: float  # the machine's load average when it ended: other users' work shows here


def timed_batch(traces: Path, db: Path, extra: Sequence[str]) -> Timing:
    """One `mfu-analyze TRACES --db DB ...` in a fresh process."""
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    env.pop("DASK_SCHEDULER_ADDRESS", None)
    argv = [sys.executable, "-m", "llm_perf_opt.cli.analyze", str(traces), "--db", str(db),
            "--format", "csv", *extra]  # fmt: skip
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    began = time.perf_counter()
    done = subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          text=True, check=False)  # fmt: skip
    wall = time.perf_counter() - began
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({done.returncode}):\n{done.stderr}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return Timing(wall, cpu, os.getloadavg()[0])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--traces", type=int, default=200, help="generated traces (>= 200)")
    parser.add_argument("--kernels", type=int, default=10_000, help="kernel rows per trace")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each mode (median)")
    args = parser.parse_args(argv)
    from distributed import LocalCluster

    with tempfile.TemporaryDirectory(prefix="bench_many_") as tmp:
        root = Path(tmp)
        traces = root / "traces"
        traces.mkdir()
        began = time.perf_counter()
        make_traces(traces, args.traces, args.kernels)
        print(f"{args.traces} traces of {args.kernels} kernels written in "
              f"{time.perf_counter() - began:.1f} s", flush=True)  # fmt: skip
        runs: dict[str, list[Timing]] = {m: [] for m in MODES}
        dumps = {}
        with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                          dashboard_address=None) as cluster:  # fmt: skip
            extra = {"-j 1": ["-j", "1"], "-j 2": ["-j", "2"],
                     "dask 2 workers": ["--dask", cluster.scheduler_address]}  # fmt: skip
            for repeat in range(args.repeats):
                for mode in MODES:
                    db = root / f"{mode.replace(' ', '_')}_{repeat}.sqlite"
                    t = timed_batch(traces, db, extra[mode])
                    runs[mode].append(t)
                    print(f"  {mode:<15} run {repeat + 1}: {t.wall_s:6.1f} s wall, "
                          f"{t.cpu_s:6.1f} s CPU, load {t.load_1min:4.1f}", flush=True)  # fmt: skip
                    with ResultsDb(db, readonly=True) as opened:
                        dumps[mode] = opened.dump()
        same = all(dumps[m] == dumps[MODES[0]] for m in MODES)
        n_runs = len(dumps[MODES[0]]["runs"])
    medians = {m: statistics.median(t.wall_s for t in ts) for m, ts in runs.items()}
    base = args.traces / medians["-j 1"]
    print(f"\n| mode | median wall s | traces/s | vs -j 1 | median CPU s | median load |  "
          f"({os.cpu_count()} CPUs, {args.repeats} run(s) each)")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for mode in MODES:
        rate = args.traces / medians[mode]
        cpu = statistics.median(t.cpu_s for t in runs[mode])
        load = statistics.median(t.load_1min for t in runs[mode])
        cpu_text = "–" if mode.startswith("dask") else f"{cpu:.1f}"
        print(f"| {mode} | {medians[mode]:.1f} | {rate:.2f} | {rate / base:.2f}x | {cpu_text} "
              f"| {load:.1f} |")  # fmt: skip
    print(f"\ndatabases identical across the three modes: {same} ({n_runs} runs each)")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
