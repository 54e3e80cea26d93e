"""The report's level declarations: every output writes the same numbers under the same names,
units are converted as Python divides, and the small table renderers other modules use."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass

import polars as pl
import pytest
from rich.console import Console

from llm_perf_opt.analysis import AnalyzeOptions
from llm_perf_opt.batch.fanout import analyze_one
from llm_perf_opt.batch.resultsdb import RunRecord, rows_from_report
from llm_perf_opt.cli.terminal import rich_table
from llm_perf_opt.metrics.mfu import MfuReport
from llm_perf_opt.report import CSV_COLUMNS, md_table, to_csv, to_json
from llm_perf_opt.report.fields import Field, Level, union
from llm_perf_opt.report.sections import stage_section
from tests.helpers.paths import REPO


@pytest.fixture(scope="module")
def report() -> MfuReport:
    """The H200 grouped-mm capture: calibrated, with host views and a static compute file."""
    result = analyze_one(REPO / "traces" / "dsocr_v1_base_gmm.sqlite.xz", AnalyzeOptions())
    assert result.report is not None
    return result.report


def test_json_csv_and_database_write_the_same_stage_numbers(report: MfuReport) -> None:
    stages = to_json(report)["stages"]
    record = RunRecord("t.sqlite", "0" * 64, "{}")
    db_rows = {r["stage"]: r for r in rows_from_report(record, report).tables["stages"]}
    csv_rows = {
        r["stage"]: r for r in csv.DictReader(io.StringIO(to_csv(report))) if r["level"] == "stage"
    }
    assert set(stages) == set(db_rows) == set(csv_rows) == set(report.stages)
    for name, doc in stages.items():
        stored = {k: v for k, v in db_rows[name].items() if k not in ("run_id", "stage")}
        # JSON leaves out the decode numbers of other stages, the database stores them as null
        assert stored == {k: doc.get(k) for k in stored}
        assert stored.keys() <= doc.keys() or name != "decode"
        written = {k: v for k, v in csv_rows[name].items() if k in doc}
        assert written == {k: "" if doc[k] is None else str(doc[k]) for k in written}
    assert stages["decode"]["gpu_busy_s"] == report.stages["decode"].gpu_busy_ns / 1e9


def test_instance_rows_agree_and_flags_are_stored_as_integers(report: MfuReport) -> None:
    docs = [i for s in to_json(report)["stages"].values() for i in s["instances"]]
    rows = rows_from_report(RunRecord("t.sqlite", "0" * 64, "{}"), report).tables["instances"]
    assert len(rows) == len(docs) > 0
    for row, doc in zip(rows, docs, strict=True):
        assert row["warmup"] == int(doc["warmup"]) and type(row["warmup"]) is int
        assert row["gpu_busy_s"] == doc["gpu_busy_s"] and row["flops"] == doc["flops"]


@dataclass(frozen=True)
class _Span:
    t_ns: int | None


def test_units_are_divided_as_python_divides() -> None:
    """polars multiplies by the reciprocal, which misses the last bit for 3 ns → s."""
    assert (pl.Series([3]) / 1e9).item() != 3 / 1e9
    level = Level("t", (Field("t_s", pl.Float64(), attr="t_ns", per=1e9),))
    frame = level.frame([_Span(3), _Span(None)])
    assert frame.schema == level.schema
    assert frame.to_dicts() == [{"t_s": 3 / 1e9}, {"t_s": None}]


def test_whole_counts_are_json_integers(report: MfuReport) -> None:
    decode, host = to_json(report)["stages"]["decode"], report.stages["decode"].host
    assert host is not None
    assert type(decode["host"]["n_launches"]) is int
    assert decode["host"]["n_launches"] == host.n_launches


def test_union_puts_each_new_name_after_the_name_it_follows() -> None:
    assert union(("a", "b", "d"), ("x", "b", "c", "d", "e")) == ("x", "a", "b", "c", "d", "e")
    assert CSV_COLUMNS[:6] == ("level", "stage", "instance", "image_index", "warmup", "flops")
    assert CSV_COLUMNS.index("mean_kernel_us") == CSV_COLUMNS.index("graph_s") + 1
    assert CSV_COLUMNS[-4:] == ("gpu_name", "peak_flops", "ctx_mode", "ctx_len")


def test_the_model_row_fills_only_the_stage_columns_it_has(report: MfuReport) -> None:
    section = stage_section(report)
    model = dict(zip(section.head, section.rows[-1], strict=True))
    assert model["stage"] == "model" and model["GFLOP"] != ""
    assert model["inst"] == model["kernels"] == model["verdict"] == ""
    assert len(section.rows) == len(report.stages) + 1


def test_md_table_escapes_pipes_in_cells() -> None:
    assert md_table(("a", "b"), [("x|y", "2")]) == "| a | b |\n|---|---|\n| x\\|y | 2 |"


def test_rich_table_justifies_the_first_columns_left() -> None:
    table = rich_table("T", ("name", "kind", "n"), [("a", "b", "1")], left=2)
    assert [c.justify for c in table.columns] == ["left", "left", "right"]
    console = Console(file=io.StringIO(), width=60)
    console.print(table)
    assert "T" in console.file.getvalue()  # type: ignore[attr-defined]
