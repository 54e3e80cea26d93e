"""Per-step FLOPs of engine steps (flops/steps.py) against independent counts.

- vLLM's engine-side MFU formulas (`vllm/v1/metrics/perf.py`: `AttentionMetrics`, `FfnMetrics`,
  `UnembedMetrics` over an `ExecutionContext` of (num_tokens, context_len, is_prefill) per
  request) re-implemented here from the Hugging Face config keys, per GPU without parallelism;
  vLLM bills attention as num_tokens × context_len per request (every query against every key),
  our "full" convention, and does not count the MoE router: the two agree within 1 %.
- a step of one request equals the stage FLOPs of flops/ (prefill of Lp, decode at C);
- attention pairs against a brute-force sum; bounded attention contains the exact one.
"""

from __future__ import annotations

import json
import random
from typing import Any

import polars as pl
import pytest

from llm_perf_opt.flops import analytic, decoders, traffic
from llm_perf_opt.flops.configs import builtin_config
from llm_perf_opt.flops.flops_model import AnalyticFlops
from llm_perf_opt.flops.hf_model import HfFlops, read_hf_config
from llm_perf_opt.flops.steps import (
    StepCosts,
    attention_pairs,
    request_work,
    step_costs,
    step_work,
)
from llm_perf_opt.inputs.step_names import STEP_COUNTS
from tests.helpers.committed import LLAMA_CONFIG

# (query tokens q, context c before the step, is it a context request)
Request = tuple[int, int, bool]

# DeepSeek-OCR's decoder as its published config.json states it (deepseek-ai/DeepSeek-OCR,
# `language_config`); `test_moe_keys_are_the_analysed_config` holds them equal to the config the
# analysis counts.
DSOCR_DECODER: dict[str, Any] = {
    "hidden_size": 1280,
    "num_hidden_layers": 12,
    "num_attention_heads": 10,
    "num_key_value_heads": 10,
    "intermediate_size": 6848,
    "moe_intermediate_size": 896,
    "n_routed_experts": 64,
    "num_experts_per_tok": 6,
    "n_shared_experts": 2,
    "first_k_dense_replace": 1,
    "moe_layer_freq": 1,
    "vocab_size": 129280,
}


def vllm_step_flops(cfg: dict[str, Any], requests: list[Request]) -> int:
    """vLLM's `ModelMetrics.get_num_flops` of one step (tp = pp = dp = 1), written from its
    formulas: context_len = computed + scheduled tokens; a cached request with one token is a
    decode request; logits on one token per prefill request and on every decode token."""
    d = cfg["hidden_size"]
    layers = cfg["num_hidden_layers"]
    heads = cfg["num_attention_heads"]
    kv = cfg.get("num_key_value_heads", heads)
    head_dim = cfg.get("head_dim") or d // heads
    tokens = sum(q for q, _, _ in requests)
    token_context = sum(q * (c + q) for q, c, _ in requests)
    prefill_reqs = sum(1 for q, _, ctx in requests if ctx or q > 1)
    decode_tokens = sum(q for q, _, ctx in requests if not (ctx or q > 1))
    attn = 2 * tokens * d * (heads + 2 * kv) * head_dim * layers  # qkv_proj
    attn += 2 * tokens * d * heads * head_dim * layers  # out_proj
    attn += 2 * (2 * heads * token_context * head_dim * layers)  # attn_qk + attn_av
    experts = cfg.get("n_routed_experts", 0)
    moe_layers = 0
    if experts:
        first, freq = cfg.get("first_k_dense_replace", 0), cfg.get("moe_layer_freq", 1)
        moe_layers = sum(1 for i in range(layers) if i >= first and i % freq == 0)
    ffn = 2 * d * 3 * cfg["intermediate_size"] * tokens * (layers - moe_layers)
    if moe_layers:
        mi = cfg["moe_intermediate_size"]
        ffn += 2 * d * 3 * mi * tokens * cfg["num_experts_per_tok"] * moe_layers
        ffn += 2 * d * 3 * mi * cfg.get("n_shared_experts", 0) * tokens * moe_layers
    unembed = 2 * (prefill_reqs + decode_tokens) * d * cfg["vocab_size"]
    return attn + ffn + unembed


def ours(costs: StepCosts, requests: list[Request], convention: str = "causal") -> pl.DataFrame:
    """One step's row of `step_work`, its exact attention from the requests' (q, c)."""
    entries = pl.DataFrame(
        requests, schema={"q": pl.Int64, "c": pl.Int64, "ctx": pl.Boolean}, orient="row"
    )
    flops, keys = request_work(costs, pl.col("c"), pl.col("q"), convention)  # type: ignore[arg-type]
    exact = entries.select(pairs_exact=flops.sum(), keys_exact=keys.sum())
    ctx = entries.filter(pl.col("ctx"))
    gen = entries.filter(~pl.col("ctx"))
    counts = {
        "ctx_reqs": ctx.height,
        "ctx_tokens": int(ctx["q"].sum()),
        "gen_reqs": gen.height,
        "gen_tokens": int(gen["q"].sum()),
    }
    step = pl.DataFrame(
        [{c: counts.get(c) for c in STEP_COUNTS}],
        schema={c: pl.Int64 for c in STEP_COUNTS},
    ).hstack(exact)
    return step_work(step, costs, convention)  # type: ignore[arg-type]


