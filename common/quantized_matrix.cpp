#include "common/quantized_matrix.h"

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <optional>
#include <utility>

#include "common/error.h"
#include "common/fp8.h"

namespace nibble {

std::size_t QuantizedMatrix::block_row_bytes() const {
  if (!block_format) fail("{}: not a block-quantized matrix", name);
  const BlockFormatInfo& info = block_format_info(*block_format);
  return static_cast<std::size_t>(cols / info.elements * info.bytes);
}

void QuantizedMatrix::dequantize_row(std::int64_t n, float* out) const {
  if (block_format) {
    const BlockFormatInfo& info = block_format_info(*block_format);
    const std::byte* row = blocks.data() + static_cast<std::size_t>(n) * block_row_bytes();
    for (std::int64_t b = 0; b < cols / info.elements; ++b) decode_block(*block_format, row + b * info.bytes, out + b * info.elements);
    return;
  }
  for (std::int64_t k = 0; k < cols; ++k) out[k] = value(n, k);
}

float QuantizedMatrix::value(std::int64_t n, std::int64_t k) const {
  if (block_format) {
    const BlockFormatInfo& info = block_format_info(*block_format);
    std::vector<float> block(static_cast<std::size_t>(info.elements));
    const std::size_t at = static_cast<std::size_t>(n) * block_row_bytes() + static_cast<std::size_t>(k / info.elements * info.bytes);
    decode_block(*block_format, blocks.data() + at, block.data());
    return block[static_cast<std::size_t>(k % info.elements)];
  }
  const auto index = [this](std::int64_t row, std::int64_t g) { return static_cast<std::size_t>(row * groups + g); };
  const std::int64_t g = group(k);
  const std::uint8_t code = codes[static_cast<std::size_t>(n * cols + k)];
  if (code_dtype == DType::F8_E4M3) return scales[index(n, g)] * e4m3_to_f32(code);
  const float q = code;
  if (offset == Offset::Min) return scales[index(n, g)] * q + mins[index(n, g)];
  return scales[index(n, g)] * (q - static_cast<float>(zeros[index(n, g)]));
}

namespace {

// (row, first column) of the first run of 4 columns with more than 2 codes off their zero point.
std::optional<std::pair<std::int64_t, std::int64_t>> first_2_4_violation(const QuantizedMatrix& m) {
  for (std::int64_t n = 0; n < m.rows; ++n) {
    for (std::int64_t k = 0; k + 4 <= m.cols; k += 4) {
      int nonzero = 0;
      for (std::int64_t j = 0; j < 4; ++j) {
        const auto cell = static_cast<std::size_t>(n * m.cols + k + j);
        const auto zero = m.zeros[static_cast<std::size_t>(n * m.groups + m.group(k + j))];
        nonzero += m.codes[cell] != zero ? 1 : 0;
      }
      if (nonzero > 2) return std::pair{n, k};
    }
  }
  return std::nullopt;
}

}  // namespace

void QuantizedMatrix::validate() const {
  if (block_format) {
    const BlockFormatInfo& info = block_format_info(*block_format);
    if (rows <= 0 || cols <= 0) fail("{}: empty matrix [{}, {}]", name, rows, cols);
    if (cols % info.elements != 0) {
      fail("{}: {} input columns are not whole {} blocks of {}", name, cols, info.name, info.elements);
    }
    if (blocks.size() != static_cast<std::size_t>(rows) * block_row_bytes()) {
      fail("{}: {} bytes of {} blocks for a [{}, {}] matrix, expected {}", name, blocks.size(), info.name, rows, cols,
           static_cast<std::size_t>(rows) * block_row_bytes());
    }
    if (!codes.empty() || !scales.empty() || sparse_2_4) fail("{}: a block-quantized matrix also has unpacked codes", name);
    return;
  }
  if (code_dtype != DType::U8 && code_dtype != DType::F8_E4M3) {
    fail("{}: codes of dtype {} are not supported (U8 integers, F8_E4M3)", name, dtype_name(code_dtype));
  }
  if (code_dtype == DType::F8_E4M3) {
    if (bits != 8) fail("{}: FP8 codes with bits {} (expected 8)", name, bits);
    if (!zeros.empty() || !mins.empty() || sparse_2_4) fail("{}: FP8 codes with zero points, minimums or 2:4", name);
  }
  if (bits != 2 && bits != 3 && bits != 4 && bits != 8) fail("{}: {}-bit weights are not supported (2, 3, 4, 8)", name, bits);
  if (rows <= 0 || cols <= 0) fail("{}: empty matrix [{}, {}]", name, rows, cols);
  if (groups <= 0 || groups > cols) fail("{}: {} groups for {} input columns", name, groups, cols);
  const auto cells = static_cast<std::size_t>(rows * cols);
  const auto group_cells = static_cast<std::size_t>(rows * groups);
  if (codes.size() != cells) fail("{}: {} codes for a [{}, {}] matrix", name, codes.size(), rows, cols);
  if (group_of_col.size() != static_cast<std::size_t>(cols)) {
    fail("{}: group index has {} entries, expected {}", name, group_of_col.size(), cols);
  }
  for (const auto g : group_of_col) {
    if (g < 0 || g >= groups) fail("{}: group index {} outside [0, {})", name, g, groups);
  }
  if (scales.size() != group_cells) fail("{}: {} scales, expected {}", name, scales.size(), group_cells);
  for (const float s : scales) {
    if (!std::isfinite(s)) fail("{}: non-finite scale", name);
  }
  if (code_dtype == DType::F8_E4M3) {
    // Any byte is an e4m3 value; the two NaN encodings decode as NaN, as PyTorch does.
    for (std::size_t k = 1; k < group_of_col.size(); ++k) {
      if (group_of_col[k] != group_of_col[k - 1] && group_of_col[k] != group_of_col[k - 1] + 1) {
        fail("{}: FP8 scale groups must be contiguous runs of columns (column {} is in group {} after {})", name, k,
             group_of_col[k], group_of_col[k - 1]);
      }
    }
    return;
  }
  if (offset == Offset::ZeroPoint && zeros.size() != group_cells) {
    fail("{}: {} zero points, expected {}", name, zeros.size(), group_cells);
  }
  if (offset == Offset::Min) {
    if (mins.size() != group_cells) fail("{}: {} group minimums, expected {}", name, mins.size(), group_cells);
    if (sparse_2_4) fail("{}: 2:4 sparsity needs zero-point quantization", name);
  }
  const unsigned limit = 1u << bits;
  for (const auto q : codes) {
    if (q >= limit) fail("{}: code {} does not fit in {} bits", name, q, bits);
  }
  if (sparse_2_4) {
    if (cols % 4 != 0) fail("{}: 2:4 sparsity needs a multiple of 4 input columns, got {}", name, cols);
    if (const auto bad = first_2_4_violation(*this)) {
      fail("{}: row {} columns {}..{} break the 2:4 pattern (more than 2 nonzero)", name, bad->first, bad->second,
           bad->second + 3);
    }
  }
}

bool QuantizedMatrix::follows_2_4() const {
  return !block_format && code_dtype == DType::U8 && offset == Offset::ZeroPoint && cols % 4 == 0 && !first_2_4_violation(*this);
}

std::optional<QuantizedMatrix> stack_rows(std::span<const QuantizedMatrix> parts, std::string name) {
  if (parts.empty()) return std::nullopt;
  const QuantizedMatrix& first = parts.front();
  QuantizedMatrix stacked;
  stacked.name = std::move(name);
  stacked.cols = first.cols;
  stacked.bits = first.bits;
  stacked.groups = first.groups;
  stacked.group_of_col = first.group_of_col;
  stacked.offset = first.offset;
  stacked.scale_dtype = first.scale_dtype;
  stacked.sparse_2_4 = first.sparse_2_4;
  stacked.block_format = first.block_format;
  stacked.code_dtype = first.code_dtype;
  for (const auto& part : parts) {
    if (part.block_format != first.block_format || part.cols != first.cols || part.bits != first.bits || part.groups != first.groups ||
        part.group_of_col != first.group_of_col || part.offset != first.offset ||
        part.scale_dtype != first.scale_dtype || part.sparse_2_4 != first.sparse_2_4 || part.code_dtype != first.code_dtype) {
      return std::nullopt;
    }
    stacked.rows += part.rows;
    stacked.stored_bytes += part.stored_bytes;
    stacked.codes.insert(stacked.codes.end(), part.codes.begin(), part.codes.end());
    stacked.scales.insert(stacked.scales.end(), part.scales.begin(), part.scales.end());
    stacked.zeros.insert(stacked.zeros.end(), part.zeros.begin(), part.zeros.end());
    stacked.mins.insert(stacked.mins.end(), part.mins.begin(), part.mins.end());
    stacked.blocks.insert(stacked.blocks.end(), part.blocks.begin(), part.blocks.end());
  }
  return stacked;
}

namespace {

void check_range(const QuantizedMatrix& m, std::string_view what, std::int64_t first, std::int64_t count,
                 std::int64_t limit) {
  if (first < 0 || count <= 0 || first + count > limit) {
    fail("{}: {} [{}, {}) is outside its {} {}", m.name, what, first, first + count, limit, what);
  }
}

// The bytes a stored tensor's share takes, for the memory account.
std::uint64_t share_of(std::uint64_t bytes, std::int64_t part, std::int64_t whole) {
  return static_cast<std::uint64_t>(static_cast<double>(bytes) * static_cast<double>(part) / static_cast<double>(whole));
}

}  // namespace

QuantizedMatrix slice_rows(const QuantizedMatrix& matrix, std::int64_t first, std::int64_t count, std::string name) {
  if (first < 0 || count <= 0 || first + count > matrix.rows) {
    fail("{}: rows [{}, {}) are outside its {} rows", matrix.name, first, first + count, matrix.rows);
  }
  QuantizedMatrix part;
  part.name = name.empty() ? matrix.name : std::move(name);
  part.rows = count;
  part.cols = matrix.cols;
  part.bits = matrix.bits;
  part.groups = matrix.groups;
  part.group_of_col = matrix.group_of_col;
  part.offset = matrix.offset;
  part.scale_dtype = matrix.scale_dtype;
  part.sparse_2_4 = matrix.sparse_2_4;
  part.block_format = matrix.block_format;
  part.code_dtype = matrix.code_dtype;
  // Elements [first * per_row, (first + count) * per_row) of a per-row array.
  const auto rows_of = [&]<typename T>(const std::vector<T>& values, std::size_t per_row) {
    if (values.empty()) return std::vector<T>{};
    const auto begin = values.begin() + static_cast<std::ptrdiff_t>(static_cast<std::size_t>(first) * per_row);
    return std::vector<T>(begin, begin + static_cast<std::ptrdiff_t>(static_cast<std::size_t>(count) * per_row));
  };
  const auto cols = static_cast<std::size_t>(matrix.cols), groups = static_cast<std::size_t>(matrix.groups);
  if (matrix.block_format) {
    part.blocks = rows_of(matrix.blocks, matrix.block_row_bytes());
  } else {
    part.codes = rows_of(matrix.codes, cols);
    part.scales = rows_of(matrix.scales, groups);
    part.zeros = rows_of(matrix.zeros, groups);
    part.mins = rows_of(matrix.mins, groups);
  }
  // The file's bytes shared out by rows (per-row data is all of it but a g_idx).
  part.stored_bytes = matrix.stored_bytes * static_cast<std::uint64_t>(count) / static_cast<std::uint64_t>(matrix.rows);
  part.validate();
  return part;
}

QuantizedMatrix slice_cols(const QuantizedMatrix& m, std::int64_t first, std::int64_t count) {
  check_range(m, "input columns", first, count, m.cols);
  QuantizedMatrix out = m;
  out.cols = count;
  out.stored_bytes = share_of(m.stored_bytes, count, m.cols);
  if (m.block_format) {
    const BlockFormatInfo& info = block_format_info(*m.block_format);
    if (first % info.elements != 0 || count % info.elements != 0) {
      fail("{}: input columns [{}, {}) do not fall on the {}-weight boundaries of its {} blocks; choose a split "
           "whose shares are multiples of {} columns",
           m.name, first, first + count, info.elements, info.name, info.elements);
    }
    const std::size_t row_bytes = m.block_row_bytes();
    const std::size_t from = static_cast<std::size_t>(first / info.elements * info.bytes);
    const std::size_t bytes = static_cast<std::size_t>(count / info.elements * info.bytes);
    out.blocks.clear();
    out.blocks.reserve(static_cast<std::size_t>(m.rows) * bytes);
    for (std::int64_t n = 0; n < m.rows; ++n) {
      const auto row = m.blocks.begin() + static_cast<std::ptrdiff_t>(static_cast<std::size_t>(n) * row_bytes + from);
      out.blocks.insert(out.blocks.end(), row, row + static_cast<std::ptrdiff_t>(bytes));
    }
    return out;
  }
  if (m.sparse_2_4 && (first % 4 != 0 || count % 4 != 0)) {
    fail("{}: input columns [{}, {}) split the 2:4 pattern's runs of 4", m.name, first, first + count);
  }
  // The groups the kept columns use, in their original order, renumbered densely.
  std::vector<std::int32_t> renumber(static_cast<std::size_t>(m.groups), -1);
  for (std::int64_t k = first; k < first + count; ++k) renumber[static_cast<std::size_t>(m.group(k))] = 0;
  std::vector<std::int64_t> kept;
  for (std::int64_t g = 0; g < m.groups; ++g) {
    if (renumber[static_cast<std::size_t>(g)] == 0) {
      renumber[static_cast<std::size_t>(g)] = static_cast<std::int32_t>(kept.size());
      kept.push_back(g);
    }
  }
  out.groups = static_cast<std::int64_t>(kept.size());
  out.group_of_col.assign(static_cast<std::size_t>(count), 0);
  for (std::int64_t k = 0; k < count; ++k) {
    out.group_of_col[static_cast<std::size_t>(k)] = renumber[static_cast<std::size_t>(m.group(first + k))];
  }
  out.codes.assign(static_cast<std::size_t>(m.rows * count), 0);
  const auto regroup = [&](const auto& values) {
    using Vector = std::decay_t<decltype(values)>;
    if (values.empty()) return Vector{};
    Vector picked(static_cast<std::size_t>(m.rows) * kept.size());
    for (std::int64_t n = 0; n < m.rows; ++n) {
      for (std::size_t g = 0; g < kept.size(); ++g) {
        picked[static_cast<std::size_t>(n) * kept.size() + g] = values[static_cast<std::size_t>(n * m.groups + kept[g])];
      }
    }
    return picked;
  };
  for (std::int64_t n = 0; n < m.rows; ++n) {
    const auto row = m.codes.begin() + static_cast<std::ptrdiff_t>(n * m.cols + first);
    std::copy(row, row + static_cast<std::ptrdiff_t>(count), out.codes.begin() + static_cast<std::ptrdiff_t>(n * count));
  }
  out.scales = regroup(m.scales);
  out.zeros = regroup(m.zeros);
  out.mins = regroup(m.mins);
  return out;
}

QuantizedMatrix append_zero_row(QuantizedMatrix m) {
  m.rows += 1;
  if (m.block_format) {
    // Every block format scales its codes by a stored factor; all-zero bytes are
    // a factor of zero, so the row decodes to zeros.
    m.blocks.resize(m.blocks.size() + m.block_row_bytes());
    return m;
  }
  m.codes.resize(static_cast<std::size_t>(m.rows * m.cols), 0);
  m.scales.resize(static_cast<std::size_t>(m.rows * m.groups), 0.0f);
  if (!m.zeros.empty()) m.zeros.resize(static_cast<std::size_t>(m.rows * m.groups), 0);
  if (!m.mins.empty()) m.mins.resize(static_cast<std::size_t>(m.rows * m.groups), 0.0f);
  return m;
}

std::vector<std::int32_t> contiguous_groups(std::int64_t cols, std::int64_t group_size) {
  std::vector<std::int32_t> groups(static_cast<std::size_t>(cols));
  for (std::int64_t k = 0; k < cols; ++k) {
    groups[static_cast<std::size_t>(k)] = group_size <= 0 ? 0 : static_cast<std::int32_t>(k / group_size);
  }
  return groups;
}

}  // namespace nibble
