"""Batch mode, the results database and mfu-compare keep the contract: nothing written is
anything read (after globs and folders are expanded), the database only touches its own files,
each run counts once, bad numbers are refused before any work, warnings reach stderr.

Inputs are the committed traces (decompressed) and generated ones; each test checks the input
bytes afterwards and the one `Error:` line (or the documented exit code).
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
import sqlite_utils
from benchmarks.gen_trace import generate
from click.testing import Result

import llm_perf_opt.batch.resultsdb as resultsdb
from llm_perf_opt.batch.deltas import compare_runs, regressions, unique_runs
from llm_perf_opt.batch.resultsdb import SCHEMA_TABLE, TABLES, ResultsDb
from llm_perf_opt.batch.runs import EXIT_SOME_FAILED, expand_traces
from llm_perf_opt.cli._common import DeclaredPath, FiniteFloat
from llm_perf_opt.cli.analyze import main as analyze_cli
from llm_perf_opt.cli.compare import main as compare_cli
from llm_perf_opt.cli.flops import cli as flops_cli
from tests.helpers.committed import PROBE, PROBE_STAGES
from tests.helpers.contract import analyze, assert_error, assert_ok, invoke
from tests.helpers.mutate import digest, mutated
from tests.helpers.paths import REPO

GMM_XZ = REPO / "traces" / "dsocr_v1_base_gmm.sqlite.xz"
GMM_STATIC = REPO / "traces" / "meta" / "dsocr_v1_base_gmm.static_compute.json"
LLAMA_XZ = REPO / "traces" / "llama_1b_shape.sqlite.xz"
LLAMA_CONFIG = REPO / "traces" / "meta" / "llama_1b_shape.config.json"
PARQUET = REPO / "tests" / "data" / "llama_parquet"


def compare(*args: object) -> Result:
    return invoke(compare_cli, args)


@pytest.fixture(scope="module")
def gen(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Three small generated traces (seeds 1-3)."""
    root = tmp_path_factory.mktemp("gen")
    for seed in (1, 2, 3):
        generate(root / f"g{seed}.sqlite", 2_000, seed=seed)
    return [root / f"g{seed}.sqlite" for seed in (1, 2, 3)]


@pytest.fixture
def folder(tmp_path: Path, gen: list[Path]) -> Path:
    """A folder holding copies of the generated traces."""
    root = tmp_path / "gl"
    root.mkdir()
    for trace in gen:
        shutil.copyfile(trace, root / trace.name)
    return root


def digests(root: Path) -> dict[str, str]:
    return {p.name: digest(p) for p in sorted(root.iterdir()) if p.is_file()}


# --- 1. nothing written is anything read ---------------------------------------------------------


@pytest.mark.parametrize("option", ["--db", "--output"])
def test_an_output_naming_a_trace_the_glob_matched_is_refused(folder: Path, option: str) -> None:
    before = digests(folder)
    target = folder / "g1.sqlite"
    assert_error(analyze(f"{folder}/*.sqlite", option, target, "-j", "1"), "is the input")
    assert digests(folder) == before  # no WAL database, no JSON over the trace
    assert_error(analyze(folder, option, target, "-j", "1"), "is the input")
    link = folder.parent / "hard.sqlite"
    os.link(target, link)  # the same inode under another name
    assert_error(analyze(f"{folder}/*.sqlite", option, link, "-j", "1"), "is the input")
    assert digests(folder) == before


def test_mfu_compare_outputs_never_replace_its_inputs(folder: Path, tmp_path: Path) -> None:
    before = digests(folder)
    base, new = folder / "g1.sqlite", folder / "g2.sqlite"
    assert_error(compare(base, "--", new, "-o", base, "-j", "1"), "is the input")
    assert_error(compare(base, "--", f"{folder}/g[23].sqlite", "-o", new), "is the input")
    db = tmp_path / "r.sqlite"
    assert_ok(analyze(base, new, "--db", db, "-j", "1"))
    stored = digest(db)
    assert_error(compare("--db", db, "x", "--", "y", "-o", db), "is the input")
    assert digest(db) == stored
    png = tmp_path / "b.png"
    shutil.copyfile(base, png)
    assert_error(compare(png, "--", new, "--plot", png, "-j", "1"), "is the input")
    assert digests(folder) == before


