#pragma once
// The CPU kernels' layout for quantized weights, built once at load from the
// format-neutral QuantizedMatrix.
//
// Output columns are taken kLanes at a time (a "tile"). Within a tile the packed
// codes run along the input dimension, and each 32-bit word holds consecutive
// input positions of one output column ("unit" = the codes one word per lane
// covers). A tile's codes are contiguous, so a thread streams its tiles
// front to back, and a SIMD register holds kLanes/width output columns: the
// kernels accumulate vertically and never reduce horizontally.
//
//   bits 2, 4, 8: one word per lane per unit, codes LSB first (16, 8, 4 codes).
//   bits 3:       three words per lane per unit covering 32 codes: the low two
//                 bits of codes 0-15, the low two bits of codes 16-31, then the
//                 high bit of all 32 — exactly 3 bits per code, nothing wasted.
//
// Inputs are reordered ("packed order") so each quantization group is one
// contiguous run of whole units: GPTQ act-order columns are sorted by group and
// every group is padded to a unit boundary. `gather` maps packed positions back
// to input columns (-1 = padding, read as 0); it is empty when packed order is
// the input order. Per group and lane the layout keeps the scale in the file's
// precision and a u8 zero point or a minimum, so nothing is rounded.
//
// 2:4-sparse matrices get a layout of their own (Sparse24Layout below).
#include <cstdint>
#include <memory>
#include <vector>

#include "common/block_format.h"
#include "common/dtype.h"
#include "common/quantized_matrix.h"

namespace nibble::kernels::cpu {

constexpr std::int64_t kLanes = 32;

// 64-byte aligned storage, so tiles start on cache lines.
class AlignedBytes {
 public:
  AlignedBytes() = default;
  explicit AlignedBytes(std::size_t size);
  std::byte* data() { return data_.get(); }
  const std::byte* data() const { return data_.get(); }
  std::size_t size() const { return size_; }
  template <typename T>
  T* as() {
    return reinterpret_cast<T*>(data_.get());
  }
  template <typename T>
  const T* as() const {
    return reinterpret_cast<const T*>(data_.get());
  }

 private:
  struct Free {
    void operator()(std::byte* p) const;
  };
  std::unique_ptr<std::byte[], Free> data_;
  std::size_t size_ = 0;
};

struct QuantLayout {
  std::int64_t rows = 0;  // output features
  std::int64_t cols = 0;  // input features
  int bits = 4;
  int codes_per_unit = 8;
  int words_per_unit = 1;
  std::int64_t tiles = 0;
  std::int64_t units = 0;  // per tile; packed positions = units * codes_per_unit
  std::int64_t groups = 0;
  std::vector<std::int64_t> group_unit_begin;  // groups + 1 entries
  std::vector<std::int32_t> gather;            // packed position -> input column, -1 = padding
  QuantizedMatrix::Offset offset = QuantizedMatrix::Offset::ZeroPoint;
  DType scale_dtype = DType::F16;
  AlignedBytes words;    // u32 [tiles][units][words_per_unit][kLanes]
  AlignedBytes scales;   // scale_dtype [tiles][groups][kLanes]
  AlignedBytes offsets;  // u8 zero points or scale_dtype minimums, [tiles][groups][kLanes]

  std::int64_t packed_cols() const { return units * codes_per_unit; }
  std::uint64_t resident_bytes() const;
  // Row `row` dequantized, in input order (cols values).
  void dequantize_row(std::int64_t row, float* out) const;
};

QuantLayout pack_quantized(const QuantizedMatrix& matrix);

// 2:4-sparse weights (at most 2 nonzeros per aligned 4 inputs): per lane, a unit
// covers 16 inputs with 8 kept 4-bit codes in one u32 (two per quad, LSB first)
// and their positions within the quad in a u16 (2 bits each). The pruned half is
// never read or multiplied. Groups are contiguous and a multiple of 16 inputs.
struct Sparse24Layout {
  static constexpr int kInputsPerUnit = 16;
  static constexpr int kCodesPerUnit = 8;
  std::int64_t rows = 0;
  std::int64_t cols = 0;
  std::int64_t tiles = 0;
  std::int64_t units = 0;  // per tile
  std::int64_t groups = 0;
  std::int64_t units_per_group = 0;
  DType scale_dtype = DType::F16;
  AlignedBytes codes;      // u32 [tiles][units][kLanes]
  AlignedBytes positions;  // u16 [tiles][units][kLanes]
  AlignedBytes scales;     // scale_dtype [tiles][groups][kLanes]
  AlignedBytes zeros;      // u8 [tiles][groups][kLanes]

  std::uint64_t resident_bytes() const;
  void dequantize_row(std::int64_t row, float* out) const;
};

// Block-quantized weights (QuantizedMatrix::block_format) kept exactly as the
// file stores them: row-major, each row its cols / elements blocks back to back
// (docs/formats.md has every block's bits). The kernels decode a few KB of a row's
// blocks at a time into L1-resident floats, decoding each block's scales once,
// and run every activation row against them. Resident bytes equal the file's.
struct BlockLayout {
  std::int64_t rows = 0;
  std::int64_t cols = 0;
  BlockFormat format = BlockFormat::Q4_K;
  std::size_t row_bytes = 0;
  AlignedBytes bytes;  // [rows][row_bytes]

  std::uint64_t resident_bytes() const { return bytes.size(); }
  void dequantize_row(std::int64_t row, float* out) const;
};

BlockLayout pack_blocks(const QuantizedMatrix& matrix);

// FP8 e4m3 weights (QuantizedMatrix::code_dtype F8_E4M3) kept as the file
// stores them: one byte per weight, row-major, widened to float inside the kernel
// (fp8_impl.h). Scales: float32 rows of `groups` values, each stored once for a run
// of consecutive output rows that share it (a 128x128 block's 128 rows), and a row ->
// scale-row index, so block scales cost what they cost in the file plus 4 bytes a row.
struct Fp8Layout {
  std::int64_t rows = 0;
  std::int64_t cols = 0;
  std::int64_t groups = 0;
  std::vector<std::int64_t> group_begin;  // groups + 1 entries: group g is columns [begin[g], begin[g + 1])
  DType scale_dtype = DType::F32;          // what the file stored, for describe()
  AlignedBytes codes;                      // u8 [rows][cols]
  AlignedBytes scales;                     // f32 [scale rows][groups]
  AlignedBytes scale_row;                  // i32 [rows]: the scale row of each output row

  const float* row_scales(std::int64_t row) const {
    return scales.as<float>() + static_cast<std::int64_t>(scale_row.as<std::int32_t>()[row]) * groups;
  }
  std::uint64_t resident_bytes() const { return codes.size() + scales.size() + scale_row.size(); }
  void dequantize_row(std::int64_t row, float* out) const;
};

Fp8Layout pack_fp8(const QuantizedMatrix& matrix);

// Whether `matrix` fits Sparse24Layout: 4-bit, zero points, 2:4 flagged,
// contiguous groups whose size is a multiple of 16, cols a multiple of 16.
bool fits_sparse24(const QuantizedMatrix& matrix);
Sparse24Layout pack_sparse24(const QuantizedMatrix& matrix);

}  // namespace nibble::kernels::cpu
