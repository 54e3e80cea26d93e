"""Many traces in one call: expand paths, analyze each trace on its own, fan out, summarize.

Each trace is analyzed independently by `analyze_one`, which never raises for a bad trace: it
returns a `RunResult` holding the report (plain dataclasses, no frames: ~20 kB pickled for the
committed traces, growing with the decode steps) or the error line. The traces fan out over
local processes (`-j N`) or a `dask.distributed` scheduler (`--dask ADDRESS`); workers open
traces by path and send back results, and only this (client) process writes the results
database and the outputs (docs/many-runs.md).
"""

from __future__ import annotations

import glob
import json
import multiprocessing
import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Final

import polars as pl
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from llm_perf_opt.analysis import AnalyzeOptions, analyze_trace
from llm_perf_opt.errors import DaskError, LlmPerfOptError, NoTracesError, SelectionError
from llm_perf_opt.mfu import MfuReport
from llm_perf_opt.report import format_pct, md_table, rich_table, to_json_text, to_markdown
from llm_perf_opt.resultsdb import (
    ResultsDb,
    RunRecord,
    RunRows,
    frame_of,
    record_of,
    rows_from_report,
)
from llm_perf_opt.trace import table_dir_format

# Trace files; a folder of a parquetdir or arrowdir export is one trace too (`is_trace_file`).
# `.pt.trace.json[.gz]`: the PyTorch profiler's names (any other name is read when given itself)
TRACE_SUFFIXES: Final = (
    ".sqlite",
    ".sqlite.xz",
    ".sqlite.gz",
    ".arrows",
    ".arrow",
    ".pt.trace.json",
    ".pt.trace.json.gz",
)
GLOB_CHARS: Final = frozenset("*?[")
DASK_ENV: Final = "DASK_SCHEDULER_ADDRESS"
SUMMARY_SCHEMA_ID: Final = "llm_perf_opt.mfu_summary/1"
# Exit code of a batch in which at least one trace failed (the others are still reported).
EXIT_SOME_FAILED: Final = 2
# Width of the summary table when stdout is not a terminal.
SUMMARY_WIDTH: Final = 200
# Characters of a failed trace's error shown in the summary table (stderr has all of it).
ERROR_WIDTH: Final = 60
# Seconds to wait for a Dask scheduler before giving up.
DASK_CONNECT_TIMEOUT_S: Final = 20

Echo = Callable[[str], None]


def has_glob(spec: str) -> bool:
    return any(c in GLOB_CHARS for c in spec)


def is_trace_file(path: Path) -> bool:
    """An nsys export: a file with a trace suffix, or a folder of a parquetdir or arrowdir
    export (one trace; the .arrow table files inside it are not traces of their own)."""
    if path.is_dir():
        return table_dir_format(path) is not None
    return (
        path.is_file()
        and path.name.endswith(TRACE_SUFFIXES)
        and not (path.suffix == ".arrow" and table_dir_format(path.parent))
    )


def expand_paths(specs: Sequence[str]) -> list[Path]:
    """Trace paths from files, directories (their `*.sqlite[.xz|.gz]`, `*.arrow[s]`,
    `*.pt.trace.json[.gz]` and table export folders, recursively; a table export folder itself
    is one trace) and globs, in the order given, each once. A plain path is kept even when
    missing: its analysis then fails with the reader's error, next to the others.

    Raises:
        NoTracesError: a directory or glob matched no trace.
    """
    found: dict[Path, None] = {}
    for spec in specs:
        path = Path(spec)
        if has_glob(spec):
            matches = sorted(Path(p) for p in glob.glob(spec, recursive=True))
            hits = [p for p in matches if is_trace_file(p)]
        elif path.is_dir() and not is_trace_file(path):
            hits = sorted(p for p in path.rglob("*") if is_trace_file(p))
        else:
            hits = [path]
        if not hits:
            raise NoTracesError(
                f"{spec!r} matched no trace (*{', *'.join(TRACE_SUFFIXES)}); give trace files, "
                "directories holding them or a glob such as 'runs/*.sqlite.xz'"
            )
        found.update(dict.fromkeys(hits))
    return list(found)


@dataclass(frozen=True)
class RunResult:
    """One trace's outcome: its record and report, or the error that stopped it."""

    trace: str
    record: RunRecord | None = None
    report: MfuReport | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def rows(self) -> RunRows:
        assert self.record is not None and self.report is not None, "rows of a failed run"
        return rows_from_report(self.record, self.report)


