#include "kernels/cuda/cublas_linear.h"

#include <algorithm>

#include "common/error.h"
#include "kernels/cuda/cuda_check.h"

namespace nibble::kernels::cuda {
namespace {

cudaDataType_t cuda_type(DType dtype) {
  switch (dtype) {
    case DType::F16:
      return CUDA_R_16F;
    case DType::BF16:
      return CUDA_R_16BF;
    case DType::F32:
      return CUDA_R_32F;
    default:
      fail("cuBLASLt linear: {} weights are not supported (F16, BF16, F32)", dtype_name(dtype));
  }
}

// The largest power of two (up to 256) that divides the address: what cuBLASLt
// may assume about the pointer.
int alignment(const void* pointer) {
  const auto address = reinterpret_cast<std::uintptr_t>(pointer);
  if (address == 0) return 256;
  return static_cast<int>(std::min<std::uintptr_t>(256, address & (~address + 1)));
}

struct Preference {
  cublasLtMatmulPreference_t handle = nullptr;
  Preference() = default;
  Preference(const Preference&) = delete;
  Preference& operator=(const Preference&) = delete;
  ~Preference() {
    if (handle != nullptr) static_cast<void>(cublasLtMatmulPreferenceDestroy(handle));
  }
};

}  // namespace

CublasLtLinear::CublasLtLinear(std::size_t workspace_bytes) : workspace_(workspace_bytes) {
  NIBBLE_CUBLAS_CHECK(cublasLtCreate(&handle_));
}

CublasLtLinear::~CublasLtLinear() {
  for (auto& [key, plan] : plans_) destroy(plan);
  if (handle_ != nullptr) static_cast<void>(cublasLtDestroy(handle_));
}

void CublasLtLinear::destroy(Plan& plan) {
  if (plan.y != nullptr) static_cast<void>(cublasLtMatrixLayoutDestroy(plan.y));
  if (plan.x != nullptr) static_cast<void>(cublasLtMatrixLayoutDestroy(plan.x));
  if (plan.w != nullptr) static_cast<void>(cublasLtMatrixLayoutDestroy(plan.w));
  if (plan.operation != nullptr) static_cast<void>(cublasLtMatmulDescDestroy(plan.operation));
  plan = Plan{};
}

const CublasLtLinear::Plan& CublasLtLinear::plan(const Key& key) {
  if (const auto found = plans_.find(key); found != plans_.end()) return found->second;
  const auto [m, n, k, ldy, dtype_index, align_w, align_x, align_y] = key;
  const cudaDataType_t type = cuda_type(static_cast<DType>(dtype_index));
  Plan p;
  try {
    // Column-major view: y^T (n x m, ld ldy) = op(W) (n x k) * op(X) (k x m), where
    // W row-major [n, k] is k x n column-major (transposed by the op), X row-major
    // [m, k] is k x m column-major.
    NIBBLE_CUBLAS_CHECK(cublasLtMatmulDescCreate(&p.operation, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    const cublasOperation_t transpose = CUBLAS_OP_T;
    const cublasOperation_t plain = CUBLAS_OP_N;
    NIBBLE_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.operation, CUBLASLT_MATMUL_DESC_TRANSA, &transpose,
                                                       sizeof(transpose)));
    NIBBLE_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.operation, CUBLASLT_MATMUL_DESC_TRANSB, &plain, sizeof(plain)));
    NIBBLE_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p.w, type, static_cast<std::uint64_t>(k), static_cast<std::uint64_t>(n), k));
    NIBBLE_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p.x, type, static_cast<std::uint64_t>(k), static_cast<std::uint64_t>(m), k));
    NIBBLE_CUBLAS_CHECK(
        cublasLtMatrixLayoutCreate(&p.y, CUDA_R_32F, static_cast<std::uint64_t>(n), static_cast<std::uint64_t>(m), ldy));

    Preference preference;
    NIBBLE_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&preference.handle));
    const std::uint64_t workspace_bytes = workspace_.bytes();
    NIBBLE_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(preference.handle, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                                             &workspace_bytes, sizeof(workspace_bytes)));
    const std::uint32_t aligns[4] = {static_cast<std::uint32_t>(align_w), static_cast<std::uint32_t>(align_x),
                                     static_cast<std::uint32_t>(align_y), static_cast<std::uint32_t>(align_y)};
    const cublasLtMatmulPreferenceAttributes_t align_attributes[4] = {
        CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
        CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES};
    for (int i = 0; i < 4; ++i) {
      NIBBLE_CUBLAS_CHECK(
          cublasLtMatmulPreferenceSetAttribute(preference.handle, align_attributes[i], &aligns[i], sizeof(aligns[i])));
    }
    cublasLtMatmulHeuristicResult_t result{};
    int found = 0;
    NIBBLE_CUBLAS_CHECK(
        cublasLtMatmulAlgoGetHeuristic(handle_, p.operation, p.w, p.x, p.y, p.y, preference.handle, 1, &result, &found));
    if (found == 0) fail("cuBLASLt found no algorithm for [{}, {}] x [{}, {}] ({})", m, k, n, k, dtype_name(static_cast<DType>(dtype_index)));
    p.algo = result.algo;
  } catch (...) {
    destroy(p);
    throw;
  }
  return plans_.emplace(key, p).first->second;
}

void CublasLtLinear::run(const void* w, DType dtype, std::int64_t n, std::int64_t k, const void* x, std::int64_t m,
                         float* y, std::int64_t ldy, cudaStream_t stream) {
  if (m <= 0 || n <= 0) return;
  if (k <= 0 || ldy < n) fail("cuBLASLt linear: bad shape [{}, {}] x [{}, {}] (ldy {})", m, k, n, k, ldy);
  const Plan& p = plan(Key{m, n, k, ldy, static_cast<int>(dtype), alignment(w), alignment(x), alignment(y)});
  const float alpha = 1.0f;
  const float beta = 0.0f;
  NIBBLE_CUBLAS_CHECK(cublasLtMatmul(handle_, p.operation, &alpha, w, p.w, x, p.x, &beta, y, p.y, y, p.y, &p.algo,
                                     workspace_.data(), workspace_.bytes(), stream));
}

}  // namespace nibble::kernels::cuda
