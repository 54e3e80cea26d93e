"""The real H200 trace of a Llama-3.2-1B-shaped decoder (traces/llama_1b_shape.sqlite.xz).

A plain user script: random weights from `traces/meta/llama_1b_shape.config.json`, plain
`torch.cuda.nvtx` ranges `prefill` (512 tokens) and `decode` ⊃ one `decode_step` per token, no
vision, no run-metadata mark. It must analyze with `--config` and `--prefill-len` alone; the
attribution matches NVIDIA's projection and kernel sums, and the FLOPs equal a hand count from
the config's numbers.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Final

import polars as pl
import pytest
from click.testing import CliRunner
from polars.testing import assert_frame_equal

from llm_perf_opt.attribution import attribute
from llm_perf_opt.cli.analyze import main
from llm_perf_opt.trace import open_trace
from tests.helpers.oracles import kernel_sums, projection_mismatches
from tests.helpers.paths import TRACES

TRACE: Final = TRACES / "llama_1b_shape.sqlite.xz"
CONFIG: Final = TRACES / "meta" / "llama_1b_shape.config.json"
LP: Final = 512


def test_attribution_matches_nvidia() -> None:
    ours = attribute(open_trace(TRACE))
    oracle = TRACES / "oracle"
    bad = projection_mismatches(ours, oracle / "llama_1b_shape_nsys2025_nvtx_gpu_proj_trace.csv.xz")
    assert bad.is_empty(), bad
    theirs, mine = kernel_sums(ours, oracle / "llama_1b_shape_nsys2025_nvtx_kern_sum.csv.xz")
    assert_frame_equal(theirs, mine)


def _hand_flops(c: dict[str, Any], steps: int) -> tuple[int, int]:
    """Prefill (causal, lm_head on the last position) and decode FLOPs from the config alone."""
    d, layers, inter = c["hidden_size"], c["num_hidden_layers"], c["intermediate_size"]
    heads, kv, hd, vocab = (c["num_attention_heads"], c["num_key_value_heads"], c["head_dim"],
                            c["vocab_size"])  # fmt: skip
    body = layers * (d * heads * hd + 2 * d * kv * hd + heads * hd * d + 3 * d * inter)
    per_key = 4 * layers * heads * hd
    prefill = 2 * body * LP + per_key * LP * (LP + 1) // 2 + 2 * d * vocab
    decode = sum(2 * (body + d * vocab) + per_key * (LP + k) for k in range(1, steps + 1))
    return prefill, decode


def test_analyzes_with_config_and_no_stage_or_vision_flags() -> None:
    args = [str(TRACE), "--config", str(CONFIG), "--prefill-len", str(LP), "--format", "json"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert list(doc["stages"]) == ["prefill", "decode"]
    assert doc["model"]["absent_stages"] == ["vision"]
    assert doc["gpu_name"] == "NVIDIA H200" and doc["meta_source"] is None
    ranges = attribute(open_trace(TRACE)).ranges
    steps = ranges.filter(pl.col("name") == "decode_step").height
    decode = doc["stages"]["decode"]
    assert decode["decode_steps"] == steps == 16
    context = doc["context"]["instances"][0]
    assert context["ctx_lens"] == list(range(LP + 1, LP + steps + 1))
    assert context["source"] == "Lp + k"
    prefill_flops, decode_flops = _hand_flops(json.loads(CONFIG.read_text()), steps)
    assert doc["stages"]["prefill"]["flops"] == prefill_flops
    assert decode["flops"] == decode_flops
    assert doc["model"]["flops"] == prefill_flops + decode_flops
    # every GPU op of the two ranges (as NVIDIA counts them) is in the model line
    stage_rows = ranges.filter(pl.col("name").is_in(["prefill", "decode"]))
    assert doc["stages"]["prefill"]["n_gpu_ops"] + decode["n_gpu_ops"] == int(
        stage_rows["n_gpu_ops"].sum()
    )
    busy = doc["stages"]["prefill"]["gpu_busy_s"] + decode["gpu_busy_s"]
    assert doc["model"]["gpu_busy_s"] == pytest.approx(busy, rel=1e-12)
    mfu = (prefill_flops + decode_flops) / (doc["peak_flops"] * busy)
    assert doc["model"]["mfu_trace"] == pytest.approx(mfu, rel=1e-12)


def test_every_output_renders_without_a_vision_stage(tmp_path: Path) -> None:
    args = [str(TRACE), "--config", str(CONFIG), "--prefill-len", str(LP)]
    outputs = ["--markdown", tmp_path / "r.md", "--csv", tmp_path / "r.csv", "--plots", tmp_path]
    result = CliRunner().invoke(main, [*args, *map(str, outputs)])
    assert result.exit_code == 0, result.output
    assert "model (no vision)" in result.stdout
    assert "| model (no vision) |" in (tmp_path / "r.md").read_text()
    stages = pl.read_csv(tmp_path / "r.csv").filter(pl.col("level") == "stage")["stage"]
    assert stages.to_list() == ["prefill", "decode"]
    assert sorted(p.name for p in tmp_path.glob("*.png")) == [
        "decode_step_time.png",
        "host_gpu_decode.png",
        "host_gpu_prefill.png",
        "kernel_categories.png",
        "mfu_trace_vs_wall.png",
        "stage_time_split.png",
    ]