def analyze_one(path: str | Path, options: AnalyzeOptions) -> RunResult:
    """Analyze one trace; every failure becomes the result's error line (never raised), so one
    bad trace in a sweep does not stop the others."""
    started = time.perf_counter()
    try:
        analysis = analyze_trace(path, options)
        assert analysis.report is not None  # require_mfu=True raises instead
        record = record_of(path, options, analysis.meta, time.perf_counter() - started)
    except LlmPerfOptError as exc:
        return RunResult(str(path), error=str(exc))
    except Exception as exc:  # a bug must not sink a sweep of hundreds of traces either
        return RunResult(str(path), error=f"internal error {type(exc).__name__}: {exc}")
    return RunResult(str(path), record, analysis.report)


def default_jobs() -> int:
    return os.cpu_count() or 1


def iter_results(
    paths: Sequence[str | Path],
    options: AnalyzeOptions,
    *,
    jobs: int | None = None,
    dask_address: str | None = None,
) -> Iterator[tuple[int, RunResult]]:
    """(index in `paths`, result) of every trace as it completes: in this process (`jobs` 1),
    in `jobs` local processes (default: the CPU cores), or on the Dask scheduler at
    `dask_address`.

    Raises:
        DaskError: dask.distributed is missing or the scheduler does not answer.
    """
    if dask_address is not None:
        yield from _dask_results(paths, options, dask_address)
        return
    n_jobs = min(jobs or default_jobs(), len(paths))
    if n_jobs <= 1:
        for i, path in enumerate(paths):
            yield i, analyze_one(path, options)
        return
    # spawn, not fork: polars' thread pool must not be forked mid-flight
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=n_jobs, mp_context=context) as pool:
        futures = {pool.submit(analyze_one, p, options): i for i, p in enumerate(paths)}
        for future in as_completed(futures):
            yield futures[future], future.result()


def analyze_many(
    paths: Sequence[str | Path],
    options: AnalyzeOptions,
    *,
    jobs: int | None = None,
    dask_address: str | None = None,
) -> list[RunResult]:
    """`iter_results` collected in the order of `paths`."""
    done = dict(iter_results(paths, options, jobs=jobs, dask_address=dask_address))
    return [done[i] for i in range(len(paths))]


def _dask_results(
    paths: Sequence[str | Path], options: AnalyzeOptions, address: str
) -> Iterator[tuple[int, RunResult]]:
    try:
        from distributed import Client
        from distributed import as_completed as dask_completed
    except ImportError as exc:
        raise DaskError("--dask needs dask.distributed: pip install 'llm-perf-opt[dask]'") from exc
    try:
        client = Client(  # type: ignore[no-untyped-call]
            address, timeout=DASK_CONNECT_TIMEOUT_S
        )
    except (OSError, TimeoutError) as exc:
        raise DaskError(
            f"no Dask scheduler answers at {address!r} ({exc}); start one (`dask scheduler`) "
            f"or fix --dask / {DASK_ENV}"
        ) from exc
    with client:
        # absolute paths: the workers may run in other directories (shared filesystem)
        futures = client.map(
            analyze_one, [str(Path(p).resolve()) for p in paths], options=options, pure=False
        )
        index = {f.key: i for i, f in enumerate(futures)}
        for future in dask_completed(futures):  # type: ignore[no-untyped-call]
            result: RunResult = future.result()
            i = index[future.key]
            # report the path as given, as a local run does
            given = str(paths[i])
            yield (
                i,
                RunResult(
                    given,
                    None if result.record is None else replace(result.record, trace_path=given),
                    None if result.report is None else replace(result.report, trace_path=given),
                    result.error,
                ),
            )


# --- the batch command ---------------------------------------------------------------------------


@dataclass(frozen=True)
class BatchRequest:
    """What `mfu-analyze` was asked in batch mode (several traces, a directory, a glob or --db)."""

    specs: tuple[str, ...]
    options: AnalyzeOptions
    jobs: int | None = None
    dask_address: str | None = None
    db_path: Path | None = None
    fmt: str = "table"
    output: Path | None = None
    outdir: Path | None = None


def dask_address_from(flag: str | None) -> str | None:
    """--dask, else the DASK_SCHEDULER_ADDRESS environment variable, else local processes."""
    return flag or os.environ.get(DASK_ENV) or None


class BatchUsageError(SelectionError):
    """An option that writes one trace's output was given with several traces."""


