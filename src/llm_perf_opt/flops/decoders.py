"""FLOPs of prefill and decode, and bytes of a decode step, of a Hugging Face decoder.

Conventions as `analytic` (docs/flops.md): 2 FLOPs per multiply-accumulate; matmuls only; a
query attends to min(C, window) keys on a sliding-window layer; "causal" counts only the pairs
the mask allows, "full" the whole Lp² square (what dense kernels and FlopCounterMode count);
prefill applies lm_head to the last position unless told "all". What transformers computes is
counted: DeepSeek's latent attention expands its cached latent with `kv_b_proj` over every key
position at each forward (block `text.mla_kv_expand`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from llm_perf_opt.flops.analytic import Convention, Flops, dtype_bytes
from llm_perf_opt.flops.context import check_length
from llm_perf_opt.flops.hf import DecoderSpec, DenseMlp, GqaAttention, MlaAttention, MoeMlp
from llm_perf_opt.vocab import LmHeadPositions


def attention_params(attn: GqaAttention | MlaAttention, d: int) -> dict[str, int]:
    """Weights of one layer's attention, split into the per-query projections and the MLA
    key-expansion (`kv_b_proj`, applied per key position)."""
    if isinstance(attn, GqaAttention):
        q = attn.num_heads * attn.head_dim
        kv = attn.num_kv_heads * attn.head_dim
        return {"proj": d * (q + 2 * kv) + q * d, "kv_expand": 0}
    qk = attn.qk_nope_head_dim + attn.qk_rope_head_dim
    heads = attn.num_heads
    if attn.q_lora_rank is None:
        q_params = d * heads * qk
    else:
        q_params = d * attn.q_lora_rank + attn.q_lora_rank * heads * qk
    kv_a = d * (attn.kv_lora_rank + attn.qk_rope_head_dim)
    o = heads * attn.v_head_dim * d
    kv_b = attn.kv_lora_rank * heads * (attn.qk_nope_head_dim + attn.v_head_dim)
    return {"proj": q_params + kv_a + o, "kv_expand": kv_b}


def mlp_params(mlp: DenseMlp | MoeMlp, d: int) -> dict[str, int]:
    """Weights one token uses in one layer's MLP (a MoE token: its top-k experts)."""
    if isinstance(mlp, DenseMlp):
        return {"dense": 3 * d * mlp.intermediate_size}
    return {
        "routed": mlp.top_k * 3 * d * mlp.expert_intermediate_size,
        "shared": 3 * d * mlp.shared_intermediate_size + (d if mlp.shared_gate else 0),
        "router": d * mlp.num_experts,
    }


def per_token_params(spec: DecoderSpec) -> dict[str, int]:
    """Matmul weights one position multiplies with, by block (lm_head included, key expansion
    and embedding excluded)."""
    d = spec.hidden_size
    attn = attention_params(spec.attention, d)["proj"]
    out = {
        "text.attn_proj": attn * len(spec.layers),
        "text.dense_mlp": 0,
        "text.moe_routed": 0,
        "text.moe_shared": 0,
        "text.router": 0,
    }
    names = {"dense": "text.dense_mlp", "routed": "text.moe_routed", "shared": "text.moe_shared",
             "router": "text.router"}  # fmt: skip
    for layer in spec.layers:
        for key, value in mlp_params(layer.mlp, d).items():
            out[names[key]] += value
    out["text.lm_head"] = d * spec.vocab_size
    return out


def kv_expand_params(spec: DecoderSpec) -> int:
    """`kv_b_proj` weights of all layers (0 without latent attention)."""
    return attention_params(spec.attention, spec.hidden_size)["kv_expand"] * len(spec.layers)


def pair_flops(spec: DecoderSpec) -> int:
    """FLOPs of one (query, key) pair in one layer: QKᵀ and AV."""
    attn = spec.attention
    if isinstance(attn, GqaAttention):
        return 4 * attn.num_heads * attn.head_dim
    qk = attn.qk_nope_head_dim + attn.qk_rope_head_dim
    return 2 * attn.num_heads * (qk + attn.v_head_dim)


def _attended(window: int | None, ctx_len: int) -> int:
    return ctx_len if window is None else min(ctx_len, window)


