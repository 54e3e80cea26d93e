"""The rule table: first match wins, kinds that need no name, each distinct name once."""

from __future__ import annotations

import polars as pl
import pytest

from llm_perf_opt.kernels.categories import CATEGORIES, RULES, classify_names, with_category
from llm_perf_opt.kernels.shares import category_shares
from llm_perf_opt.trace import open_trace
from tests.helpers.paths import TRACES
from tests.helpers.perop import kernel_entries, top_kernels


def _classify(*names: str) -> list[str]:
    frame = pl.DataFrame(
        {"name_id": range(len(names)), "name": names}, schema_overrides={"name_id": pl.Int32}
    )
    return [str(c) for c in classify_names(frame)["category"]]


@pytest.mark.parametrize(
    ("name", "category"),
    [
        # inductor names a fusion after what it fused: the prefix decides
        ("triton_poi_fused__scaled_dot_product_cudnn_attention__to_copy_bmm_cat_0", "elementwise"),
        ("triton_red_fused__to_copy_embedding_mean_mul_pow_rsqrt_0", "reduction"),
        ("triton_per_fused_softmax_3", "reduction"),
        ("triton_tem_fused_mm_4", "gemm"),
        # the split-K reduction of a cuBLASLt GEMM is the GEMM's
        ("void cublasLt::splitKreduce_kernel<32, 16, int, float, float>(cublasLt::Params)", "gemm"),
        # flash kernels are CUTLASS templates: attention comes before GEMM
        (
            "void pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits<64, cutlass::bfloat16_t>",
            "attention",
        ),
        # top-k gathers, random normal is not a norm, cuBLAS gemv reduces
        ("void at::native::sbtopk::gatherTopK<float, unsigned int, 1, false>(T)", "reduction"),
        (
            "void at::native::distribution_elementwise_grid_stride_kernel<normal_and_transform>",
            "elementwise",
        ),
        ("void reduce_1Block_kernel<float, 128, 7, cublasGemvTensorStridedBatched<float>>", "gemm"),
        # a copy inside the elementwise template is memory, a cast is elementwise
        (
            "void at::native::elementwise_kernel<128, 4, gpu_kernel_impl<direct_copy_kernel_cuda>",
            "memory",
        ),
        (
            "void at::native::vectorized_elementwise_kernel<8, bfloat16_copy_kernel_cuda>",
            "elementwise",
        ),
        (
            "ncclDevKernel_AllReduce_Sum_bf16_RING_LL(ncclDevKernelArgsStorage<4096>)",
            "communication",
        ),
        ("void vllm::cross_device_reduce_1stage<__nv_bfloat16, 8>(...)", "communication"),
        ("void vllm::reshape_and_cache_flash_kernel<__nv_bfloat16>(...)", "memory"),
        ("void vllm::rms_norm_kernel<c10::BFloat16>(...)", "norm"),
        ("void vllm::act_and_mul_kernel<c10::BFloat16, silu_kernel>(...)", "elementwise"),
        ("fused_moe_kernel", "gemm"),
        ("at::cuda::<unnamed>::spin_kernel(long)", "other"),
        ("some_kernel_nobody_named", "other"),
    ],
)
def test_rule_priority(name: str, category: str) -> None:
    assert _classify(name) == [category]


def test_first_match_wins_in_table_order() -> None:
    """A name two rules match takes the earlier rule's category: the table's order is the
    priority (checked on names built from pairs of rules' own example words)."""
    both = "triton_poi_fused_bmm_attention_nccl_0"  # communication's rule is first
    assert _classify(both) == [RULES[0][1]]
    assert _classify("triton_poi_fused_bmm_0") == ["elementwise"]


def test_memcpy_memset_and_graph_rows_by_kind() -> None:
    """Copies and memsets are memory, graphs traced whole are `graph`, whatever their name id
    (null for a graph); kernels take their name's category."""
    names = pl.DataFrame(
        {"name_id": [1, 2], "name": ["nvjet_sm90_tst_64x8", "ncclKernel"]},
        schema={"name_id": pl.Int32, "name": pl.String},
    )
    entries = pl.DataFrame(
        {
            "kind": ["kernel", "kernel", "memcpy", "memset", "graph"],
            "name_id": [1, 2, None, None, None],
            "count": [3, 1, 2, 5, 4],
            "total_ns": [300, 10, 20, 50, 400],
        },
        schema_overrides={"name_id": pl.Int32},
    )
    got = with_category(entries, names)["category"].cast(pl.String).to_list()
    assert got == ["gemm", "communication", "memory", "memory", "graph"]
    shares = category_shares(entries, names)
    assert [(s.category, s.total_ns, s.n_kernels) for s in shares] == [
        ("gemm", 300, 3), ("memory", 70, 7), ("communication", 10, 1), ("graph", 400, 4),
    ]  # fmt: skip
    assert sum(s.total_ns for s in shares) == int(entries["total_ns"].sum())
    assert [s.category for s in shares] == sorted(
        (s.category for s in shares), key=CATEGORIES.index
    )


def test_each_distinct_name_classified_once_and_joined_back() -> None:
    """The categories of a real trace's top kernels equal a classification of their names."""
    trace = open_trace(TRACES / "llama_1b_compile.sqlite.xz")
    ops = trace.gpu_ops().with_columns(range_id=pl.lit(1, pl.Int64))
    names = trace.kernel_names()
    top = top_kernels(ops, [1], names, 30)
    expected = dict(
        zip(names["name"], classify_names(names)["category"].cast(pl.String), strict=True)
    )
    assert [k.category for k in top] == [expected[k.name] for k in top]
    shares = category_shares(kernel_entries(ops, [1]), names)
    kernels = ops.filter(pl.col("kind").is_in(["kernel", "graph"]))
    assert sum(s.total_ns for s in shares) == int((kernels["end_ns"] - kernels["start_ns"]).sum())
