#pragma once
// Random quantized matrices in the format-neutral form, as checkpoint readers hand
// them to backends: shared by the CPU kernel tests and the CUDA tests.
#include <algorithm>
#include <array>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "common/half.h"
#include "common/quantized_matrix.h"

namespace nibble::testing {

struct QuantCase {
  std::int64_t rows;
  std::int64_t cols;
  int bits = 4;
  std::int64_t group_size = 128;  // <= 0: one group per row
  bool act_order = false;
  bool symmetric = false;
  QuantizedMatrix::Offset offset = QuantizedMatrix::Offset::ZeroPoint;
  DType scale_dtype = DType::F16;
  bool sparse_2_4 = false;
};

inline std::string describe(const QuantCase& c) {
  return fmt::format("[{}x{}] int{} g{}{}{}{}{}{}", c.rows, c.cols, c.bits, c.group_size, c.act_order ? " act-order" : "",
                     c.symmetric ? " sym" : "", c.offset == QuantizedMatrix::Offset::Min ? " min" : "",
                     c.scale_dtype == DType::F16 ? "" : std::string(" scales ") + std::string(dtype_name(c.scale_dtype)),
                     c.sparse_2_4 ? " 2:4" : "");
}

// A scale exactly representable at the case's precision, as a checkpoint would hold.
inline float stored_scale(float value, DType dtype) {
  if (dtype == DType::F16) return f16_to_f32(f32_to_f16(value));
  if (dtype == DType::BF16) return bf16_to_f32(f32_to_bf16(value));
  return value;
}

inline QuantizedMatrix random_quantized(std::mt19937& rng, const QuantCase& c) {
  QuantizedMatrix m;
  m.name = describe(c);
  m.rows = c.rows;
  m.cols = c.cols;
  m.bits = c.bits;
  m.offset = c.offset;
  m.scale_dtype = c.scale_dtype;
  m.sparse_2_4 = c.sparse_2_4;
  const std::int64_t group_size = c.group_size <= 0 ? c.cols : c.group_size;
  m.groups = (c.cols + group_size - 1) / group_size;
  m.group_of_col = contiguous_groups(c.cols, group_size);
  if (c.act_order) std::shuffle(m.group_of_col.begin(), m.group_of_col.end(), rng);  // like GPTQ's g_idx
  const int levels = 1 << c.bits;
  std::uniform_int_distribution<int> code(0, levels - 1);
  std::uniform_real_distribution<float> scale(0.002f, 0.05f);
  const auto group_cells = static_cast<std::size_t>(c.rows * m.groups);
  for (std::size_t i = 0; i < group_cells; ++i) m.scales.push_back(stored_scale(scale(rng), c.scale_dtype));
  if (c.offset == QuantizedMatrix::Offset::Min) {
    for (std::size_t i = 0; i < group_cells; ++i) {
      m.mins.push_back(stored_scale(-scale(rng) * static_cast<float>(levels) / 2, c.scale_dtype));
    }
  } else {
    // GPTQ v1 checkpoints can hold a zero point of 2^bits, one past the top code;
    // pruned 2:4 weights store the zero point as their code, so it must fit.
    std::uniform_int_distribution<int> zero(0, c.sparse_2_4 ? levels - 1 : std::min(levels, 255));
    for (std::size_t i = 0; i < group_cells; ++i) {
      m.zeros.push_back(static_cast<std::uint8_t>(c.symmetric ? levels / 2 : zero(rng)));
    }
  }
  m.codes.resize(static_cast<std::size_t>(c.rows * c.cols));
  for (auto& q : m.codes) q = static_cast<std::uint8_t>(code(rng));
  if (c.sparse_2_4) {
    // Prune two of every four inputs (sometimes three or four): their code becomes the zero point.
    std::uniform_int_distribution<int> extra(0, 7);
    for (std::int64_t n = 0; n < c.rows; ++n) {
      for (std::int64_t k = 0; k < c.cols; k += 4) {
        std::array<int, 4> order{0, 1, 2, 3};
        std::shuffle(order.begin(), order.end(), rng);
        const int pruned = 2 + (extra(rng) == 0 ? 1 : 0) + (extra(rng) == 0 ? 1 : 0);
        for (int p = 0; p < pruned; ++p) {
          const std::int64_t col = k + order[static_cast<std::size_t>(p)];
          m.codes[static_cast<std::size_t>(n * c.cols + col)] =
              m.zeros[static_cast<std::size_t>(n * m.groups + m.group(col))];
        }
      }
    }
  }
  m.validate();
  return m;
}

}  // namespace nibble::testing
