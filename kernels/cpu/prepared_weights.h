#pragma once
// The CPU backend's prepared linear weights: a view of dense weights, packed
// quantized tiles, 2:4-sparse quantized tiles, or CSR rows. Each knows how to run
// itself on the backend's thread pool.
#include <cstdint>
#include <memory>
#include <vector>

#include "common/quantized_matrix.h"
#include "kernels/backend.h"
#include "kernels/cpu/isa.h"
#include "kernels/cpu/thread_pool.h"

namespace nibble::kernels::cpu {

// Per-backend buffers the kernels reuse from call to call.
struct LinearRunContext {
  ThreadPool& pool;
  Isa isa;
  // Quantized layers round activations to int8 and use integer dot products
  // where the CPU has them (int8_activations.h).
  bool int8_activations;
  std::vector<float>& packed_input;                 // x reordered to a layout's packed order
  std::vector<float>& group_sums;                   // per row and quantization group
  std::vector<std::int8_t>& activation_codes;       // int8 path: x rounded, per row
  std::vector<float>& activation_scales;            // int8 path: per row and activation block
  std::vector<std::vector<float>>& worker_scratch;  // one per pool thread
};

class CpuLinearWeights : public LinearWeights {
 public:
  virtual void run(LinearRunContext& context, const float* x, std::int64_t rows, const float* bias,
                   float* y) const = 0;
};

std::unique_ptr<CpuLinearWeights> make_dense_weights(const Matrix& dense);
std::unique_ptr<CpuLinearWeights> make_csr_weights(const Matrix& dense);
// Packs 2:4-sparse 4-bit matrices into the sparse layout, everything else into QuantLayout.
std::unique_ptr<CpuLinearWeights> make_quantized_weights(const QuantizedMatrix& quantized);

// Fraction of nonzero elements (estimated from a sample for large matrices).
double matrix_density(const Matrix& dense);
// Below this density the CSR kernel beats the dense one on this backend
// (measured by bench/kernels_bench.cpp, BM_SparseVsDense).
double csr_density_threshold(DType dtype);

}  // namespace nibble::kernels::cpu
