"""`--calibrate`: GEMM shapes of the real model, rates from a fake timer, clocks, metadata, range.

The real figures are the committed H200 run's (`traces/meta/dsocr_v1_base_gmm.run.meta.json`),
checked here against what is physically possible.
"""

from __future__ import annotations

import json
import math
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

# The runner extra (`pip install -e ".[runner]"`) brings these; without it the module is skipped.
pytest.importorskip("torch", reason="needs the runner extra: pip install -e '.[runner]'")
pytest.importorskip("transformers", reason="needs the runner extra: pip install -e '.[runner]'")
pytest.importorskip("nvtx", reason="needs the runner extra: pip install -e '.[runner]'")
import nvtx
import torch

from llm_perf_opt.flops.configs import builtin_config
from llm_perf_opt.runner import calibrate as cal
from llm_perf_opt.runner.cli import main
from llm_perf_opt.runner.models import build_model
from llm_perf_opt.schemas import check_run_meta
from tests.helpers.paths import TRACES

torch.set_num_threads(1)
SMALL = cal.CalibrationSizes(square=16, copy_bytes=4096, repeats=20, shape_repeats=21)
H200_DENSE_BF16_TFLOPS = 989.4
H200_HBM_TBPS = 4.8


class FakeTimer:
    """Every call takes `per_call_s`; records the `inner` counts it was asked for."""

    def __init__(self, per_call_s: float) -> None:
        self.per_call_s = per_call_s
        self.inner: list[int] = []

    def __call__(self, fn: Callable[[], object], inner: int) -> float:
        self.inner.append(inner)
        return inner * self.per_call_s


def test_v1_base_shapes_are_the_models_own() -> None:
    shapes = {s.label: s for s in cal.model_gemm_shapes(builtin_config("deepseek-ocr"), 282, 1024)}
    as_tuple = {label: (s.stage, s.m, s.n, s.k) for label, s in shapes.items()}
    assert as_tuple["decode_attn_q"] == ("decode", 1, 1280, 1280)  # 10 heads × 128
    assert as_tuple["decode_moe_gate_up"] == ("decode", 1, 2 * 896, 1280)
    assert as_tuple["decode_moe_down"] == ("decode", 1, 1280, 896)
    assert as_tuple["decode_dense_up"] == ("decode", 1, 6848, 1280)
    assert as_tuple["decode_lm_head"] == ("decode", 1, 129280, 1280)
    assert as_tuple["prefill_attn_q"] == ("prefill", 282, 1280, 1280)
    assert as_tuple["prefill_moe_gate_up"] == ("prefill", math.ceil(282 * 6 / 64), 1792, 1280)
    assert as_tuple["vision_sam_qkv"] == ("vision", 64 * 64, 3 * 768, 768)
    assert as_tuple["vision_sam_patch_embed"] == ("vision", 4096, 768, 3 * 16 * 16)
    assert as_tuple["vision_clip_mlp_up"] == ("vision", 257, 4096, 1024)
    assert as_tuple["vision_projector"] == ("vision", 256, 1280, 2048)
    assert {s.stage for s in shapes.values()} == {"vision", "prefill", "decode"}


def test_ocr2_has_query_encoder_shapes_instead_of_clip() -> None:
    labels = {s.label for s in cal.model_gemm_shapes(builtin_config("deepseek-ocr2"), 266, 1024)}
    assert "vision_query_mlp_up" in labels and "vision_clip_qkv" not in labels


def test_rates_follow_from_the_timed_medians() -> None:
    built = build_model("deepseek-ocr", tiny=True, dtype=torch.float32)
    timer = FakeTimer(2e-3)
    result = cal.calibrate(built, 30, 256, sizes=SMALL, timer=timer)
    check_run_meta_part(result)
    assert result["dtype"] == "fp32" and result["device_name"] == "cpu"
    assert result["clocks"] is None
    square, *shapes = result["gemms"]
    assert (square["label"], square["stage"], square["m"]) == ("square_16", None, 16)
    for g in result["gemms"]:
        assert g["median_s"] == pytest.approx(2e-3)
        assert g["tflops"] == pytest.approx(2 * g["m"] * g["n"] * g["k"] / 2e-3 / 1e12)
    assert square["repeats"] == 20 and {g["repeats"] for g in shapes} == {21}
    assert result["peak_tflops"] == max(g["tflops"] for g in result["gemms"])
    assert result["copy"]["bytes_moved"] == 2 * 4096
    assert result["copy"]["tbps"] == pytest.approx(8192 / 2e-3 / 1e12)
    assert result["peak_bandwidth_TBps"] == result["copy"]["tbps"]
    # one probe call per measurement, then `repeats` samples of 2e-4 s / 2e-3 s → 1 call each
    assert len(timer.inner) == sum(1 + g["repeats"] for g in result["gemms"]) + 1 + 20
    assert set(timer.inner) == {1}


