"""D1, D2: outputs that cannot be written give one error line; an input is never overwritten."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from llm_perf_opt.cli._common import output_file
from llm_perf_opt.errors import OutputError
from llm_perf_opt.trace import open_trace
from tests.helpers.committed import PROBE, PROBE_STAGES, V1_META
from tests.helpers.contract import analyze, assert_error, assert_ok
from tests.helpers.mutate import digest, mutated
from tests.helpers.paths import SRC


def test_d1_output_into_missing_directory(tmp_path: Path) -> None:
    target = tmp_path / "nope" / "ranges.csv"
    assert_error(analyze(PROBE, "--ranges-out", target), "does not exist")
    assert not target.parent.exists()


def test_d1_output_to_dev_full(tmp_path: Path) -> None:
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full on this system")
    assert_error(analyze(PROBE, "--ranges-out", "/dev/full"), "pace left")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_d1_output_into_read_only_directory(tmp_path: Path) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        assert_error(analyze(PROBE, "--ranges-out", folder / "r.csv"), "permission denied")
    finally:
        folder.chmod(0o700)
    assert list(folder.iterdir()) == []


def test_d1_output_onto_a_folder(tmp_path: Path) -> None:
    assert_error(analyze(PROBE, "--ranges-out", tmp_path), "")


def _cli_args(module: str, v1_plain: Path) -> list[str]:
    return {
        "analyze": [str(v1_plain), "--format", "json"],
        "analyze-table": [str(v1_plain)],
        "flops": ["--model", "deepseek-ocr", "--format", "json"],
    }[module]


def _python_m(module: str) -> list[str]:
    return [sys.executable, "-m", f"llm_perf_opt.cli.{module.split('-')[0]}"]


@pytest.mark.parametrize("module", ["analyze", "analyze-table", "flops"])
def test_d1_closed_stdout_pipe(v1_plain: Path, module: str) -> None:
    proc = subprocess.Popen(
        [*_python_m(module), *_cli_args(module, v1_plain)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(SRC)},
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # the reader is gone before anything is written
    err = proc.stderr.read().decode()
    proc.stderr.close()
    assert proc.wait(timeout=120) == 2, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), err
    assert "pipe" in lines[0]


@pytest.mark.parametrize("module", ["analyze", "analyze-table", "flops"])
def test_d1_stdout_on_a_full_device(v1_plain: Path, module: str) -> None:
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full on this system")
    with open("/dev/full", "w") as full:
        done = subprocess.run(
            [*_python_m(module), *_cli_args(module, v1_plain)],
            stdout=full,
            stderr=subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": str(SRC)},
            timeout=120,
        )
    lines = done.stderr.decode().splitlines()
    assert done.returncode == 2 and len(lines) == 1, lines
    assert lines[0] == "Error: cannot write <stdout>: no space left on the device"


def test_d1_plots_into_a_path_through_a_file(tmp_path: Path) -> None:
    assert_error(analyze(PROBE, *PROBE_STAGES, "--plots", PROBE / "figs"), "cannot write")


def test_d2_output_equal_to_the_input_is_refused(tmp_path: Path) -> None:
    trace = mutated(PROBE, tmp_path / "t.sqlite")
    before = digest(trace)
    for option in ("--ranges-out", "--csv", "--markdown", "--output"):
        assert_error(analyze(trace, option, trace), "refusing to overwrite")
    link = tmp_path / "link.sqlite"
    link.symlink_to(trace)
    assert_error(analyze(trace, "--ranges-out", link), "refusing to overwrite")
    hard = tmp_path / "hard.sqlite"
    os.link(trace, hard)
    assert_error(analyze(trace, "--ranges-out", hard), "refusing to overwrite")
    assert digest(trace) == before


def test_d2_output_equal_to_an_option_input_is_refused(tmp_path: Path) -> None:
    meta = tmp_path / "run.meta.json"
    meta.write_bytes(V1_META.read_bytes())
    before = digest(meta)
    assert_error(analyze(PROBE, "--meta", meta, "--ranges-out", meta), "refusing to overwrite")
    assert digest(meta) == before


def test_d2_decompressed_copy_is_never_an_output(tmp_path: Path, scratch_tmp: Path) -> None:
    import lzma

    packed = tmp_path / "t.sqlite.xz"
    packed.write_bytes(lzma.compress(PROBE.read_bytes()))
    trace = open_trace(packed)
    assert trace.db_path is not None
    before = digest(trace.db_path)
    with pytest.raises(OutputError, match="decompressed copy"), output_file(trace.db_path):
        pass
    assert digest(trace.db_path) == before


def test_d2_a_good_output_still_works(tmp_path: Path) -> None:
    out = tmp_path / "ranges.csv"
    assert_ok(analyze(PROBE, "--ranges-out", out))
    assert out.read_text(encoding="utf-8").startswith("name,domain,style")
