"""The results database: rows equal to the report, idempotent re-analysis, one transaction per
run (a writer killed mid-run leaves the old rows), and the same contents with -j 1 and -j 2."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import sqlite_utils
from click.testing import CliRunner

from llm_perf_opt.analysis import AnalyzeOptions
from llm_perf_opt.batch.fanout import analyze_one
from llm_perf_opt.batch.resultsdb import (
    TABLES,
    ResultsDb,
    ResultsDbError,
    file_hash,
    options_json,
    run_id_of,
)
from llm_perf_opt.cli.analyze import main
from tests.helpers.paths import REPO


def analyze_into(db: Path, *args: str | Path) -> None:
    result = CliRunner().invoke(main, [*(str(a) for a in args), "--db", str(db)])
    assert result.exit_code == 0, result.output


def dump(db: Path, *, volatile: bool = False) -> dict[str, list[tuple[Any, ...]]]:
    with ResultsDb(db) as opened:
        return opened.dump(volatile=volatile)


def counts(db: Path) -> dict[str, int]:
    database = sqlite_utils.Database(db)
    return {name: database.table(name).count for name in TABLES}


def test_rows_hold_the_report_numbers(good_traces: list[Path], tmp_path: Path) -> None:
    db = tmp_path / "r.sqlite"
    analyze_into(db, good_traces[0], "-j", "1")
    result = analyze_one(good_traces[0], AnalyzeOptions())
    assert result.report is not None and result.record is not None
    report = result.report
    database = sqlite_utils.Database(db)
    (run,) = list(database.table("runs").rows)
    assert run["run_id"] == run_id_of(result.record.content_hash, options_json(AnalyzeOptions()))
    assert run["gpu_name"] == report.gpu_name and run["model"] == "deepseek-ocr"
    assert run["mode"] == "base" and run["experts_implementation"] == "eager"
    assert json.loads(run["backend"])["attn_implementation"] == "sdpa"
    stages = {r["stage"]: r for r in database.table("stages").rows}
    for name, s in report.stages.items():
        assert stages[name]["gpu_busy_s"] == s.gpu_busy_ns / 1e9
        assert stages[name]["mfu_trace"] == s.mfu_trace
        assert stages[name]["n_kernels"] == s.n_kernels
    assert stages["decode"]["kernels_per_step"] == report.stages["decode"].kernels_per_step
    n_instances = sum(len(s.instances) for s in report.stages.values())
    assert counts(db)["instances"] == n_instances
    assert counts(db)["decode_steps"] == len(report.decode_steps)
    steps = database.execute("SELECT sum(gpu_busy_s) FROM decode_steps").fetchone()[0]
    assert steps == pytest.approx(sum(d.gpu_busy_ns for d in report.decode_steps) / 1e9)
    mode = database.execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


def test_reanalysis_replaces_rows_and_new_options_add_a_run(
    good_traces: list[Path], tmp_path: Path
) -> None:
    db = tmp_path / "r.sqlite"
    analyze_into(db, *good_traces[:2], "-j", "1")
    first, before = dump(db), counts(db)
    analyze_into(db, *good_traces[:2], "-j", "1")
    assert dump(db) == first and counts(db) == before
    analyze_into(db, good_traces[0], "--top-kernels", "2", "-j", "1")
    after = counts(db)
    assert after["runs"] == before["runs"] + 1
    top = sqlite_utils.Database(db).execute(
        "SELECT count(*) FROM top_kernels JOIN runs USING (run_id) "
        "WHERE options LIKE '%\"top_kernels\":2%'"
    )
    assert top.fetchone()[0] == 2 * 3  # two per stage


def test_jobs_1_and_2_write_the_same_rows(sweep: Path, tmp_path: Path) -> None:
    one, two = tmp_path / "one.sqlite", tmp_path / "two.sqlite"
    for db, jobs in ((one, "1"), (two, "2")):
        result = CliRunner().invoke(main, [str(sweep), "--db", str(db), "-j", jobs])
        assert result.exit_code == 2  # bad.sqlite
    assert counts(one)["runs"] == 3
    assert dump(one) == dump(two)


# Writes the run of argv[2] (decode steps blown up to 200,000 rows so the write takes
# a while) into the database argv[1]; says `inserting` when the first decode-step row goes in.
KILLED_WRITER = textwrap.dedent(
    """
    import sys
    from dataclasses import replace
    from llm_perf_opt.analysis import AnalyzeOptions
    from llm_perf_opt.batch.resultsdb import ResultsDb
    from llm_perf_opt.batch.fanout import analyze_one

    result = analyze_one(sys.argv[2], AnalyzeOptions())
    step = result.report.decode_steps[0]
    many = tuple(replace(step, instance=9, step=k) for k in range(200_000))
    rows = result.__class__(result.trace, result.record,
                            replace(result.report, decode_steps=many)).rows()
    db = ResultsDb(sys.argv[1])
    said = []

    def trace(sql):
        if not said and sql.startswith("INSERT") and "decode_steps" in sql.split("(")[0]:
            said.append(1)
            print("inserting", flush=True)

    db.db.conn.set_trace_callback(trace)
    db.write(rows)
    print("done", flush=True)
    """
)


def test_a_writer_killed_mid_run_leaves_the_old_rows(
    good_traces: list[Path], tmp_path: Path
) -> None:
    db = tmp_path / "r.sqlite"
    analyze_into(db, good_traces[0], "-j", "1")
    before = dump(db, volatile=True)
    env = {"PYTHONPATH": str(REPO / "src"), "PATH": "/usr/bin:/bin"}
    argv = [sys.executable, "-c", KILLED_WRITER, str(db), str(good_traces[0])]
    with subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, env=env) as child:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "inserting"
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
        assert "done" not in child.stdout.read()
    con = sqlite3.connect(db)
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    con.close()
    assert dump(db, volatile=True) == before


def test_two_writers_at_once_both_land(good_traces: list[Path], tmp_path: Path) -> None:
    """Two `mfu-analyze --db` processes on one database at the same time: WAL and the busy
    timeout serialize their transactions; every run of both is there, the file intact."""
    db = tmp_path / "shared.sqlite"
    env = {"PYTHONPATH": str(REPO / "src"), "PATH": "/usr/bin:/bin"}
    cli = [sys.executable, "-m", "llm_perf_opt.cli.analyze", "--db", str(db), "-j", "1"]
    jobs = [[*cli, *(str(t) for t in good_traces[:2])], [*cli, str(good_traces[2])]]
    children = [
        subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        for argv in jobs
    ]
    for child in children:
        _, err = child.communicate(timeout=120)
        assert child.returncode == 0, err
    assert counts(db)["runs"] == 3
    con = sqlite3.connect(db)
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    con.close()


def test_readonly_open_names_the_problem(tmp_path: Path) -> None:
    with pytest.raises(ResultsDbError, match="does not exist"):
        ResultsDb(tmp_path / "none.sqlite", readonly=True)
    other = tmp_path / "other.sqlite"
    sqlite_utils.Database(other).table("t").insert({"a": 1})
    with pytest.raises(ResultsDbError, match="not a results database"):
        ResultsDb(other, readonly=True)
    (tmp_path / "junk.sqlite").write_text("not sqlite at all " * 100)
    with pytest.raises(ResultsDbError, match=r"not a results database.*not touched"):
        ResultsDb(tmp_path / "junk.sqlite")
    assert (tmp_path / "junk.sqlite").read_text() == "not sqlite at all " * 100


def test_a_table_export_folder_hashes_its_files(tmp_path: Path) -> None:
    export = tmp_path / "export"
    export.mkdir()
    (export / "StringIds.parquet").write_bytes(b"strings")
    (export / "NVTX_EVENTS.parquet").write_bytes(b"ranges")
    before = file_hash(export)
    assert file_hash(export) == before
    (export / "NVTX_EVENTS.parquet").write_bytes(b"ranges, edited")
    assert file_hash(export) != before


def test_option_files_are_recorded_as_their_paths() -> None:
    text = options_json(AnalyzeOptions(config_path=Path("meta/config.json")))  # type: ignore[arg-type]
    assert json.loads(text)["config_path"] == "meta/config.json"
