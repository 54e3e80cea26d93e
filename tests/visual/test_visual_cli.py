"""`--html` and `--perfetto` under the outputs contract: never written over an input of the run
(checked before any work), into a missing folder an `Error:` line, refused in batch mode."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from llm_perf_opt.cli.analyze import main as analyze_main
from llm_perf_opt.cli.compare import main as compare_main
from tests.helpers.paths import TRACES

SMALL = TRACES / "llama_1b_shape.sqlite.xz"


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("option", ["--html", "--perfetto"])
def test_analyze_refuses_to_write_over_the_trace(tmp_path: Path, option: str) -> None:
    trace = tmp_path / "t.sqlite.xz"
    shutil.copyfile(SMALL, trace)
    before = _digest(trace)
    result = CliRunner().invoke(analyze_main, [str(trace), option, str(trace)])
    assert result.exit_code == 2
    assert "refusing to overwrite" in result.stderr and result.stderr.count("\n") == 1
    assert _digest(trace) == before


@pytest.mark.parametrize("option", ["--html", "--perfetto"])
def test_analyze_into_a_missing_folder_is_one_error(tmp_path: Path, option: str) -> None:
    out = tmp_path / "no" / "such" / "file"
    result = CliRunner().invoke(analyze_main, [str(SMALL), option, str(out)])
    assert result.exit_code == 2 and result.stderr.startswith("Error: ")
    assert "does not exist" in result.stderr and not out.parent.exists()


@pytest.mark.parametrize("option", ["--html", "--perfetto"])
def test_batch_refuses_single_trace_outputs(tmp_path: Path, option: str) -> None:
    result = CliRunner().invoke(analyze_main, [str(SMALL), str(SMALL), option, str(tmp_path / "x")])
    assert result.exit_code == 2 and f"{option} writes one trace's output" in result.stderr


def test_compare_refuses_to_write_over_a_trace(tmp_path: Path) -> None:
    trace = tmp_path / "t.sqlite.xz"
    shutil.copyfile(SMALL, trace)
    before = _digest(trace)
    result = CliRunner().invoke(compare_main, [str(SMALL), "--", str(trace), "--html", str(trace)])
    assert result.exit_code == 2 and "refusing to overwrite" in result.stderr
    assert _digest(trace) == before
