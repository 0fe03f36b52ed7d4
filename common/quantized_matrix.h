#pragma once
// A quantized (and possibly 2:4-pruned) weight matrix in one format-neutral,
// unpacked form. Every checkpoint reader (GPTQ, AWQ, compressed-tensors, GGUF
// blocks) produces it and every backend packs it into its own kernel layout, so
// no reader knows a kernel layout and no kernel knows a file format. It lives only
// while one layer is being loaded, so it favours plain indexing over size.
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "common/block_format.h"
#include "common/dtype.h"

namespace nibble {

struct QuantizedMatrix {
  // Dequantized value of code q in row n, group g:
  //   ZeroPoint: scales[n][g] * (q - zeros[n][g])   (GPTQ, AWQ, compressed-tensors, GGUF Q4_0/Q8_0)
  //   Min:       scales[n][g] * q + mins[n][g]      (GGUF Q4_1)
  enum class Offset : std::uint8_t { ZeroPoint, Min };

  std::string name;         // module name, for messages ("model.layers.0.mlp.up_proj")
  std::int64_t rows = 0;    // output features (N)
  std::int64_t cols = 0;    // input features (K)
  int bits = 4;             // 2, 3, 4 or 8; codes are unsigned, in [0, 2^bits)
  std::int64_t groups = 1;  // quantization groups along the input dimension
  // group_of_col[k]: the group input column k belongs to. Monotone for plain
  // grouping (k / group_size); any order for GPTQ act-order (g_idx).
  std::vector<std::int32_t> group_of_col;
  std::vector<std::uint8_t> codes;  // [rows][cols]
  Offset offset = Offset::ZeroPoint;
  std::vector<float> scales;        // [rows][groups]
  std::vector<std::uint8_t> zeros;  // [rows][groups], ZeroPoint only (may exceed 2^bits - 1: GPTQ v1 stores zero - 1)
  std::vector<float> mins;          // [rows][groups], Min only
  // What a code is. U8: the unsigned integer codes above, dequantized with their
  // offset. F8_E4M3: an FP8 e4m3 value (common/fp8.h); the weight is then
  //   scales[n][g] * e4m3(q), with bits 8, no offsets (zeros and mins empty)
  // and contiguous groups: DeepSeek-V3's 128x128 block scales become one scale per
  // row and 128-column group (a block's scale repeated over its rows), so FP8
  // slices, stacks and shards like every other unpacked matrix.
  DType code_dtype = DType::U8;
  // The precision the file stored scales (and mins) in. The floats above are
  // exact copies, so a backend may store them back at this precision losslessly.
  DType scale_dtype = DType::F16;
  // Every aligned run of 4 input columns holds at most 2 nonzero weights in each
  // row (2:4 structured sparsity), as the checkpoint declared and the reader checked.
  bool sparse_2_4 = false;
  // Set for block-quantized weights (GGUF K-quants, IQ4, ternary, Q5_0/Q5_1): the
  // rows' blocks are then kept exactly as the file has them in `blocks` (each row
  // cols / elements blocks, rows one after another) and the unpacked fields above
  // (bits, groups, codes, scales, offsets) stay empty. Backends decode the blocks
  // inside their kernels; nothing is widened.
  std::optional<BlockFormat> block_format;
  std::vector<std::byte> blocks;
  // Bytes the source tensors took in the file, for the resident-memory budget.
  std::uint64_t stored_bytes = 0;

  std::int64_t group(std::int64_t col) const { return group_of_col[static_cast<std::size_t>(col)]; }
  // Whether every aligned run of 4 columns of every row has at most 2 codes that differ
  // from their zero point (ZeroPoint offset, cols a multiple of 4).
  bool follows_2_4() const;
  // The dequantized weight (row n, input column k), for references and tests.
  float value(std::int64_t n, std::int64_t k) const;
  // Row n dequantized into cols floats (a block decoded once, not once per value).
  void dequantize_row(std::int64_t n, float* out) const;
  // Bytes of one row of blocks (block-quantized matrices only).
  std::size_t block_row_bytes() const;
  // Throws nibble::Error naming the matrix when sizes, codes, groups or the 2:4
  // pattern are inconsistent. Readers call it before handing the matrix on.
  void validate() const;
};

// The matrices' rows one after another, as one matrix named `name`: what a model
// runs as one linear layer when several read the same input (q/k/v, gate/up).
// Empty when they differ in anything but their rows: input columns, bits, groups
// and the column-to-group map, offset kind, scale precision, 2:4 sparsity, block format.
std::optional<QuantizedMatrix> stack_rows(std::span<const QuantizedMatrix> parts, std::string name);

// Rows [first, first + count) of `m` as a matrix of their own, named `name` (or
// m's name when empty): a module stored fused with others (Phi-3's qkv_proj,
// gate_up_proj), or a column-parallel shard's output features. Every field is
// per row (codes, scales, offsets, a row's blocks), so the rows are copied as
// they are, never decoded; the input columns and their groups are shared.
QuantizedMatrix slice_rows(const QuantizedMatrix& m, std::int64_t first, std::int64_t count, std::string name = {});
// Input columns [first, first + count) (a row-parallel shard). Each column keeps
// its group (act-order's g_idx included); groups no kept column uses are dropped
// and the rest renumbered in order. Block-quantized matrices split only on block
// boundaries: anything else throws nibble::Error naming the format.
QuantizedMatrix slice_cols(const QuantizedMatrix& m, std::int64_t first, std::int64_t count);
// The matrix with one more row whose weights are all zero (a vocabulary shard's
// row for tokens another rank owns).
QuantizedMatrix append_zero_row(QuantizedMatrix m);

// group_of_col for plain grouping: column k is in group k / group_size
// (group_size <= 0 means one group for the whole row).
std::vector<std::int32_t> contiguous_groups(std::int64_t cols, std::int64_t group_size);

}  // namespace nibble
