"""scripts/trace_hf_decoder.py and the committed Llama-3.2-1B-shaped trace it made on the H200."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from llm_perf_opt.trace import open_trace
from tests.helpers.committed import LLAMA_CONFIG
from tests.helpers.paths import REPO


def test_the_config_is_llama_3_2_1b_shaped() -> None:
    c = json.loads(LLAMA_CONFIG.read_text())
    shape = {
        k: c[k]
        for k in (
            "model_type",
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "num_key_value_heads",
            "head_dim",
            "intermediate_size",
            "vocab_size",
            "tie_word_embeddings",
            "rope_theta",
            "max_position_embeddings",
        )
    }
    assert shape == {
        "model_type": "llama",
        "hidden_size": 2048,
        "num_hidden_layers": 16,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "head_dim": 64,
        "intermediate_size": 8192,
        "vocab_size": 128256,
        "tie_word_embeddings": True,
        "rope_theta": 500000.0,
        "max_position_embeddings": 131072,
    }


def test_the_script_runs_prefill_and_decode_on_a_small_config(tmp_path: Path) -> None:
    pytest.importorskip("torch", reason="needs the runner extra: pip install -e '.[runner]'")
    pytest.importorskip("transformers", reason="needs the runner extra: pip install -e '.[runner]'")
    small = json.loads(LLAMA_CONFIG.read_text())
    small.update(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        vocab_size=256,
        bos_token_id=0,
        eos_token_id=1,
    )
    config = tmp_path / "config.json"
    config.write_text(json.dumps(small))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    args = [str(config), "--prefill-len", "12", "--decode-steps", "3", "--warmup-steps", "1"]
    done = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "trace_hf_decoder.py"), *args],
        capture_output=True,
        text=True,
        env=env,
        check=True,
        timeout=300,
    )
    head, tokens = done.stdout.strip().rsplit(": ", 1)
    assert head == "llama on cpu (torch.float32), prefill 12"
    assert len(ast.literal_eval(tokens)) == 1 + 3


def test_the_h200_trace_has_the_plain_user_ranges() -> None:
    trace = open_trace(REPO / "traces" / "llama_1b_shape.sqlite.xz")
    ranges = trace.nvtx_ranges()
    assert dict(ranges["name"].value_counts().rows()) == {
        "decode_step": 16,
        "decode": 1,
        "prefill": 1,
    }
    assert set(ranges["domain"]) == {""}  # the default domain, as torch.cuda.nvtx writes it
    assert trace.nvtx_marks().is_empty()  # no run metadata: the analysis needs --config