def total(row: pl.DataFrame) -> float:
    return float(row["flops_linear"][0] + row["flops_attention"][0])


def _llama() -> tuple[dict[str, Any], StepCosts]:
    model = read_hf_config(LLAMA_CONFIG)
    assert model is not None
    return json.loads(LLAMA_CONFIG.read_text()), step_costs(HfFlops(model, "bfloat16"))


def _dsocr() -> tuple[dict[str, Any], StepCosts]:
    return DSOCR_DECODER, step_costs(AnalyticFlops(builtin_config("deepseek-ocr"), "bfloat16"))


STEPS: dict[str, list[Request]] = {
    "prefill": [(512, 0, True)],
    "chunked_prefill": [(510, 1024, True)],
    "mixed": [(256, 512, True), (1, 300, False), (1, 700, False), (1, 1000, False)],
    "decode_batch": [(1, c, False) for c in (282, 290, 301, 512, 777, 1500, 2047, 4000)],
    "two_prompts": [(200, 0, True), (312, 0, True)],
}


@pytest.mark.parametrize("model", [_llama, _dsocr], ids=["llama-1b-dense", "dsocr-moe"])
@pytest.mark.parametrize("name", list(STEPS))
def test_agrees_with_vllm_formulas_within_one_percent(model: Any, name: str) -> None:
    cfg, costs = model()
    requests = STEPS[name]
    expected = vllm_step_flops(cfg, requests)
    got = total(ours(costs, requests, "full"))
    assert got == pytest.approx(expected, rel=0.01)
    # not only within 1 %: the terms differ by the router (MoE) alone
    router = (
        2
        * cfg.get("n_routed_experts", 0)
        * cfg["hidden_size"]
        * 11
        * sum(q for q, _, _ in requests)
    )
    assert got - expected == (router if cfg.get("n_routed_experts") else 0)


@pytest.mark.parametrize("model", [_llama, _dsocr], ids=["llama-1b-dense", "dsocr-moe"])
def test_decode_steps_agree_in_our_causal_convention(model: Any) -> None:
    """One query per request: causal and full attention count the same pairs."""
    cfg, costs = model()
    requests = STEPS["decode_batch"]
    assert total(ours(costs, requests)) == total(ours(costs, requests, "full"))
    assert total(ours(costs, requests)) == pytest.approx(vllm_step_flops(cfg, requests), rel=0.01)


def test_moe_keys_are_the_analysed_config() -> None:
    text = builtin_config("deepseek-ocr").text
    cfg = DSOCR_DECODER
    assert (cfg["hidden_size"], cfg["num_hidden_layers"], cfg["num_attention_heads"]) == (
        text.hidden_size,
        text.num_layers,
        text.num_heads,
    )
    assert (cfg["num_key_value_heads"], cfg["intermediate_size"], cfg["vocab_size"]) == (
        text.num_kv_heads,
        text.intermediate_size,
        text.vocab_size,
    )
    assert (cfg["moe_intermediate_size"], cfg["n_routed_experts"]) == (
        text.moe_intermediate_size,
        text.n_routed_experts,
    )
    assert (cfg["num_experts_per_tok"], cfg["n_shared_experts"]) == (
        text.num_experts_per_tok,
        text.n_shared_experts,
    )
    assert text.n_dense_layers == cfg["first_k_dense_replace"]


@pytest.mark.parametrize("lp", [1, 282, 512])
def test_one_request_steps_equal_the_stage_flops(lp: int) -> None:
    """A step that prefills one prompt from an empty cache is the prefill stage; a step of one
    generation request at context C is one decode step (lm_head on one position each)."""
    model = read_hf_config(LLAMA_CONFIG)
    assert model is not None
    flops = HfFlops(model, "bfloat16")
    costs = step_costs(flops)
    assert total(ours(costs, [(lp, 0, True)])) == flops.prefill_flops(lp)
    # decode at C keys attends to C − 1 cached positions and itself
    assert total(ours(costs, [(1, lp, False)])) == flops.decode_flops([lp + 1])
    dsocr = AnalyticFlops(builtin_config("deepseek-ocr"), "bfloat16")
    costs = step_costs(dsocr)
    assert total(ours(costs, [(lp, 0, True)])) == dsocr.prefill_flops(lp)
    assert total(ours(costs, [(1, lp, False)])) == dsocr.decode_flops([lp + 1])


