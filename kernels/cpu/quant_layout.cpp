#include "kernels/cpu/quant_layout.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <new>
#include <numeric>

#include "common/error.h"
#include "common/fp8.h"
#include "common/half.h"

namespace nibble::kernels::cpu {
namespace {

constexpr std::size_t kAlignment = 64;

std::size_t cell(std::int64_t tile, std::int64_t index, std::int64_t lane, std::int64_t per_tile) {
  return static_cast<std::size_t>((tile * per_tile + index) * kLanes + lane);
}

// Scales and minimums are stored back in the precision the file had; the
// QuantizedMatrix floats are exact copies of those values.
DType storage_dtype(DType file_dtype) {
  return file_dtype == DType::F16 || file_dtype == DType::BF16 ? file_dtype : DType::F32;
}

void store_scalar(AlignedBytes& bytes, DType dtype, std::size_t index, float value) {
  switch (dtype) {
    case DType::F16:
      bytes.as<std::uint16_t>()[index] = f32_to_f16(value);
      break;
    case DType::BF16:
      bytes.as<std::uint16_t>()[index] = f32_to_bf16(value);
      break;
    default:
      bytes.as<float>()[index] = value;
      break;
  }
}

float load_scalar(const AlignedBytes& bytes, DType dtype, std::size_t index) {
  switch (dtype) {
    case DType::F16:
      return f16_to_f32(bytes.as<std::uint16_t>()[index]);
    case DType::BF16:
      return bf16_to_f32(bytes.as<std::uint16_t>()[index]);
    default:
      return bytes.as<float>()[index];
  }
}

bool contiguous_uniform_groups(const QuantizedMatrix& m, std::int64_t group_size) {
  if (group_size <= 0 || m.cols % group_size != 0 || m.cols / group_size != m.groups) return false;
  for (std::int64_t k = 0; k < m.cols; ++k) {
    if (m.group(k) != k / group_size) return false;
  }
  return true;
}

// Per-group scales (and offsets) of every row, laid out [tiles][groups][kLanes].
void pack_group_values(const QuantizedMatrix& m, std::int64_t tiles, DType dtype, AlignedBytes& scales,
                       AlignedBytes& offsets) {
  const auto group_cells = static_cast<std::size_t>(tiles * m.groups * kLanes);
  scales = AlignedBytes(group_cells * dtype_size(dtype));
  const bool min_offset = m.offset == QuantizedMatrix::Offset::Min;
  offsets = AlignedBytes(group_cells * (min_offset ? dtype_size(dtype) : 1));
  for (std::int64_t n = 0; n < m.rows; ++n) {
    for (std::int64_t g = 0; g < m.groups; ++g) {
      const std::size_t source = static_cast<std::size_t>(n * m.groups + g);
      const std::size_t target = cell(n / kLanes, g, n % kLanes, m.groups);
      store_scalar(scales, dtype, target, m.scales[source]);
      if (min_offset) {
        store_scalar(offsets, dtype, target, m.mins[source]);
      } else {
        offsets.as<std::uint8_t>()[target] = m.zeros[source];
      }
    }
  }
}

}  // namespace

AlignedBytes::AlignedBytes(std::size_t size)
    : data_(static_cast<std::byte*>(::operator new[](std::max<std::size_t>(size, 1), std::align_val_t{kAlignment}))),
      size_(size) {
  std::memset(data_.get(), 0, size_);
}

void AlignedBytes::Free::operator()(std::byte* p) const { ::operator delete[](p, std::align_val_t{kAlignment}); }

std::uint64_t QuantLayout::resident_bytes() const {
  return words.size() + scales.size() + offsets.size() + gather.size() * sizeof(std::int32_t) +
         group_unit_begin.size() * sizeof(std::int64_t);
}

QuantLayout pack_quantized(const QuantizedMatrix& m) {
  if (m.code_dtype != DType::U8) fail("{}: {} codes need their own layout, not integer tiles", m.name, dtype_name(m.code_dtype));
  QuantLayout layout;
  layout.rows = m.rows;
  layout.cols = m.cols;
  layout.bits = m.bits;
  layout.codes_per_unit = m.bits == 3 ? 32 : 32 / m.bits;
  layout.words_per_unit = m.bits == 3 ? 3 : 1;
  layout.tiles = (m.rows + kLanes - 1) / kLanes;
  layout.groups = m.groups;
  layout.offset = m.offset;
  layout.scale_dtype = storage_dtype(m.scale_dtype);
  const int per_unit = layout.codes_per_unit;

  // Packed order: columns sorted (stably) by group, each group padded to whole units.
  std::vector<std::int32_t> order(static_cast<std::size_t>(m.cols));
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&m](std::int32_t a, std::int32_t b) { return m.group(a) < m.group(b); });
  std::vector<std::int32_t> gather;
  gather.reserve(static_cast<std::size_t>(m.cols + m.groups * per_unit));
  layout.group_unit_begin.assign(1, 0);
  std::size_t next = 0;
  for (std::int64_t g = 0; g < m.groups; ++g) {
    while (next < order.size() && m.group(order[next]) == g) gather.push_back(order[next++]);
    while (gather.size() % static_cast<std::size_t>(per_unit) != 0) gather.push_back(-1);
    layout.group_unit_begin.push_back(static_cast<std::int64_t>(gather.size()) / per_unit);
  }
  layout.units = layout.group_unit_begin.back();
  bool identity = gather.size() == static_cast<std::size_t>(m.cols);
  for (std::size_t p = 0; identity && p < gather.size(); ++p) identity = gather[p] == static_cast<std::int32_t>(p);
  if (!identity) layout.gather = std::move(gather);

  const std::int64_t words_per_tile = layout.units * layout.words_per_unit;
  layout.words = AlignedBytes(static_cast<std::size_t>(layout.tiles * words_per_tile * kLanes) * sizeof(std::uint32_t));
  auto* words = layout.words.as<std::uint32_t>();
  const std::int64_t packed = layout.packed_cols();
  for (std::int64_t n = 0; n < m.rows; ++n) {
    const std::uint8_t* row_codes = m.codes.data() + n * m.cols;
    const std::int64_t tile = n / kLanes;
    const std::int64_t lane = n % kLanes;
    for (std::int64_t p = 0; p < packed; ++p) {
      const std::int32_t col = layout.gather.empty() ? static_cast<std::int32_t>(p) : layout.gather[static_cast<std::size_t>(p)];
      if (col < 0) continue;
      const std::uint32_t code = row_codes[col];
      const std::int64_t unit = p / per_unit;
      const auto j = static_cast<int>(p % per_unit);
      const std::int64_t first_word = unit * layout.words_per_unit;
      if (m.bits == 3) {
        words[cell(tile, first_word + (j < 16 ? 0 : 1), lane, words_per_tile)] |= (code & 3u) << (2 * (j % 16));
        words[cell(tile, first_word + 2, lane, words_per_tile)] |= (code >> 2) << j;
      } else {
        words[cell(tile, first_word, lane, words_per_tile)] |= code << (m.bits * j);
      }
    }
  }
  pack_group_values(m, layout.tiles, layout.scale_dtype, layout.scales, layout.offsets);
  return layout;
}