def test_outdir_files_are_checked_against_config_and_static_compute(tmp_path: Path) -> None:
    """`--outdir .` next to `--config llama.json` and `-o` onto the static compute report the
    analyzer found beside the trace are refused; the files keep their bytes."""
    work = tmp_path / "w"
    (work / "meta").mkdir(parents=True)
    shutil.copyfile(LLAMA_XZ, work / "llama.sqlite.xz")
    shutil.copyfile(LLAMA_XZ, work / "other.sqlite.xz")
    config = shutil.copyfile(LLAMA_CONFIG, work / "llama.json")
    before = digest(config)
    args = ["--config", config, "--prefill-len", "64", "--decode-tokens", "8", "-j", "1"]
    line = assert_error(analyze(work, *args, "--outdir", work), "is the input")
    assert "llama.json" in line and digest(config) == before
    gmm = work / "gmm.sqlite.xz"
    shutil.copyfile(GMM_XZ, gmm)
    static = shutil.copyfile(GMM_STATIC, work / "meta" / "gmm.static_compute.json")
    kept = digest(static)
    assert_error(analyze(gmm, "--format", "json", "-o", static), "is the input")
    assert digest(static) == kept


def test_writing_into_a_table_export_folder_is_refused(tmp_path: Path) -> None:
    export = shutil.copytree(PARQUET, tmp_path / "llama_parquet")
    before = digests(export)
    for option in ("--output", "--csv", "--ranges-out"):
        line = assert_error(analyze(export, option, export / "x.json"), "table export")
        assert option in line
    assert_error(analyze(export, "--plots", export / "figs"), "table export")
    assert_error(analyze(tmp_path, "--outdir", export, "-j", "1"), "table export")
    assert digests(export) == before and not (export / "figs").exists()


def test_two_outputs_on_one_path_are_refused(tmp_path: Path) -> None:
    out = tmp_path / "same.txt"
    line = assert_error(analyze(PROBE, *PROBE_STAGES, "-o", out, "--csv", out), "also the")
    assert "--output" in line and not out.exists()


def test_a_results_database_is_never_a_trace(folder: Path) -> None:
    db = folder / "results.sqlite"
    for _ in range(2):  # the second run finds the database among the traces
        result = analyze(folder, "--db", db, "-j", "1", "--format", "json")
        assert_ok(result)
        assert json.loads(result.stdout)["n_traces"] == 3
    notes = [line for line in result.stderr.splitlines() if "results database" in line]
    assert len(notes) == 1 and str(db) in notes[0]
    assert expand_traces([f"{folder}/*.sqlite"]).results_dbs == (db,)
    line = assert_error(analyze(db), "is a results database, not a trace")
    assert "mfu-compare --db" in line


# --- 2. the results database only touches its own files ------------------------------------------


def _siblings(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir() if p.name.startswith(path.name))


def test_a_foreign_old_or_odd_database_file_is_refused_untouched(
    tmp_path: Path, gen: list[Path]
) -> None:
    other = tmp_path / "other.sqlite"
    sqlite_utils.Database(other).table("notes").insert({"a": 1})
    old = tmp_path / "old.sqlite"
    with ResultsDb(old) as made:  # a database of this tool, made before versions were kept
        made.db.execute(f"DROP TABLE [{SCHEMA_TABLE}]")
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"not sqlite " * 500)
    cases = {other: "not a results database", old: "schema version 0", junk: "not a results"}
    for path, fragment in cases.items():
        before, names = digest(path), _siblings(path)
        line = assert_error(analyze(gen[0], "--db", path), fragment, "not touched")
        assert str(path) in line
        assert digest(path) == before and _siblings(path) == names
    assert_error(analyze(gen[0], "--db", "/dev/null"), "not a regular file")
    assert not Path("/dev/null-journal").exists() and not Path("/dev/null-wal").exists()
    with sqlite3.connect(other) as conn:  # still the other program's file, as it was
        assert [r[0] for r in conn.execute("SELECT a FROM notes")] == [1]


