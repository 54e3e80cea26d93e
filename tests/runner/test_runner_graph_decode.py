"""`--cuda-graphs` on CPU: the static-cache decode path (no capture possible) against the eager one.

The GPU run (traces/README.md) compared the captured replays with both; here the static path must
give the dynamic-cache path's tokens, mask what it has not written, record itself in the metadata
and keep the NVTX layout, and the impossible combination with the eager expert loop is refused.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

# The runner extra (`pip install -e ".[runner]"`) brings these; without it the module is skipped.
pytest.importorskip("torch", reason="needs the runner extra: pip install -e '.[runner]'")
pytest.importorskip("transformers", reason="needs the runner extra: pip install -e '.[runner]'")
pytest.importorskip("nvtx", reason="needs the runner extra: pip install -e '.[runner]'")
import nvtx
import torch

from llm_perf_opt.errors import ConfigError
from llm_perf_opt.runner import nvtx_stages
from llm_perf_opt.runner.cli import main
from llm_perf_opt.runner.graph_decode import StaticDecoder
from llm_perf_opt.runner.models import build_model
from llm_perf_opt.runner.preprocess import synthetic_page
from llm_perf_opt.runner.settings import settings_from

torch.set_num_threads(1)


def run_cli(out: Path, *args: str) -> dict[str, Any]:
    assert main(["--tiny", "--device", "cpu", "--no-nvtx", "--out", str(out), *args]) == 0
    meta: dict[str, Any] = json.loads((out / "run.meta.json").read_text())
    return meta


def tokens_of(meta: dict[str, Any]) -> list[list[int]]:
    return [image["generated_token_ids"] for image in meta["images"]]


@pytest.mark.parametrize(
    ("family", "mode", "experts"),
    [
        ("deepseek-ocr", "base", "grouped_mm"),
        ("deepseek-ocr", "gundam", "batched_mm"),
        ("deepseek-ocr2", "base", "grouped_mm"),
    ],
)
def test_static_cache_decode_gives_the_eager_tokens(
    family: str, mode: str, experts: str, tmp_path: Path
) -> None:
    common = ("--model", family, "--mode", mode, "--experts-implementation", experts)
    common += ("--max-new-tokens", "6", "--num-images", "2", "--warmup-rounds", "1")
    eager = run_cli(tmp_path / "eager", *common)
    graphs = run_cli(tmp_path / "graphs", *common, "--cuda-graphs")
    assert tokens_of(graphs) == tokens_of(eager)
    assert len({t for image in tokens_of(eager) for t in image}) > 1  # not a constant stream
    lp = graphs["images"][0]["prefill_len"]
    assert graphs["decode_backend"] == {
        "cuda_graphs": True,
        "kv_cache": "static",
        "max_cache_len": lp + 6,
        "graph_replay": False,  # CPU: the static step runs eagerly
        "graph_captures": 0,
        "graph_capture_s": 0.0,
    }
    assert eager["decode_backend"]["kv_cache"] == "dynamic"
    assert eager["decode_backend"]["max_cache_len"] is None


def test_unwritten_cache_slots_are_masked() -> None:
    """Garbage beyond the filled positions must not change a single token."""
    built = build_model(
        "deepseek-ocr", tiny=True, dtype=torch.float32, experts_implementation="grouped_mm"
    )
    prepared = nvtx_stages.prepare_image(built, synthetic_page(1, (1000, 1414)), "base")
    lp = prepared.prefill_len
    runs = []
    for garbage in (0.0, 1e4):
        token, past = nvtx_stages.prefill_stage(
            built, prepared, nvtx_stages.vision_stage(built, prepared)
        )
        decoder = StaticDecoder(built, lp + 16, capture=True)  # capture is a no-op on CPU
        with torch.inference_mode():
            for layer in decoder.cache.layers:
                layer.keys.fill_(garbage)
                layer.values.fill_(garbage)
        decoder.start(past, lp)
        assert not decoder.capture_once() and not decoder.replayed
        tokens = [token]
        for k in range(1, 6):
            tokens.append(decoder.step(tokens[-1], lp + k - 1))
        runs.append(tokens)
    assert runs[0] == runs[1]
    with pytest.raises(ConfigError, match="fills the static cache"):
        decoder.start(past, lp + 16)


def test_ranges_are_unchanged_without_capture(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    events: list[str] = []
    monkeypatch.setattr(nvtx, "push_range", lambda message, **_: events.append(message))
    monkeypatch.setattr(nvtx, "pop_range", lambda **_: events.append("pop"))
    monkeypatch.setattr(nvtx, "mark", lambda **_: None)
    args = ["--tiny", "--device", "cpu", "--out", str(tmp_path), "--max-new-tokens", "3"]
    args += ["--cuda-graphs", "--experts-implementation", "grouped_mm"]
    assert main(args) == 0
    pushed = [e for e in events if e != "pop"]
    assert pushed == ["image", "vision", "prefill", "decode", "decode_step", "decode_step"]


def test_the_eager_expert_loop_is_refused_with_cuda_graphs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(ConfigError, match="grouped_mm"):
        settings_from({"cuda_graphs": True})
    assert main(["--tiny", "--device", "cpu", "--cuda-graphs", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("Error: cuda_graphs cannot capture experts_implementation 'eager'")
    assert "--experts-implementation grouped_mm" in err
    assert not (tmp_path / "run.meta.json").exists()
