"""Acceptance on the real H100 traces: every number of `mfu-analyze --format json`
recomputed from independent pieces, in every context mode, and the relations the math implies."""

from __future__ import annotations

from typing import Any

import pytest

from llm_perf_opt.flops import analytic
from llm_perf_opt.trace import open_trace
from tests.helpers.real_traces import NAMES, STAGES, RealTraces
from tests.helpers.recompute import (
    PEAK_BF16_FLOPS,
    assert_matches,
    config_of,
    expected_report,
    measured_instances,
)
from tests.helpers.recompute_host import reference_for

# (flags, mode, C of every step): fixed C lies between every trace's last real C (Lp + 5 ≤ 917)
# and the window; max is the window, 8192.
CTX_MODES = [
    (("--ctx-mode", "auto"), "auto", None),
    (("--ctx-mode", "fixed", "--ctx-len", "4096"), "fixed", 4096),
    (("--ctx-mode", "max"), "max", 8192),
]


def _report(real: RealTraces, name: str, flags: tuple[str, ...]) -> dict[str, Any]:
    # auto reads the committed .xz directly (as a user would); the others the decompressed copy
    return real.auto(name) if flags == CTX_MODES[0][0] else real.report(name, *flags)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize(("flags", "mode", "ctx_len"), CTX_MODES, ids=["auto", "fixed", "max"])
def test_every_number_recomputed(
    real: RealTraces, name: str, flags: tuple[str, ...], mode: str, ctx_len: int | None
) -> None:
    doc = _report(real, name, flags)
    names = open_trace(real.plain(name)).kernel_names()
    attr = real.attribution(name)
    host = reference_for(real.plain(name), attr.ops)
    expected = expected_report(real.meta(name), attr, names, mode=mode, ctx_len=ctx_len, host=host)
    compared = assert_matches(doc, expected)
    # 3 stages × 3 instances × ~15 numbers, 15 decode steps × 8, 30 top kernels × 4, …
    assert compared > 400


@pytest.mark.parametrize("name", NAMES)
def test_flops_follow_the_formulas(real: RealTraces, name: str) -> None:
    """The decode line of docs/flops.md, and FLOPs that do not depend on the mode."""
    meta = real.meta(name)
    text = config_of(meta).text
    doc = real.auto(name)
    if meta["model"]["family"] == "deepseek-ocr":
        for c in (1, 283, 917, 4096, 8192):
            assert (
                analytic.decode_flops_per_token(text, c).total_flops == 1_148_190_720 + 61_440 * c
            )
    lens = [c for inst in doc["context"]["instances"] for c in inst["ctx_lens"]]
    per_key = analytic.decode_flops_per_token(text, 2).total_flops - (
        analytic.decode_flops_per_token(text, 1).total_flops
    )
    fixed_part = analytic.decode_flops_per_token(text, 1).total_flops - per_key
    assert doc["stages"]["decode"]["flops"] == len(lens) * fixed_part + per_key * sum(lens)


@pytest.mark.parametrize("name", NAMES)
def test_trace_mfu_at_least_wall_mfu_and_all_non_zero(real: RealTraces, name: str) -> None:
    """Vision, prefill and decode MFU are non-zero, trace and wall; trace ≥ wall."""
    doc = real.auto(name)
    for stage in STAGES:
        s = doc["stages"][stage]
        assert s["mfu_trace"] > 0 and s["mfu_wall"] > 0, stage
        assert s["mfu_trace"] >= s["mfu_wall"], stage
        assert s["gpu_busy_s"] <= s["wall_s"]
        for inst in s["instances"]:
            assert inst["mfu_trace"] >= inst["mfu_wall"] > 0
    assert doc["model"]["mfu_trace"] >= doc["model"]["mfu_wall"] > 0


@pytest.mark.parametrize("name", NAMES)
def test_ctx_mode_moves_decode_mfu_as_the_math_says(real: RealTraces, name: str) -> None:
    """auto < fixed 4096 < max, by exactly the ratio of the decode FLOPs (busy time is the same);
    vision and prefill do not move."""
    docs = [_report(real, name, flags) for flags, _, _ in CTX_MODES]
    decode = [d["stages"]["decode"] for d in docs]
    assert decode[0]["mfu_trace"] < decode[1]["mfu_trace"] < decode[2]["mfu_trace"]
    assert decode[0]["mfu_wall"] < decode[1]["mfu_wall"] < decode[2]["mfu_wall"]
    for d in decode[1:]:
        assert d["gpu_busy_s"] == decode[0]["gpu_busy_s"]
        ratio = d["flops"] / decode[0]["flops"]
        assert d["mfu_trace"] / decode[0]["mfu_trace"] == pytest.approx(ratio, rel=1e-12)
    for stage in ("vision", "prefill"):
        assert docs[0]["stages"][stage] == docs[1]["stages"][stage] == docs[2]["stages"][stage]
    # decode FLOPs per step at C: fixed and max are one C for every step
    text = config_of(real.meta(name)).text
    for (_, _, c), d in zip(CTX_MODES[1:], decode[1:], strict=True):
        assert c is not None
        per_step = analytic.decode_flops_per_token(text, c).total_flops
        assert d["flops"] == d["decode_steps"] * per_step
        assert d["mfu_trace"] == pytest.approx(
            d["flops"] / (PEAK_BF16_FLOPS * d["gpu_busy_s"]), rel=1e-12
        )


@pytest.mark.parametrize("name", NAMES)
def test_three_images_three_instances_aggregate_is_their_sum(real: RealTraces, name: str) -> None:
    doc = real.auto(name)
    assert len(measured_instances(real.attribution(name))) == 3
    for stage in STAGES:
        s = doc["stages"][stage]
        assert s["n_instances"] == len(s["instances"]) == 3
        assert [i["image_index"] for i in s["instances"]] == [0, 1, 2]
        assert not any(i["warmup"] for i in s["instances"])
        for key in ("flops", "gpu_busy_s", "kernel_sum_s", "cpu_s", "wall_s"):
            assert s[key] == pytest.approx(sum(i[key] for i in s["instances"]), rel=1e-12), key
        for key in ("n_gpu_ops", "n_kernels"):
            assert s[key] == sum(i[key] for i in s["instances"]), key
    wall = [sum(img["wall_s"][s] for s in STAGES) for img in real.meta(name)["images"]]
    assert doc["model"]["wall_s"] == pytest.approx(sum(wall), rel=1e-12)
