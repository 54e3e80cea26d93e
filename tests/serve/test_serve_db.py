"""Engine phases and steps in the results database and in `mfu-compare`'s per-phase rows."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from click.testing import CliRunner

from llm_perf_opt.batch.resultsdb import ResultsDb
from llm_perf_opt.cli.analyze import main as analyze_cli
from llm_perf_opt.cli.compare import main as compare_cli
from tests.helpers.committed import LLAMA_CONFIG
from tests.helpers.serve_export import StepLoop, write_export

NAMES = ["execute_context_1(512)_generation_0(0)"] + [
    f"execute_context_0(0)_generation_{b}({b})" for b in (1, 2, 2, 3, 3, 4, 4, 4)
]


def test_phases_are_stored_and_compared(tmp_path: Path) -> None:
    base = write_export(tmp_path / "base.sqlite", StepLoop(NAMES, kernels=[6] * len(NAMES)))
    # the new run launches fewer, the same, kernels per step: shorter decode steps
    new = write_export(tmp_path / "new.sqlite", StepLoop(NAMES, kernels=[3] * len(NAMES)))
    db = tmp_path / "runs.sqlite"
    result = CliRunner().invoke(
        analyze_cli,
        [str(base), str(new), "--config", str(LLAMA_CONFIG), "--db", str(db), "-j", "1"],
    )
    assert result.exit_code == 0, result.output
    with ResultsDb(db, readonly=True) as results:
        ids = {results.load(r).run["trace_name"]: r for r in results.run_ids()}
        rows = results.load(ids["base.sqlite"])
    phases = {r["phase"]: r for r in rows.tables["engine_phases"]}
    assert set(phases) == {"prefill", "decode"} and phases["decode"]["n_steps"] == 8
    assert len(rows.tables["engine_steps"]) == len(NAMES)
    out = tmp_path / "cmp.json"
    result = CliRunner().invoke(
        compare_cli,
        [
            "--db",
            str(db),
            ids["base.sqlite"],
            "--",
            ids["new.sqlite"],
            "--format",
            "json",
            "-o",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    stages = json.loads(out.read_text())["stages"]
    decode = stages["engine:decode"]
    assert decode["step_busy_s"]["delta_pct"] < 0 and decode["step_busy_s"]["samples"] == (
        "engine_step"
    )
    assert decode["mfu_trace"]["delta_pct"] > 0
    assert {"step_wall_s", "mfu_wall", "tokens_per_s"} <= set(decode)
    table = CliRunner().invoke(
        compare_cli,
        [
            "--db",
            str(db),
            ids["base.sqlite"],
            "--",
            ids["new.sqlite"],
            "--format",
            "md",
            "--plot",
            str(tmp_path / "cmp.png"),
        ],
    )
    assert table.exit_code == 0, table.output
    assert "| engine:decode | step busy µs |" in table.output and "8/8 steps" in table.output
    assert "| engine:decode | tokens / s |" in table.output


def test_a_database_from_before_the_engine_tables_still_reads(tmp_path: Path) -> None:
    path = write_export(tmp_path / "t.sqlite", StepLoop(NAMES))
    db = tmp_path / "runs.sqlite"
    result = CliRunner().invoke(
        analyze_cli, [str(path), "--config", str(LLAMA_CONFIG), "--db", str(db)]
    )
    assert result.exit_code == 0, result.output
    with sqlite3.connect(db) as conn:
        conn.execute("DROP TABLE engine_steps")
        conn.execute("DROP TABLE engine_phases")
    with ResultsDb(db, readonly=True) as results:
        rows = results.load(results.run_ids()[0])
    assert rows.tables["engine_steps"] == [] and rows.run["trace_name"] == "t.sqlite"
