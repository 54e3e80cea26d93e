"""The validation output: docs/validation.md is what scripts/validate_plan.py makes from the
committed traces and figures, and the figures it quotes are the ones it says they are."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest

from llm_perf_opt.flops import analytic
from llm_perf_opt.flops.configs import builtin_config
from tests.helpers.paths import REPO

DATA = REPO / "docs" / "data"


def _crosscheck() -> dict[str, Any]:
    return json.loads((DATA / "flops_crosscheck_h100.json").read_text())  # type: ignore[no-any-return]


def _analytic(row: dict[str, Any]) -> tuple[int, int]:
    cfg = builtin_config(row["model"])
    if row["stage"] == "vision":
        grid = row["crop_grid"]
        layout = analytic.image_layout(cfg, row["mode"], (grid[0], grid[1]) if grid else None)
        return tuple(  # type: ignore[return-value]
            analytic.vision_flops(cfg, layout, conv).total_flops for conv in ("causal", "full")
        )
    if row["stage"] == "prefill":
        return tuple(  # type: ignore[return-value]
            analytic.prefill_flops(cfg.text, row["prefill_len"], conv).total_flops
            for conv in ("causal", "full")
        )
    step = analytic.decode_flops_per_token(cfg.text, row["ctx_len"]).total_flops
    return step, step


def test_validation_md_is_up_to_date() -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    done = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "validate_plan.py"), "--check"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr


def test_crosscheck_json_is_the_table_of_docs_flops() -> None:
    """The measured columns were copied from docs/flops.md: same rows, same numbers."""
    text = (REPO / "docs" / "flops.md").read_text()
    table = [
        [cell.strip() for cell in line.strip("|").split("|")]
        for line in text.split("Full size (`scripts/flops_crosscheck.py", 1)[1].splitlines()
        if line.startswith("| deepseek")
    ]
    rows = _crosscheck()["rows"]
    assert len(rows) == len(table) == 12
    keys = ("analytic_causal", "analytic_full_square", "flop_counter_mode", "fvcore_x2")
    for row, cells in zip(rows, table, strict=True):
        assert [row["model"], row["mode"], row["stage"], row["geometry"]] == cells[:4]
        assert [row[k] for k in keys] == [int(c.replace(",", "")) for c in cells[4:8]]


@pytest.mark.parametrize("index", range(12))
def test_crosscheck_counters_agree_with_todays_analytic_model(index: int) -> None:
    row = _crosscheck()["rows"][index]
    causal, full = _analytic(row)
    assert (causal, full) == (row["analytic_causal"], row["analytic_full_square"])
    for counter in ("flop_counter_mode", "fvcore_x2"):
        assert row[counter] == pytest.approx(full, rel=1e-6)  # 0.0001 %
    assert causal <= full


def test_static_compute_rows_agree_with_todays_analytic_model() -> None:
    for row in _crosscheck()["static_compute"]["rows"]:
        _, full = _analytic(row)
        assert full == row["analytic_full_square"]
        assert row["fvcore_x2"] == pytest.approx(full, rel=1e-6)


def test_warmup_runs_are_what_validation_md_says() -> None:
    files = sorted((DATA / "warmup").glob("*.run.meta.json"))
    assert [f.name.split(".")[0] for f in files] == [
        f"w{w}_r{r}" for w in (0, 2) for r in (1, 2, 3)
    ]
    for path in files:
        meta = json.loads(path.read_text())
        assert meta["warmup"]["rounds"] == int(path.name[1])
        assert (meta["model"]["family"], meta["mode"], meta["max_new_tokens"]) == (
            "deepseek-ocr",
            "base",
            16,
        )
        assert len(meta["images"]) == 3 and not meta["nvtx_enabled"]
        assert meta["device"]["name"] == "NVIDIA H100 80GB HBM3"