void QuantLayout::dequantize_row(std::int64_t row, float* out) const {
  if (row < 0 || row >= rows) fail("row {} outside a matrix of {} rows", row, rows);
  const std::int64_t tile = row / kLanes;
  const std::int64_t lane = row % kLanes;
  const std::int64_t words_per_tile = units * words_per_unit;
  const auto* packed_words = words.as<std::uint32_t>();
  std::fill(out, out + cols, 0.0f);
  for (std::int64_t g = 0; g < groups; ++g) {
    const std::size_t group_cell = cell(tile, g, lane, groups);
    const float scale = load_scalar(scales, scale_dtype, group_cell);
    const float min = offset == QuantizedMatrix::Offset::Min ? load_scalar(offsets, scale_dtype, group_cell) : 0.0f;
    const float zero = offset == QuantizedMatrix::Offset::ZeroPoint ? offsets.as<std::uint8_t>()[group_cell] : 0.0f;
    for (std::int64_t p = group_unit_begin[static_cast<std::size_t>(g)] * codes_per_unit;
         p < group_unit_begin[static_cast<std::size_t>(g) + 1] * codes_per_unit; ++p) {
      const std::int32_t col = gather.empty() ? static_cast<std::int32_t>(p) : gather[static_cast<std::size_t>(p)];
      if (col < 0) continue;
      const std::int64_t first_word = (p / codes_per_unit) * words_per_unit;
      const auto j = static_cast<int>(p % codes_per_unit);
      std::uint32_t code;
      if (bits == 3) {
        const std::uint32_t low = packed_words[cell(tile, first_word + (j < 16 ? 0 : 1), lane, words_per_tile)];
        const std::uint32_t high = packed_words[cell(tile, first_word + 2, lane, words_per_tile)];
        code = ((low >> (2 * (j % 16))) & 3u) | (((high >> j) & 1u) << 2);
      } else {
        code = (packed_words[cell(tile, first_word, lane, words_per_tile)] >> (bits * j)) & ((1u << bits) - 1u);
      }
      out[col] = offset == QuantizedMatrix::Offset::Min ? scale * static_cast<float>(code) + min
                                                         : scale * (static_cast<float>(code) - zero);
    }
  }
}

