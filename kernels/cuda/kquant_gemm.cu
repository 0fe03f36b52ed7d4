// The quantized GEMM over GGUF Q4_K / Q5_K / Q6_K super-blocks and Q5_0 / Q5_1
// blocks (kquant_layout.h): the kernel template of quant_gemm_kernel.cuh,
// instantiated for those formats.
#include "kernels/cuda/quant_gemm_kernel.cuh"

namespace nibble::kernels::cuda::detail {

void launch_kquant(const QuantGemmLaunch& launch) {
  switch (launch.w->dims.format) {
    case QuantFormat::Q4K:
      return launch_format<QuantFormat::Q4K>(launch);
    case QuantFormat::Q5K:
      return launch_format<QuantFormat::Q5K>(launch);
    case QuantFormat::Q6K:
      return launch_format<QuantFormat::Q6K>(launch);
    case QuantFormat::Q50:
      return launch_format<QuantFormat::Q50>(launch);
    case QuantFormat::Q51:
      return launch_format<QuantFormat::Q51>(launch);
    default:
      throw_cuda_error(cudaErrorInvalidValue, "launch_kquant: not a K-quant layout", __FILE__, __LINE__);
  }
}

int blocks_per_sm_kquant(QuantFormat format, int m_tiles) {
  switch (format) {
    case QuantFormat::Q4K:
      return format_blocks_per_sm<QuantFormat::Q4K>(m_tiles);
    case QuantFormat::Q5K:
      return format_blocks_per_sm<QuantFormat::Q5K>(m_tiles);
    case QuantFormat::Q6K:
      return format_blocks_per_sm<QuantFormat::Q6K>(m_tiles);
    case QuantFormat::Q50:
      return format_blocks_per_sm<QuantFormat::Q50>(m_tiles);
    case QuantFormat::Q51:
      return format_blocks_per_sm<QuantFormat::Q51>(m_tiles);
    default:
      throw_cuda_error(cudaErrorInvalidValue, "blocks_per_sm_kquant: not a K-quant layout", __FILE__, __LINE__);
  }
}

}  // namespace nibble::kernels::cuda::detail
