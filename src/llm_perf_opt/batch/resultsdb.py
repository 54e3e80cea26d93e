"""The results database: every analyzed run as rows of eight sqlite tables (docs/many-runs.md).

A run is keyed by its `run_id`, a hash of (trace content hash, analysis options): analyzing the
same file with the same options again replaces its rows, in one transaction, so a killed writer
leaves either the old rows or the new ones and never a mix. The database is in WAL mode and only
the client process writes it (workers return rows, they never open the database).

Rows are the frames of the report's levels (`report.levels`: the columns flagged for the
database), built here once; the compare step reads them back as frames, so a comparison of
traces and one of stored run ids see the same numbers.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import stat
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, is_dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePath
from typing import Any, Final

import polars as pl

from llm_perf_opt import __version__
from llm_perf_opt.analysis import AnalyzeOptions
from llm_perf_opt.errors import ResultsDbError
from llm_perf_opt.inputs.run_meta import RunMeta
from llm_perf_opt.inputs.stage_ranges import RangeRef
from llm_perf_opt.metrics.mfu import MfuReport
from llm_perf_opt.report.fields import DB, Field, Level
from llm_perf_opt.report.levels import (
    CATEGORY,
    DECODE_STEP,
    ENGINE_PHASE,
    ENGINE_STEP,
    INSTANCE,
    KERNEL,
    RUN,
    RUN_CONTEXT,
    RUN_INPUTS,
    RUN_PEAK,
    RUN_SOURCE,
    RUN_WARNINGS,
    STAGE,
    category_frame,
    decode_step_frame,
    engine_phase_frame,
    engine_step_frame,
    instance_frame,
    kernel_frame,
    run_frame,
    stage_frame,
)

# Seconds a writer waits for another writer's transaction before giving up.
BUSY_TIMEOUT_S: Final = 60.0
# The table that marks a file as a results database of this tool, and its one row's values.
SCHEMA_TABLE: Final = "llm_perf_opt_schema"
SCHEMA_ID: Final = "llm_perf_opt.results_db"
# 2: the `categories` table and the top kernels' `category`. A file of an older version from
# OLDEST_UPGRADED on is upgraded when written (missing tables and columns added; its earlier
# runs keep no categories) and read as it is; any other version is refused untouched.
SCHEMA_VERSION: Final = 2
OLDEST_UPGRADED: Final = 1
# Version a database written before the schema table existed is taken to have.
UNVERSIONED: Final = 0
SQLITE_MAGIC: Final = b"SQLite format 3\x00"


_SQLITE: Final[dict[Any, type]] = {pl.Float64: float, pl.Int64: int, pl.Boolean: int}


def _sqlite_types(fields: Iterable[Field]) -> dict[str, type]:
    """Column types of the fields the database writes (a flag is stored as 0/1, a list as its
    JSON text)."""
    return {f.name: _SQLITE.get(f.dtype.base_type(), str) for f in fields if DB in f.outputs}


# What identifies the run, the GPU, the run metadata's facts, the report's other run columns.
RUNS: Final[dict[str, type]] = {
    "run_id": str,
    "trace_path": str,
    "trace_name": str,
    "content_hash": str,
    "options_key": str,
    "options": str,
    **_sqlite_types(RUN_SOURCE),
    "model": str,
    "family": str,
    "mode": str,
    "dtype": str,
    "attn_implementation": str,
    "experts_implementation": str,
    "backend": str,
    "meta_run_id": str,
    **_sqlite_types(RUN_PEAK + RUN_CONTEXT + RUN_INPUTS + RUN_WARNINGS),
    "tool_version": str,
    "analyzed_at": str,
    "analysis_s": float,
}
Flatten = Callable[[MfuReport], pl.DataFrame]
# The report's levels stored one table each: table → (level, its frame, key after `run_id`).
LEVEL_TABLES: Final[dict[str, tuple[Level, Flatten, tuple[str, ...]]]] = {
    "stages": (STAGE, stage_frame, ("stage",)),
    "instances": (INSTANCE, instance_frame, ("stage", "instance")),
    "decode_steps": (DECODE_STEP, decode_step_frame, ("instance", "step")),
    "top_kernels": (KERNEL, kernel_frame, ("stage", "rank")),
    "categories": (CATEGORY, category_frame, ("stage", "category")),
    "engine_phases": (ENGINE_PHASE, engine_phase_frame, ("phase",)),
    "engine_steps": (ENGINE_STEP, engine_step_frame, ("step",)),
}
# Tables added after the first five: a database written before lacks them until written again
# (read as empty).
LATER_TABLES: Final = frozenset({"engine_phases", "engine_steps", "categories"})
# table → (columns, primary key); children are deleted before their run is written again.
TABLES: Final[dict[str, tuple[dict[str, type], tuple[str, ...]]]] = {
    "runs": (RUNS, ("run_id",)),
    **{
        table: ({"run_id": str, **_sqlite_types(level.fields)}, ("run_id", *key))
        for table, (level, _, key) in LEVEL_TABLES.items()
    },
}
# Columns that record when and how fast a run was analyzed, not what was measured.
VOLATILE_COLUMNS: Final = frozenset({"analyzed_at", "analysis_s"})
_POLARS: Final = {str: pl.String, int: pl.Int64, float: pl.Float64}


def _jsonable(value: Any) -> Any:
    if isinstance(value, RangeRef):
        return [value.name, value.domain]
    if is_dataclass(value) and not isinstance(value, type):
        return _jsonable(asdict(value))
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in sorted(value.items())}
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    if isinstance(value, PurePath):  # option files given on the command line
        return str(value)
    return value


# Options that change how a report is computed (the attribution engine, which ranges are
# summed) but not the report: not part of a run's key.
HOW_NOT_WHAT: Final = frozenset({"memory_budget_bytes", "every_range"})


def options_json(options: AnalyzeOptions) -> str:
    """The analysis options as canonical JSON (sorted keys): equal options, equal text. Those
    that choose how the report is computed, not what it says (`HOW_NOT_WHAT`), are left out."""
    fields = {
        k: _jsonable(getattr(options, k))
        for k in sorted(options.__dataclass_fields__)
        if k not in HOW_NOT_WHAT
    }
    return json.dumps(fields, sort_keys=True, separators=(",", ":"))


def run_id_of(content_hash: str, options_text: str) -> str:
    """The key of a run: the same bytes analyzed with the same options get the same id."""
    digest = hashlib.sha256(f"{content_hash}\n{options_text}".encode()).hexdigest()
    return digest[:16]


def file_hash(path: str | Path, chunk: int = 1 << 22) -> str:
    """SHA-256 of a file's bytes (as stored: a compressed trace hashes its compressed bytes); of
    a folder (a table export), of its files' names and bytes in name order."""
    path = Path(path)
    files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
    sha = hashlib.sha256()
    for file in files:
        if path.is_dir():
            sha.update(file.name.encode() + b"\0")
        with file.open("rb") as handle:
            while block := handle.read(chunk):
                sha.update(block)
    return sha.hexdigest()


