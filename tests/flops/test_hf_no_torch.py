"""The Hugging Face config path of the analysis reads JSON only: no torch, no transformers."""

from __future__ import annotations

import subprocess
import sys

from tests.helpers.paths import DATA, SRC


def test_hf_config_path_does_not_import_torch_or_transformers() -> None:
    config = DATA / "hf_configs" / "qwen2.5-vl-7b-instruct.json"
    code = f"""
import sys
from click.testing import CliRunner
from llm_perf_opt.cli.flops import cli as flops
from llm_perf_opt.flops.hf_model import HfFlops, read_hf_config
import llm_perf_opt.metrics.mfu, llm_perf_opt.cli.analyze
r = CliRunner().invoke(flops, ["--config", {str(config)!r}, "--format", "json"])
assert r.exit_code == 0, r.output
model = HfFlops(read_hf_config({str(config)!r}), "bfloat16")
assert model.vision_flops("base", None) > 0 and model.decode_flops([300, 301]) > 0
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "transformers", "fvcore"))
print(heavy)
"""
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == "[]"
