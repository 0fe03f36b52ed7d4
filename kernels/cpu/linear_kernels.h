#pragma once
// Dense linear-layer micro-kernels, one table per ISA. Each computes output
// columns [n_begin, n_end) for all `rows` of x; callers split n across threads.
#include <cstdint>

#include "common/dtype.h"
#include "kernels/cpu/isa.h"

namespace nibble::kernels::cpu {

// y[r * ldy + n] = sum_k x[r * k + kk] * w[n * k + kk] (+ bias[n])
using LinearKernel = void (*)(const float* x, std::int64_t rows, std::int64_t k, const void* w, std::int64_t n_begin,
                              std::int64_t n_end, const float* bias, float* y, std::int64_t ldy);

struct LinearKernelTable {
  LinearKernel f32;
  LinearKernel f16;
  LinearKernel bf16;
};

const LinearKernelTable& linear_kernels_scalar();
const LinearKernelTable& linear_kernels_avx2();
const LinearKernelTable& linear_kernels_avx512();

// The kernel for weights of `dtype` on `isa`; throws for unsupported dtypes.
LinearKernel linear_kernel(DType dtype, Isa isa);

}  // namespace nibble::kernels::cpu