# `mfu-analyze` options that write one trace's output (refused in batch mode).
SINGLE_TRACE_OUTPUTS: Final = ("csv", "markdown", "plots", "ranges_out", "perfetto", "html")


def is_batch(specs: Sequence[str], kw: Mapping[str, Any]) -> bool:
    """Batch mode: several traces, a directory (but a table export's folder: one trace), a glob,
    --db or --dask. One plain path without them is the single-trace command, unchanged."""
    if len(specs) != 1 or kw.get("db") is not None or kw.get("dask") is not None:
        return True
    path = Path(specs[0])
    return has_glob(specs[0]) or (path.is_dir() and not is_trace_file(path))


def batch_request(
    specs: Sequence[str], options: AnalyzeOptions, kw: Mapping[str, Any]
) -> BatchRequest:
    """The batch request from `mfu-analyze`'s keyword arguments.

    Raises:
        BatchUsageError: a single-trace output option was given.
    """
    single = [f"--{k.replace('_', '-')}" for k in SINGLE_TRACE_OUTPUTS if kw.get(k) is not None]
    if single:
        raise BatchUsageError(
            f"{single[0]} writes one trace's output; with several traces use --outdir DIR"
        )
    return BatchRequest(
        specs=tuple(specs),
        options=options,
        jobs=kw.get("jobs"),
        dask_address=dask_address_from(kw.get("dask")),
        db_path=kw.get("db"),
        fmt=kw.get("format") or "table",
        output=kw.get("output"),
        outdir=kw.get("outdir"),
    )


@contextmanager
def _progress_bar(total: int) -> Iterator[Callable[[str], None]]:
    """Advance a progress bar over traces on stderr when it is a terminal; nothing otherwise."""
    if not sys.stderr.isatty():
        yield lambda _name: None
        return
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())  # fmt: skip
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("traces", total=total)
        yield lambda name: bar.update(task, advance=1, description=name)


@dataclass(frozen=True)
class BatchEntry:
    """What the summary keeps of one trace: its run and stage rows, or its error."""

    trace: str
    error: str | None = None
    run: Mapping[str, Any] | None = None
    stages: tuple[Mapping[str, Any], ...] = ()

    @property
    def ok(self) -> bool:
        return self.error is None


def _stem(name: str) -> str:
    for suffix in sorted(TRACE_SUFFIXES, key=len, reverse=True):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


class _Outdir:
    """Per-trace reports: `DIR/NAME.json` and `.md`, NAME the trace's file name without its
    suffix, the content hash appended when another trace of the batch has the same name."""

    def __init__(self, root: Path, paths: Sequence[Path]) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.root = root
        self.shared = {s for s, n in Counter(_stem(p.name) for p in paths).items() if n > 1}

    def write(self, result: RunResult) -> None:
        assert result.record is not None and result.report is not None
        stem = _stem(Path(result.trace).name)
        if stem in self.shared:
            stem = f"{stem}-{result.record.content_hash[:8]}"
        report = result.report
        (self.root / f"{stem}.json").write_text(to_json_text(report), encoding="utf-8")
        (self.root / f"{stem}.md").write_text(to_markdown(report), encoding="utf-8")


def run_batch(request: BatchRequest, echo_err: Echo) -> int:
    """Analyze the traces; as each arrives write its database rows and --outdir reports (only
    here, in the client) and keep its summary rows; then print the summary.

    Returns 0 when every trace was analyzed, `EXIT_SOME_FAILED` when any failed.

    Raises:
        LlmPerfOptError: no trace matched, the database or the scheduler is unusable.
    """
    paths = expand_paths(request.specs)
    db = ResultsDb(request.db_path) if request.db_path is not None else None
    outdir = _Outdir(request.outdir, paths) if request.outdir is not None else None
    entries: dict[int, BatchEntry] = {}
    started = time.perf_counter()
    try:
        with _progress_bar(len(paths)) as advance:
            for i, result in iter_results(
                paths, request.options, jobs=request.jobs, dask_address=request.dask_address
            ):
                advance(Path(result.trace).name)
                if not result.ok:
                    error = str(result.error)
                    named = error if result.trace in error else f"{result.trace}: {error}"
                    echo_err(f"error: {named}")
                    entries[i] = BatchEntry(result.trace, error)
                    continue
                rows = result.rows()
                if db is not None:
                    db.write(rows)
                if outdir is not None:
                    outdir.write(result)
                entries[i] = BatchEntry(result.trace, None, rows.run, tuple(rows.tables["stages"]))
    finally:
        if db is not None:
            db.close()
    ordered = [entries[i] for i in range(len(paths))]
    _emit_summary(ordered, request.fmt, request.output)
    failed = sum(not e.ok for e in ordered)
    echo_err(
        f"{len(ordered)} trace(s): {len(ordered) - failed} analyzed, {failed} failed "
        f"in {time.perf_counter() - started:.1f} s"
        + (f"; results in {request.db_path}" if request.db_path is not None else "")
    )
    return EXIT_SOME_FAILED if failed else 0


