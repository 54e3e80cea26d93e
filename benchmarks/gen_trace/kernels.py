"""Kernel functions of a DeepSeek-OCR run on the H100, as `gen_trace` writes them.

Names are those PyTorch 2.11 / cuBLASLt / CUB / cuDNN kernels carry in real captures (demangled as
nsys stores them); launch shapes are typical, not measured. Only names and per-kind constancy matter
to the analysis: the same function always has the same name ids and launch shape.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class KernelKind:
    """A kernel function: its names and launch shape, constant over its launches."""

    demangled: str
    short: str
    driver_launch: bool = False  # cuLaunchKernelEx (cuBLASLt nvjet GEMMs) vs cudaLaunchKernel
    registers: int = 32
    grid: tuple[int, int, int] = (1024, 1, 1)
    block: tuple[int, int, int] = (128, 1, 1)
    static_smem: int = 0
    dynamic_smem: int = 0


def _elementwise(functor: str, arity: int = 3) -> str:
    return (
        f"void at::native::vectorized_elementwise_kernel<(int)4, {functor}, "
        f"std::array<char *, (unsigned long){arity}>>(int, T2, T3)"
    )


_CUB = "at_cuda_detail::cub::detail"
_THRUST = "thrust::THRUST_300001_SM_750_800_860_900_1000_1200_NS"
KERNEL_KINDS: dict[str, KernelKind] = {
    "pow": KernelKind(
        _elementwise(
            "at::native::<unnamed>::pow_tensor_scalar_kernel_impl<c10::BFloat16, float>"
            "(at::TensorIteratorBase &, T2)::[lambda(c10::BFloat16) (instance 2)]",
            2,
        ),
        "vectorized_elementwise_kernel",
    ),
    "mean": KernelKind(
        "void at::native::reduce_kernel<(int)512, (int)1, at::native::ReduceOp<c10::BFloat16, "
        "at::native::MeanOps<float, float, float, c10::BFloat16>, unsigned int, c10::BFloat16, "
        "(int)4, (int)4>>(T3)",
        "reduce_kernel",
        registers=40,
        block=(32, 16, 1),
    ),
    "mul": KernelKind(
        _elementwise(
            "at::native::BinaryFunctor<c10::BFloat16, c10::BFloat16, c10::BFloat16, "
            "at::native::binary_internal::MulFunctor<float>>"
        ),
        "vectorized_elementwise_kernel",
    ),
    "add": KernelKind(
        _elementwise("at::native::CUDAFunctor_add<c10::BFloat16>"),
        "vectorized_elementwise_kernel",
    ),
    "neg": KernelKind(
        _elementwise(
            "at::native::neg_kernel_cuda(at::TensorIteratorBase &)::[lambda() (instance 2)]"
            "::operator ()() const::[lambda(c10::BFloat16) (instance 1)]",
            2,
        ),
        "vectorized_elementwise_kernel",
    ),
    "cat": KernelKind(
        "void at::native::<unnamed>::CatArrayBatchedCopy<at::native::<unnamed>::OpaqueType"
        "<(unsigned int)2>, unsigned int, (int)4, (int)64, (int)64>(T1 *, "
        "at::native::<unnamed>::CatArrInputTensorMetadata<T1, T2, T4, T5>, "
        "at::native::<unnamed>::TensorSizeStride<T2, (unsigned int)4>, int, T2)",
        "CatArrayBatchedCopy",
        registers=30,
        grid=(264, 2, 1),
        block=(512, 1, 1),
    ),
    "gemm_small": KernelKind(
        "nvjet_sm90_tst_64x8_64x16_4x1_v_bz_NNT",
        "nvjet_sm90_tst_64x8_64x16_4x1_v_bz_NNT",
        driver_launch=True,
        registers=168,
        grid=(4, 4, 1),
        block=(384, 1, 1),
        dynamic_smem=164_308,
    ),
    "gemm_mid": KernelKind(
        "nvjet_sm90_tst_128x64_64x8_1x2_h_bz_NNT",
        "nvjet_sm90_tst_128x64_64x8_1x2_h_bz_NNT",
        driver_launch=True,
        registers=168,
        grid=(2, 66, 1),
        block=(384, 1, 1),
        dynamic_smem=213_188,
    ),
    "gemm_large": KernelKind(
        "nvjet_sm90_tst_256x128_64x4_1x2_h_bz_coopA_NNT",
        "nvjet_sm90_tst_256x128_64x4_1x2_h_bz_coopA_NNT",
        driver_launch=True,
        registers=168,
        grid=(2, 66, 1),
        block=(384, 1, 1),
        dynamic_smem=213_188,
    ),
    "attn_decode": KernelKind(
        "void pytorch_flash::flash_fwd_splitkv_kernel<pytorch_flash::Flash_fwd_kernel_traits"
        "<(int)128, (int)64, (int)128, (int)4, (bool)0, (bool)0, cutlass::bfloat16_t, "
        "pytorch_flash::Flash_kernel_traits<(int)128, (int)64, (int)128, (int)4, "
        "cutlass::bfloat16_t>>, (bool)0, (bool)0, (bool)0, (bool)0, (bool)1, (bool)0, (bool)0, "
        "(bool)0>(pytorch_flash::Flash_fwd_params)",
        "flash_fwd_splitkv_kernel",
        registers=255,
        grid=(1, 10, 8),
        dynamic_smem=49_152,
    ),
    "attn_prefill": KernelKind(
        "void pytorch_flash::flash_fwd_kernel<pytorch_flash::Flash_fwd_kernel_traits<(int)128, "
        "(int)128, (int)64, (int)4, (bool)0, (bool)0, cutlass::bfloat16_t, "
        "pytorch_flash::Flash_kernel_traits<(int)128, (int)128, (int)64, (int)4, "
        "cutlass::bfloat16_t>>, (bool)0, (bool)1, (bool)0, (bool)0, (bool)1, (bool)1, (bool)0, "
        "(bool)0>(pytorch_flash::Flash_fwd_params)",
        "flash_fwd_kernel",
        registers=255,
        grid=(3, 1, 10),
        dynamic_smem=65_536,
    ),
    "attn_vision": KernelKind(
        "fmha_cutlassF_bf16_aligned_64x64_rf_sm80(PyTorchMemEffAttention::AttentionKernel"
        "<cutlass::bfloat16_t, cutlass::arch::Sm80, (bool)1, (int)64, (int)64, (int)64, (bool)1, "
        "(bool)1>::Params)",
        "fmha_cutlassF_bf16_aligned_64x64_rf_sm80",
        registers=128,
        grid=(64, 12, 1),
        dynamic_smem=81_920,
    ),
    "softmax": KernelKind(
        "void at::native::<unnamed>::cunn_SoftMaxForward<(int)4, float, float, float, "
        "at::native::<unnamed>::SoftMaxForwardEpilogue>(T4 *, const T2 *, int)",
        "cunn_SoftMaxForward",
        registers=38,
        block=(1024, 1, 1),
    ),
    "topk": KernelKind(
        "void at::native::sbtopk::gatherTopK<float, unsigned int, (int)2, (bool)0>"
        "(at::cuda::detail::TensorInfo<const T1, T2>, T2, T2, bool, T2, T2, "
        "at::cuda::detail::TensorInfo<T1, T2>, T2, at::cuda::detail::TensorInfo<long, T2>, T2, "
        "T1 *)",
        "gatherTopK",
        registers=36,
        block=(1024, 1, 1),
    ),
    "nz_reduce": KernelKind(
        f"void {_CUB}::reduce::DeviceReduceKernel<{_CUB}::reduce::policy_hub<int, unsigned long "
        "long, cuda::std::__4::plus<void>>::Policy1000, "
        f"{_THRUST}::transform_iterator<at::native::<unnamed>::NonZeroOp<bool>, const bool *, "
        f"{_THRUST}::use_default, {_THRUST}::use_default>, unsigned long long, "
        "cuda::std::__4::plus<void>, int, cuda::std::__4::__identity>(T2, T5 *, T3, "
        "at_cuda_detail::cub::GridEvenShare<T3>, T4, T6)",
        "DeviceReduceKernel",
        registers=30,
        grid=(256, 1, 1),
        block=(256, 1, 1),
        static_smem=44,
    ),
    "nz_reduce_tile": KernelKind(
        f"void {_CUB}::reduce::DeviceReduceSingleTileKernel<{_CUB}::reduce::policy_hub<int, "
        "unsigned long long, cuda::std::__4::plus<void>>::Policy1000, int *, int *, int, "
        "cuda::std::__4::plus<void>, int, int, cuda::std::__4::__identity>(T2, T3, T4, T5, T6, T8)",
        "DeviceReduceSingleTileKernel",
        grid=(1, 1, 1),
        block=(256, 1, 1),
        static_smem=44,
    ),
    "nz_compact_init": KernelKind(
        f"void {_CUB}::scan::DeviceCompactInitKernel<at_cuda_detail::cub::ScanTileState<int, "
        "(bool)1>, int *>(T1, int, T2)",
        "DeviceCompactInitKernel",
        registers=16,
        grid=(2, 1, 1),
    ),
    "nz_select": KernelKind(
        f"void {_CUB}::select::DeviceSelectSweepKernel<{_CUB}::select::policy_hub<long, bool, int, "
        "(bool)0, (at_cuda_detail::cub::SelectImpl)0>::Policy1000, "
        f"{_THRUST}::counting_iterator<long, {_THRUST}::use_default, {_THRUST}::use_default, "
        f"{_THRUST}::use_default>, {_THRUST}::transform_iterator<at::native::<unnamed>::NonZeroOp"
        f"<bool>, const bool *, {_THRUST}::use_default, {_THRUST}::use_default>, long *, int *, "
        "at_cuda_detail::cub::ScanTileState<int, (bool)1>, at_cuda_detail::cub::NullType, "
        f"at_cuda_detail::cub::NullType, int, {_CUB}::select::streaming_context_t<long, (bool)1>, "
        "(at_cuda_detail::cub::SelectImpl)0>(T2, T3, T4, T5, T6, T7, T8, T9, int, T10, "
        f"{_CUB}::vsmem_t)",
        "DeviceSelectSweepKernel",
        registers=40,
        grid=(249, 1, 1),
        block=(384, 1, 1),
        static_smem=33_792,
    ),
    "one_hot": KernelKind(
        "void at::native::_scatter_gather_elementwise_kernel<(int)128, (int)4, "
        "at::native::_cuda_scatter_gather_internal_kernel<(bool)1, long>::operator ()<"
        "at::native::TensorAssign>(at::TensorIterator &, long, long, long, const "
        "at::native::TensorAssign &)::[lambda(int) (instance 1)]>(int, T3)",
        "_scatter_gather_elementwise_kernel",
        registers=28,
    ),
    "expert_sum": KernelKind(
        "void at::native::reduce_kernel<(int)512, (int)1, at::native::ReduceOp<long, "
        "at::native::func_wrapper_t<long, at::native::sum_functor<long, long, long>::operator ()"
        "(at::TensorIterator &)::[lambda(long, long) (instance 1)]>, unsigned int, long, (int)4, "
        "(int)4>>(T3)",
        "reduce_kernel",
        registers=40,
        block=(32, 16, 1),
    ),
    "greater": KernelKind(
        _elementwise(
            "at::native::<unnamed>::CompareFunctor<long>",
        ),
        "vectorized_elementwise_kernel",
    ),
    "index": KernelKind(
        "void at::native::index_elementwise_kernel<(int)128, (int)4, "
        "at::native::gpu_index_kernel<at::native::index_kernel_impl<at::native::OpaqueType<(int)1>>"
        "(at::TensorIteratorBase &, c10::ArrayRef<long>, c10::ArrayRef<long>)::[lambda(char *, "
        "const char *, long) (instance 1)]>(at::TensorIteratorBase &, c10::ArrayRef<long>, "
        "c10::ArrayRef<long>, const T1 &, bool)::[lambda(int) (instance 1)]>(long, T3)",
        "index_elementwise_kernel",
        registers=30,
    ),
    "index_select": KernelKind(
        "void at::native::<unnamed>::indexSelectLargeIndex<c10::BFloat16, long, unsigned int, "
        "(int)2, (int)2, (int)-2, (bool)1>(at::cuda::detail::TensorInfo<T1, T3>, "
        "at::cuda::detail::TensorInfo<const T1, T3>, at::cuda::detail::TensorInfo<const T2, T3>, "
        "int, int, T3, T3, long)",
        "indexSelectLargeIndex",
        registers=26,
        grid=(264, 1, 1),
    ),
    "silu": KernelKind(
        _elementwise(
            "at::native::<unnamed>::silu_kernel(at::TensorIteratorBase &)::[lambda() "
            "(instance 1)]::operator ()() const::[lambda(c10::BFloat16) (instance 1)]",
            2,
        ),
        "vectorized_elementwise_kernel",
    ),
    "index_add": KernelKind(
        "void at::native::<unnamed>::indexFuncLargeIndex<c10::BFloat16, long, unsigned int, "
        "(int)2, (int)2, (int)-2, (bool)1, at::native::<unnamed>::ReduceAdd>"
        "(at::cuda::detail::TensorInfo<T1, T3>, at::cuda::detail::TensorInfo<const T1, T3>, "
        "at::cuda::detail::TensorInfo<const T2, T3>, int, int, T3, T3, long, T8, T1)",
        "indexFuncLargeIndex",
        registers=30,
        grid=(264, 1, 1),
    ),
    "argmax": KernelKind(
        "void at::native::reduce_kernel<(int)512, (int)1, at::native::ReduceOp<float, "
        "at::native::ArgMaxOps<float>, unsigned int, long, (int)4, (int)4>>(T3)",
        "reduce_kernel",
        registers=40,
        block=(32, 16, 1),
    ),
    "fill": KernelKind(
        _elementwise("at::native::FillFunctor<long>", 1),
        "vectorized_elementwise_kernel",
        registers=16,
    ),
    "copy": KernelKind(
        "void at::native::unrolled_elementwise_kernel<at::native::direct_copy_kernel_cuda"
        "(at::TensorIteratorBase &)::[lambda() (instance 3)]::operator ()() const::[lambda() "
        "(instance 12)]::operator ()() const::[lambda(c10::BFloat16) (instance 1)], "
        "std::array<char *, (unsigned long)2>, (int)4, TrivialOffsetCalculator<(int)1, unsigned "
        "int>, TrivialOffsetCalculator<(int)1, unsigned int>, at::native::memory::LoadWithCast"
        "<(int)1>, at::native::memory::StoreWithCast<(int)1>>(int, T1, T2, T3, T4, T5, T6)",
        "unrolled_elementwise_kernel",
        registers=30,
    ),
    "layernorm": KernelKind(
        "void at::native::<unnamed>::vectorized_layer_norm_kernel<c10::BFloat16, float, (bool)0>"
        "(int, T2, const T1 *, const T1 *, const T1 *, T2 *, T2 *, T1 *)",
        "vectorized_layer_norm_kernel",
        registers=40,
        grid=(4096, 1, 1),
    ),
    "gelu": KernelKind(
        _elementwise(
            "at::native::GeluCUDAKernelImpl(at::TensorIteratorBase &, at::native::GeluType)::"
            "[lambda() (instance 2)]::operator ()() const::[lambda(c10::BFloat16) (instance 1)]",
            2,
        ),
        "vectorized_elementwise_kernel",
    ),
    "nchw2nhwc": KernelKind(
        "void cudnn::ops::nchwToNhwcKernel<__nv_bfloat16, __nv_bfloat16, float, (bool)0, (bool)1, "
        "(cudnnKernelDataType_t)0>(cudnn::ops::nchwToNhwcParams_t<T3>, const T1 *, T2 *)",
        "nchwToNhwcKernel",
        registers=28,
        grid=(2048, 1, 1),
        block=(256, 1, 1),
    ),
    "conv": KernelKind(
        "sm90_xmma_fprop_implicit_gemm_bf16bf16_bf16f32_f32_nhwckrsc_nhwc_tilesize128x128x64_"
        "warpgroupsize1x1x1_execute_segment_k_off_kernel__5x_cudnn",
        "sm90_xmma_fprop_implicit_gemm_bf16bf16_bf16f32_f32_nhwckrsc_nhwc_tilesize128x128x64_"
        "warpgroupsize1x1x1_execute_segment_k_off_kernel__5x_cudnn",
        registers=168,
        grid=(132, 1, 1),
        block=(384, 1, 1),
        dynamic_smem=197_632,
    ),
}