def test_short_calls_are_timed_in_batches_and_the_median_kept() -> None:
    samples = iter([1e-5, *(n * 1e-5 for n in [20, 60, 20, 40, 20])])
    seen: list[int] = []

    def timer(fn: Callable[[], object], inner: int) -> float:
        seen.append(inner)
        return next(samples)

    calls: list[int] = []
    median = cal.median_call_s(lambda: calls.append(1), timer, repeats=5)
    assert seen == [1] + [20] * 5  # 2e-4 s target / 1e-5 s per call
    assert median == pytest.approx(1e-5) and len(calls) == cal.WARMUP_CALLS


def test_clocks_come_from_nvidia_smi_or_are_null(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[list[str]] = []

    def smi(args: list[str], **_: Any) -> subprocess.CompletedProcess[str]:
        seen.append(args)
        return subprocess.CompletedProcess(args, 0, stdout="1980, 3201\n", stderr="")

    monkeypatch.setattr(subprocess, "run", smi)
    clocks = cal.read_clocks(torch.device("cuda", 1))
    assert clocks == {"sm_mhz": 1980, "mem_mhz": 3201, "source": "nvidia-smi"}
    assert "--id=1" in seen[0] and "--query-gpu=clocks.sm,clocks.mem" in seen[0]

    def missing(args: list[str], **_: Any) -> subprocess.CompletedProcess[str]:
        raise FileNotFoundError("nvidia-smi")

    monkeypatch.setattr(subprocess, "run", missing)
    assert cal.read_clocks(torch.device("cuda", 0)) is None


def test_cli_calibrates_first_in_its_own_range(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cal, "CPU_SIZES", SMALL)
    monkeypatch.setattr(cal, "wall_timer", FakeTimer(1e-3))
    events: list[str] = []
    monkeypatch.setattr(nvtx, "push_range", lambda message, **_: events.append(message))
    monkeypatch.setattr(nvtx, "pop_range", lambda **_: events.append("pop"))
    monkeypatch.setattr(nvtx, "mark", lambda **_: None)
    args = ["--tiny", "--device", "cpu", "--out", str(tmp_path), "--max-new-tokens", "2"]
    assert main([*args, "--warmup-rounds", "1", "--calibrate"]) == 0
    assert events[:3] == ["calibrate", "pop", "warmup"]
    meta = json.loads((tmp_path / "run.meta.json").read_text())
    check_run_meta(meta)
    assert meta["calibration"]["gemms"][0]["label"] == "square_16"
    lp = meta["images"][0]["prefill_len"]
    prefill_q = next(g for g in meta["calibration"]["gemms"] if g["label"] == "prefill_attn_q")
    assert prefill_q["m"] == lp


def check_run_meta_part(calibration: dict[str, Any]) -> None:
    """Validate a calibration object on its own, through the run-metadata schema."""
    meta = json.loads((TRACES / "meta" / "dsocr_v1_base_gmm.run.meta.json").read_text())
    check_run_meta({**meta, "calibration": calibration})


def test_the_committed_h200_calibration_is_physically_possible() -> None:
    meta = json.loads((TRACES / "meta" / "dsocr_v1_base_gmm.run.meta.json").read_text())
    check_run_meta(meta)
    c = meta["calibration"]
    assert c["device_name"] == "NVIDIA H200" and c["dtype"] == "bf16"
    by_label = {g["label"]: g for g in c["gemms"]}
    assert c["peak_tflops"] == by_label["square_8192"]["tflops"]
    assert 600 < c["peak_tflops"] <= H200_DENSE_BF16_TFLOPS
    assert 3.5 < c["peak_bandwidth_TBps"] <= H200_HBM_TBPS
    assert c["clocks"]["source"] == "nvidia-smi" and c["clocks"]["sm_mhz"] > 1000
    # one token reads a whole weight matrix: far below the compute roof, far above zero
    for name in ("attn_q", "dense_up", "shared_up"):
        decode, prefill = by_label[f"decode_{name}"], by_label[f"prefill_{name}"]
        assert 0 < decode["tflops"] < prefill["tflops"] / 20