BlockLayout pack_blocks(const QuantizedMatrix& m) {
  if (!m.block_format) fail("{}: not a block-quantized matrix", m.name);
  m.validate();
  BlockLayout layout;
  layout.rows = m.rows;
  layout.cols = m.cols;
  layout.format = *m.block_format;
  layout.row_bytes = m.block_row_bytes();
  layout.bytes = AlignedBytes(m.blocks.size());
  std::memcpy(layout.bytes.data(), m.blocks.data(), m.blocks.size());
  return layout;
}

void BlockLayout::dequantize_row(std::int64_t row, float* out) const {
  if (row < 0 || row >= rows) fail("row {} outside a matrix of {} rows", row, rows);
  const BlockFormatInfo& info = block_format_info(format);
  const std::byte* at = bytes.data() + static_cast<std::size_t>(row) * row_bytes;
  for (std::int64_t b = 0; b < cols / info.elements; ++b) decode_block(format, at + b * info.bytes, out + b * info.elements);
}

bool fits_sparse24(const QuantizedMatrix& m) {
  if (!m.sparse_2_4 || m.bits != 4 || m.offset != QuantizedMatrix::Offset::ZeroPoint) return false;
  if (m.cols % Sparse24Layout::kInputsPerUnit != 0) return false;
  const std::int64_t group_size = m.cols / m.groups;
  return group_size % Sparse24Layout::kInputsPerUnit == 0 && contiguous_uniform_groups(m, group_size);
}

std::uint64_t Sparse24Layout::resident_bytes() const {
  return codes.size() + positions.size() + scales.size() + zeros.size();
}

Sparse24Layout pack_sparse24(const QuantizedMatrix& m) {
  if (!fits_sparse24(m)) fail("{}: not a 4-bit 2:4-sparse matrix with 16-aligned groups", m.name);
  Sparse24Layout layout;
  layout.rows = m.rows;
  layout.cols = m.cols;
  layout.tiles = (m.rows + kLanes - 1) / kLanes;
  layout.units = m.cols / Sparse24Layout::kInputsPerUnit;
  layout.groups = m.groups;
  layout.units_per_group = layout.units / m.groups;
  layout.scale_dtype = storage_dtype(m.scale_dtype);
  const auto unit_cells = static_cast<std::size_t>(layout.tiles * layout.units * kLanes);
  layout.codes = AlignedBytes(unit_cells * sizeof(std::uint32_t));
  layout.positions = AlignedBytes(unit_cells * sizeof(std::uint16_t));
  auto* codes = layout.codes.as<std::uint32_t>();
  auto* positions = layout.positions.as<std::uint16_t>();
  for (std::int64_t n = 0; n < m.rows; ++n) {
    for (std::int64_t unit = 0; unit < layout.units; ++unit) {
      std::uint32_t packed_codes = 0;
      std::uint32_t packed_positions = 0;
      for (int quad = 0; quad < 4; ++quad) {
        const std::int64_t k0 = unit * Sparse24Layout::kInputsPerUnit + quad * 4;
        const std::uint8_t zero = m.zeros[static_cast<std::size_t>(n * m.groups + m.group(k0))];
        const std::uint8_t* quad_codes = m.codes.data() + n * m.cols + k0;
        // The (at most two) nonzero positions first; pad with pruned positions, whose
        // code equals the zero point and so contributes nothing.
        int kept[2];
        int count = 0;
        for (int j = 0; j < 4 && count < 2; ++j) {
          if (quad_codes[j] != zero) kept[count++] = j;
        }
        for (int j = 0; j < 4 && count < 2; ++j) {
          if (quad_codes[j] == zero && (count == 0 || kept[0] != j)) kept[count++] = j;
        }
        for (int i = 0; i < 2; ++i) {
          const int slot = 2 * quad + i;
          packed_codes |= static_cast<std::uint32_t>(quad_codes[kept[i]]) << (4 * slot);
          packed_positions |= static_cast<std::uint32_t>(kept[i]) << (2 * slot);
        }
      }
      const std::size_t target = cell(n / kLanes, unit, n % kLanes, layout.units);
      codes[target] = packed_codes;
      positions[target] = static_cast<std::uint16_t>(packed_positions);
    }
  }
  pack_group_values(m, layout.tiles, layout.scale_dtype, layout.scales, layout.zeros);
  return layout;
}

