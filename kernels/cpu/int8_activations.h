#pragma once
// Quantized weights times int8-rounded activations, on integer dot products
// (AVX-512 VNNI). One vpdpbusd multiplies four weight codes by four activation
// codes in each of 16 lanes: four times the multiply-adds of a float32 FMA per
// instruction. Batched decode and prefill are compute-bound on a few cores, so
// this is what makes a step of 16 sequences cost far less than 16 steps of one.
//
// The trade: each activation row is rounded to int8 in blocks of at most
// kActivationBlock packed positions (never crossing a quantization group), one
// float scale per block, the way llama.cpp's CPU backend pairs Q4/Q8 weights with
// Q8 activations. The result is the exact dot product of the dequantized weights
// with those rounded activations. Every row is rounded on its own and summed in
// the same order whatever the batch, so a row's output does not depend on the
// rows beside it (greedy decoding alone and batched stays identical).
//
// Activation codes are kept in the layout's packed order, with each unit's codes
// reordered by bit plane: a weight word shifted right by Bits*j and masked holds,
// in byte i of each lane, code i*(8/Bits)+j, so plane j's four activation codes
// sit together and one 32-bit broadcast feeds one vpdpbusd.
#include <cstdint>

#include "kernels/cpu/isa.h"
#include "kernels/cpu/linear_kernels.h"
#include "kernels/cpu/quant_layout.h"

namespace nibble::kernels::cpu {

constexpr std::int64_t kActivationBlock = 32;

// Activation blocks in one row for layout `w`.
std::int64_t activation_blocks(const QuantLayout& w);

// x: [rows][w.packed_cols()] in packed order. Writes codes [rows][packed_cols],
// scales [rows][activation_blocks(w)] and the per-group sums of the rounded
// values, [rows][w.groups]. A block holding NaN or infinity gets a NaN scale, so
// the output is NaN as the float path's would be, never a silent finite number.
using ActivationQuantizer = void (*)(const QuantLayout& w, const float* x, std::int64_t rows, std::int8_t* codes,
                                     float* scales, float* group_sums);

// Block-quantized weights (BlockLayout, GGUF's Q5_0 ... IQ4_XS) on int8 activations.
// Each row is rounded in blocks of kActivationBlock inputs (one float scale each)
// and laid out twice:
// - the codes in input order, padded with zeros to block_activation_ldx(cols)
//   (whole vectors of kBlockStep inputs), which the single-row register path
//   multiplies as the weights decode;
// - the codes in sub-block tiles, padded to block_activation_tile_ldx(cols): every
//   256 inputs as four vectors whose lane b holds inputs 16b + 4v .. 16b + 4v + 3 of
//   vector v, so four vpdpbusd leave in lane b the exact integer dot product of the
//   16-input sub-block b; the batched kernels read these (block_vnni.cpp says why).
// Both paths take, per 16 inputs, the block's scale and the scale times the 16
// codes' sum, which the weights' offsets multiply (see unpack in
// common/block_decode_impl.h: weight = step * code - offset).
constexpr std::int64_t kBlockStep = 64;
constexpr std::int64_t kBlockTile = 256;
constexpr std::int64_t kBlockSubBlock = 16;
constexpr std::int64_t block_activation_ldx(std::int64_t cols) { return (cols + kBlockStep - 1) / kBlockStep * kBlockStep; }
constexpr std::int64_t block_activation_tile_ldx(std::int64_t cols) {
  return (cols + kBlockTile - 1) / kBlockTile * kBlockTile;
}

struct BlockActivations {
  const std::int8_t* codes = nullptr;       // [rows][ldx]
  const std::int8_t* tile_codes = nullptr;  // [rows][tile_ldx]
  const float* sub_scales = nullptr;       // [rows][tile_ldx / 16]
  const float* sub_sums = nullptr;         // [rows][tile_ldx / 16]
  std::int64_t ldx = 0;
  std::int64_t tile_ldx = 0;
  std::int64_t rows = 0;
};

// Where a quantizer writes rows [0, rows) of both layouts (sizes as above).
struct BlockActivationOutput {
  std::int8_t* codes;
  std::int8_t* tile_codes;
  float* sub_scales;
  float* sub_sums;
};

// x: [rows][cols]. A block holding NaN or infinity gets NaN scales (the row's
// output is NaN).
using BlockActivationQuantizer = void (*)(const float* x, std::int64_t rows, std::int64_t cols,
                                          const BlockActivationOutput& out);
// y for output rows [n_begin, n_end) of every activation row; `scratch` holds
// block_int8_scratch_floats(rows).
using BlockInt8Kernel = void (*)(const BlockLayout& w, const BlockActivations& x, std::int64_t n_begin,
                                 std::int64_t n_end, const float* bias, float* y, std::int64_t ldy, float* scratch);
// Output rows unpacked together (their codes, steps and offsets stay in L1 while
// every activation row runs against them).
constexpr std::int64_t kBlockInt8OutputRows = 8;
constexpr std::int64_t block_int8_scratch_floats(std::int64_t rows) { return kBlockInt8OutputRows * rows; }

struct Int8KernelTable {
  ActivationQuantizer quantize[3];  // [bits 2, 4, 8]
  QuantKernel quant[3][3][2];       // [bits 2, 4, 8][ScaleSlot][zero point, min]
  BlockActivationQuantizer quantize_blocks;
  BlockInt8Kernel block[kBlockFormatCount];  // [BlockFormat]
};

// The int8 kernels for `isa`, or null where the CPU has no AVX-512 VNNI.
const Int8KernelTable* int8_kernel_table(Isa isa);
// Whether `w` can run on them (2-, 4- and 8-bit layouts; 3-bit codes straddle bytes).
bool int8_layout_supported(const QuantLayout& w);
int int8_bits_slot(int bits);
QuantKernel int8_quant_kernel(const Int8KernelTable& table, const QuantLayout& w);

const Int8KernelTable& int8_kernels_avx512_vnni();
// Fills the block entries (block_vnni.cpp); called while building that table.
void fill_block_int8_kernels(Int8KernelTable& table);
// Whether BlockLayout `w` runs on int8 activations where the CPU has them.
bool int8_block_supported(const BlockLayout& w);

}  // namespace nibble::kernels::cpu