def test_moe_steps_read_the_experts_their_tokens_pick() -> None:
    """One decode token reads its top-k experts per MoE layer (the stage's decode bytes); a
    chunk of T tokens the expected distinct experts they pick, nearly all 64 for 512 tokens."""
    config = builtin_config("deepseek-ocr")
    text = config.text
    costs = step_costs(AnalyticFlops(config, "bfloat16"))
    expert = 3 * text.hidden_size * text.moe_intermediate_size * 2  # bf16
    one = ours(costs, [(1, 999, False)])["bytes"][0]
    per_step = analytic.decode_bytes_per_step(text, 1000, "bfloat16")
    assert one == pytest.approx(sum(per_step.values()), rel=1e-12)
    chunk = ours(costs, [(512, 0, True)])["bytes"][0]
    cache = 512 * analytic.kv_cache_bytes_per_position(text, "bfloat16")
    extra = text.n_moe_layers * expert * (traffic.experts_touched(text, 512) - 6)
    assert chunk == pytest.approx(one - per_step["text.kv_cache"] + cache + extra, rel=1e-12)
    assert traffic.experts_touched(text, 512) > 63.9


def test_decode_bytes_are_the_weights_and_the_cache_read() -> None:
    model = read_hf_config(LLAMA_CONFIG)
    assert model is not None
    costs = step_costs(HfFlops(model, "bfloat16"))
    row = ours(costs, [(1, 999, False)])
    per_step = decoders.decode_bytes_per_step(model.text, 1000, "bfloat16")  # type: ignore[arg-type]
    assert row["bytes"][0] == sum(per_step.values()) - per_step["text.kv_cache_write"]


@pytest.mark.parametrize("window", [None, 1, 7, 64])
def test_attention_pairs_match_a_brute_force_count(window: int | None) -> None:
    cases = [(q, c) for q in (0, 1, 2, 5, 33) for c in (0, 1, 6, 40, 100)]
    frame = pl.DataFrame(cases, schema=["q", "c"], orient="row")
    got = frame.select(
        causal=attention_pairs(pl.col("c"), pl.col("q"), window),
        full=attention_pairs(pl.col("c"), pl.col("q"), window, "full"),
    )
    for (q, c), causal, full in zip(cases, got["causal"], got["full"], strict=True):
        keys = [c + i if window is None else min(c + i, window) for i in range(1, q + 1)]
        assert causal == sum(keys), (q, c)
        last = c + q if window is None else min(c + q, window)
        assert full == q * last, (q, c)


def _bounds(costs: StepCosts, requests: list[Request]) -> pl.DataFrame:
    """The step with its counts only (as a name gives them): bounded attention."""
    row = ours(costs, requests)
    return step_work(row.drop(row.columns[len(STEP_COUNTS) + 2 :]).with_columns(
        pairs_exact=pl.lit(None, pl.Int64), keys_exact=pl.lit(None, pl.Int64)
    ), costs)  # fmt: skip


def test_bounded_attention_contains_the_exact_one() -> None:
    rng = random.Random(24)
    for model in (_llama, _dsocr):
        _, costs = model()
        for _ in range(40):
            n_ctx, n_gen = rng.randint(0, 3), rng.randint(0, 6)
            requests = [(rng.randint(1, 600), rng.choice([0, rng.randint(1, 3000)]), True)
                        for _ in range(n_ctx)]  # fmt: skip
            requests += [(1, rng.randint(1, 6000), False) for _ in range(n_gen)]
            exact = ours(costs, requests)
            bounded = _bounds(costs, requests)
            assert exact["attention_exact"][0] is True
            assert bounded["attention_exact"][0] is (not requests)
            lo, hi = bounded["flops_attention"][0], bounded["flops_attention_max"][0]
            assert lo <= exact["flops_attention"][0] <= hi, requests
            assert bounded["flops_linear"][0] == exact["flops_linear"][0]


def test_roofline_sums_give_exact_attention() -> None:
    """SGLang's per-phase sums (sq, sk, sqsq, sqsk) carry enough for exact causal attention."""
    _, costs = _llama()
    requests = [(8, 2, True), (4, 6, True), (1, 9, False), (1, 19, False)]
    exact = ours(costs, requests)
    work = ("flops_linear", "flops_attention", "flops_attention_max", "attention_exact", "bytes")
    row = _bounds(costs, requests).drop(work)
    sums = {}
    for p, mine in (("c", [r for r in requests if r[2]]), ("g", [r for r in requests if not r[2]])):
        sums |= {
            f"{p}_sk": sum(c + q for q, c, _ in mine),
            f"{p}_sqsq": sum(q * q for q, _, _ in mine),
            f"{p}_sqsk": sum(q * (c + q) for q, c, _ in mine),
        }
    row = row.with_columns(pl.lit(v, pl.Int64).alias(k) for k, v in sums.items())
    got = step_work(row, costs)
    assert got["attention_exact"][0] is True
    assert got["flops_attention"][0] == exact["flops_attention"][0]
    assert got["bytes"][0] == exact["bytes"][0]
