"""FLOPs and bytes of serving-engine steps from their batch composition (docs/serving.md).

One engine step runs, for every scheduled request r, q_r new positions after c_r positions
already in its KV cache. Conventions as the rest of flops/ (docs/flops.md):
- linear layers (attention projections, MLP or the top-k routed + shared experts, router):
  `linear_per_token` · Σ q_r, exact from the token counts a step name gives;
- lm_head on one position per context request (the last of its chunk; vLLM samples a chunk that
  does not finish the prompt too) and on every generation token;
- attention (QKᵀ and AV, causal): query i of request r sees min(c_r + i, window) keys, so a
  request adds Σ_{i=1..q} min(c + i, w) pairs per layer; DeepSeek's latent attention also
  expands its cached latent over the c + q keys once per forward (`kv_expand_per_key`).
  Exact from per-request (q, c) (the runner's metadata) or from the sums Σq, Σq², Σq·k (SGLang
  roofline sums, without sliding windows); otherwise bounded: each phase's tokens split evenly
  over its requests (the split that minimizes the lower and maximizes the upper bound), the
  lower bound with no earlier context (c = 0 for a context request, c = 1 for a generation
  one), the upper with the whole window (c = max positions − q).
- bytes (MBU): the weights read once per step, of a MoE layer the routed experts its T tokens
  pick (E·(1 − (1 − k/E)^T) in expectation under uniform routing, `traffic.expected_experts`:
  k for one token, nearly all for a prefill chunk), plus the KV cache of the keys attended; 0
  for a step that runs no token.

`StepCosts` holds the per-model constants, taken from `decoders` (the Hugging Face decoders'
stage FLOPs; DeepSeek-OCR's decoder through `serving.text_decoder_spec`, which counts what
`analytic` does: tests/serve/test_step_flops.py holds one-request steps equal to both).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import polars as pl

from llm_perf_opt.flops import analytic, decoders
from llm_perf_opt.flops.analytic import Convention
from llm_perf_opt.flops.dsocr_decoder import text_decoder_spec
from llm_perf_opt.flops.flops_model import AnalyticFlops
from llm_perf_opt.flops.hf import MoeMlp
from llm_perf_opt.flops.hf_model import HfFlops, _text
from llm_perf_opt.flops.traffic import expected_experts

# How the bounded attention FLOPs are bounded, stated in every report that has them.
BOUND_ASSUMPTION: Final = (
    "attention FLOPs bounded: each phase's tokens split evenly over its requests; lower bound "
    "with no earlier context (c = 0 for a context request, 1 for a generation one), upper bound "
    "with the model's whole window; the FLOPs and MFU shown use the lower bound"
)


@dataclass(frozen=True)
class StepCosts:
    """Per-model constants of a step's FLOPs and bytes.

    Attributes:
        linear_per_token: FLOPs of one position through every matmul but attention scores and
            lm_head.
        lm_head_per_position: FLOPs of lm_head on one position.
        pair_flops: FLOPs of one (query, key) pair in one layer.
        windows: each layer's sliding window (None: full attention).
        kv_expand_per_key: latent-attention key expansion FLOPs per key position (0 without).
        max_positions: the model window, the upper bound of c + q.
        weight_bytes: weights every step reads, the routed experts excepted (None: dtype
            unknown).
        routed: per group of MoE layers alike, (layers, experts, top-k, bytes of one expert):
            a step of T tokens reads the experts they pick, `traffic.expected_experts` of them.
        kv_bytes_per_key: cache bytes of one key position in one layer (None: dtype unknown).
    """

    linear_per_token: int
    lm_head_per_position: int
    pair_flops: int
    windows: tuple[int | None, ...]
    kv_expand_per_key: int
    max_positions: int
    weight_bytes: int | None
    routed: tuple[tuple[int, int, int, int], ...]
    kv_bytes_per_key: int | None


def step_costs(model: AnalyticFlops | HfFlops) -> StepCosts:
    """The step constants of a FLOPs model, from `decoders` (DeepSeek-OCR's decoder through
    `serving.text_decoder_spec`).

    Raises:
        ConfigError: a Hugging Face config without a language model.
    """
    if isinstance(model, AnalyticFlops):
        spec = text_decoder_spec(model.config.text)
    else:
        spec = _text(model.model)
    dtype = model.bytes_dtype
    size = 0 if dtype is None else analytic.dtype_bytes(dtype)
    params = decoders.per_token_params(spec)
    lm_head = 2 * params.pop("text.lm_head")
    d = spec.hidden_size
    experts = Counter(
        (layer.mlp.num_experts, layer.mlp.top_k, 3 * d * layer.mlp.expert_intermediate_size)
        for layer in spec.layers
        if isinstance(layer.mlp, MoeMlp)
    )
    active = decoders.active_params(spec)
    shared = sum(active.values()) - active.get("text.moe_routed", 0)
    return StepCosts(
        linear_per_token=2 * sum(params.values()),
        lm_head_per_position=lm_head,
        pair_flops=decoders.pair_flops(spec),
        windows=tuple(layer.window for layer in spec.layers),
        kv_expand_per_key=2 * decoders.kv_expand_params(spec),
        max_positions=spec.max_position_embeddings,
        weight_bytes=None if dtype is None else shared * size,
        routed=tuple((n, e, k, w * size) for (e, k, w), n in experts.items()),
        kv_bytes_per_key=None if dtype is None else decoders.kv_bytes_per_position(spec, dtype),
    )


def attention_pairs(
    c: pl.Expr, q: pl.Expr, window: int | None, convention: Convention = "causal"
) -> pl.Expr:
    """The (query, key) pairs of q new positions after c in one layer: causal Σ_{i=1..q}
    min(c + i, window); "full" q · min(c + q, window), every query against every key of the
    request (what dense kernels compute, and vLLM's MFU metrics count)."""
    if convention == "full":
        return q * attended_keys(c, q, window)
    if window is None:
        return q * c + q * (q + 1) // 2
    k = pl.min_horizontal(pl.max_horizontal(pl.lit(window) - c, pl.lit(0)), q)
    return k * c + k * (k + 1) // 2 + (q - k) * window


def attended_keys(c: pl.Expr, q: pl.Expr, window: int | None) -> pl.Expr:
    """Keys the last of q new positions after c sees (the cache a request reads in a layer)."""
    keys = c + q
    return keys if window is None else pl.min_horizontal(keys, pl.lit(window))


def _over_layers(costs: StepCosts, part: Callable[[int | None], pl.Expr]) -> pl.Expr:
    """Σ over layers of `part(window)`, layers of one window counted once."""
    return pl.sum_horizontal([part(w) * n for w, n in Counter(costs.windows).items()]).cast(
        pl.Int64
    )


def request_work(
    costs: StepCosts, c: pl.Expr, q: pl.Expr, convention: Convention = "causal"
) -> tuple[pl.Expr, pl.Expr]:
    """Attention FLOPs and KV-cache keys read (all layers) of one request running q positions
    after c: the exact per-request terms the runner's metadata allows."""
    pairs = _over_layers(costs, lambda w: attention_pairs(c, q, w, convention))
    keys = _over_layers(costs, lambda w: attended_keys(c, q, w))
    flops = pairs * costs.pair_flops + (c + q) * costs.kv_expand_per_key
    return flops, keys


def _even_split(
    costs: StepCosts,
    reqs: pl.Expr,
    tokens: pl.Expr,
    c_of: Callable[[pl.Expr], pl.Expr],
    convention: Convention,
) -> tuple[pl.Expr, pl.Expr]:
    """Attention FLOPs and keys of `tokens` split evenly over `reqs` requests, each request with
    q positions after c_of(q)."""
    r = pl.max_horizontal(reqs, pl.lit(1))
    base = tokens // r
    extra = tokens % r
    lo_flops, lo_keys = request_work(costs, c_of(base), base, convention)
    hi_flops, hi_keys = request_work(costs, c_of(base + 1), base + 1, convention)
    active = tokens > 0
    flops = pl.when(active).then((r - extra) * lo_flops + extra * hi_flops).otherwise(0)
    keys = pl.when(active).then((r - extra) * lo_keys + extra * hi_keys).otherwise(0)
    return flops, keys


def _from_sums(
    costs: StepCosts, p: str, tokens: str, convention: Convention
) -> tuple[pl.Expr, pl.Expr]:
    """Attention FLOPs and keys of one phase from the sums Σq, Σk, Σq², Σq·k (k = c + q):
    causal pairs Σ q·c + q(q+1)/2 = Σq·k − (Σq² − Σq)/2, full pairs Σq·k; exact without
    sliding windows."""
    sq, sk = pl.col(tokens), pl.col(f"{p}_sk")
    pairs = pl.col(f"{p}_sqsk")
    if convention == "causal":
        pairs = pairs - (pl.col(f"{p}_sqsq") - sq) // 2
    layers = len(costs.windows)
    flops = pairs * layers * costs.pair_flops + sk * layers * costs.kv_expand_per_key
    return flops, sk * layers


def step_work(
    steps: pl.DataFrame, costs: StepCosts, convention: Convention = "causal"
) -> pl.DataFrame:
    """`steps` with `flops_linear`, `flops_attention` (the lower bound where not exact),
    `flops_attention_max`, `attention_exact` and `bytes` (None where the counts are unknown).

    `steps` holds the counts of `engines.STEP_COUNTS`, and `pairs_exact` / `keys_exact`: the
    attention FLOPs and keys the runner's per-request lengths give (null where it gave none,
    computed with `request_work` in the same convention).
    """
    ctx_r, ctx_t = pl.col("ctx_reqs"), pl.col("ctx_tokens")
    gen_r, gen_t = pl.col("gen_reqs"), pl.col("gen_tokens")
    windowless = all(w is None for w in costs.windows)
    top = costs.max_positions
    conv = convention
    c_lo, c_lo_keys = _even_split(costs, ctx_r, ctx_t, lambda _q: pl.lit(0), conv)
    g_lo, g_lo_keys = _even_split(costs, gen_r, gen_t, lambda _q: pl.lit(1), conv)
    c_max, _ = _even_split(
        costs, ctx_r, ctx_t, lambda q: pl.max_horizontal(top - q, pl.lit(0)), conv
    )
    g_max, _ = _even_split(
        costs, gen_r, gen_t, lambda q: pl.max_horizontal(top - q, pl.lit(1)), conv
    )
    c_sum, c_sum_keys = _from_sums(costs, "c", "ctx_tokens", conv)
    g_sum, g_sum_keys = _from_sums(costs, "g", "gen_tokens", conv)
    # a phase without requests has exact (zero) sums
    c_sums_known = (ctx_r == 0) | pl.all_horizontal(pl.col(f"c_{k}").is_not_null()
                                                    for k in ("sk", "sqsq", "sqsk"))  # fmt: skip
    g_sums_known = (gen_r == 0) | pl.all_horizontal(pl.col(f"g_{k}").is_not_null()
                                                    for k in ("sk", "sqsq", "sqsk"))  # fmt: skip
    zero = pl.lit(0, dtype=pl.Int64)
    by_sums = pl.lit(windowless) & c_sums_known & g_sums_known
    exact = pl.col("pairs_exact").is_not_null() | by_sums
    sums_flops = pl.when(ctx_r == 0).then(zero).otherwise(c_sum) + pl.when(gen_r == 0).then(
        zero
    ).otherwise(g_sum)
    sums_keys = pl.when(ctx_r == 0).then(zero).otherwise(c_sum_keys) + pl.when(gen_r == 0).then(
        zero
    ).otherwise(g_sum_keys)
    lower = (
        pl.when(pl.col("pairs_exact").is_not_null())
        .then(pl.col("pairs_exact"))
        .when(by_sums)
        .then(sums_flops)
        .otherwise(c_lo + g_lo)
    )
    keys = (
        pl.when(pl.col("keys_exact").is_not_null())
        .then(pl.col("keys_exact"))
        .when(by_sums)
        .then(sums_keys)
        .otherwise(c_lo_keys + g_lo_keys)
    )
    tokens = ctx_t + gen_t
    known = tokens.is_not_null() & ctx_r.is_not_null() & gen_r.is_not_null()
    kv = costs.kv_bytes_per_key
    weights = pl.sum_horizontal(
        pl.lit(float(costs.weight_bytes or 0)),
        *(n * b * expected_experts(e, k, tokens) for n, e, k, b in costs.routed),
    )
    return steps.with_columns(
        flops_linear=pl.when(known).then(
            (tokens * costs.linear_per_token + (ctx_r + gen_t) * costs.lm_head_per_position).cast(
                pl.Float64
            )
        ),
        flops_attention=pl.when(known).then(lower.cast(pl.Float64)),
        flops_attention_max=pl.when(known).then(
            pl.when(exact).then(lower).otherwise(c_max + g_max).cast(pl.Float64)
        ),
        attention_exact=pl.when(known).then(exact),
        # a step that runs no token runs no forward: it reads nothing
        bytes=pl.when(known & pl.lit(costs.weight_bytes is not None)).then(
            pl.when(tokens > 0).then(weights + keys * (kv or 0)).otherwise(0.0)
        ),
    )
