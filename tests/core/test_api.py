"""The Python API (`llm_perf_opt.analyze`, `compare`, `flops`): what the CLIs print, frames of the
report's levels, options as the command line takes them, a cheap and torch-free import."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
from click.testing import CliRunner
from polars.testing import assert_frame_equal

import llm_perf_opt
from llm_perf_opt.cli.analyze import main as analyze_cli
from llm_perf_opt.cli.flops import cli as flops_cli
from llm_perf_opt.inputs.stage_ranges import RangeRef
from llm_perf_opt.report import levels
from tests.helpers.paths import SRC

# the toy probe has no run metadata: the facts come as options (as in tests/core/test_no_torch)
PROBE_FLAGS = ("--stage", "vision=vision", "--stage", "prefill=prefill", "--stage",
               "decode=decode", "--model", "deepseek-ocr", "--mode", "base", "--prefill-len",
               "273", "--decode-tokens", "32")  # fmt: skip
PROBE_OPTIONS = {
    "stages": {"vision": "vision", "prefill": "prefill", "decode": "decode"},
    "model": "deepseek-ocr",
    "mode": "base",
    "prefill_len": 273,
    "decode_tokens": 32,
}


@pytest.fixture(scope="module")
def probe(probe_trace: Path) -> llm_perf_opt.Analysis:
    return llm_perf_opt.analyze(str(probe_trace), **PROBE_OPTIONS)


@pytest.mark.parametrize("fmt", ["json", "md", "csv"])
def test_renderings_are_the_cli_output(
    probe: llm_perf_opt.Analysis, probe_trace: Path, fmt: str
) -> None:
    result = CliRunner().invoke(analyze_cli, [str(probe_trace), *PROBE_FLAGS, "--format", fmt])
    assert result.exit_code == 0, result.output
    text = {"json": probe.to_json, "md": probe.to_markdown, "csv": probe.to_csv}[fmt]()
    assert result.stdout == text


def test_frames_are_the_report_levels_after_a_trace_column(probe: llm_perf_opt.Analysis) -> None:
    report = probe.report
    pairs = {
        "stages": levels.stage_frame,
        "instances": levels.instance_frame,
        "decode_steps": levels.decode_step_frame,
        "top_kernels": levels.kernel_frame,
        "host": levels.host_frame,
    }
    for name, flatten in pairs.items():
        frame = getattr(probe, name)
        assert frame.columns[0] == "trace" and tuple(frame["trace"].unique()) == probe.traces
        assert_frame_equal(frame.drop("trace"), flatten(report))
    assert probe.stages["verdict"].to_list() == [s.verdict for s in report.stages.values()]
    assert probe.ranges.height == probe.runs[0].result.ranges.height > 0
    assert probe.stages is probe.stages  # built once
    assert set(llm_perf_opt.Analysis.frames()) >= {*pairs, "ranges"}


def test_host_frame_holds_each_stage_and_the_median_step(probe: llm_perf_opt.Analysis) -> None:
    host = probe.host
    decode = probe.report.stages["decode"]
    assert host.filter(pl.col("scope") == "stage")["stage"].to_list() == list(probe.report.stages)
    step = host.filter(pl.col("scope") == "step").row(0, named=True)
    assert decode.per_step is not None
    assert step["stage"] == "decode" and step["n_launches"] == decode.per_step.n_launches


def test_several_traces_stack_and_split(probe_trace: Path) -> None:
    both = llm_perf_opt.analyze([probe_trace, str(probe_trace)], **PROBE_OPTIONS)
    assert len(both) == 2 and both.stages.height == 2 * len(both[0].report.stages)
    assert both.stages["trace"].to_list()[::3] == [str(probe_trace)] * 2
    with pytest.raises(ValueError, match="holds 2 traces"):
        _ = both.report
    assert [a.to_json() for a in both] == [both[0].to_json(), both[1].to_json()]


def test_options_are_taken_as_the_command_line_writes_them() -> None:
    opts = llm_perf_opt.api.analyze_options(
        stages={"decode": "gen@app"}, crop_grid="3x2", peak_source="412.5", image_hw="448x448"
    )
    assert opts.stages == {"decode": RangeRef("gen", "app")}
    assert (opts.crop_grid, opts.peak_source, opts.image_hw) == ((3, 2), 412.5, (448, 448))
    with pytest.raises(TypeError, match=r"unknown option 'ctx'.*ctx_mode"):
        llm_perf_opt.api.analyze_options(ctx="max")
    with pytest.raises(llm_perf_opt.SelectionError, match="ROLE one of"):
        llm_perf_opt.api.analyze_options(stages={"encoder": "vit"})
    with pytest.raises(llm_perf_opt.PeakSourceError):
        llm_perf_opt.api.analyze_options(peak_source="fastest")


def test_a_missing_trace_is_a_typed_error(tmp_path: Path) -> None:
    with pytest.raises(llm_perf_opt.TraceNotFoundError, match="no such file"):
        llm_perf_opt.analyze(tmp_path / "absent.sqlite")


def test_flops_is_what_mfu_flops_prints() -> None:
    args = ["--model", "deepseek-ocr", "--mode", "gundam", "--crops", "3x2", "--prefill-len",
            "900", "--decode-tokens", "8", "--format", "json"]  # fmt: skip
    result = CliRunner().invoke(flops_cli, args)
    assert result.exit_code == 0, result.output
    got = llm_perf_opt.flops("deepseek-ocr", mode="gundam", crops="3x2", prefill_len=900,
                             decode_tokens=8)  # fmt: skip
    assert json.loads(result.stdout) == got
    with pytest.raises(llm_perf_opt.ConfigError, match="--tiny"):
        llm_perf_opt.flops("traces/meta/llama_1b_shape.config.json", tiny=True)


def test_import_is_cheap_and_the_api_names_survive_their_modules() -> None:
    code = """
