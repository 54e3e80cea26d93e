"""FLOPs of one serving-engine step from its batch composition: each scheduled request's
(query_len, context_len), as the runner's `--serve` records them (docs/run-metadata.md, `serve`).

Pure arithmetic over a `DecoderSpec` (a Hugging Face decoder, or DeepSeek-OCR's decoder through
`text_decoder_spec`), with the conventions of `decoders` (docs/flops.md):
- linear layers: 2 · active parameters per scheduled token (a MoE token: its top-k experts);
- lm_head: once per scheduled request (the logits of its last scheduled token, as vLLM computes
  them for every request of the step, a chunk that does not finish its prompt included);
- attention: a request whose query_len q tokens follow context_len c cached ones has
  q·c + q(q+1)/2 (query, key) pairs under the causal mask ("causal"), or q·(c + q) as a dense
  kernel and `FlopCounterMode` count it ("full"); sliding windows cap each query's keys.
The vision encoder of a step is not here: `analytic.vision_flops` gives it per image.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from llm_perf_opt.flops.analytic import Convention, Flops
from llm_perf_opt.flops.configs import TextConfig
from llm_perf_opt.flops.decoders import kv_expand_params, pair_flops, per_token_params
from llm_perf_opt.flops.hf import DecoderLayer, DecoderSpec, DenseMlp, GqaAttention, MoeMlp


class StepEntry(Protocol):
    """One request's share of a step: `query_len` new tokens after `context_len` cached ones."""

    @property
    def query_len(self) -> int: ...

    @property
    def context_len(self) -> int: ...


def attention_pairs(
    query_len: int, context_len: int, window: int | None, convention: Convention
) -> int:
    """(query, key) pairs of one request in one layer.

    Query i (1-based) of the chunk sees context_len + i keys (causal), capped at `window`;
    "full" counts every query against all context_len + query_len keys (also capped).
    """
    if convention == "full":
        keys = context_len + query_len
        return query_len * (keys if window is None else min(keys, window))
    if window is None:
        return query_len * context_len + query_len * (query_len + 1) // 2
    return sum(min(context_len + i, window) for i in range(1, query_len + 1))


def step_flops(
    spec: DecoderSpec, entries: Iterable[StepEntry], convention: Convention = "causal"
) -> Flops:
    """Decoder FLOPs of one engine step, by block (`text.*` as `decoders`).

    Args:
        spec: the decoder.
        entries: the step's scheduled requests (an object with query_len and context_len each;
            the metadata's `steps[i].entries` parsed, or the runner's records).
        convention: "causal" (the pairs the mask allows) or "full" (the dense square).
    """
    params = per_token_params(spec)
    lm_head = params.pop("text.lm_head")
    tokens = requests = pairs = keys = 0
    for entry in entries:
        q, c = entry.query_len, entry.context_len
        tokens += q
        requests += 1
        keys += c + q
        pairs += sum(attention_pairs(q, c, layer.window, convention) for layer in spec.layers)
    blocks = {name: 2 * p * tokens for name, p in params.items()}
    blocks["text.attn_scores"] = pair_flops(spec) * pairs
    expand = kv_expand_params(spec)
    if expand:
        blocks["text.mla_kv_expand"] = 2 * expand * keys
    blocks["text.lm_head"] = 2 * lm_head * requests
    return Flops(blocks)


def text_decoder_spec(text: TextConfig) -> DecoderSpec:
    """DeepSeek-OCR's decoder (`flops.configs.TextConfig`) as a `DecoderSpec`: full attention,
    dense SwiGLU or routed top-k + shared experts per layer."""
    moe = MoeMlp(
        num_experts=text.n_routed_experts,
        top_k=text.num_experts_per_tok,
        expert_intermediate_size=text.moe_intermediate_size,
        shared_intermediate_size=text.n_shared_experts * text.moe_intermediate_size,
    )
    dense = DenseMlp(text.intermediate_size)
    return DecoderSpec(
        model_type="deepseek_ocr_text",
        hidden_size=text.hidden_size,
        vocab_size=text.vocab_size,
        attention=GqaAttention(text.num_heads, text.num_kv_heads, text.head_dim),
        layers=tuple(
            DecoderLayer(dense if kind == "dense" else moe) for kind in text.mlp_layer_types
        ),
        tie_word_embeddings=text.tie_word_embeddings,
        max_position_embeddings=text.max_position_embeddings,
    )