@pytest.fixture
def held_lock(tmp_path: Path) -> Iterator[tuple[Path, threading.Event]]:
    """A results database that another connection locks (BEGIN EXCLUSIVE) as soon as the run
    under test has opened it, until the test ends."""
    db = tmp_path / "locked.sqlite"
    done, locked = threading.Event(), threading.Event()

    def hold() -> None:
        while not done.is_set():
            if db.exists() and resultsdb.results_db_schema(db) == resultsdb.SCHEMA_VERSION:
                conn = sqlite3.connect(db, timeout=30, isolation_level=None)
                conn.execute("BEGIN EXCLUSIVE")
                locked.set()
                done.wait(60)
                conn.rollback()
                conn.close()
                return
            time.sleep(0.005)

    thread = threading.Thread(target=hold, daemon=True)
    thread.start()
    yield db, locked
    done.set()
    thread.join(10)


def test_a_database_locked_mid_batch_keeps_the_finished_analyses(
    held_lock: tuple[Path, threading.Event],
    gen: list[Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    db, locked = held_lock
    monkeypatch.setattr(resultsdb, "BUSY_TIMEOUT_S", 0.3)
    result = analyze(*gen, "--db", db, "-j", "1", "--format", "json")
    assert locked.is_set()
    assert result.exit_code == EXIT_SOME_FAILED, result.output
    assert "Traceback" not in result.stderr
    doc = json.loads(result.stdout)  # every analysis printed
    assert doc["n_traces"] == 3 and doc["n_failed"] == 0
    assert "cannot store runs" in result.stderr
    line = next(x for x in result.stderr.splitlines() if x.startswith("not stored"))
    stored = set(ResultsDb(db, readonly=True).run_ids())
    for entry in doc["traces"]:
        assert (entry["run_id"] in stored) != (entry["trace"] in line)


# --- 3. comparisons count each run once ---------------------------------------------------------


def test_the_same_run_twice_on_a_side_counts_once(gen: list[Path], tmp_path: Path) -> None:
    copy = shutil.copyfile(gen[0], tmp_path / "copy.sqlite")
    once = compare(gen[0], "--", gen[1], "--format", "json", "-j", "1")
    assert_ok(once)
    twice = compare(gen[0], copy, gen[0], "--", gen[1], "--format", "json", "-j", "1")
    assert_ok(twice)
    a, b = json.loads(once.stdout), json.loads(twice.stdout)
    assert a["stages"] == b["stages"] and len(b["base"]) == 1
    assert "counted once" in twice.stderr and "analyzed once" in twice.stderr


def test_a_stage_on_one_side_only_is_missing_and_fails_the_gate(
    gen: list[Path], tmp_path: Path
) -> None:
    db = tmp_path / "r.sqlite"
    assert_ok(analyze(gen[0], gen[1], "--db", db, "-j", "1"))
    with ResultsDb(db, readonly=True) as opened:
        ids = opened.run_ids()
        base, new = (opened.load(i) for i in ids)
    with sqlite3.connect(db) as conn:  # the new run loses its decode stage
        for table in ("stages", "instances", "decode_steps", "top_kernels"):
            if "stage" in TABLES[table][0]:
                conn.execute(f"DELETE FROM {table} WHERE run_id = ? AND stage = 'decode'", [ids[1]])
    result = compare("--db", db, ids[0], "--", ids[1], "--format", "json",
                     "--fail-on-regression", "1000")  # fmt: skip
    assert result.exit_code == 1, result.output
    doc = json.loads(result.stdout)
    row = doc["stages"]["decode"]["busy_s"]
    assert row["verdict"] == "missing" and row["new"] is None and row["base"] > 0
    assert {"stage": "decode", "metric": "busy_s", "delta_pct": None} in doc["regressions"]
    assert "regression: decode missing on one side" in result.stderr
    comparison = compare_runs([base, base], [new])
    assert unique_runs([base, base], "base")[1] is not None
    assert (
        comparison.stages["vision"]["busy_s"].n_base
        == base.frame("instances").filter(stage="vision").height
    )
    assert regressions(comparison, 1e6) == []  # both runs still hold every stage


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "-1", "1e999", "NaN", ""])
@pytest.mark.parametrize("option", ["--min-effect", "--fail-on-regression"])
def test_compare_float_options_refuse_non_finite_and_negative(
    gen: list[Path], option: str, value: str
) -> None:
    result = compare(gen[0], "--", gen[1], option, value, "--format", "json")
    assert_error(result, option)


