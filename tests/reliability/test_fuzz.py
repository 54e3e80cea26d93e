"""Property tests: whatever is done to a small real trace, and whatever option values and paths
batch mode and mfu-compare are given, the CLIs keep their contract.

Hypothesis mutates the committed probe export (tables and columns dropped or renamed, NULLs,
text and huge numbers in integer columns, ends before starts, random bytes over random pages)
and runs `mfu-analyze` in-process: exit 0 with finite numbers, or exit 2 with one `Error:` line;
never a traceback; the input's bytes unchanged; no decompressed copy left in the temp dir.
"""

from __future__ import annotations

import lzma
import re
import sqlite3
import tempfile
from pathlib import Path

import pytest
from benchmarks.gen_trace import generate
from click.testing import Result
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llm_perf_opt.cli.compare import main as compare_cli
from tests.helpers.committed import PROBE, PROBE_STAGES
from tests.helpers.contract import analyze, assert_contract, invoke, scratch_left
from tests.helpers.mutate import digest, unconstrained

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


# --- batch mode and mfu-compare: random option values and paths ---------------------------------

NUMBERS = ("nan", "inf", "-inf", "-1", "0", "1", "3.5", "1e999", "1e7", "abc", "", " 2 ", "0x10")
JOBS = ("1", "2", "0", "-1", "99999999999", "x", "")
BUDGETS = ("1", "0", "1M", "16M", "1T", "-1M", "nanM", "1e400", "abc", "")
PLACES = ("trace", "other", "new", "missing_dir", "folder", "devnull", "devfull", "empty", "glob")
FORMATS = ("table", "json", "csv", "md")

place = st.sampled_from(PLACES)


def _path(kind: str, work: Path, name: str) -> str:
    """A path of the kind hypothesis picked, inside `work` where it is a file of the run."""
    return {
        "trace": str(work / "a.sqlite"),
        "other": str(work / "b.sqlite"),
        "new": str(work / f"{name}.out"),
        "missing_dir": str(work / "nope" / name),
        "folder": str(work),
        "devnull": "/dev/null",
        "devfull": "/dev/full",
        "empty": "",
        "glob": str(work / "*.sqlite"),
    }[kind]


def _work(root: Path, traces: list[Path]) -> Path:
    work = Path(tempfile.mkdtemp(dir=root))
    for name, trace in zip(("a.sqlite", "b.sqlite"), traces, strict=False):
        (work / name).write_bytes(trace.read_bytes())
    return work


def _assert_many_runs_contract(result: Result, *, gate: bool) -> None:
    """Exit 0; 1 only from the compare gate; 2 with one `Error:` line, or 2 after a batch
    whose summary says how many traces failed; never a traceback."""
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.stderr
    if result.exit_code == 1:
        assert gate and "regression:" in result.stderr
    elif result.exit_code == 2 and not any(
        line.startswith("Error: ") for line in result.stderr.splitlines()
    ):
        assert re.search(r"\d+ trace\(s\): \d+ analyzed, \d+ failed", result.stderr)
    else:
        assert_contract(result)


def _inputs(work: Path, kinds: list[str]) -> dict[str, str]:
    """Digests of the traces the run reads (a path, a glob or the folder naming them)."""
    named = {"trace": ["a.sqlite"], "other": ["b.sqlite"], "glob": ["a.sqlite", "b.sqlite"],
             "folder": ["a.sqlite", "b.sqlite"]}  # fmt: skip
    return {n: digest(work / n) for k in kinds for n in named.get(k, [])}


def _untouched(work: Path, before: dict[str, str], scratch: Path) -> None:
    """The inputs keep their bytes and gain no -wal, -shm or -journal file; no temporaries."""
    assert {n: digest(work / n) for n in before} == before
    for name in before:
        assert not [p for p in work.iterdir() if p.name.startswith(f"{name}-")]
    assert scratch_left(scratch) == []


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("fuzz_gen")
    for seed in (1, 2):
        generate(root / f"g{seed}.sqlite", 1_000, seed=seed)
    return [root / "g1.sqlite", root / "g2.sqlite"]


@settings(
    max_examples=30,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    specs=st.lists(st.sampled_from(("trace", "other", "glob", "folder", "empty", "missing_dir")),
                   min_size=1, max_size=3),
    db=st.none() | place,
    output=st.none() | place,
    outdir=st.none() | place,
    fmt=st.sampled_from(FORMATS),
    jobs=st.sampled_from(JOBS),
    budget=st.none() | st.sampled_from(BUDGETS),
)  # fmt: skip
def test_fuzz_batch_options_keep_the_contract(
    scratch_tmp: Path,
    generated: list[Path],
    specs: list[str],
    db: str | None,
    output: str | None,
    outdir: str | None,
    fmt: str,
    jobs: str,
    budget: str | None,
) -> None:
    work = _work(scratch_tmp.parent, generated)
    before = _inputs(work, specs)
    args = [_path(s, work, "t") for s in specs] + ["--format", fmt, "-j", jobs]
    for option, kind in (("--db", db), ("--output", output), ("--outdir", outdir)):
        if kind is not None:
            args += [option, _path(kind, work, option.strip("-"))]
    if budget is not None:
        args += ["--memory-budget", budget]
    _assert_many_runs_contract(analyze(*args), gate=False)
    _untouched(work, before, scratch_tmp)


@settings(
    max_examples=30,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    base=st.lists(st.sampled_from(("trace", "other", "glob", "empty", "missing_dir", "id")),
                  min_size=0, max_size=2),
    new=st.lists(st.sampled_from(("trace", "other", "glob", "empty", "id")), min_size=0,
                 max_size=2),
    min_effect=st.none() | st.sampled_from(NUMBERS),
    gate=st.none() | st.sampled_from(NUMBERS),
    output=st.none() | place,
    plot=st.none() | place | st.just("png"),
    db=st.none() | place,
    fmt=st.sampled_from(("table", "json", "md")),
)  # fmt: skip
def test_fuzz_compare_options_keep_the_contract(
    scratch_tmp: Path,
    generated: list[Path],
    base: list[str],
    new: list[str],
    min_effect: str | None,
    gate: str | None,
    output: str | None,
    plot: str | None,
    db: str | None,
    fmt: str,
) -> None:
    work = _work(scratch_tmp.parent, generated)
    before = _inputs(work, [*base, *new])

    def side(kinds: list[str]) -> list[str]:
        return ["3f2a" if k == "id" else _path(k, work, "t") for k in kinds]

    args = [*side(base), "--", *side(new), "--format", fmt, "-j", "1"]
    for option, value in (("--min-effect", min_effect), ("--fail-on-regression", gate)):
        if value is not None:
            args += [option, value]
    for option, kind in (("--output", output), ("--db", db)):
        if kind is not None:
            args += [option, _path(kind, work, option.strip("-"))]
    if plot is not None:
        args += ["--plot", str(work / "cmp.png") if plot == "png" else _path(plot, work, "p")]
    _assert_many_runs_contract(invoke(compare_cli, args), gate=gate is not None)
    _untouched(work, before, scratch_tmp)
