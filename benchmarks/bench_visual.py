"""What `--html` and `--perfetto` add: time, peak memory and file size, per trace.

For each trace it runs `mfu-analyze TRACE --format json` alone, then with `--html`, with
`--perfetto` (every GPU op) and with `--perfetto --perfetto-gpu-ops report`, each in a fresh
child (bench_analysis's wrapper: its own wall time and peak RSS), and prints the median wall
time, what each output adds to the analysis alone, the peak RSS and the file written.

Example:
    PYTHONPATH=src:. python3 benchmarks/bench_visual.py traces/*.sqlite.xz --repeats 3
    PYTHONPATH=src:. python3 -m benchmarks.gen_trace --kernels 1e6 -o /tmp/gen_1e6.sqlite
    PYTHONPATH=src:. python3 benchmarks/bench_visual.py /tmp/gen_1e6.sqlite --repeats 1
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

if __package__ in (None, ""):  # run as a script: import from the repo root and src/
    _ROOT = Path(__file__).resolve().parents[1]
    sys.path[:0] = [str(_ROOT), str(_ROOT / "src")]

from benchmarks.bench_analysis import Result, measure

REPO = Path(__file__).resolve().parents[1]
LLAMA = ["--config", str(REPO / "traces/meta/llama_1b_shape.config.json"), "--prefill-len", "512"]
ROWS = {
    "json": [],
    "+html": ["--html", "{out}/r.html"],
    "+perfetto": ["--perfetto", "{out}/r.pftrace"],
    "+perfetto report": ["--perfetto", "{out}/r.pftrace", "--perfetto-gpu-ops", "report"],
}


def bench(trace: Path, repeats: int, timeout_s: float) -> list[str]:
    """The table rows of one trace."""
    extra = LLAMA if trace.name.startswith(("llama_1b_shape", "llama_1b_compile")) else []
    lines = []
    base = None
    for row, args in ROWS.items():
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp)
            cmd = [sys.executable, "-m", "llm_perf_opt.cli.analyze", str(trace), *extra,
                   "--format", "json", *(a.format(out=out) for a in args)]  # fmt: skip
            result = Result(row, cmd)
            for _ in range(repeats):
                measure(result, timeout_s, out)
            written = [p for p in out.iterdir() if p.suffix in (".html", ".pftrace")]
            size = sum(p.stat().st_size for p in written)
        if result.failed or not result.walls_s:
            lines.append(f"| {trace.name} | {row} | failed: {result.failed} | | | |")
            continue
        wall = statistics.median(result.walls_s)
        base = wall if base is None else base
        added = "" if row == "json" else f"+{wall - base:.2f}"
        mb = f"{size / 1e6:.2f}" if written else ""
        rss = result.peak_rss_kb / 1024
        lines.append(f"| {trace.name} | {row} | {wall:.2f} | {added} | {rss:,.0f} | {mb} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("traces", nargs="+", type=Path)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=1800.0)
    args = parser.parse_args()
    print("| trace | outputs | wall s | added s | peak RSS MiB | file MB |")
    print("|---|---|---|---|---|---|")
    for trace in args.traces:
        for line in bench(trace, args.repeats, args.timeout):
            print(line, flush=True)


if __name__ == "__main__":
    main()