# --- summary: one row per trace x stage ----------------------------------------------------------

_SUMMARY_HEAD: Final = ("trace", "run", "stage", "inst", "busy ms", "wall ms", "MFU trace",
                        "MFU wall", "MBU trace", "kernels/step", "step µs", "verdict")  # fmt: skip


def _summary_rows(entries: Sequence[BatchEntry]) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
    for entry in entries:
        name = Path(entry.trace).name
        if entry.run is None:
            error = str(entry.error)
            shown = error if len(error) <= ERROR_WIDTH else error[: ERROR_WIDTH - 1] + "…"
            rows.append((name, "", "FAILED", *[""] * 8, shown))
            continue
        for s in entry.stages:
            rows.append(
                (
                    name,
                    str(entry.run["run_id"])[:8],
                    str(s["stage"]),
                    str(s["n_instances"]),
                    _fmt(s["gpu_busy_s"], 1e3, ",.2f"),
                    _fmt(s["wall_s"], 1e3, ",.2f"),
                    format_pct(s["mfu_trace"]),
                    format_pct(s["mfu_wall"]),
                    format_pct(s["mbu_trace"]),
                    _fmt(s["kernels_per_step"], 1, ",.1f"),
                    _fmt(s["step_gpu_busy_s"], 1e6, ",.1f"),
                    str(s["verdict"]),
                )
            )
    return rows


def _fmt(value: float | None, scale: float, spec: str) -> str:
    return "–" if value is None else format(value * scale, spec)


def summary_json(entries: Sequence[BatchEntry]) -> dict[str, Any]:
    """The batch summary document (docs/many-runs.md)."""
    traces: list[dict[str, Any]] = []
    for e in entries:
        doc: dict[str, Any] = {"trace": e.trace, "ok": e.ok, "error": e.error}
        if e.run is not None:
            doc |= {
                "run_id": e.run["run_id"],
                "content_hash": e.run["content_hash"],
                "gpu_name": e.run["gpu_name"],
                "stages": {
                    s["stage"]: {k: v for k, v in s.items() if k not in ("run_id", "stage")}
                    for s in e.stages
                },
            }
        traces.append(doc)
    return {
        "schema": SUMMARY_SCHEMA_ID,
        "n_traces": len(entries),
        "n_failed": sum(not e.ok for e in entries),
        "traces": traces,
    }


def _summary_csv(entries: Sequence[BatchEntry]) -> str:
    frames = [
        frame_of("stages", e.stages).with_columns(
            pl.lit(e.trace).alias("trace"), pl.lit(None, pl.String).alias("error")
        )
        if e.run is not None
        else pl.DataFrame({"trace": [e.trace], "error": [e.error]})
        for e in entries
    ]
    table = pl.concat(frames, how="diagonal_relaxed")
    first = ["trace", "run_id", "stage"]
    return table.select(first + [c for c in table.columns if c not in first]).write_csv()


def render_summary(entries: Sequence[BatchEntry], fmt: str) -> str:
    """The summary as `json`, `csv` or `md` text."""
    if fmt == "json":
        return json.dumps(summary_json(entries), indent=2, allow_nan=False) + "\n"
    if fmt == "csv":
        return _summary_csv(entries)
    return "# MFU summary\n\n" + md_table(_SUMMARY_HEAD, _summary_rows(entries)) + "\n"


def _emit_summary(entries: Sequence[BatchEntry], fmt: str, output: Path | None) -> None:
    if fmt != "table":
        text = render_summary(entries, fmt)
        if output is None:
            sys.stdout.write(text)
        else:
            output.write_text(text, encoding="utf-8")
        return
    table = rich_table("MFU per trace and stage", _SUMMARY_HEAD, _summary_rows(entries), 3)
    if output is None:
        console = Console()
        (console if console.is_terminal else Console(width=SUMMARY_WIDTH)).print(table)
        return
    with output.open("w", encoding="utf-8") as handle:
        Console(file=handle, width=SUMMARY_WIDTH).print(table)
