#pragma once
// Host side of the CUDA quantized GEMM: QuantizedMatrix -> the tile layout of
// kernels/cuda/fragment_layout.h, done once at load, plus decoders that read the
// layout back exactly as the device does (tests on the CPU, dequantize_row).
//
// Columns are reordered ("packed order") so every quantization group is a run of
// whole 16-column tiles (32 for 2:4): GPTQ act-order columns are sorted by group,
// ragged groups padded with columns that read input 0. `column_source` maps packed
// columns back to input columns; the activation kernel gathers x through it (the
// Marlin/ExLlama approach to act-order), so the GEMM itself never sees a
// permutation. Rows are padded to whole 128-row thread blocks and columns to whole
// 64-column chunks, so the kernel's loads need no bounds checks.
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "common/quantized_matrix.h"
#include "kernels/cuda/fragment_layout.h"

namespace nibble::kernels::cuda {

using layout::QuantFormat;

struct QuantLayoutDims {
  QuantFormat format = QuantFormat::Dense4;
  std::int64_t rows = 0;    // N: output features
  std::int64_t cols = 0;    // K: input features of the checkpoint
  std::int64_t n_pad = 0;   // rows rounded up to a whole thread block (kBlockN)
  std::int64_t k_pad = 0;   // packed columns: a whole number of 64-column chunks
  std::int64_t groups = 0;
  int source_bits = 4;      // the checkpoint's bits (2/3-bit codes run as 4-bit)
  bool min_offset = false;  // GGUF Q4_1 style minimums instead of zero points

  std::int64_t n_tiles() const { return n_pad / layout::kTileN; }
  std::int64_t n_blocks() const { return n_pad / layout::kBlockN; }
  std::int64_t k_tiles() const { return k_pad / layout::kTileK; }
  std::int64_t k_chunks() const { return k_pad / layout::kChunkK; }
  std::int64_t blob_words() const { return layout::blob_words(format); }
};

struct RepackedQuant {
  QuantLayoutDims dims;
  std::vector<std::uint32_t> weights;        // [n_tiles][k_chunks][blob_words]
  std::vector<std::uint32_t> scales;         // [groups][n_pad] layout::scale_record (fp16 scale, fp16 zero or minimum)
  std::vector<std::int32_t> tile_group;      // [k_tiles] the group of every 16 packed columns
  std::vector<std::int32_t> column_source;   // [k_pad] input column of each packed column, -1 = padding
  std::vector<std::uint32_t> sub_scales;     // [k_chunks][n_pad] K-quants only (kquant_layout.h), else empty
  bool identity_columns = true;  // column_source is j for j < cols, then -1: no gather needed
  bool scales_exact = true;      // every scale and minimum was exactly representable in fp16
  std::string grouping;          // "g128", "per-row", "40 groups": for describe()

  // Device bytes of the layout (column_source counted only when a gather is needed).
  std::uint64_t bytes() const;
  // "int4 g128 dense mma", "int4 2:4 g128 mma.sp", "int8 act-order g128 dense mma" ...
  std::string describe() const;
};

enum class SparsePolicy : std::uint8_t {
  Auto,   // the 2:4 kernel when the matrix is 2:4 and eligible (sparse_ineligibility)
  Dense,  // always a dense layout
};

// Throws nibble::Error (naming the matrix) for unsupported bits or scales that do
// not fit fp16. Block-quantized matrices go to repack_kquant.
RepackedQuant repack_quantized(const QuantizedMatrix& matrix, SparsePolicy sparse = SparsePolicy::Auto);

// GGUF Q4_K / Q5_K / Q6_K (and Q5_0 / Q5_1) blocks -> the K-quant layout (kquant_layout.h;
// kquant_repack.cpp). Throws nibble::Error naming the matrix and the format for
// other block formats, and for weights that do not fit fp16 (the tensor cores'
// input): those run on the CPU backend.
RepackedQuant repack_kquant(const QuantizedMatrix& matrix);
// The layout format of a block format, if the CUDA backend has a kernel for it.
std::optional<QuantFormat> kquant_format_of(BlockFormat format);

// Why a matrix cannot run on the 2:4 sparse kernel; empty when it can.
std::string sparse_ineligibility(const QuantizedMatrix& matrix);

// --- Host mirrors of the device decode (the CPU tests check these against the
// QuantizedMatrix; the kernels run the same fragment_layout.h arithmetic). ---

// The code of packed column j of row n as the kernel reads it; for 2:4 layouts a
// pruned position reads as the value the kernel multiplies: code 0 and `kept` false.
struct DecodedCode {
  std::uint8_t code = 0;
  bool kept = true;
};
DecodedCode decode_code(QuantFormat format, std::span<const std::uint32_t> tile_words, int row_in_tile,
                        std::int64_t packed_col);
// The fp16 bits of the weight the kernel multiplies for a code in a row, computed
// with the device's sequence of fp16 operations (magic-number dequant, then s*t+c).
std::uint16_t decode_weight_f16(QuantFormat format, std::uint8_t code, std::uint32_t scale_record, bool min_offset,
                                int row_in_tile);

// K-quants: the fp32 weight of packed column j of row n (bit for bit the CPU
// decoder's; the GEMM multiplies it rounded to fp16, dequantize_rows returns it as is).
float repacked_kquant_weight(const RepackedQuant& layout, std::int64_t n, std::int64_t packed_col);

// Whole-layout conveniences over the two above.
DecodedCode repacked_code(const RepackedQuant& layout, std::int64_t n, std::int64_t packed_col);
std::uint32_t repacked_scale_record(const RepackedQuant& layout, std::int64_t n, std::int64_t packed_col);
// The weight as fp16 bits (0 for pruned 2:4 positions and padding rows): what the mma multiplies.
std::uint16_t repacked_weight_f16(const RepackedQuant& layout, std::int64_t n, std::int64_t packed_col);
// The 4-bit metadata field (idx0 | idx1 << 2) of 4-column chunk `chunk4` (packed
// column / 4) of row n in a 2:4 layout.
int repacked_sparse_meta(const RepackedQuant& layout, std::int64_t n, std::int64_t chunk4);

// Row n dequantized into `out` (cols values, input order) from one tile's words
// and that row's scale records [groups] (and, for K-quants, its sub-scale records
// [k_chunks]): what LinearWeights::dequantize_row and dequantize_rows return (the
// fp16 weights of the mma; for K-quants the exact fp32 weights before that rounding).
void decode_row(const QuantLayoutDims& dims, std::span<const std::uint32_t> tile_words,
                std::span<const std::uint32_t> row_records, std::span<const std::int32_t> tile_group,
                std::span<const std::int32_t> column_source, int row_in_tile, std::span<float> out,
                std::span<const std::uint32_t> row_sub_records = {});

// IEEE fp16 arithmetic on bit patterns, rounded to nearest even, as the GPU's
// sub.f16x2 / fma.rn.f16x2 do (each result computed exactly in double, then rounded once).
namespace f16emu {
std::uint16_t from_double(double value);
double to_double(std::uint16_t bits);
std::uint16_t sub(std::uint16_t a, std::uint16_t b);
std::uint16_t fma(std::uint16_t a, std::uint16_t b, std::uint16_t c);
}  // namespace f16emu

}  // namespace nibble::kernels::cuda
