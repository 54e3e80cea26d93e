"""Time and peak memory of the analysis of one run from its PyTorch profiler trace against the
same run as an nsys SQLite export.

Generates the run as SQLite (`gen_trace`, cached beside `--dir`), writes its profiler trace
(`sqlite_to_kineto`: `.json` and `.json.gz`), then runs `mfu-analyze --format json` on each in a
fresh child process (default memory budget), one at a time, and prints wall and CPU seconds and
peak RSS per input and the ratio profiler / SQLite. The reports are checked equal but for what a
profiler span cannot carry (payloads, domains, event ids), as tests/trace/test_trace_kineto.py
holds on a small run.

Example:
    PYTHONPATH=src:. python3 benchmarks/bench_kineto.py --kernels 1e6 --dir /tmp/bench_kineto
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

if __package__ in (None, ""):  # run as a script: import from the repo root and src/
    _ROOT = Path(__file__).resolve().parents[1]
    sys.path[:0] = [str(_ROOT), str(_ROOT / "src")]

from benchmarks.gen_trace import generate
from benchmarks.gen_trace.cli import parse_count
from benchmarks.sqlite_to_kineto import convert

REPO: Final = Path(__file__).resolve().parents[1]
# Runs argv[2:] with stdout to the file argv[1]; prints wall and CPU seconds, peak RSS, exit code.
WRAPPER: Final = """
import json, resource, subprocess, sys, time
out, cmd = sys.argv[1], sys.argv[2:]
began = time.perf_counter()
with open(out, "wb") as stdout:
    rc = subprocess.run(cmd, stdout=stdout, stderr=subprocess.PIPE).returncode
wall = time.perf_counter() - began
usage = resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps({"wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime,
                  "peak_rss_kb": usage.ru_maxrss, "rc": rc}))
"""
# What a profiler span cannot carry: payloads (so image indexes and the decode context's
# source), NVTX domains, event ids; and the input's path.
DIFFERENT: Final = frozenset({"trace", "image_index", "payload_ctx_len", "range_id", "domain"})
CONTEXT_SOURCES: Final = ("decode_step payloads", "metadata decode_context_lens")


def normalized(report: Any) -> Any:
    """A JSON report without the fields a profiler trace cannot give as nsys does."""
    if isinstance(report, dict):
        return {
            k: normalized(v)
            for k, v in report.items()
            if k not in DIFFERENT and not (k == "source" and v in CONTEXT_SOURCES)
        }
    if isinstance(report, list):
        return [normalized(v) for v in report]
    return report


def analyze(trace: Path, out: Path) -> dict[str, Any]:
    """`mfu-analyze TRACE --format json` in a fresh process: wall, CPU, peak RSS."""
    command = [sys.executable, "-m", "llm_perf_opt.cli.analyze", str(trace), "--format", "json"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO)])}
    done = subprocess.run(
        [sys.executable, "-c", WRAPPER, str(out), *command],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    )
    facts: dict[str, Any] = json.loads(done.stdout)
    if facts["rc"] != 0:
        raise SystemExit(f"{trace}: mfu-analyze exited {facts['rc']}")
    return facts


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kernels", type=parse_count, default=10**6, help="kernels (1e6)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dir", type=Path, default=Path("/tmp/bench_kineto"))
    args = parser.parse_args(argv)
    args.dir.mkdir(parents=True, exist_ok=True)
    stem = f"gen_{args.kernels:.0e}".replace("+0", "").replace("+", "")
    sqlite = args.dir / f"{stem}.sqlite"
    if not sqlite.exists():
        generate(sqlite, args.kernels, args.seed)
    inputs = {"sqlite": sqlite}
    for suffix in (".pt.trace.json", ".pt.trace.json.gz"):
        path = args.dir / f"{stem}{suffix}"
        if not path.exists():
            convert(sqlite, path)
        inputs[suffix.removeprefix(".pt.trace.")] = path
    for path in inputs.values():  # warm the page cache
        with path.open("rb") as handle:
            while handle.read(1 << 24):
                pass
    results = {
        name: analyze(path, args.dir / f"{name}.report.json") for name, path in inputs.items()
    }
    reports = {
        name: normalized(json.loads((args.dir / f"{name}.report.json").read_text()))
        for name in inputs
    }
    same = all(r == reports["sqlite"] for r in reports.values())
    base = results["sqlite"]
    print(f"{args.kernels:,} kernels; reports equal but for payloads and domains: {same}")
    print(
        "| input | size | wall s | CPU s | peak RSS | wall / SQLite | CPU / SQLite | RSS / SQLite |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name, facts in results.items():
        size = inputs[name].stat().st_size / 1e6
        print(
            f"| {name} | {size:,.0f} MB | {facts['wall_s']:.1f} | {facts['cpu_s']:.1f} | "
            f"{facts['peak_rss_kb'] / 2**20:.2f} GB | {facts['wall_s'] / base['wall_s']:.1f}x | "
            f"{facts['cpu_s'] / base['cpu_s']:.1f}x | "
            f"{facts['peak_rss_kb'] / base['peak_rss_kb']:.1f}x |"
        )
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
