#pragma once
// The per-row and per-element ops of a transformer block (RMSNorm, SwiGLU, GeGLU), a
// vector at a time on each ISA (elementwise_impl.h). Batched steps run them over
// every row of the step, where scalar code and libm's expf showed as a few
// percent of the step.
#include <cstdint>

#include "kernels/cpu/isa.h"

namespace nibble::kernels::cpu {

// y = x / rms(x) * weight for each of `rows` rows of `dim` values; x and y may alias.
using RmsNormKernel = void (*)(const float* x, std::int64_t rows, std::int64_t dim, const float* weight, float eps,
                               float* y);
// out = silu(gate) * up over n values; out may alias gate or up.
// out = gelu_tanh(gate) * up likewise (PyTorch's gelu(approximate="tanh"), Gemma's MLP).
using GatedKernel = void (*)(const float* gate, const float* up, std::int64_t n, float* out);

struct ElementwiseKernelTable {
  RmsNormKernel rms_norm;
  GatedKernel swiglu;
  GatedKernel geglu_tanh;
};

const ElementwiseKernelTable& elementwise_kernels_scalar();
const ElementwiseKernelTable& elementwise_kernels_avx2();
const ElementwiseKernelTable& elementwise_kernels_avx512();
const ElementwiseKernelTable& elementwise_kernel_table(Isa isa);

}  // namespace nibble::kernels::cpu
