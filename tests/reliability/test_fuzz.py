"""Property test: whatever is done to a small real trace, the CLI keeps its contract.

Hypothesis mutates the committed probe export (tables and columns dropped or renamed, NULLs,
text and huge numbers in integer columns, ends before starts, random bytes over random pages)
and runs `mfu-analyze` in-process: exit 0 with finite numbers, or exit 2 with one `Error:` line;
never a traceback; the input's bytes unchanged; no decompressed copy left in the temp dir.
"""

from __future__ import annotations

import lzma
import sqlite3
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .helpers import (
    PROBE,
    PROBE_STAGES,
    analyze,
    assert_contract,
    digest,
    scratch_left,
    unconstrained,
)

TABLES = (
    "CUPTI_ACTIVITY_KIND_KERNEL",
    "CUPTI_ACTIVITY_KIND_MEMCPY",
    "CUPTI_ACTIVITY_KIND_RUNTIME",
    "NVTX_EVENTS",
    "StringIds",
    "TARGET_INFO_GPU",
    "META_DATA_EXPORT",
)
COLUMNS = (
    "start", "end", "deviceId", "streamId", "globalPid", "globalTid", "correlationId",
    "shortName", "demangledName", "eventType", "text", "textId", "domainId", "id", "value",
    "name", "memoryBandwidth",
)  # fmt: skip
VALUES = (
    "NULL",
    "'text'",
    "-1",
    "0",
    str(1 << 40),
    str((1 << 63) - 1),
    "1.5",
    "X'FF00'",
    "start - 1000",
)
PAGE = 4096

table = st.sampled_from(TABLES)
column = st.sampled_from(COLUMNS)
mutation = st.one_of(
    st.tuples(st.just("drop_table"), table),
    st.tuples(st.just("rename_table"), table),
    st.tuples(st.just("drop_column"), table, column),
    st.tuples(st.just("rename_column"), table, column),
    st.tuples(st.just("set"), table, column, st.sampled_from(VALUES), st.integers(1, 4)),
    st.tuples(
        st.just("damage"),
        st.integers(0, 97),
        st.integers(0, PAGE - 16),
        st.binary(min_size=1, max_size=16),
    ),
)


def _apply(path: Path, mutations: list[tuple[object, ...]]) -> None:
    """Apply the SQL mutations (those SQLite refuses are skipped), then the byte damage."""
    conn = sqlite3.connect(path)
    for kind, *args in (m for m in mutations if m[0] != "damage"):
        statements = {
            "drop_table": lambda t: [f"DROP TABLE {t}"],
            "rename_table": lambda t: [f"ALTER TABLE {t} RENAME TO {t}_old"],
            "drop_column": lambda t, c: [f"ALTER TABLE {t} DROP COLUMN {c}"],
            "rename_column": lambda t, c: [f"ALTER TABLE {t} RENAME COLUMN {c} TO {c}_x"],
            "set": lambda t, c, v, every: [f"UPDATE {t} SET {c} = {v} WHERE rowid % {every} = 0"],
        }[str(kind)](*args)
        try:
            if kind == "set":
                unconstrained(conn, str(args[0]))
            for statement in statements:
                conn.execute(statement)
            conn.commit()
        except sqlite3.Error:
            conn.rollback()
    conn.close()
    data = bytearray(path.read_bytes())
    for _, page, offset, noise in (m for m in mutations if m[0] == "damage"):
        start = (int(page) * PAGE + int(offset)) % len(data)  # type: ignore[call-overload]
        data[start : start + len(noise)] = noise  # type: ignore[arg-type]
    path.write_bytes(bytes(data))


@settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    mutations=st.lists(mutation, min_size=1, max_size=4),
    full_report=st.booleans(),
    compressed=st.booleans(),
)
def test_fuzz_mutated_probe_keeps_the_contract(
    scratch_tmp: Path, mutations: list[tuple[object, ...]], full_report: bool, compressed: bool
) -> None:
    work = Path(tempfile.mkdtemp(dir=scratch_tmp.parent))
    trace = work / "probe.sqlite"
    trace.write_bytes(PROBE.read_bytes())
    _apply(trace, mutations)
    if compressed:
        packed = work / "probe.sqlite.xz"
        packed.write_bytes(lzma.compress(trace.read_bytes(), preset=0))
        trace = packed
    before = digest(trace)
    args = [*PROBE_STAGES, "--format", "json"] if full_report else ["--ranges-out", work / "r.csv"]
    result = analyze(trace, *args)
    assert_contract(result)
    assert digest(trace) == before
    assert sorted(p.name for p in trace.parent.iterdir() if p.name.startswith(trace.name)) == [
        trace.name
    ]
    assert scratch_left(scratch_tmp) == []