void Sparse24Layout::dequantize_row(std::int64_t row, float* out) const {
  if (row < 0 || row >= rows) fail("row {} outside a matrix of {} rows", row, rows);
  const std::int64_t tile = row / kLanes;
  const std::int64_t lane = row % kLanes;
  std::fill(out, out + cols, 0.0f);
  for (std::int64_t unit = 0; unit < units; ++unit) {
    const std::size_t group_cell = cell(tile, unit / units_per_group, lane, groups);
    const float scale = load_scalar(scales, scale_dtype, group_cell);
    const float zero = zeros.as<std::uint8_t>()[group_cell];
    const std::size_t unit_cell = cell(tile, unit, lane, units);
    const std::uint32_t packed_codes = codes.as<std::uint32_t>()[unit_cell];
    const std::uint32_t packed_positions = positions.as<std::uint16_t>()[unit_cell];
    for (int slot = 0; slot < kCodesPerUnit; ++slot) {
      const std::uint32_t code = (packed_codes >> (4 * slot)) & 15u;
      const std::int64_t k = unit * kInputsPerUnit + (slot / 2) * 4 + ((packed_positions >> (2 * slot)) & 3u);
      out[k] = scale * (static_cast<float>(code) - zero);
    }
  }
}

Fp8Layout pack_fp8(const QuantizedMatrix& m) {
  m.validate();
  if (m.code_dtype != DType::F8_E4M3) fail("{}: not an FP8 matrix", m.name);
  Fp8Layout layout;
  layout.rows = m.rows;
  layout.cols = m.cols;
  layout.groups = m.groups;
  layout.scale_dtype = m.scale_dtype;
  // validate() checked the groups are contiguous runs, in order.
  layout.group_begin.assign(static_cast<std::size_t>(m.groups) + 1, m.cols);
  for (std::int64_t k = m.cols - 1; k >= 0; --k) layout.group_begin[static_cast<std::size_t>(m.group(k))] = k;
  if (m.group(0) != 0) fail("{}: FP8 column groups must start at group 0", m.name);
  layout.codes = AlignedBytes(m.codes.size());
  std::memcpy(layout.codes.data(), m.codes.data(), m.codes.size());
  // Consecutive rows with equal scales (a block's rows) share one stored scale row.
  const auto groups = static_cast<std::size_t>(m.groups);
  const auto row_of = [&](std::int64_t n) { return m.scales.begin() + static_cast<std::ptrdiff_t>(static_cast<std::size_t>(n) * groups); };
  std::vector<float> unique;
  layout.scale_row = AlignedBytes(static_cast<std::size_t>(m.rows) * sizeof(std::int32_t));
  std::int32_t* index = layout.scale_row.as<std::int32_t>();
  for (std::int64_t n = 0; n < m.rows; ++n) {
    if (n == 0 || !std::equal(row_of(n), row_of(n) + static_cast<std::ptrdiff_t>(groups), row_of(n - 1))) {
      unique.insert(unique.end(), row_of(n), row_of(n) + static_cast<std::ptrdiff_t>(groups));
    }
    index[n] = static_cast<std::int32_t>(unique.size() / groups - 1);
  }
  layout.scales = AlignedBytes(unique.size() * sizeof(float));
  std::memcpy(layout.scales.data(), unique.data(), unique.size() * sizeof(float));
  return layout;
}

void Fp8Layout::dequantize_row(std::int64_t row, float* out) const {
  if (row < 0 || row >= rows) fail("row {} outside a matrix of {} rows", row, rows);
  const std::uint8_t* code = codes.as<std::uint8_t>() + row * cols;
  const float* scale = row_scales(row);
  for (std::int64_t g = 0; g < groups; ++g) {
    for (auto k = group_begin[static_cast<std::size_t>(g)]; k < group_begin[static_cast<std::size_t>(g) + 1]; ++k) {
      out[k] = scale[g] * e4m3_to_f32(code[k]);
    }
  }
}

}  // namespace nibble::kernels::cpu