@dataclass(frozen=True)
class RunRecord:
    """What identifies a run and how it was made, besides the report itself."""

    trace_path: str
    content_hash: str
    options: str
    meta: Mapping[str, Any] = field(default_factory=dict)
    analysis_s: float = 0.0

    @property
    def run_id(self) -> str:
        return run_id_of(self.content_hash, self.options)


def record_of(
    path: str | Path, options: AnalyzeOptions, meta: RunMeta | None, analysis_s: float
) -> RunRecord:
    """The record of a trace just analyzed: its content hash, options and metadata facts."""
    return RunRecord(
        trace_path=str(path),
        content_hash=file_hash(path),
        options=options_json(options),
        meta=meta_facts(meta),
        analysis_s=analysis_s,
    )


def meta_facts(meta: RunMeta | None) -> dict[str, Any]:
    """Model, mode and backend settings of the run metadata, for the `runs` row."""
    if meta is None:
        return {}
    model = meta.raw.get("model", {}) if isinstance(meta.raw.get("model"), Mapping) else {}
    backend = {
        k: model[k] for k in ("attn_implementation", "experts_implementation", "sdpa_cudnn")
        if k in model
    }  # fmt: skip
    backend |= {k: meta.raw[k] for k in ("cuda_graphs",) if k in meta.raw}
    return {
        "model": meta.model_name,
        "family": meta.family,
        "mode": meta.mode,
        "dtype": meta.dtype,
        "attn_implementation": model.get("attn_implementation"),
        "experts_implementation": model.get("experts_implementation"),
        "backend": json.dumps(backend, sort_keys=True),
        "meta_run_id": meta.run_id,
    }


@dataclass(frozen=True)
class RunRows:
    """One run as rows of each table (`runs` holds exactly one)."""

    tables: Mapping[str, Sequence[Mapping[str, Any]]]

    @property
    def run(self) -> Mapping[str, Any]:
        return self.tables["runs"][0]

    @property
    def run_id(self) -> str:
        return str(self.run["run_id"])

    def frame(self, table: str) -> pl.DataFrame:
        """A table's rows as a frame with the declared column types."""
        return frame_of(table, self.tables[table])


def frame_of(table: str, rows: Sequence[Mapping[str, Any]]) -> pl.DataFrame:
    """Rows of `table` as a frame with its declared schema (also when there are none)."""
    columns = TABLES[table][0]
    schema = {name: _POLARS[kind] for name, kind in columns.items()}
    return pl.DataFrame([dict(r) for r in rows], schema=schema, orient="row")


