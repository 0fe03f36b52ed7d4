#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/fp8_linear.h"

namespace nibble::kernels::cuda {
namespace {

constexpr int kWarp = 32;
constexpr int kWarpsPerBlock = 8;

__device__ float widen_e4m3(std::uint8_t code) {
  const __half_raw half = __nv_cvt_fp8_to_halfraw(static_cast<__nv_fp8_storage_t>(code), __NV_E4M3);
  return __half2float(__half(half));
}

__device__ float warp_sum(float value) {
  for (int offset = kWarp / 2; offset > 0; offset /= 2) value += __shfl_xor_sync(0xffffffffu, value, offset);
  return value;
}

// blockIdx.x: kWarpsPerBlock output rows; blockIdx.y: kFp8Rows activation rows.
__global__ void __launch_bounds__(kWarp* kWarpsPerBlock)
    fp8_linear_kernel(Fp8WeightsView w, const float* x, std::int64_t m, const float* bias, float* y) {
  const std::int64_t n = std::int64_t{blockIdx.x} * kWarpsPerBlock + threadIdx.x / kWarp;
  const int lane = static_cast<int>(threadIdx.x % kWarp);
  if (n >= w.rows) return;
  const std::int64_t r0 = std::int64_t{blockIdx.y} * kFp8Rows;
  const int count = static_cast<int>(m - r0 < kFp8Rows ? m - r0 : kFp8Rows);
  const std::uint8_t* codes = w.codes + n * w.cols;
  const float* scales = w.scales + n * w.groups;
  float acc[kFp8Rows] = {};
  for (std::int64_t k = lane; k < w.cols; k += kWarp) {
    const float weight = widen_e4m3(codes[k]) * scales[w.col_group[k]];
#pragma unroll
    for (int r = 0; r < kFp8Rows; ++r) {
      if (r < count) acc[r] = fmaf(x[(r0 + r) * w.cols + k], weight, acc[r]);
    }
  }
#pragma unroll
  for (int r = 0; r < kFp8Rows; ++r) {
    const float total = warp_sum(acc[r]);
    if (lane == 0 && r < count) y[(r0 + r) * w.rows + n] = total + (bias != nullptr ? bias[n] : 0.0f);
  }
}

}  // namespace

void fp8_linear(const Fp8WeightsView& w, const float* x, std::int64_t m, const float* bias, float* y,
                cudaStream_t stream) {
  if (m <= 0 || w.rows <= 0) return;
  const dim3 grid(static_cast<unsigned>((w.rows + kWarpsPerBlock - 1) / kWarpsPerBlock),
                  static_cast<unsigned>((m + kFp8Rows - 1) / kFp8Rows));
  fp8_linear_kernel<<<grid, kWarp * kWarpsPerBlock, 0, stream>>>(w, x, m, bias, y);
  NIBBLE_CUDA_CHECK_LAUNCH(stream, "fp8_linear_kernel");
}

}  // namespace nibble::kernels::cuda
