"""Categories through the outputs: the JSON keys, the CSV rows, the results database's table
(and an older database's upgrade)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from llm_perf_opt.batch.resultsdb import SCHEMA_TABLE, SCHEMA_VERSION, ResultsDb
from llm_perf_opt.cli.analyze import main as analyze_cli
from tests.helpers.paths import TRACES

TRACE = TRACES / "dsocr_v1_base_h200.sqlite.xz"


def test_json_csv_and_db_agree_on_categories(tmp_path: Path) -> None:
    out, db = tmp_path / "r.json", tmp_path / "runs.sqlite"
    runner = CliRunner()
    result = runner.invoke(analyze_cli, [str(TRACE), "--format", "json", "-o", str(out)])
    assert result.exit_code == 0, result.output
    doc = json.loads(out.read_text())
    result = runner.invoke(analyze_cli, [str(TRACE), "--db", str(db), "-j", "1"])
    assert result.exit_code == 0, result.output
    with ResultsDb(db, readonly=True) as results:
        (run,) = results.run_ids()
        rows = results.load(run)
    stored = {(r["stage"], r["category"]): r for r in rows.tables["categories"]}
    from_json = {
        (stage, cat): obj
        for stage, s in doc["stages"].items()
        for cat, obj in s["categories"].items()
    }
    assert set(stored) == set(from_json) and from_json
    for key, obj in from_json.items():
        assert (stored[key]["time_s"], stored[key]["share"], stored[key]["n_kernels"]) == (
            obj["time_s"], obj["share"], obj["n_kernels"],
        )  # fmt: skip
    for s in doc["stages"].values():
        assert sum(c["share"] for c in s["categories"].values()) == pytest.approx(1)
        assert all(k["category"] in s["categories"] for k in s["top_kernels"])
    kernels = rows.tables["top_kernels"]
    assert kernels and all(k["category"] for k in kernels)


def test_a_database_of_the_schema_before_categories_is_upgraded_when_written(
    tmp_path: Path,
) -> None:
    old = tmp_path / "old.sqlite"
    runner = CliRunner()
    result = runner.invoke(analyze_cli, [str(TRACE), "--db", str(old), "-j", "1"])
    assert result.exit_code == 0, result.output
    with ResultsDb(old) as made:  # back to version 1: no categories table, no kernel category
        made.db.execute("DROP TABLE categories")
        made.db.execute("ALTER TABLE top_kernels DROP COLUMN category")
        made.db.execute(f"UPDATE [{SCHEMA_TABLE}] SET version = ?", [SCHEMA_VERSION - 1])
    with ResultsDb(old, readonly=True) as results:  # read as it is
        (first,) = results.run_ids()
        assert results.load(first).tables["categories"] == []
    gmm = TRACES / "dsocr_v1_base_gmm.sqlite.xz"
    result = runner.invoke(analyze_cli, [str(gmm), "--db", str(old), "-j", "1"])
    assert result.exit_code == 0, result.output
    with ResultsDb(old, readonly=True) as results:
        version = results.db.execute(f"SELECT version FROM [{SCHEMA_TABLE}]").fetchone()[0]
        assert version == SCHEMA_VERSION
        (second,) = set(results.run_ids()) - {first}
        kept, added = results.load(first), results.load(second)
    assert kept.tables["stages"] and kept.tables["categories"] == []
    assert all(k["category"] is None for k in kept.tables["top_kernels"])
    assert added.tables["categories"] and all(k["category"] for k in added.tables["top_kernels"])


@pytest.mark.parametrize(("version", "why"), [(0, "too old"), (SCHEMA_VERSION + 1, "newer")])
def test_a_database_of_a_schema_it_cannot_write_is_refused_untouched(
    tmp_path: Path, version: int, why: str
) -> None:
    old = tmp_path / "old.sqlite"
    with ResultsDb(old) as made:
        made.db.execute(f"UPDATE [{SCHEMA_TABLE}] SET version = ?", [version])
    before = old.read_bytes()
    result = CliRunner().invoke(analyze_cli, [str(TRACE), "--db", str(old), "-j", "1"])
    assert result.exit_code == 2
    line = result.output.strip().splitlines()[-1]
    assert line.startswith("Error:") and f"schema version {version}" in line and why in line
    assert old.read_bytes() == before
