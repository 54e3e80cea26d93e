"""`mfu-analyze` on several traces: one bad trace is reported, the others go on; outputs agree
with the single-trace command."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from llm_perf_opt.batch.runs import EXIT_SOME_FAILED, expand_paths, is_batch
from llm_perf_opt.cli.analyze import main
from llm_perf_opt.errors import NoTracesError


def invoke(*args: str | Path) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args])


def single_json(trace: Path) -> dict[str, Any]:
    result = invoke(trace, "--format", "json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def test_directory_with_a_corrupt_trace_reports_it_and_analyzes_the_others(
    sweep: Path, good_traces: list[Path]
) -> None:
    result = invoke(sweep, "--format", "json", "-j", "1")
    assert result.exit_code == EXIT_SOME_FAILED
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1
    assert str(sweep / "bad.sqlite") in errors[0] and "cannot be read" in errors[0]
    assert "Traceback" not in result.stderr
    assert result.stderr.splitlines()[-1].startswith("4 trace(s): 3 analyzed, 1 failed")
    doc = json.loads(result.stdout)
    assert doc["n_traces"] == 4 and doc["n_failed"] == 1
    by_trace = {Path(t["trace"]).name: t for t in doc["traces"]}
    assert not by_trace["bad.sqlite"]["ok"] and "cannot be read" in by_trace["bad.sqlite"]["error"]
    for trace in good_traces:
        entry = by_trace[trace.name]
        single = single_json(trace)
        assert entry["ok"] and entry["gpu_name"] == single["gpu_name"]
        for stage, numbers in single["stages"].items():
            row = entry["stages"][stage]
            assert row["gpu_busy_s"] == numbers["gpu_busy_s"]
            assert row["wall_s"] == numbers["wall_s"]
            assert row["mfu_trace"] == numbers["mfu_trace"]
            assert row["n_instances"] == numbers["n_instances"]


def test_all_good_traces_exit_0_and_table_has_a_row_per_trace_and_stage(
    good_traces: list[Path],
) -> None:
    result = invoke(*good_traces, "-j", "1")
    assert result.exit_code == 0, result.output
    for trace in good_traces:
        rows = [line for line in result.stdout.splitlines() if trace.name in line]
        assert len(rows) == 3, result.stdout  # vision, prefill, decode
        assert all(stage in "".join(rows) for stage in ("vision", "prefill", "decode"))


def test_outdir_holds_each_trace_report_as_the_single_command_writes_it(
    good_traces: list[Path], tmp_path: Path
) -> None:
    outdir = tmp_path / "reports"
    result = invoke(*good_traces, "--outdir", outdir, "--format", "csv", "-j", "1")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0].startswith("trace,run_id,stage,")
    assert len(result.stdout.splitlines()) == 1 + 3 * len(good_traces)
    for trace in good_traces:
        written = json.loads((outdir / f"{trace.stem}.json").read_text())
        assert written == single_json(trace)
        assert (outdir / f"{trace.stem}.md").read_text().startswith("# MFU report")


def test_outdir_with_one_trace_writes_its_report_there(
    good_traces: list[Path], tmp_path: Path
) -> None:
    outdir = tmp_path / "one"
    assert is_batch([str(good_traces[0])], outdir=outdir)
    result = invoke(good_traces[0], "--outdir", outdir, "-j", "1")
    assert result.exit_code == 0, result.output
    stem = good_traces[0].stem
    assert json.loads((outdir / f"{stem}.json").read_text()) == single_json(good_traces[0])
    assert sorted(p.name for p in outdir.iterdir()) == [f"{stem}.json", f"{stem}.md"]


def test_glob_and_duplicates_expand_in_order(sweep: Path, good_traces: list[Path]) -> None:
    found = expand_paths([str(good_traces[1]), str(sweep / "g*.sqlite")])
    assert found == [good_traces[1], good_traces[0], good_traces[2]]
    with pytest.raises(NoTracesError, match="matched no trace"):
        expand_paths([str(sweep / "*.nsys-rep")])


def test_one_plain_path_is_the_single_trace_command(good_traces: list[Path], sweep: Path) -> None:
    assert not is_batch([str(good_traces[0])], db=None, dask=None)
    assert is_batch([str(good_traces[0])], db=Path("r.sqlite"))
    assert is_batch([str(sweep)]) and is_batch([str(sweep / "*.sqlite")])
    assert is_batch([str(good_traces[0]), str(good_traces[1])])


def test_glob_matching_nothing_is_one_error_line(sweep: Path) -> None:
    result = invoke(sweep / "*.nothing")
    assert result.exit_code == 2
    assert result.stderr.startswith("Error: ") and len(result.stderr.splitlines()) == 1


def test_single_trace_outputs_are_refused_in_batch_mode(
    good_traces: list[Path], tmp_path: Path
) -> None:
    result = invoke(*good_traces, "--markdown", tmp_path / "x.md")
    assert result.exit_code == 2
    assert "--markdown" in result.stderr and "--outdir" in result.stderr
    assert not (tmp_path / "x.md").exists()
