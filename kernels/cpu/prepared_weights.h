#pragma once
// The CPU backend's prepared linear weights: a view of dense weights, packed
// quantized tiles, 2:4-sparse quantized tiles, or CSR rows. Each knows how to run
// itself on the backend's thread pool.
#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "common/quantized_matrix.h"
#include "kernels/backend.h"
#include "kernels/cpu/int8_activations.h"
#include "kernels/cpu/isa.h"
#include "kernels/cpu/linear_kernels.h"
#include "kernels/cpu/thread_pool.h"

namespace nibble::kernels::cpu {

// Per-backend buffers the kernels reuse from call to call.
struct LinearRunContext {
  ThreadPool& pool;
  Isa isa;
  // Quantized layers round activations to int8 and use integer dot products
  // where the CPU has them (int8_activations.h).
  bool int8_activations;
  std::vector<std::vector<float>>& worker_scratch;  // one per pool thread
};

// Where one call's prepared input lives (reused from call to call): a grouped
// call needs one per linear layer, since all of them are prepared before any runs.
struct LinearInputs {
  std::vector<float> packed_input;             // x reordered to a layout's packed order, or zero-padded
  std::vector<float> group_sums;               // per row and quantization group
  std::vector<std::int8_t> activation_codes;   // int8 path: x rounded, per row
  std::vector<float> activation_scales;        // int8 path: per row and activation block
};

class CpuLinearWeights;

// One linear call with its input prepared: any range of its output units can be
// computed on any thread, in any order, with the same result for every output.
struct LinearCall {
  const CpuLinearWeights* weights = nullptr;
  PackedKernelArgs args;            // the prepared x (or its int8 codes), rows, bias, y; not scratch
  BlockActivations int8_blocks;     // block layouts on int8 activations
  const Int8KernelTable* int8 = nullptr;  // non-null: the int8 kernels run
  Isa isa = Isa::Scalar;
  std::int64_t units = 0;           // output columns, or tiles of kLanes columns
  std::int64_t alignment = 1;       // a range of units starts at a multiple of this
  std::int64_t scratch_floats = 0;  // per thread
  double work = 0;                  // weight bytes read times passes of kMaxRowBlock rows: orders grouped runs
};

// How run_calls cut call `call`: tasks [first_task, the next split's first_task),
// per_task units each, task_work the work of one.
struct CallSplit {
  std::int64_t first_task = 0;
  std::int64_t per_task = 0;
  std::size_t call = 0;
  double task_work = 0;
};

class CpuLinearWeights : public LinearWeights {
 public:
  // Phase one: x prepared for this layout's kernels (reordered, padded, rounded
  // to int8, summed per group) into `inputs`, which must outlive the call.
  virtual LinearCall prepare(LinearRunContext& context, LinearInputs& inputs, const float* x, std::int64_t rows,
                             const float* bias, float* y) const = 0;
  // Phase two: output units [begin, end) of `call`; `scratch` holds call.scratch_floats.
  virtual void run_units(const LinearCall& call, std::int64_t begin, std::int64_t end, float* scratch) const = 0;
  // Both phases, the units split across the pool.
  void run(LinearRunContext& context, LinearInputs& inputs, std::vector<CallSplit>& splits, const float* x,
           std::int64_t rows, const float* bias, float* y) const;
};

// Runs the units of every prepared call in one parallel_for: each call cut into
// runs as it would be alone, the runs of all calls claimed largest first, so
// several small layers (a mixture's experts over their few rows each) fill the
// threads together with one fork-join instead of one each, and no thread idles
// at one layer's end while another finishes it. Each output is computed by the
// same kernel on the same inputs as alone, so results equal running the calls
// one by one.
void run_calls(LinearRunContext& context, std::span<const LinearCall> calls, std::vector<CallSplit>& splits);

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
