"""DeepSeek-OCR's decoder as a `DecoderSpec`, so a serving-engine step of either model kind is
counted by `decoders` (flops/steps.py `step_costs`: one code path for Hugging Face decoders and
DeepSeek-OCR's)."""

from __future__ import annotations

from llm_perf_opt.flops.configs import TextConfig
from llm_perf_opt.flops.hf import DecoderLayer, DecoderSpec, DenseMlp, GqaAttention, MoeMlp


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
