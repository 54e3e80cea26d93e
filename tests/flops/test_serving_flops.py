"""Per-step FLOPs from a batch composition (`flops.serving`) against the stage formulas.

A step holding one request's whole prompt from an empty cache is that prompt's prefill; a
generation entry at context c is a decode step at C = c + 1; chunks of one prompt add up to its
prefill plus one lm_head per extra chunk (and, for latent attention, the
expansion of the cached latent at every chunk); a step is the sum of its entries but one pass of the
linear layers. DeepSeek-OCR's decoder seen as a `DecoderSpec` gives the `analytic` numbers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from llm_perf_opt.flops import analytic, decoders
from llm_perf_opt.flops.analytic import Convention
from llm_perf_opt.flops.configs import builtin_config
from llm_perf_opt.flops.hf import DecoderSpec, hf_model_from_dict
from llm_perf_opt.flops.serving import attention_pairs, step_flops, text_decoder_spec

DATA = Path(__file__).resolve().parents[1] / "data" / "hf_configs"


@dataclass(frozen=True)
class E:
    query_len: int
    context_len: int


def spec_of(name: str) -> DecoderSpec:
    data = json.loads((DATA / name).read_text())
    spec = hf_model_from_dict(data, name).text
    assert spec is not None
    return spec


SPECS = {
    "llama": spec_of("llama-3.2-1b.json"),
    "mistral (sliding window)": spec_of("mistral-7b-v0.1.json"),
    "qwen3 moe": spec_of("qwen3-30b-a3b.json"),
    "deepseek-v2 (MLA)": spec_of("deepseek-v2-lite.json"),
    "deepseek-ocr": text_decoder_spec(builtin_config("deepseek-ocr").text),
}


@pytest.mark.parametrize("name", list(SPECS))
@pytest.mark.parametrize("convention", ["causal", "full"])
def test_a_whole_prompt_from_an_empty_cache_is_its_prefill(name: str, convention: str) -> None:
    spec = SPECS[name]
    conv: Convention = "causal" if convention == "causal" else "full"
    for lp in (1, 282, 5000):
        got = step_flops(spec, [E(lp, 0)], conv)
        assert got == decoders.prefill_flops(spec, lp, conv)


@pytest.mark.parametrize("name", list(SPECS))
def test_a_generation_entry_is_a_decode_step(name: str) -> None:
    spec = SPECS[name]
    for c in (1, 282, 5000):
        assert step_flops(spec, [E(1, c)]) == decoders.decode_flops_per_token(spec, c + 1)


@pytest.mark.parametrize("name", list(SPECS))
def test_chunks_add_up_to_the_prefill_plus_one_lm_head_per_extra_chunk(name: str) -> None:
    spec = SPECS[name]
    chunks = [E(100, 0), E(100, 100), E(82, 200)]
    parts = [step_flops(spec, [c]).blocks for c in chunks]
    prefill = decoders.prefill_flops(spec, 282).blocks
    for block, value in prefill.items():
        summed = sum(p[block] for p in parts)
        if block == "text.lm_head":
            assert summed == 3 * value  # one per chunk
        elif block == "text.mla_kv_expand":  # transformers expands every cached latent again
            assert summed == 2 * decoders.kv_expand_params(spec) * (100 + 200 + 282)
        else:
            assert summed == value, block


@pytest.mark.parametrize("name", list(SPECS))
def test_a_step_is_the_sum_of_its_entries(name: str) -> None:
    spec = SPECS[name]
    entries = [E(256, 0), E(26, 256), E(1, 300), E(1, 4500)]
    whole = step_flops(spec, entries, "causal")
    parts = [step_flops(spec, [e], "causal") for e in entries]
    for block, value in whole.blocks.items():
        assert value == sum(p.blocks.get(block, 0) for p in parts), block


def test_deepseek_ocr_decoder_matches_the_analytic_model() -> None:
    text = builtin_config("deepseek-ocr").text
    spec = text_decoder_spec(text)
    assert step_flops(spec, [E(282, 0)]).total_flops == (
        analytic.prefill_flops(text, 282).total_flops
    )
    assert step_flops(spec, [E(1, 290)]).total_flops == (
        analytic.decode_flops_per_token(text, 291).total_flops
    )
    # v1: 1,148,190,720 + 61,440·C per decode token (docs/flops.md)
    assert step_flops(spec, [E(1, 290)]).total_flops == 1_148_190_720 + 61_440 * 291


def test_attention_pairs_under_a_sliding_window() -> None:
    # a chunk of 3 after 5 cached keys, window 6: queries see 6, 7→6, 8→6 keys
    assert attention_pairs(3, 5, 6, "causal") == 18
    assert attention_pairs(3, 5, None, "causal") == 6 + 7 + 8
    assert attention_pairs(3, 5, None, "full") == 3 * 8
    assert attention_pairs(3, 5, 6, "full") == 3 * 8  # the masked square a kernel computes
