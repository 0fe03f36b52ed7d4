#pragma once
// Linear-layer micro-kernels, one table per ISA: dense (f32/f16/bf16 weights),
// packed quantized, 2:4-sparse quantized and CSR-sparse. Each computes a range of
// output columns (or tiles of kLanes columns) for all rows of x; callers split
// that range across threads.
#include <cstdint>

#include "common/dtype.h"
#include "common/quantized_matrix.h"
#include "kernels/cpu/isa.h"
#include "kernels/cpu/quant_layout.h"

namespace nibble::kernels::cpu {

// y[r * ldy + n] = sum_k x[r * k + kk] * w[n * k + kk] (+ bias[n])
using LinearKernel = void (*)(const float* x, std::int64_t rows, std::int64_t k, const void* w, std::int64_t n_begin,
                              std::int64_t n_end, const float* bias, float* y, std::int64_t ldy);

// Inputs of the packed kernels, prepared once per call by the caller.
struct PackedKernelArgs {
  const float* x = nullptr;           // [rows][ldx], in the layout's packed order, zero in padding
  std::int64_t ldx = 0;
  const float* group_sums = nullptr;  // [rows][groups]: sum of x over each group (QuantLayout only)
  std::int64_t rows = 0;
  const float* bias = nullptr;        // [layout rows] or null
  float* y = nullptr;
  std::int64_t ldy = 0;
  float* scratch = nullptr;           // this thread's, packed_scratch_floats(rows) floats
  // The int8 kernels read these instead of x (see int8_activations.h); group_sums
  // then sums the int8-rounded inputs.
  const std::int8_t* x_codes = nullptr;  // [rows][ldx]
  const float* x_scales = nullptr;       // [rows][x_blocks]
  std::int64_t x_blocks = 0;
};

// Rows of x processed together so each unpacked weight register is reused across
// them; more rows than this go through an unpacked tile in a scratch buffer.
constexpr std::int64_t kMaxRowBlock = 4;
// Codes unpacked into scratch at a time for batches: 128 x kLanes floats = 16 KiB, L1-resident.
constexpr std::int64_t kUnpackChunk = 128;
constexpr std::int64_t packed_scratch_floats(std::int64_t rows) { return 2 * rows * kLanes + kUnpackChunk * kLanes; }

using QuantKernel = void (*)(const QuantLayout& w, const PackedKernelArgs& args, std::int64_t tile_begin,
                             std::int64_t tile_end);
using Sparse24Kernel = void (*)(const Sparse24Layout& w, const PackedKernelArgs& args, std::int64_t tile_begin,
                                std::int64_t tile_end);

// Compressed sparse rows with 16-bit column indices (inputs <= 65536).
struct CsrMatrix {
  std::int64_t rows = 0;
  std::int64_t cols = 0;
  DType dtype = DType::F32;          // of the values: F32, F16 or BF16, as the source had
  std::vector<std::int64_t> row_begin;  // rows + 1
  std::vector<std::uint16_t> columns;
  AlignedBytes values;
};
using CsrKernel = void (*)(const CsrMatrix& w, const float* x, std::int64_t rows, std::int64_t n_begin,
                           std::int64_t n_end, const float* bias, float* y, std::int64_t ldy);

// Block-quantized rows (BlockLayout): y for output rows [n_begin, n_end) of all
// rows of x ([rows][cols], input order). `scratch` holds block_scratch_floats(rows).
using BlockKernel = void (*)(const BlockLayout& w, const float* x, std::int64_t rows, std::int64_t n_begin,
                             std::int64_t n_end, const float* bias, float* y, std::int64_t ldy, float* scratch);
// Two accumulators of up to 16 floats per activation row.
constexpr std::int64_t block_scratch_floats(std::int64_t rows) { return rows * 2 * 16; }

// FP8 rows (Fp8Layout): y for output rows [n_begin, n_end) of all rows of x
// ([rows][ldx], ldx >= cols rounded up to kFp8Padding, zero past cols).
// `scratch` holds block_scratch_floats(rows).
using Fp8Kernel = void (*)(const Fp8Layout& w, const float* x, std::int64_t ldx, std::int64_t rows,
                           std::int64_t n_begin, std::int64_t n_end, const float* bias, float* y, std::int64_t ldy,
                           float* scratch);
constexpr std::int64_t kFp8Padding = 32;

// Index of a scale/value dtype in the tables below.
enum ScaleSlot { kScaleF32 = 0, kScaleF16 = 1, kScaleBF16 = 2 };
int scale_slot(DType dtype);  // throws for dtypes without kernels

struct LinearKernelTable {
  LinearKernel f32;
  LinearKernel f16;
  LinearKernel bf16;
  QuantKernel quant[4][3][2];  // [bits 2,3,4,8][ScaleSlot][zero point, min]
  Sparse24Kernel sparse24[3];  // [ScaleSlot]
  CsrKernel csr[3];            // [value ScaleSlot]
  BlockKernel block[kBlockFormatCount];  // [BlockFormat]
  Fp8Kernel fp8;
};

const LinearKernelTable& linear_kernels_scalar();
const LinearKernelTable& linear_kernels_avx2();
const LinearKernelTable& linear_kernels_avx512();
const LinearKernelTable& linear_kernel_table(Isa isa);

// The kernel for weights of `dtype` on `isa`; throws for unsupported dtypes.
LinearKernel linear_kernel(DType dtype, Isa isa);
QuantKernel quant_kernel(const QuantLayout& layout, Isa isa);
Sparse24Kernel sparse24_kernel(const Sparse24Layout& layout, Isa isa);
CsrKernel csr_kernel(const CsrMatrix& matrix, Isa isa);
BlockKernel block_kernel(const BlockLayout& layout, Isa isa);

}  // namespace nibble::kernels::cpu
