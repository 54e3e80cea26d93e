"""Analytic FLOPs vs two independent counters on the runner's tiny models (CPU, random weights).

`FlopCounterMode` runs the runner's own stage functions; fvcore traces the same calls. Both count
every query-key pair of masked attention (the full square), so they are compared with the
analytic full-square convention; the causal numbers differ from it only in attention scores
(tests/flops/test_flops_analytic.py).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

# The runner extra (`pip install -e ".[runner]"`) brings these; without it the module is skipped.
pytest.importorskip("torch", reason="needs the runner extra: pip install -e '.[runner]'")
pytest.importorskip("transformers", reason="needs the runner extra: pip install -e '.[runner]'")
pytest.importorskip("fvcore", reason="needs the runner extra: pip install -e '.[runner]'")
import torch

from llm_perf_opt.flops import analytic as A
from llm_perf_opt.flops.configs import builtin_config
from llm_perf_opt.runner import nvtx_stages
from llm_perf_opt.runner.models import BuiltModel, build_model
from llm_perf_opt.runner.preprocess import preprocess, synthetic_page
from llm_perf_opt.runner.static_compute import flop_counter_flops, fvcore_flops, stage_runs
from llm_perf_opt.vocab import FAMILIES

FLOP_COUNTER_TOLERANCE = 0.005
FVCORE_TOLERANCE = 0.01


@pytest.fixture(scope="module", params=FAMILIES)
def built(request: pytest.FixtureRequest) -> Iterator[BuiltModel]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield build_model(request.param, tiny=True, dtype=torch.float32, seed=0)
    torch.set_num_threads(threads)


def _close(counted: int, expected: int, tolerance: float) -> bool:
    return abs(counted / expected - 1) <= tolerance


@pytest.mark.parametrize("mode", ["base", "gundam"])
def test_flop_counter_mode_agrees_on_every_stage(built: BuiltModel, mode: str) -> None:
    config = built.config
    prepared = nvtx_stages.prepare_image(built, synthetic_page(0), mode)
    if mode == "gundam":
        assert prepared.layout.n_crops > 1  # the A4 page is cut into crops
    layout = A.image_layout(config, mode, prepared.layout.crop_grid)

    vision, embeds = flop_counter_flops(lambda: nvtx_stages.vision_stage(built, prepared))
    assert embeds.shape[0] == layout.image_positions
    expected = A.vision_flops(config, layout, "full").total_flops
    assert _close(vision, expected, FLOP_COUNTER_TOLERANCE), (vision, expected)

    prefill, (token, past) = flop_counter_flops(
        lambda: nvtx_stages.prefill_stage(built, prepared, embeds)
    )
    lp = prepared.prefill_len
    expected = A.prefill_flops(config.text, lp, "full").total_flops
    assert _close(prefill, expected, FLOP_COUNTER_TOLERANCE), (prefill, expected)

    decode, _ = flop_counter_flops(lambda: nvtx_stages.decode_step(built, token, past, lp))
    expected = A.decode_flops_per_token(config.text, lp + 1).total_flops
    assert _close(decode, expected, FLOP_COUNTER_TOLERANCE), (decode, expected)


@pytest.mark.parametrize("mode", ["base", "gundam"])
def test_fvcore_times_two_agrees_on_every_stage(built: BuiltModel, mode: str) -> None:
    prepared = nvtx_stages.prepare_image(built, synthetic_page(0), mode)
    for run in stage_runs(built, prepared, prepared.prefill_len):
        count = fvcore_flops(run.module, run.inputs)
        expected = run.analytic_full.total_flops
        assert _close(count.flops, expected, FVCORE_TOLERANCE), (run.name, count.flops, expected)


def test_flop_counter_sees_the_causal_discount_it_does_not_apply(built: BuiltModel) -> None:
    # The counters see Lp² query-key pairs in prefill; the causal convention counts Lp(Lp+1)/2.
    text = built.config.text
    lp = 40
    embeds = torch.randn(1, lp, text.hidden_size)
    counted, _ = flop_counter_flops(
        lambda: built.model(inputs_embeds=embeds, use_cache=True, logits_to_keep=1)
    )
    full = A.prefill_flops(text, lp, "full").total_flops
    causal = A.prefill_flops(text, lp, "causal").total_flops
    assert _close(counted, full, FLOP_COUNTER_TOLERANCE)
    assert not _close(counted, causal, FLOP_COUNTER_TOLERANCE)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("tiny", [True, False])
def test_runner_layout_matches_the_analytic_layout(family: str, tiny: bool) -> None:
    config = builtin_config(family, tiny=tiny)
    page = synthetic_page(0)
    for spec in config.modes:
        runner_layout = preprocess(config, page, spec.name).layout
        layout = A.image_layout(config, spec.name, runner_layout.crop_grid)
        assert (runner_layout.vision_tokens, runner_layout.image_positions) == (
            layout.vision_tokens,
            layout.image_positions,
        )
