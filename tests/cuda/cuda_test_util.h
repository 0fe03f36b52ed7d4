#pragma once
// Random quantized matrices and float64 references shared by the CUDA tests (the
// CPU-only layout test and the GPU tests).
#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <random>
#include <span>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "common/half.h"
#include "common/quantized_matrix.h"
#include "tests/unit/random_quantized.h"

namespace nibble::cuda_testing {

using testing::describe;
using testing::QuantCase;
using testing::random_quantized;
using testing::stored_scale;

// y[r][n] = bias[n] + sum_k x[r][k] w[n][k], in float64; w from value() (no fp16 rounding).
inline std::vector<double> reference_linear(const QuantizedMatrix& m, std::span<const float> x, std::int64_t rows,
                                            const float* bias) {
  std::vector<double> w(static_cast<std::size_t>(m.rows * m.cols));
  for (std::int64_t n = 0; n < m.rows; ++n) {
    for (std::int64_t k = 0; k < m.cols; ++k) w[static_cast<std::size_t>(n * m.cols + k)] = m.value(n, k);
  }
  std::vector<double> y(static_cast<std::size_t>(rows * m.rows));
  for (std::int64_t r = 0; r < rows; ++r) {
    for (std::int64_t n = 0; n < m.rows; ++n) {
      double sum = bias != nullptr ? bias[n] : 0.0;
      for (std::int64_t k = 0; k < m.cols; ++k) {
        sum += static_cast<double>(x[static_cast<std::size_t>(r * m.cols + k)]) * w[static_cast<std::size_t>(n * m.cols + k)];
      }
      y[static_cast<std::size_t>(r * m.rows + n)] = sum;
    }
  }
  return y;
}

// An fp16 bit pattern of either sign with an exponent field in [min_exponent,
// max_exponent] (0: zero and subnormals) and a random mantissa: finite by construction.
inline std::uint16_t random_f16(std::mt19937& rng, int min_exponent, int max_exponent) {
  std::uniform_int_distribution<int> exponent(min_exponent, max_exponent);
  const auto sign = static_cast<std::uint32_t>(rng() & 1u);
  const auto mantissa = static_cast<std::uint32_t>(rng() & 0x3ffu);
  return static_cast<std::uint16_t>((sign << 15) | (static_cast<std::uint32_t>(exponent(rng)) << 10) | mantissa);
}

// A block-quantized matrix of random GGUF blocks: every byte random (all codes and
// sub-block scales possible), then the fp16 scales (d, and dmin for Q4_K/Q5_K, m
// for Q5_1, in Q4_K/Q5_K/Q6_K/Q5_0/Q5_1; other formats keep their random bytes)
// replaced by random_f16. The default exponents (up to 2^3) keep every weight of
// those five formats inside fp16.
inline QuantizedMatrix random_blocks(std::mt19937& rng, BlockFormat format, std::int64_t rows, std::int64_t cols,
                                     int min_exponent = 0, int max_exponent = 18) {
  const BlockFormatInfo& info = block_format_info(format);
  QuantizedMatrix m;
  m.name = fmt::format("random {} [{}x{}]", info.name, rows, cols);
  m.rows = rows;
  m.cols = cols;
  m.groups = 0;
  m.bits = 0;
  m.block_format = format;
  m.blocks.resize(static_cast<std::size_t>(rows * (cols / info.elements) * info.bytes));
  for (auto& b : m.blocks) b = static_cast<std::byte>(rng() & 0xffu);
  const auto put = [&](std::size_t at, std::uint16_t bits) {
    m.blocks[at] = static_cast<std::byte>(bits & 0xffu);
    m.blocks[at + 1] = static_cast<std::byte>(bits >> 8);
  };
  for (std::size_t block = 0; block < m.blocks.size() / static_cast<std::size_t>(info.bytes); ++block) {
    const std::size_t at = block * static_cast<std::size_t>(info.bytes);
    if (format == BlockFormat::Q4_K || format == BlockFormat::Q5_K || format == BlockFormat::Q5_1) {
      put(at, random_f16(rng, min_exponent, max_exponent));
      put(at + 2, random_f16(rng, min_exponent, max_exponent));
    } else if (format == BlockFormat::Q6_K) {
      put(at + 208, random_f16(rng, min_exponent, max_exponent));
    } else if (format == BlockFormat::Q5_0) {
      put(at, random_f16(rng, min_exponent, max_exponent));
    }
  }
  m.stored_bytes = m.blocks.size();
  m.validate();
  return m;
}

inline std::vector<float> random_floats(std::mt19937& rng, std::size_t n, float scale = 1.0f) {
  std::normal_distribution<float> normal(0.0f, scale);
  std::vector<float> values(n);
  for (auto& v : values) v = normal(rng);
  return values;
}

}  // namespace nibble::cuda_testing
