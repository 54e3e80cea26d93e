"""The CLI contract every reliability test checks.

Exit 0, or exit 2 with exactly one `Error: …` line on stderr (capped), never a traceback; the
input's bytes unchanged; no temporary left behind.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click
from click.testing import CliRunner, Result

from llm_perf_opt.cli._common import MAX_ERROR_CHARS
from llm_perf_opt.cli.analyze import main as analyze_cli
from llm_perf_opt.cli.flops import cli as flops_cli


def invoke(command: click.Command, args: Sequence[Any]) -> Result:
    return CliRunner().invoke(command, [str(a) for a in args])


def analyze(*args: Any) -> Result:
    return invoke(analyze_cli, args)


def flops(*args: Any) -> Result:
    return invoke(flops_cli, args)


def assert_error(result: Result, *fragments: str) -> str:
    """Exit 2, exactly one `Error:` line on stderr (capped), no traceback; returns the line."""
    assert result.exit_code == 2, (result.exit_code, result.output, result.stderr)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1, result.stderr
    assert len(errors[0]) <= len("Error: ") + MAX_ERROR_CHARS + 40
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


def assert_ok(result: Result) -> None:
    assert result.exit_code == 0, (result.output, result.stderr, result.exception)
    assert "Traceback" not in result.stderr


def assert_contract(result: Result) -> None:
    """Either outcome of the contract, with finite numbers in any JSON printed."""
    if result.exit_code == 0:
        assert "Traceback" not in result.stderr
        if result.stdout.lstrip().startswith("{"):
            assert_finite(json.loads(result.stdout))
    else:
        assert_error(result)


def assert_finite(value: Any) -> None:
    if isinstance(value, float):
        assert math.isfinite(value)
    elif isinstance(value, dict):
        for item in value.values():
            assert_finite(item)
    elif isinstance(value, list):
        for item in value:
            assert_finite(item)


def scratch_left(tmp: Path) -> list[Path]:
    return sorted(tmp.glob("mfu-trace-*"))
