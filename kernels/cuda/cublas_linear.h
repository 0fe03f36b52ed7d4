#pragma once
// Dense layers on cuBLASLt: y[m][n] = sum_k x[m][k] w[n][k] with w the nn.Linear
// [n, k] matrix in F16, BF16 or F32, x in the same type, y float32 (fp32
// accumulation; F32 uses plain fp32, not TF32). One handle, one workspace, and a
// cache of matmul descriptors and heuristic picks per shape and pointer alignment.
#include <cublasLt.h>
#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
#include <map>
#include <tuple>

#include "common/dtype.h"
#include "kernels/cuda/device_buffer.h"

namespace nibble::kernels::cuda {

class CublasLtLinear {
 public:
  explicit CublasLtLinear(std::size_t workspace_bytes = std::size_t{32} << 20);
  ~CublasLtLinear();
  CublasLtLinear(const CublasLtLinear&) = delete;
  CublasLtLinear& operator=(const CublasLtLinear&) = delete;

  // w: [n, k] row-major, x: [m, k] row-major (both `dtype`, device), y: m rows of
  // ldy floats (device). Enqueued on `stream`.
  void run(const void* w, DType dtype, std::int64_t n, std::int64_t k, const void* x, std::int64_t m, float* y,
           std::int64_t ldy, cudaStream_t stream);

 private:
  struct Plan {
    cublasLtMatmulDesc_t operation = nullptr;
    cublasLtMatrixLayout_t w = nullptr;
    cublasLtMatrixLayout_t x = nullptr;
    cublasLtMatrixLayout_t y = nullptr;
    cublasLtMatmulAlgo_t algo{};
  };
  // (m, n, k, ldy, dtype, alignment of w, x, y)
  using Key = std::tuple<std::int64_t, std::int64_t, std::int64_t, std::int64_t, int, int, int, int>;
  const Plan& plan(const Key& key);
  static void destroy(Plan& plan);

  cublasLtHandle_t handle_ = nullptr;
  DeviceBuffer<std::byte> workspace_;
  std::map<Key, Plan> plans_;
};

}  // namespace nibble::kernels::cuda
