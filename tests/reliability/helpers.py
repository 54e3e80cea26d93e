"""Mutated copies of the committed traces, and the CLI contract every reliability test checks.

The contract: exit 0, or exit 2 with exactly one `Error: …` line on stderr (capped), never a
traceback; the input's bytes unchanged; no temporary left behind.
"""

from __future__ import annotations

import hashlib
import json
import lzma
import math
import shutil
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click
from click.testing import CliRunner, Result

from llm_perf_opt.cli._common import MAX_ERROR_CHARS
from llm_perf_opt.cli.analyze import main as analyze_cli
from llm_perf_opt.cli.flops import cli as flops_cli
from tests.helpers.paths import REPO

PROBE = REPO / "tests" / "data" / "h100_probes" / "probe_threads.sqlite"
V1_XZ = REPO / "traces" / "dsocr_v1_base.sqlite.xz"
V1_META = REPO / "traces" / "meta" / "dsocr_v1_base.run.meta.json"
# The StringIds text of the v1 trace's run-metadata mark.
MARK_QUERY = "SELECT id, value FROM StringIds WHERE value LIKE '%llm_perf_opt.run_meta/1%'"
# Stages of the probe trace's ranges, enough for a full MFU report from flags alone.
PROBE_STAGES = (
    "--stage", "vision=matmul", "--stage", "prefill=copies", "--stage", "decode=cub_ops",
    "--model", "deepseek-ocr", "--prefill-len", "273", "--decode-tokens", "8",
)  # fmt: skip


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


def invoke(command: click.Command, args: Sequence[Any]) -> Result:
    return CliRunner().invoke(command, [str(a) for a in args])


def analyze(*args: Any) -> Result:
    return invoke(analyze_cli, args)


def flops(*args: Any) -> Result:
    return invoke(flops_cli, args)


def assert_error(result: Result, *fragments: str) -> str:
    """Exit 2, exactly one `Error:` line on stderr (capped), no traceback; returns the line."""
    assert result.exit_code == 2, (result.exit_code, result.output, result.stderr)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1, result.stderr
    assert len(errors[0]) <= len("Error: ") + MAX_ERROR_CHARS + 40
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


def assert_ok(result: Result) -> None:
    assert result.exit_code == 0, (result.output, result.stderr, result.exception)
    assert "Traceback" not in result.stderr


def assert_contract(result: Result) -> None:
    """Either outcome of the contract, with finite numbers in any JSON printed."""
    if result.exit_code == 0:
        assert "Traceback" not in result.stderr
        if result.stdout.lstrip().startswith("{"):
            assert_finite(json.loads(result.stdout))
    else:
        assert_error(result)


def assert_finite(value: Any) -> None:
    if isinstance(value, float):
        assert math.isfinite(value)
    elif isinstance(value, dict):
        for item in value.values():
            assert_finite(item)
    elif isinstance(value, list):
        for item in value:
            assert_finite(item)


def scratch_left(tmp: Path) -> list[Path]:
    return sorted(tmp.glob("mfu-trace-*"))
