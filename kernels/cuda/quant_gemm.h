#pragma once
// The quantized GEMM on the GPU: y[M, N] = x[M, K] W^T (+ bias) with W in the
// repacked tile layout (quant_repack.h), dequantized in registers right before
// the tensor-core mma (W4A16, W8A16, 2:4 sparse W4A16 on mma.sp).
//
// Inputs are fp16 "prepared activations": x in packed column order, k_pad columns
// per row with zeros in padding columns (prepare_activations writes them from
// float32 or fp16 input, gathering act-order columns). Outputs are float32.
//
// One kernel template serves every M: a thread block is 8 warps x 16 weight rows
// (128 rows) and kMTiles x 8 tokens (1, 2, 4, 8 tiles: 8..64 tokens); M > 64 runs
// several token blocks. Weights, activations and scale records stream through a
// 4-stage cp.async pipeline in shared memory. When the grid would leave SMs idle
// (decode: few blocks), K is split across blocks; each writes a float32 partial
// and the last block of each tile to finish (a counter) sums the partials in
// split order (deterministic) and writes y.
#include <cuda_runtime_api.h>

#include <cstdint>

#include "kernels/cuda/quant_repack.h"

namespace nibble::kernels::cuda {

// Device pointers of a repacked matrix.
struct QuantWeightsView {
  QuantLayoutDims dims;
  const std::uint32_t* weights = nullptr;
  const std::uint32_t* scales = nullptr;
  const std::int32_t* tile_group = nullptr;
  const std::int32_t* column_source = nullptr;  // null when the columns need no gather
  const std::uint32_t* sub_scales = nullptr;    // K-quants only (kquant_layout.h)
};

struct QuantGemmPlan {
  int m_tiles = 1;               // token tiles of 8 per block: 1, 2, 4 or 8
  std::int64_t m_blocks = 1;     // blocks along M
  std::int64_t n_blocks = 1;     // blocks along N (128 rows each)
  std::int64_t splits = 1;       // blocks along K
  std::int64_t chunks_per_split = 1;
  std::int64_t workspace_floats = 0;  // partial sums needed (0 without a split)
  std::int64_t counters = 0;          // zero-initialized ints needed (0 without a split)
};

// Token tiles of 8 per block for M tokens: 1, 2, 4 (M <= 32) or 8.
int quant_gemm_m_tiles(std::int64_t m);

// Picks the block shape and the K split for M tokens. `blocks_per_sm` is the
// kernel's occupancy (quant_gemm_blocks_per_sm); the split is capped so its
// partials fit `workspace_floats_available`.
QuantGemmPlan plan_quant_gemm(std::int64_t m, const QuantLayoutDims& dims, int sm_count, int blocks_per_sm,
                              std::int64_t workspace_floats_available);

// Resident thread blocks per SM of the kernel for `format` and `m_tiles` (cached;
// needs a current device).
int quant_gemm_blocks_per_sm(QuantFormat format, int m_tiles);

// Runs the GEMM. x: fp16 bits, rows of `ldx` >= k_pad halves (16-byte aligned,
// ldx a multiple of 8); y: float32 rows of `ldy`; bias: N floats or null.
// `workspace` (plan.workspace_floats) and `counters` (plan.counters ints, zero
// before the first use; the kernel leaves them zero) are needed only with a split.
void quant_gemm(const QuantGemmPlan& plan, const QuantWeightsView& w, const std::uint16_t* x, std::int64_t ldx,
                std::int64_t m, float* y, std::int64_t ldy, const float* bias, float* workspace, int* counters,
                cudaStream_t stream);

// out[r][j] = fp16(x[r][column_source[j]]) (0 for -1), or x[r][j] for j < k and 0
// after when column_source is null; r < rows, j < k_pad; out rows of k_pad halves.
// Float inputs beyond the fp16 range saturate to +-65504 (NaN stays NaN).
void prepare_activations(const float* x, std::int64_t rows, std::int64_t k, std::int64_t ldx,
                         const std::int32_t* column_source, std::int64_t k_pad, std::uint16_t* out,
                         cudaStream_t stream);
void prepare_activations_f16(const std::uint16_t* x, std::int64_t rows, std::int64_t k, std::int64_t ldx,
                             const std::int32_t* column_source, std::int64_t k_pad, std::uint16_t* out,
                             cudaStream_t stream);

// out[r][col] = float(W[ids[r]][col]) in input order, exactly the fp16 weights the
// GEMM multiplies (embedding lookups from a quantized table, tests); for K-quants the
// fp32 weights before that rounding, bit for bit the CPU decoder's. ids on the device.
void dequantize_rows(const QuantWeightsView& w, const std::int32_t* ids, std::int64_t count, float* out,
                     cudaStream_t stream);

namespace detail {
// Per-format launchers (w4a16_gemm.cu: Dense4, Dense8; sparse24_gemm.cu: Sparse4;
// kquant_gemm.cu: Q4K, Q5K, Q6K).
struct QuantGemmLaunch {
  const QuantGemmPlan* plan;
  const QuantWeightsView* w;
  const std::uint16_t* x;
  std::int64_t ldx;
  std::int64_t m;
  float* y;
  std::int64_t ldy;
  const float* bias;
  float* workspace;
  int* counters;
  cudaStream_t stream;
};
void launch_dense4(const QuantGemmLaunch& launch);
void launch_dense8(const QuantGemmLaunch& launch);
void launch_sparse4(const QuantGemmLaunch& launch);
void launch_kquant(const QuantGemmLaunch& launch);
int blocks_per_sm_dense4(int m_tiles);
int blocks_per_sm_dense8(int m_tiles);
int blocks_per_sm_sparse4(int m_tiles);
int blocks_per_sm_kquant(QuantFormat format, int m_tiles);
}  // namespace detail

}  // namespace nibble::kernels::cuda
