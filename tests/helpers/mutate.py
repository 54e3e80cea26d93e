"""Copies of the committed traces, changed with SQL, for the tests of damaged or odd inputs."""

from __future__ import annotations

import hashlib
import json
import lzma
import shutil
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tests.helpers.committed import V1_XZ

# The StringIds text of the v1 trace's run-metadata mark.
MARK_QUERY = "SELECT id, value FROM StringIds WHERE value LIKE '%llm_perf_opt.run_meta/1%'"


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def unconstrained(conn: sqlite3.Connection, table: str) -> None:
    """Re-create `table` without its NOT NULL/type constraints, so tests can write NULLs."""
    conn.execute(f"CREATE TABLE _copy AS SELECT * FROM {table}")
    conn.execute(f"DROP TABLE {table}")
    conn.execute(f"ALTER TABLE _copy RENAME TO {table}")


def mutated(
    source: Path, target: Path, *sql: str, loosen: Sequence[str] = (), params: Sequence[Any] = ()
) -> Path:
    """A copy of `source` at `target` with `sql` applied (after loosening `loosen` tables)."""
    shutil.copyfile(source, target)
    conn = sqlite3.connect(target)
    for table in loosen:
        unconstrained(conn, table)
    for statement in sql:
        conn.execute(statement, params if "?" in statement else ())
    conn.commit()
    conn.close()
    return target


def decompressed_v1(target: Path) -> Path:
    with lzma.open(V1_XZ) as src, target.open("wb") as dst:
        shutil.copyfileobj(src, dst)
    return target


def with_mark(source: Path, target: Path, edit: Any) -> Path:
    """A copy whose run-metadata mark is `edit(mark_dict)` (NaN written as JSON's NaN)."""
    shutil.copyfile(source, target)
    conn = sqlite3.connect(target)
    mark_id, text = conn.execute(MARK_QUERY).fetchone()
    new = edit(json.loads(text))
    value = new if isinstance(new, bytes | str) else json.dumps(new)
    conn.execute("UPDATE StringIds SET value = CAST(? AS TEXT) WHERE id = ?", (value, mark_id))
    conn.commit()
    conn.close()
    return target
