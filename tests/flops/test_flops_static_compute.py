"""The fvcore static compute report on a tiny config: files, agreement, and the fallback."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

# The runner extra (`pip install -e ".[runner]"`) brings these; without it the module is skipped.
pytest.importorskip("torch", reason="needs the runner extra: pip install -e '.[runner]'")
pytest.importorskip("fvcore", reason="needs the runner extra: pip install -e '.[runner]'")
import torch
from torch import nn

from llm_perf_opt.errors import ConfigError
from llm_perf_opt.runner import static_compute
from llm_perf_opt.runner.static_compute import estimate_static_compute


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_report_on_tiny_v1(tmp_path: Path) -> None:
    report = estimate_static_compute(1414, 1000, 48, family="deepseek-ocr", tiny=True,
                                     out_dir=tmp_path)  # fmt: skip
    on_disk = json.loads((tmp_path / "static_compute.json").read_text())
    assert on_disk == json.loads(json.dumps(report))
    assert set(report["stages"]) == {"vision", "prefill", "decode"}
    for name, stage in report["stages"].items():
        assert stage["source"] == "fvcore", name
        assert abs(stage["fvcore_vs_analytic"]) < 0.01, name
        # per-component fvcore numbers add up to the stage (nothing counted outside them)
        assert sum(stage["fvcore_components"].values()) == pytest.approx(stage["flops"], rel=1e-4)
    assert report["stages"]["vision"]["crop_grid"] == [2, 3]  # A4 page in gundam
    assert report["stages"]["vision"]["fvcore_other_flops"] > 0  # LayerNorms, reported apart
    assert report["stages"]["decode"]["ctx_len"] == 49
    params = report["params"]
    assert params["total"] == sum(v for k, v in params.items() if k != "total")
    assert params["clip"] > 0 and params["text.mlp"] > params["text.self_attn"]
    markdown = (tmp_path / "static_compute.md").read_text()
    assert "| vision |" in markdown and "## Parameters" in markdown


def test_untraceable_stage_falls_back_to_analytic(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = static_compute.fvcore_flops

    def flaky(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> static_compute.FvcoreCount:
        if isinstance(module, static_compute.DecodeForward):
            raise RuntimeError("cannot trace the cache")
        return real(module, inputs)

    monkeypatch.setattr(static_compute, "fvcore_flops", flaky)
    report = estimate_static_compute(640, 640, 20, family="deepseek-ocr2", tiny=True, mode="base",
                                     out_dir=tmp_path)  # fmt: skip
    decode = report["stages"]["decode"]
    assert decode["source"].startswith("analytic (fvcore could not trace: RuntimeError")
    assert decode["flops"] == decode["analytic_flops_full_square"]
    assert decode["fvcore_flops"] is None
    assert report["stages"]["prefill"]["source"] == "fvcore"
    assert "fvcore could not trace" in (tmp_path / "static_compute.md").read_text()


def test_seq_len_beyond_the_window_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="exceeds the context window"):
        estimate_static_compute(640, 640, 1024, family="deepseek-ocr", tiny=True, out_dir=tmp_path)
