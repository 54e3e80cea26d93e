"""Snapshot every report the analyzer makes of the committed traces, or diff two snapshots.

A refactoring of the analysis must leave its output byte for byte as it was. `snapshot` runs
`mfu-analyze` from a checkout (its own `src/`) over every `traces/*.sqlite.xz` with a fixed matrix
of options and all output formats, and writes each stdout, stderr and exit status into a folder;
`diff` compares two such folders and lists every file that differs. Run both from the repository
root so that the trace paths inside the reports are the same:

    python scripts/report_snapshot.py snapshot /tmp/before --src ../old-checkout/src
    python scripts/report_snapshot.py snapshot /tmp/after
    python scripts/report_snapshot.py diff /tmp/before /tmp/after

`--extra` adds arguments to every run: `--extra=--memory-budget=16M` snapshots the one-pass
attribution, which must give the same files as the in-memory one.
"""

from __future__ import annotations

import argparse
import filecmp
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

OPTION_SETS: dict[str, tuple[str, ...]] = {
    "auto": ("--ctx-mode", "auto"),
    "max": ("--ctx-mode", "max"),
    "fixed": ("--ctx-mode", "fixed", "--ctx-len", "2048"),
    "warmup": ("--include-warmup",),
    "measured": ("--peak-source", "measured"),
    "fp16_top3": ("--dtype", "fp16", "--top-kernels", "3"),
}
FORMATS = ("json", "csv", "md", "table")
_LLAMA_1B = ("--config", "traces/meta/llama_1b_shape.config.json", "--prefill-len", "512")
EXTRA_ARGS = {"llama_1b_shape": _LLAMA_1B, "llama_1b_compile": _LLAMA_1B}


def _jobs(out: Path, more: list[str]) -> list[tuple[list[str], Path]]:
    jobs: list[tuple[list[str], Path]] = []
    for trace in sorted((REPO / "traces").glob("*.sqlite.xz")):
        name = trace.name.removesuffix(".sqlite.xz")
        rel = str(trace.relative_to(REPO))
        extra = [*EXTRA_ARGS.get(name, ()), *more]
        for set_name, options in OPTION_SETS.items():
            formats = FORMATS if set_name == "auto" else ("json",)
            for fmt in formats:
                args = [rel, *extra, *options, "--format", fmt]
                jobs.append((args, out / f"{name}__{set_name}.{fmt}"))
        ranges = out / f"{name}__ranges.csv"
        jobs.append(([rel, *extra, "--ranges-out", str(ranges), "--format", "json"], ranges))
    return jobs


def _run(args: list[str], dest: Path, src: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(src), "COLUMNS": "160", "NO_COLOR": "1"}
    code = "import sys; from llm_perf_opt.cli.analyze import main; sys.exit(main())"
    done = subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        check=False,
    )
    if dest.suffix == ".csv" and "__ranges" in dest.name:
        dest = dest.with_name(dest.name + ".stdout")
    dest.write_bytes(done.stdout)
    dest.with_name(dest.name + ".stderr").write_bytes(
        done.stderr + f"\nexit {done.returncode}\n".encode()
    )


def snapshot(out: Path, src: Path, jobs: int, more: list[str]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    work = _jobs(out, more)
    with ThreadPoolExecutor(jobs) as pool:
        list(pool.map(lambda job: _run(job[0], job[1], src), work))
    print(f"{len(work)} runs written to {out}")


def diff(before: Path, after: Path) -> int:
    names = sorted({p.name for p in before.iterdir()} | {p.name for p in after.iterdir()})
    changed = [
        n
        for n in names
        if not (before / n).exists()
        or not (after / n).exists()
        or not filecmp.cmp(before / n, after / n, shallow=False)
    ]
    for name in changed:
        print(f"differs: {name}")
    print(f"{len(names) - len(changed)} of {len(names)} files identical")
    return 1 if changed else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    snap = sub.add_parser("snapshot", help="run the analyzer matrix into a folder")
    snap.add_argument("out", type=Path)
    snap.add_argument("--src", type=Path, default=REPO / "src", help="the src/ to import")
    snap.add_argument("-j", "--jobs", type=int, default=os.cpu_count() or 1)
    snap.add_argument(
        "--extra", action="append", default=[], help="an argument added to every run (repeat)"
    )
    cmp = sub.add_parser("diff", help="list the files that differ between two snapshots")
    cmp.add_argument("before", type=Path)
    cmp.add_argument("after", type=Path)
    ns = parser.parse_args()
    if ns.command == "snapshot":
        snapshot(ns.out, ns.src.resolve(), ns.jobs, ns.extra)
        return 0
    return diff(ns.before, ns.after)


if __name__ == "__main__":
    sys.exit(main())
