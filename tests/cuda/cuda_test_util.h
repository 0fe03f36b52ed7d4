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

inline std::vector<float> random_floats(std::mt19937& rng, std::size_t n, float scale = 1.0f) {
  std::normal_distribution<float> normal(0.0f, scale);
  std::vector<float> values(n);
  for (auto& v : values) v = normal(rng);
  return values;
}

}  // namespace nibble::cuda_testing
