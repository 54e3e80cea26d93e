"""What each GPU op computes, from its kernel name: one declared rule table, first match wins.

The table is data (`RULES`: a regular expression over the demangled, lower-cased kernel name →
a category); `classify_names` turns it into one polars `when/then` chain evaluated once per
distinct name, and `op_category` adds the kinds that need no name (memcpy/memset → `memory`,
a CUDA graph traced whole → `graph`). Order matters where names overlap: an inductor pointwise
fusion is named after the ops it fused (`triton_poi_fused_…_bmm_…`), a top-k kernel contains
`gather`, cuBLAS's gemv helpers contain `reduce`, a random-normal kernel contains `norm`, so the
narrower rule comes first. docs/categories.md lists the rules and their reasons.
"""

from __future__ import annotations

from typing import Any, Final, Literal, cast, get_args

import polars as pl

# Bump when a rule changes what a name classifies to (results stored with another version
# were classified by other rules).
RULES_VERSION: Final = 1

Category = Literal[
    "gemm",
    "attention",
    "norm",
    "elementwise",
    "reduction",
    "memory",
    "communication",
    "other",
    "graph",
]
CATEGORIES: Final[tuple[Category, ...]] = get_args(Category)
# Categories whose analytic FLOPs the model splits out (achieved FLOP/s while they run).
FLOP_CATEGORIES: Final[tuple[Category, ...]] = ("gemm", "attention")

# (regular expression over the lower-cased name, category), first match wins.
RULES: Final[tuple[tuple[str, Category], ...]] = (
    # collectives: NCCL/RCCL, vLLM/SGLang custom all-reduce, NVSHMEM and DeepEP all-to-all
    (
        r"nccl|rccl|cross_device_reduce|custom_?all_?reduce|allreduce|all_reduce|all_gather|"
        r"allgather|reduce_scatter|reducescatter|all_?to_?all|nvshmem|deep_?ep|one_shot_|two_shot_",
        "communication",
    ),
    # torch.compile (inductor) kernels say what they are in their prefix, whatever ops they fused
    (r"^triton_poi_", "elementwise"),
    (r"^triton_(red|per)_", "reduction"),
    (r"^triton_tem_.*mm", "gemm"),
    # our calibration sleep: no work, kept apart
    (r"spin_kernel", "other"),
    # the split-K reduction of a cuBLASLt GEMM belongs to its GEMM
    (r"splitkreduce", "gemm"),
    # grouped-GEMM set-up (pointer and shape arrays), not a GEMM
    (r"prepare_grouped_gemm_data", "memory"),
    # attention before GEMM: flash and fmha kernels are CUTLASS templates
    (
        r"flash_?attn|flash_fwd|flash_bwd|flashinfer|fmha|attention|sdpa|paged_?attn|"
        r"(^|[^a-z])mla([^a-z]|$)|batchprefill|batchdecode|batch_prefill|batch_decode|"
        r"merge_attn_states|merge_state|xformers|unified_attention|decode_attention|"
        r"extend_attention|prefill_attention|flash_fwd_splitkv",
        "attention",
    ),
    # resampling is pointwise (before the sampling rule below)
    (r"upsample|downsample|interpolat|grid_sample", "elementwise"),
    # routing, sampling and sorting: before memory, since top-k kernels gather
    (
        r"topk|top_k|toppk|top_p|sampl|argmax|argmin|softmax|sort|radix|bitonic|histogram|"
        r"moe_align|align_block_size|count_and_sort",
        "reduction",
    ),
    # random numbers: `normal_and_transform` is not a normalization
    (r"distribution_|normal_and_transform|uniform_and_transform|random_", "elementwise"),
    # MoE permutes and KV-cache writes move data
    (
        r"reshape_and_cache|kv_?cache|store_kvcache|set_kv_buffer|moe_permute|moe_unpermute|"
        r"permute_rows|expand_and_permute|finalize_moe|moe_sum",
        "memory",
    ),
    # fused-MoE and other GEMMs, gemv (cuBLAS dot and its block reduce), convolutions
    (
        r"gemm|gemv|nvjet|cublas|cutlass|xmma|wgmma|hmma|cijk_|matmul|_mm_|bmm|fused_moe|"
        r"moe_?gemm|grouped_mm|marlin|machete|dot_kernel|convolve|conv_?[123]d|fprop|dgrad|wgrad|"
        r"winograd|_gemv|deep_gemm|fp8_gemm|scaled_mm",
        "gemm",
    ),
    (
        r"rms_?norm|layer_?norm|group_?norm|batch_?norm|instance_?norm|norm_kernel|fused_add_rms",
        "norm",
    ),
    # casts are elementwise even when named copies
    (r"bfloat16_copy|float16_copy|half_copy|float8_copy|_to_copy", "elementwise"),
    (
        r"direct_copy|copy_kernel|copy_device|memcpy|memset|catarray|cat_array|concat|"
        r"index_elementwise|indexfunc|indexselect|index_select|index_put|write_indices|gather|"
        r"scatter|embedding|fillfunctor|fill_kernel|fill_reverse_indices|take_along|strided_copy|transpose_kernel",
        "memory",
    ),
    (r"reduc|cub::|device(reduce|scan|select|compact|segmented)|scan_|mean|cumsum", "reduction"),
    (
        r"elementwise|vectorized|unrolled|pointwise|functor|silu|gelu|relu|swiglu|act_and_mul|"
        r"rotary|rope|activation|upsample|interpolat|masked_fill|dropout|where|clamp|sigmoid|"
        r"tanh|exp|arange|quant",
        "elementwise",
    ),
)

NAMES_SCHEMA: Final = pl.Schema({"name_id": pl.Int32, "name": pl.String})
CATEGORY_DTYPE: Final = pl.Enum(list(CATEGORIES))


def category_expr(name: pl.Expr) -> pl.Expr:
    """The category of the kernel name `name` by the rule table (no match: `other`)."""
    lowered = name.str.to_lowercase()
    pattern, category = RULES[0]
    chain: Any = pl.when(lowered.str.contains(pattern)).then(pl.lit(category))
    for pattern, category in RULES[1:]:
        chain = chain.when(lowered.str.contains(pattern)).then(pl.lit(category))
    return cast(pl.Expr, chain.otherwise(pl.lit("other"))).cast(CATEGORY_DTYPE)


def classify_names(names: pl.DataFrame) -> pl.DataFrame:
    """`name_id, category` for the distinct names of `names` (`Trace.kernel_names()`)."""
    return names.select("name_id", category=category_expr(pl.col("name")))


def with_category(entries: pl.DataFrame, names: pl.DataFrame | None) -> pl.DataFrame:
    """`entries` (with `kind` and `name_id`) plus `category`: by kind for memcpy, memset and
    graph ops, else by the kernel's name (each distinct name classified once, then joined)."""
    if names is None:
        named = entries.with_columns(category=pl.lit("other", CATEGORY_DTYPE))
    else:
        ids = entries.select(pl.col("name_id").drop_nulls().unique())
        classes = classify_names(names.join(ids, on="name_id", how="semi"))
        named = entries.join(classes, on="name_id", how="left", maintain_order="left")
    kind = pl.col("kind").cast(pl.String)
    return named.with_columns(
        category=pl.when(kind == "graph")
        .then(pl.lit("graph", CATEGORY_DTYPE))
        .when(kind.is_in(["memcpy", "memset"]))
        .then(pl.lit("memory", CATEGORY_DTYPE))
        .otherwise(pl.col("category").fill_null(pl.lit("other", CATEGORY_DTYPE)))
    )