import sys
import llm_perf_opt as l
assert not {"polars", "numpy", "torch"} & set(sys.modules), sorted(sys.modules)
import llm_perf_opt.batch.deltas, llm_perf_opt.flops.analytic
from llm_perf_opt.flops import configs
assert callable(l.flops) and callable(l.compare) and callable(l.analyze), (l.flops, l.compare)
assert l.flops.__module__ == l.compare.__module__ == "llm_perf_opt.api"
missing = [n for n in l.__all__ if not hasattr(l, n)]
assert not missing, missing
assert all(issubclass(getattr(l, n), l.LlmPerfOptError) for n in l.__all__ if n.endswith("Error"))
assert "torch" not in sys.modules
"""
    done = subprocess.run(
        [sys.executable, "-c", code], env={"PYTHONPATH": str(SRC)}, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr


def test_a_batch_stores_every_run_as_mfu_analyze_does(probe_trace: Path, tmp_path: Path) -> None:
    """`analyze_batch` is the batch mode of mfu-analyze: the same rows in the results database,
    the same exit status; a trace that fails is said and the others go on."""
    traces = tmp_path / "traces"
    traces.mkdir()
    for name in ("a", "b"):
        (traces / f"{name}.sqlite").write_bytes(probe_trace.read_bytes())
    (traces / "broken.sqlite").write_bytes(b"not a trace")
    said: list[str] = []
    outcome = llm_perf_opt.analyze_batch(
        [str(traces)], jobs=1, db=tmp_path / "api.sqlite", echo=said.append, **PROBE_OPTIONS
    )
    assert [Path(e.trace).name for e in outcome.entries] == [
        "a.sqlite",
        "b.sqlite",
        "broken.sqlite",
    ]
    assert [e.ok for e in outcome.entries] == [True, True, False]
    assert outcome.exit_code != 0 and any("broken.sqlite" in line for line in said)
    cli = CliRunner().invoke(
        analyze_cli, [str(traces), "-j", "1", "--db", str(tmp_path / "cli.sqlite"), *PROBE_FLAGS]
    )
    assert cli.exit_code == outcome.exit_code
    for table in ("runs", "stages"):
        api_rows, cli_rows = (_rows(tmp_path / db, table) for db in ("api.sqlite", "cli.sqlite"))
        assert api_rows  # two copies of one trace are one run (its content hash)
        assert api_rows == cli_rows


def _rows(db: Path, table: str) -> list[dict[str, object]]:
    """A results-database table's rows less what differs between two runs of one analysis."""
    varying = {"run_id", "analysis_s"}
    with sqlite3.connect(db) as conn:
        conn.row_factory = sqlite3.Row
        rows = conn.execute(f"SELECT * FROM {table}").fetchall()
    return [{k: v for k, v in dict(r).items() if k not in varying} for r in rows]