def _sqlite_row(row: Mapping[str, Any]) -> dict[str, Any]:
    return {k: json.dumps(v) if isinstance(v, list) else int(v) if isinstance(v, bool) else v
            for k, v in row.items()}  # fmt: skip


def rows_from_report(
    record: RunRecord, report: MfuReport, analyzed_at: str | None = None
) -> RunRows:
    """Every table's rows of one analyzed trace."""
    rid = record.run_id
    run = dict.fromkeys(RUNS) | {
        "run_id": rid,
        "trace_path": record.trace_path,
        "trace_name": Path(record.trace_path).name,
        "content_hash": record.content_hash,
        "options_key": hashlib.sha256(record.options.encode()).hexdigest()[:16],
        "options": record.options,
        **_sqlite_row(RUN.rows(run_frame(report), DB)[0]),
        "tool_version": __version__,
        "analyzed_at": analyzed_at or datetime.now(UTC).isoformat(timespec="seconds"),
        "analysis_s": record.analysis_s,
    }
    run |= {k: v for k, v in record.meta.items() if k in RUNS}
    tables: dict[str, list[dict[str, Any]]] = {"runs": [run]}
    for table, (level, frame, _) in LEVEL_TABLES.items():
        rows = level.rows(frame(report), DB)
        tables[table] = [{"run_id": rid, **_sqlite_row(row)} for row in rows]
    return RunRows(tables)


def _schema_of(path: Path, *, immutable: bool) -> tuple[set[str], int | None] | None:
    """(table names, schema version) of an SQLite file, None when it is not one. Immutable:
    nothing beside the file is created, but changes still in a `-wal` file are not seen."""
    try:
        with path.open("rb") as handle:
            if handle.read(len(SQLITE_MAGIC)) != SQLITE_MAGIC:
                return None
        flags = "mode=ro&immutable=1" if immutable else "mode=ro"
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?{flags}", uri=True)
    except (OSError, sqlite3.Error):
        return None
    try:
        names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if SCHEMA_TABLE in names:
            row = conn.execute(f"SELECT id, version FROM [{SCHEMA_TABLE}]").fetchone()
            ours = row is not None and row[0] == SCHEMA_ID and isinstance(row[1], int)
            return names, int(row[1]) if ours else None
        return names, UNVERSIONED if set(TABLES) - LATER_TABLES <= names else None
    except sqlite3.Error:
        return None
    finally:
        conn.close()


def _schema(path: Path) -> tuple[set[str], int | None] | None:
    """`_schema_of`, read through the `-wal` file when one holds changes (then it exists)."""
    wal = path.with_name(f"{path.name}-wal")
    return _schema_of(path, immutable=not (wal.is_file() and wal.stat().st_size > 0))


def results_db_schema(path: Path) -> int | None:
    """The schema version of the results database at `path` (`UNVERSIONED` for one written
    before versions were recorded), or None when it is not one. Only reads the file."""
    found = _schema(path)
    return None if found is None else found[1]


def _check_ours(path: Path) -> bool:
    """Whether `path` is to be created (missing, empty, or an SQLite file without tables: a
    writer beside us is creating it); raise ResultsDbError unless it is a results database of
    this schema. Only reads the file."""
    try:
        info = path.stat()
    except FileNotFoundError:
        return True
    except OSError as exc:
        raise ResultsDbError(
            f"results database {str(path)!r} cannot be read ({exc.strerror})"
        ) from None
    if not stat.S_ISREG(info.st_mode):
        raise ResultsDbError(
            f"results database {str(path)!r} is not a regular file (a folder, FIFO or device); "
            "give a .sqlite file path"
        )
    if info.st_size == 0:
        return True
    found = _schema(path)
    if found is not None and not found[0]:
        return True
    if found is None or found[1] is None:
        raise ResultsDbError(
            f"{str(path)!r} is not a results database of mfu-analyze (another program's file, "
            "or a trace); it was not touched. Give a new file or one `--db` wrote"
        )
    if found[1] > SCHEMA_VERSION:
        raise ResultsDbError(
            f"{str(path)!r} is a results database of schema version {found[1]}, written by a "
            f"newer llm-perf-opt (this one knows up to {SCHEMA_VERSION}); it was not touched. "
            "Upgrade llm-perf-opt, or give a new --db file"
        )
    if found[1] < OLDEST_UPGRADED:
        raise ResultsDbError(
            f"{str(path)!r} is a results database of schema version {found[1]}, too old to "
            f"upgrade to version {SCHEMA_VERSION}; it was not touched. Give a new --db file "
            "(and analyze the traces again into it)"
        )
    return False


