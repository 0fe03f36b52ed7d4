// 2:4-sparse INT4 GEMM on the sparse tensor cores (mma.sp.m16n8k32): half the
// codes and 2-bit positions per kept pair stream from memory (3 bits per weight),
// dequantized in registers like the dense kernel. The kernel template is in
// quant_gemm_kernel.cuh; this file holds its sparse instantiations.
#include "kernels/cuda/quant_gemm_kernel.cuh"

namespace nibble::kernels::cuda::detail {

void launch_sparse4(const QuantGemmLaunch& launch) { launch_format<QuantFormat::Sparse4>(launch); }
int blocks_per_sm_sparse4(int m_tiles) { return format_blocks_per_sm<QuantFormat::Sparse4>(m_tiles); }

}  // namespace nibble::kernels::cuda::detail
