#pragma once
// FP8 e4m3 linear layers on the GPU, first version: the codes stay one byte per
// weight in device memory and are widened inside the kernel (CUDA's own e4m3
// conversion, exact in fp16 and so in fp32), multiplied by their row's group
// scale, and accumulated in fp32 against fp32 activations. One warp per output
// row and up to kFp8Rows activation rows per pass, so a decode step reads each
// weight once; long prefills re-read the weights every kFp8Rows rows (a tensor-core
// tile kernel is the follow-up, see docs/cuda.md).
#include <cuda_runtime_api.h>

#include <cstdint>

namespace nibble::kernels::cuda {

constexpr int kFp8Rows = 8;

struct Fp8WeightsView {
  const std::uint8_t* codes = nullptr;   // [rows][cols] e4m3
  const float* scales = nullptr;         // [rows][groups]
  const std::int32_t* col_group = nullptr;  // [cols]: the scale group of each input column
  std::int64_t rows = 0;
  std::int64_t cols = 0;
  std::int64_t groups = 0;
};

// y[m][n] = sum_k x[m][k] * scale[n][group(k)] * e4m3(codes[n][k]) (+ bias[n]);
// x [m, cols] and y [m, rows] float32, device memory; enqueued on `stream`.
void fp8_linear(const Fp8WeightsView& w, const float* x, std::int64_t m, const float* bias, float* y,
                cudaStream_t stream);

}  // namespace nibble::kernels::cuda
