"""Many traces in one call: expand paths, declare them as inputs, analyze, store, summarize.

Paths, folders and globs expand to traces (each file once, results databases left out), which
are declared as inputs of the run (`declare_traces`) so that no output can be one of them. Each
trace is analyzed independently (`fanout.analyze_one`: a report, ~20 kB pickled for the committed
traces, or the error line) in this process, local worker processes (`-j N`) or on a
`dask.distributed` scheduler (`--dask ADDRESS`); workers open traces by path and send back
results, and only this (client) process writes the results database and the outputs
(docs/many-runs.md).
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import polars as pl

from llm_perf_opt.analysis import AnalyzeOptions, static_compute_source
from llm_perf_opt.batch.fanout import (
    DASK_ENV,
    RunResult,
    iter_results,
    worker_count,
)
from llm_perf_opt.batch.resultsdb import (
    ResultsDb,
    file_hash,
    frame_of,
    results_db_schema,
)
from llm_perf_opt.errors import NoTracesError, OutputError
from llm_perf_opt.inputs.user_files import RunFiles, output_file, writing
from llm_perf_opt.report import format_pct, md_table, to_json_text, to_markdown
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
SUMMARY_SCHEMA_ID: Final = "llm_perf_opt.mfu_summary/1"
# Exit code of a batch in which at least one trace failed (the others are still reported).
EXIT_SOME_FAILED: Final = 2
# Characters of a failed trace's error shown in the summary table (stderr has all of it).
ERROR_WIDTH: Final = 60

Echo = Callable[[str], None]
# Given the number of traces, a context that yields what to call with each trace's name as it
# is done (the CLI's progress bar on a terminal).
ProgressBar = Callable[[int], AbstractContextManager[Callable[[str], None]]]


def has_glob(spec: str) -> bool:
    return any(c in GLOB_CHARS for c in spec)


def is_results_db(path: Path) -> bool:
    """A results database of this tool (of any schema version), which is never a trace."""
    return path.name.endswith(".sqlite") and path.is_file() and results_db_schema(path) is not None


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


@dataclass(frozen=True)
class Expansion:
    """The traces the paths, folders and globs named, and the results databases among them
    (left out: a results database is never a trace)."""

    paths: tuple[Path, ...]
    results_dbs: tuple[Path, ...] = ()
    repeats: int = 0

    def notes(self) -> list[str]:
        """The lines that say which results databases were left out and how many paths named
        a file already given."""
        out = []
        if self.results_dbs:
            names = ", ".join(str(p) for p in self.results_dbs[:3])
            more = f" and {len(self.results_dbs) - 3} more" if len(self.results_dbs) > 3 else ""
            out.append(
                f"note: left out {len(self.results_dbs)} results database(s), not traces: "
                f"{names}{more}"
            )
        if self.repeats:
            out.append(
                f"note: {self.repeats} path(s) named a trace already given; each is analyzed once"
            )
        return out


def _glob(spec: str) -> list[Path]:
    """Matches of a glob, `**` included, without following symbolic links to folders (a link
    cycle would otherwise repeat every file below it to the depth the OS allows)."""
    parts = Path(spec).parts
    cut = next(i for i, part in enumerate(parts) if has_glob(part))
    root = Path(*parts[:cut]) if cut else Path()
    try:
        return sorted(root.glob(str(Path(*parts[cut:]))))
    except (OSError, ValueError):  # an unreadable folder, or a pattern pathlib refuses
        return []


def _file_key(path: Path) -> tuple[int, int] | Path:
    """What makes two paths the same file: device and inode, else the resolved path."""
    try:
        info = path.stat()
    except (OSError, ValueError):
        return path.resolve()
    return info.st_dev, info.st_ino


def expand_traces(specs: Sequence[str]) -> Expansion:
    """Trace paths from files, directories (their `*.sqlite[.xz|.gz]`, `*.arrow[s]`,
    `*.pt.trace.json[.gz]` and table export folders, recursively, never through a link to a
    folder; a table export folder itself is one trace) and globs, in the order given, each
    file once however many paths name it (links and `a/../a` included). A plain path is kept
    even when missing: its analysis then fails with the reader's error, next to the others.
    Results databases are left out.

    Raises:
        NoTracesError: an empty path, or a directory or glob that matched no trace.
    """
    found: dict[tuple[int, int] | Path, Path] = {}
    dbs: dict[tuple[int, int] | Path, Path] = {}
    repeats = 0
    for spec in specs:
        if not spec.strip():
            raise NoTracesError("an empty path was given; name a trace file, folder or glob")
        path = Path(spec)
        if has_glob(spec):
            hits = [p for p in _glob(spec) if is_trace_file(p)]
        elif path.is_dir() and not is_trace_file(path):
            hits = sorted(p for p in path.rglob("*") if is_trace_file(p))
        else:
            hits = [path]
        traces = [p for p in hits if not is_results_db(p)]
        dbs.update((_file_key(p), p) for p in hits if p not in traces)
        if not traces and not (hits and not has_glob(spec) and not path.is_dir()):
            raise NoTracesError(
                f"{spec!r} matched no trace (*{', *'.join(TRACE_SUFFIXES)}); give trace files, "
                "directories holding them or a glob such as 'runs/*.sqlite.xz'"
            )
        for p in traces:
            repeats += _file_key(p) in found
            found.setdefault(_file_key(p), p)
    if not found:
        raise NoTracesError(
            f"{specs[0]!r} is a results database, not a trace; compare its runs with "
            "`mfu-compare --db FILE ID... -- ID...`"
        )
    return Expansion(tuple(found.values()), tuple(dbs.values()), repeats)


def expand_paths(specs: Sequence[str]) -> list[Path]:
    """The traces of `expand_traces`, without the note on left-out results databases."""
    return list(expand_traces(specs).paths)


def declare_traces(
    specs: Sequence[str], options: AnalyzeOptions, files: RunFiles, echo_err: Echo
) -> list[Path]:
    """Expand the trace arguments, declare every file the analysis of each will read (the
    trace, a table export's files, the static compute report found beside it) as inputs of
    `files`, and check the outputs against them before any work.

    Raises:
        NoTracesError: see `expand_traces`.
        OutputError: an output is one of those inputs (or lies inside a table export).
    """
    expansion = expand_traces(specs)
    for note in expansion.notes():
        echo_err(note)
    for path in expansion.paths:
        files.reads(path, static_compute_source(options, path))
    files.check()
    return list(expansion.paths)


# --- the batch command ---------------------------------------------------------------------------


@dataclass(frozen=True)
class BatchRequest:
    """What `mfu-analyze` was asked in batch mode (several traces, a directory, a glob or --db)."""

    specs: tuple[str, ...]
    options: AnalyzeOptions
    jobs: int | None = None
    dask_address: str | None = None
    db_path: Path | None = None
    outdir: Path | None = None


def dask_address_from(flag: str | None) -> str | None:
    """--dask, else the DASK_SCHEDULER_ADDRESS environment variable, else local processes."""
    return flag or os.environ.get(DASK_ENV) or None


def is_batch(
    specs: Sequence[str],
    *,
    db: Path | None = None,
    outdir: Path | None = None,
    dask: str | None = None,
) -> bool:
    """Batch mode: several traces, a directory (but a table export's folder: one trace), a glob,
    or a results database, report folder or Dask scheduler given. One plain path without them
    is the single-trace command, unchanged."""
    if len(specs) != 1 or any(v is not None for v in (db, outdir, dask)):
        return True
    path = Path(specs[0])
    return has_glob(specs[0]) or (path.is_dir() and not is_trace_file(path))


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
    suffix, the content hash appended when another trace of the batch has the same name (and a
    count when that is the same too: copies of one file in two folders). Every file name is
    known (and declared an output) before any analysis."""

    SUFFIXES: Final = (".json", ".md")

    def __init__(self, root: Path, paths: Sequence[Path], files: RunFiles) -> None:
        self.root = root
        present = [p for p in paths if p.exists()]
        shared = {s for s, n in Counter(_stem(p.name) for p in present).items() if n > 1}
        taken: Counter[str] = Counter()
        self.stems: dict[str, str] = {}
        for p in present:
            stem = _stem(p.name)
            stem = f"{stem}-{file_hash(p)[:8]}" if stem in shared else stem
            taken[stem] += 1
            self.stems[str(p)] = stem if taken[stem] == 1 else f"{stem}-{taken[stem]}"
        for stem in self.stems.values():
            for suffix in self.SUFFIXES:
                files.writes("--outdir", root / f"{stem}{suffix}")

    def make(self) -> None:
        with writing(self.root):
            self.root.mkdir(exist_ok=True)

    def write(self, result: RunResult) -> None:
        """Write one trace's reports.

        Raises:
            OutputError: a file cannot be written (a half-written one is removed).
        """
        assert result.record is not None and result.report is not None
        stem = self.stems[result.trace]
        for suffix, text in zip(
            self.SUFFIXES, (to_json_text(result.report), to_markdown(result.report)), strict=True
        ):
            with output_file(self.root / f"{stem}{suffix}") as handle:
                handle.write(text)


def _open_db(path: Path | None) -> ResultsDb | None:
    return None if path is None else ResultsDb(path)


@dataclass(frozen=True)
class BatchOutcome:
    """The summary entries of a batch, in the order of its traces, and its exit status: 0 when
    every trace was analyzed and stored, `EXIT_SOME_FAILED` otherwise."""

    entries: tuple[BatchEntry, ...]
    exit_code: int


def run_batch(
    request: BatchRequest,
    echo_err: Echo,
    files: RunFiles | None = None,
    progress: ProgressBar | None = None,
) -> BatchOutcome:
    """Analyze the traces; as each arrives write its database rows and --outdir reports (only
    here, in the client) and keep its summary entry. Every trace and every file written is
    declared in `files` and checked before any analysis.

    A trace that fails, a run the database could not store (locked, read-only, full: the
    first such failure stops the writing) and reports that could not be written are said on
    stderr; the others are still summarized.

    Raises:
        LlmPerfOptError: no trace matched, an output is an input, the database or the
            scheduler is unusable.
    """
    files = files if files is not None else RunFiles()
    if request.db_path is not None:
        files.writes("--db", request.db_path)
    paths = declare_traces(request.specs, request.options, files, echo_err)
    outdir = _Outdir(request.outdir, paths, files) if request.outdir is not None else None
    files.check()
    n_jobs, note = worker_count(request.jobs, len(paths))
    if note is not None and request.dask_address is None:
        echo_err(note)
    if outdir is not None:
        outdir.make()
    db = _open_db(request.db_path)
    entries: dict[int, BatchEntry] = {}
    not_stored: list[str] = []
    db_error: str | None = None
    started = time.perf_counter()
    try:
        bar = progress(len(paths)) if progress is not None else nullcontext(_no_progress)
        with bar as advance:
            for i, result in iter_results(
                paths, request.options, jobs=n_jobs, dask_address=request.dask_address
            ):
                advance(Path(result.trace).name)
                if not result.ok:
                    error = str(result.error)
                    named = error if result.trace in error else f"{result.trace}: {error}"
                    echo_err(f"error: {named}")
                    entries[i] = BatchEntry(result.trace, error)
                    continue
                assert result.report is not None
                for warning in result.report.warnings:
                    echo_err(f"warning: {result.trace}: {warning}")
                rows = result.rows()
                if db is not None and db_error is None:
                    try:
                        db.write(rows)
                    except sqlite3.Error as exc:
                        db_error = str(exc)
                        echo_err(
                            f"error: cannot store runs in {request.db_path} ({exc}); the "
                            "analyses go on and are printed, but are not stored"
                        )
                if db is not None and db_error is not None:
                    not_stored.append(result.trace)
                if outdir is not None:
                    try:
                        outdir.write(result)
                    except OutputError as exc:
                        echo_err(f"error: {result.trace}: report not written: {exc}")
                        not_stored.append(result.trace)
                entries[i] = BatchEntry(result.trace, None, rows.run, tuple(rows.tables["stages"]))
    finally:
        if db is not None:
            with suppress(sqlite3.Error):
                db.close()
    ordered = [entries[i] for i in range(len(paths))]
    failed = sum(not e.ok for e in ordered)
    if not_stored:
        names = list(dict.fromkeys(not_stored))
        more = f" and {len(names) - 10} more" if len(names) > 10 else ""
        echo_err(f"not stored or not written ({len(names)} run(s)): {', '.join(names[:10])}{more}")
    echo_err(
        f"{len(ordered)} trace(s): {len(ordered) - failed} analyzed, {failed} failed "
        f"in {time.perf_counter() - started:.1f} s"
        + (
            f"; results in {request.db_path}"
            if request.db_path is not None and db_error is None
            else ""
        )
    )
    return BatchOutcome(tuple(ordered), EXIT_SOME_FAILED if failed or not_stored else 0)


def _no_progress(_name: str) -> None:
    pass


# --- summary: one row per trace x stage ----------------------------------------------------------

SUMMARY_HEAD: Final = ("trace", "run", "stage", "inst", "busy ms", "wall ms", "MFU trace",
                        "MFU wall", "MBU trace", "kernels/step", "step µs", "verdict")  # fmt: skip


def summary_rows(entries: Sequence[BatchEntry]) -> list[tuple[str, ...]]:
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
    return "# MFU summary\n\n" + md_table(SUMMARY_HEAD, summary_rows(entries)) + "\n"