def decode_flops_per_token(spec: DecoderSpec, ctx_len: int) -> Flops:
    """One decode step: one new position attending to `ctx_len` keys (itself included).

    Raises:
        ConfigError: ctx_len outside 1..max_position_embeddings.
    """
    check_length(spec.max_position_embeddings, ctx_len, "context length")
    blocks = {name: 2 * p for name, p in per_token_params(spec).items()}
    keys = sum(_attended(layer.window, ctx_len) for layer in spec.layers)
    blocks["text.attn_scores"] = pair_flops(spec) * keys
    expand = kv_expand_params(spec)
    if expand:
        blocks["text.mla_kv_expand"] = 2 * expand * ctx_len
    return Flops(blocks)


def _causal_pairs(window: int | None, length: int) -> int:
    """Σ_{i=1..length} min(i, window): the pairs a causal (sliding) mask allows."""
    if window is None or length <= window:
        return length * (length + 1) // 2
    return window * (window + 1) // 2 + (length - window) * window


def prefill_flops(
    spec: DecoderSpec,
    prefill_len: int,
    convention: Convention = "causal",
    lm_head_positions: LmHeadPositions = "last",
) -> Flops:
    """Prefill of `prefill_len` positions from an empty cache.

    Raises:
        ConfigError: prefill_len outside 1..max_position_embeddings.
    """
    check_length(spec.max_position_embeddings, prefill_len, "prefill length")
    params = per_token_params(spec)
    lm_head = params.pop("text.lm_head")
    blocks = {name: 2 * p * prefill_len for name, p in params.items()}
    if convention == "causal":
        pairs = sum(_causal_pairs(layer.window, prefill_len) for layer in spec.layers)
    else:
        pairs = len(spec.layers) * prefill_len**2
    blocks["text.attn_scores"] = pair_flops(spec) * pairs
    expand = kv_expand_params(spec)
    if expand:
        blocks["text.mla_kv_expand"] = 2 * expand * prefill_len
    blocks["text.lm_head"] = 2 * lm_head * (1 if lm_head_positions == "last" else prefill_len)
    return Flops(blocks)


def decode_flops_total(spec: DecoderSpec, ctx_lens: Sequence[int]) -> Flops:
    """Decode steps attending to `ctx_lens` keys each, summed by block."""
    out = Flops()
    for ctx_len, n in Counter(ctx_lens).items():
        out = out + decode_flops_per_token(spec, ctx_len).times(n)
    return out


def active_params(spec: DecoderSpec) -> dict[str, int]:
    """Parameters one decode token reads, by block (batch 1: exactly its top-k experts).

    Norm weights are counted as 2 per layer + the final one, d each (Gemma 2/3's extra norms and
    Qwen3's q/k norms are left out: < 0.01 % of the weights).
    """
    d = spec.hidden_size
    out = {"text.embedding": d, **per_token_params(spec)}
    expand = kv_expand_params(spec)
    if expand:
        out["text.mla_kv_expand"] = expand
    out["text.norms"] = (2 * len(spec.layers) + 1) * d
    return out


def kv_bytes_per_position(spec: DecoderSpec, dtype: str) -> int:
    """Cache bytes of one position in one layer: K and V (GQA), or the latent (MLA)."""
    attn = spec.attention
    if isinstance(attn, GqaAttention):
        elements = 2 * attn.num_kv_heads * attn.head_dim
    else:
        elements = attn.kv_lora_rank + attn.qk_rope_head_dim
    return elements * dtype_bytes(dtype)


def decode_bytes_per_step(spec: DecoderSpec, ctx_len: int, dtype: str) -> dict[str, int]:
    """Bytes one decode step moves at context `ctx_len`: active weights, the cache it reads
    (min(C, window) positions per layer) and the new position it writes. Activations: 0.

    Raises:
        ConfigError: unknown dtype.
    """
    size = dtype_bytes(dtype)
    out = {name: params * size for name, params in active_params(spec).items()}
    per_position = kv_bytes_per_position(spec, dtype)
    keys = sum(_attended(layer.window, ctx_len) for layer in spec.layers)
    out["text.kv_cache_read"] = per_position * keys
    out["text.kv_cache_write"] = per_position * len(spec.layers)
    return out