class ResultsDb:
    """The results database file; `readonly=True` opens an existing one without writing.

    An existing file is first checked read-only to be a results database of this schema
    (`_check_ours`); anything else is refused untouched."""

    def __init__(self, path: str | Path, *, readonly: bool = False) -> None:
        import sqlite_utils  # 0.3 s of imports: only when a database is used

        self.path = Path(path)
        if readonly:
            if not self.path.is_file():
                raise ResultsDbError(
                    f"results database {str(self.path)!r} does not exist; make one with "
                    "`mfu-analyze TRACES... --db FILE`"
                )
            if _check_ours(self.path):
                raise ResultsDbError(
                    f"{str(self.path)!r} is empty, not a results database; give the file "
                    "`mfu-analyze --db` wrote"
                )
            conn = sqlite3.connect(
                f"{self.path.resolve().as_uri()}?mode=ro", uri=True, timeout=BUSY_TIMEOUT_S
            )
        else:
            _check_ours(self.path)
            try:
                conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S)
            except sqlite3.OperationalError as exc:
                raise ResultsDbError(
                    f"cannot open results database {str(self.path)!r} ({exc}); check the path"
                ) from exc
        self.db = sqlite_utils.Database(conn)
        if readonly:
            return
        try:
            self._create()
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise ResultsDbError(
                f"cannot write results database {str(self.path)!r} ({exc}); give a writable "
                "--db path, or wait for the other writer"
            ) from exc

    def _create(self) -> None:
        """Create the tables, waiting out another writer doing the same: switching to WAL and
        upgrading a read to a write lock fail at once with "locked" (SQLite's busy handler is
        not asked where waiting could deadlock), so those are retried until the busy timeout."""
        deadline = time.monotonic() + BUSY_TIMEOUT_S
        while True:
            try:
                self._create_once()
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def _create_once(self) -> None:
        self.db.enable_wal()
        with self.db.atomic():
            for name, (columns, pk) in TABLES.items():
                key = pk if len(pk) > 1 else pk[0]
                table = self.db.table(name)
                table.create(columns, pk=key, if_not_exists=True)
                have = table.columns_dict  # an older schema's table: add what it lacks
                for column, kind in columns.items():
                    if column not in have:
                        table.add_column(column, kind)
            self.db.table("runs").create_index(["content_hash"], if_not_exists=True)
            self.db.table("runs").create_index(["trace_name"], if_not_exists=True)
            schema = self.db.table(SCHEMA_TABLE)
            schema.create({"id": str, "version": int}, pk="id", if_not_exists=True)
            schema.upsert({"id": SCHEMA_ID, "version": SCHEMA_VERSION}, pk="id")

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> ResultsDb:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def write(self, rows: RunRows) -> None:
        """Replace the run's rows in every table, in one transaction."""
        rid = rows.run_id
        with self.db.atomic():
            for name in reversed(list(TABLES)):
                self.db.execute(f"DELETE FROM [{name}] WHERE run_id = ?", [rid])
            for name, table_rows in rows.tables.items():
                if table_rows:
                    self.db.table(name).insert_all(dict(r) for r in table_rows)

    def run_ids(self) -> list[str]:
        return [r["run_id"] for r in self.db.query("SELECT run_id FROM runs ORDER BY run_id")]

    def resolve(self, token: str) -> str:
        """A run id from itself or a unique prefix of it.

        Raises:
            ResultsDbError: no run, or several, match.
        """
        found = [
            r["run_id"]
            for r in self.db.query(
                "SELECT run_id FROM runs WHERE run_id LIKE ? ORDER BY run_id", [f"{token}%"]
            )
        ]
        if len(found) != 1:
            what = "no run" if not found else f"{len(found)} runs"
            raise ResultsDbError(
                f"{what} in {str(self.path)!r} with id {token!r}; give a trace path or one of "
                "the ids `sqlite-utils FILE 'select run_id, trace_name from runs'` lists"
            )
        return str(found[0])

    def load(self, run_id: str) -> RunRows:
        """Every row of one run."""
        tables: dict[str, list[dict[str, Any]]] = {}
        for name, (_, pk) in TABLES.items():
            query = f"SELECT * FROM [{name}] WHERE run_id = ? ORDER BY {', '.join(pk)}"
            exists = name not in LATER_TABLES or self.db[name].exists()
            tables[name] = list(self.db.query(query, [run_id])) if exists else []
        return RunRows(tables)

    def dump(self, *, volatile: bool = False) -> dict[str, list[tuple[Any, ...]]]:
        """Every table's rows in key order (without the volatile columns unless asked): two
        databases with the same runs give equal dumps."""
        out: dict[str, list[tuple[Any, ...]]] = {}
        for name, (columns, pk) in TABLES.items():
            cols = [c for c in columns if volatile or c not in VOLATILE_COLUMNS]
            query = f"SELECT {', '.join(cols)} FROM [{name}] ORDER BY {', '.join(pk)}"
            out[name] = [tuple(r.values()) for r in self.db.query(query)]
        return out