@pytest.mark.parametrize("value", ["nan", "inf", "-5", "0"])
def test_peak_tflops_refuses_non_finite_and_negative(value: str) -> None:
    assert_error(analyze(PROBE, *PROBE_STAGES, "--peak-tflops", value), "--peak-tflops")


def test_compare_output_failures_are_one_error_line(gen: list[Path], tmp_path: Path) -> None:
    args = [gen[0], "--", gen[1], "-j", "1"]
    assert_error(compare(*args, "-o", tmp_path / "nope" / "x"), "does not exist")
    assert_error(compare(*args, "--plot", tmp_path / "nope" / "x.png"), "does not exist")
    assert_error(compare(*args, "--plot", tmp_path / "cmp.txt"), "PNG")
    assert_error(compare(*args, "-o", "/dev/full", "--format", "json"), "no space left")
    assert_error(compare(*args, "-o", tmp_path), "--output")
    assert list(tmp_path.iterdir()) == []


# --- 5. bounded inputs, each file once, no empty path ---------------------------------------------


def test_recursive_glob_does_not_follow_a_link_cycle(folder: Path) -> None:
    (folder / "sub").mkdir()
    shutil.move(folder / "g3.sqlite", folder / "sub" / "g3.sqlite")
    (folder / "sub" / "loop").symlink_to("..")
    (folder / "again").symlink_to(folder)
    started = time.monotonic()
    found = expand_traces([f"{folder}/**/*.sqlite", str(folder), f"{folder}/../gl/g1.sqlite"])
    assert time.monotonic() - started < 5
    assert sorted(p.name for p in found.paths) == ["g1.sqlite", "g2.sqlite", "g3.sqlite"]
    assert found.repeats >= 3
    result = analyze(f"{folder}/**/*.sqlite", folder / "g1.sqlite", "-j", "1", "--format", "json")
    assert_ok(result)
    assert json.loads(result.stdout)["n_traces"] == 3


