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
        r"allgather|reduce_scatter|reducescatter|all_?to_?all|nvshmem|deep_?ep|one_shot_|two_shot_|"
        r"intranode::|internode|internode_ll::",
        "communication",
    ),
    # torch.compile (inductor) kernels say what they are in their prefix, whatever ops they fused
    (r"^triton_poi_", "elementwise"),
    (r"^triton_(red|per)_", "reduction"),
    (r"^triton_tem_.*attention", "attention"),
    (r"^triton_tem_", "gemm"),
    # no tensor work: our calibration sleep, launch set-up of a following kernel, a size assert
    (
        r"spin_kernel|prepare_grouped_gemm_data|computestrides|computeoffsetskernel|"
        r"prepare_varlen_num_blocks|masked_scatter_size_check",
        "other",
    ),
    # the split-K reduction of a cuBLASLt GEMM and its epilogue belong to the GEMM
    (r"splitkreduce|epilogue::impl::globalkernel", "gemm"),
    # normalizations (before attention and RoPE: FlashInfer's and TensorRT-LLM's norm kernels)
    (
        r"rms_?norm|layer_?norm|group_?norm|batch_?norm|instance_?norm|norm_kernel|::norm::|"
        r"qknorm|rowwisemoments|batchnorm",
        "norm",
    ),
    # RoPE and activations of serving libraries (before attention and the KV-cache writes)
    (
        r"rotary|biasrope|_rope|rope_|::activation::|act_and_mul|gdn_gating|silu_and_mul",
        "elementwise",
    ),
    # sampling, routing and sorting: before memory, since top-k kernels gather
    (
        r"topk|top_k|top_p|toppk|sampling|softmax|argmax|argmin|sort|radix|bitonic|histogram|"
        r"moe_align|align_block_size|count_and_sort|routing|gating|expertmap|moe_sum|"
        r"_pool|pooling",
        "reduction",
    ),
    # resampling is pointwise
    (r"upsample|downsample|interpolat|grid_sample", "elementwise"),
    # fused attention and the kernels that merge its split-KV partial results
    (
        r"flash_?attn|flash_fwd|flash_bwd|fmha|attention|sdpa|paged_?attn|(^|[^a-z])mla([^a-z]|$)|"
        r"batchprefill|batchdecode|singleprefill|singledecode|batch_prefill|batch_decode|"
        r"mergestates|merge_states|merge_attn_states|xformers|(^|[^a-z])mha([^a-z]|$)|"
        r"^reduce_segments|cudnn::fusion::lean_reduction",
        "attention",
    ),
    # random numbers: `normal_and_transform` is not a normalization
    (r"distribution_|normal_and_transform|uniform_and_transform|random_|dropout", "elementwise"),
    # KV-cache writes and MoE permutes move data
    (
        r"reshape_and_cache|kv_?cache|store_kvcache|set_kv_buffer|moe_permute|moe_unpermute|"
        r"permute_rows|expandinputrows|expand_and_permute|finalize_moe",
        "memory",
    ),
    # fused-MoE and other GEMMs, gemv (cuBLAS dot and its block reduce), convolutions (cuDNN's
    # FFT convolution: transform, complex GEMM, inverse transform)
    (
        r"gemm|gemv|nvjet|cublas|cutlass|xmma|wgmma|hmma|cijk_|matmul|_mm_|bmm|fused_moe|"
        r"grouped_mm|marlin|machete|dot_kernel|convolve|conv_?[123]d|fprop|dgrad|wgrad|"
        r"winograd|scaled_mm|scudnn|fft2d|gcgemm",
        "gemm",
    ),
    # casts are elementwise even when named copies; fills and computed indices too
    (
        r"bfloat16_copy|float16_copy|half_copy|float8_copy|_to_copy|fillfunctor|fill_kernel|"
        r"fill_reverse_indices|write_indices|masked_fill",
        "elementwise",
    ),
    (
        r"direct_copy|copy_kernel|copy_device|memcpy|memset|catarray|cat_array|concat|"
        r"index_elementwise|indexfunc|indexselect|index_select|index_put|index_copy|gather|"
        r"scatter|embedding|take_along|strided_copy|transpose|nchwtonhwc|nhwctonchw",
        "memory",
    ),
    (r"reduc|cub::|device(reduce|scan|select|compact|segmented)|scan|mean|cumsum", "reduction"),
    (
        r"elementwise|vectorized|unrolled|pointwise|functor|silu|gelu|relu|swiglu|activation|"
        r"where|clamp|sigmoid|tanh|exp|arange|quant",
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