@pytest.mark.parametrize("args", [[""], [" "], ["", "--db", "x.sqlite"]])
def test_an_empty_path_is_an_error(
    args: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(
        tmp_path
    )  # were it "the current directory", the traces there would be analyzed
    shutil.copyfile(PROBE, tmp_path / "p.sqlite")
    assert_error(analyze(*args), "empty path")
    assert_error(compare("", "--", "p.sqlite"), "empty path")


def _hf_config(tmp_path: Path, **changes: object) -> Path:
    data = json.loads(LLAMA_CONFIG.read_text())
    data.update(changes)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize(
    ("changes", "fragment"),
    [
        ({"num_hidden_layers": 10**9}, "more than the 10,000"),
        ({"vocab_size": 10**20}, "more than the"),
        ({"num_key_value_heads": 64}, "must divide"),
        ({"model_type": "mixtral", "num_local_experts": 4, "num_experts_per_tok": 8}, "exceeds"),
        (
            {
                "model_type": "qwen2_moe",
                "num_experts": 4,
                "num_experts_per_tok": 2,
                "moe_intermediate_size": 64,
                "decoder_sparse_step": 0,
            },
            "positive integer",
        ),
    ],
)
def test_impossible_or_absurd_configs_are_refused_before_work(
    tmp_path: Path, changes: dict[str, object], fragment: str
) -> None:
    config = _hf_config(tmp_path, **changes)
    started = time.monotonic()
    args = ["--config", config, "--prefill-len", "16", "--format", "json"]
    line = assert_error(invoke(flops_cli, args), fragment)
    assert time.monotonic() - started < 10 and "config" in line


# --- 6. warnings reach stderr; reports that cannot be right are refused -------------------------


def test_trace_warnings_reach_stderr(tmp_path: Path) -> None:
    trace = mutated(
        PROBE, tmp_path / "w.sqlite",
        "UPDATE CUPTI_ACTIVITY_KIND_KERNEL SET end = start - 10 WHERE rowid % 5 = 0",
    )  # fmt: skip
    result = analyze(trace, *PROBE_STAGES, "--format", "json")
    assert_ok(result)
    in_report = json.loads(result.stdout)["warnings"]
    assert any("ending before they start" in w for w in in_report)
    assert [f"warning: {w}" for w in in_report] == [
        line for line in result.stderr.splitlines() if line.startswith("warning: ")
    ]
    batch = analyze(trace, PROBE, *PROBE_STAGES, "--format", "json", "-j", "1")
    assert any("ending before they start" in x for x in batch.stderr.splitlines())


def test_no_kernel_table_gives_no_mfu(v1_plain: Path, tmp_path: Path) -> None:
    trace = mutated(v1_plain, tmp_path / "nok.sqlite", "DROP TABLE CUPTI_ACTIVITY_KIND_KERNEL")
    assert_error(analyze(trace, "--format", "json"), "no kernel table", "no MFU")
    assert_ok(analyze(trace, "--ranges-out", tmp_path / "r.csv"))


# --- 7. the memory budget floor ------------------------------------------------------------------


def test_a_memory_budget_below_the_floor_is_raised_with_a_note() -> None:
    low = analyze(PROBE, *PROBE_STAGES, "--memory-budget", "1M", "--format", "json")
    assert_ok(low)
    assert "raised to 16M" in low.stderr
    default = analyze(PROBE, *PROBE_STAGES, "--format", "json")
    assert low.stdout == default.stdout and "raised" not in default.stderr
    assert_error(analyze(PROBE, *PROBE_STAGES, "--memory-budget", "0"), "--memory-budget")


def test_batch_output_failures_are_one_error_line(gen: list[Path], tmp_path: Path) -> None:
    db = tmp_path / "r.sqlite"
    result = analyze(*gen[:2], "-j", "1", "--db", db, "-o", "/dev/full", "--format", "json")
    assert_error(result, "no space left")
    assert len(ResultsDb(db, readonly=True).run_ids()) == 2  # the analyses were stored first
    assert_error(analyze(*gen[:2], "-j", "1", "--outdir", "/proc/figs"), "/proc does not take")
    assert_error(analyze(*gen[:2], "-j", "1", "--outdir", tmp_path / "a" / "b"), "does not exist")
    assert not (tmp_path / "a").exists()


@pytest.mark.parametrize("bandwidth", [-1, 1 << 62])
def test_an_impossible_trace_bandwidth_gives_no_mbu(tmp_path: Path, bandwidth: int) -> None:
    trace = mutated(
        PROBE, tmp_path / "bw.sqlite",
        "UPDATE TARGET_INFO_GPU SET memoryBandwidth = ?, name = 'Unlisted GPU'",
        params=[bandwidth],
    )  # fmt: skip
    result = analyze(trace, *PROBE_STAGES, "--peak-tflops", "100", "--format", "json")
    assert_ok(result)
    doc = json.loads(result.stdout)
    assert doc["peak_bandwidth_Bps"] is None and doc["bandwidth_source"] is None


def test_a_database_locked_before_the_batch_is_one_error_line(
    gen: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "busy.sqlite"
    assert_ok(analyze(gen[0], "--db", db))
    monkeypatch.setattr(resultsdb, "BUSY_TIMEOUT_S", 0.3)
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        started = time.monotonic()
        assert_error(analyze(gen[1], "--db", db), "cannot write results database", "locked")
        assert time.monotonic() - started < 30
    finally:
        holder.rollback()
        holder.close()
    assert len(ResultsDb(db, readonly=True).run_ids()) == 1


def test_every_file_option_is_declared_and_every_float_bounded() -> None:
    """A path option that is not declared would escape the output-versus-input check, a plain
    float option would take NaN: each option of each CLI must use the shared types."""
    for command in (analyze_cli, compare_cli, flops_cli):
        for param in command.params:
            if isinstance(param.type, click.Path):
                assert isinstance(param.type, DeclaredPath), (command.name, param.name)
            if isinstance(param.type, click.FloatRange) or param.type.name == "float":
                assert isinstance(param.type, FiniteFloat), (command.name, param.name)


def test_outdir_keeps_one_report_per_trace_even_for_copies(gen: list[Path], tmp_path: Path) -> None:
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        shutil.copyfile(gen[0], tmp_path / name / "g.sqlite")  # same name, same bytes
    out = tmp_path / "out"
    assert_ok(analyze(tmp_path / "a", tmp_path / "b", "-j", "1", "--outdir", out))
    names = sorted(p.name for p in out.iterdir())
    assert len(names) == 4 and len({n.split(".")[0] for n in names}) == 2, names
