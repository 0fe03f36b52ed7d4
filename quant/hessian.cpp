#include "quant/hessian.h"

#include <algorithm>
#include <cmath>

#include "common/error.h"
#include "kernels/backend.h"

namespace nibble::quant {
namespace {

// Rows per float32 Gram product: bounds the transposed copy, and the length of
// every float32 sum, before the result is folded into float64.
constexpr std::int64_t kChunkRows = 2048;
constexpr std::int64_t kTile = 32;  // transposes in tiles, so both sides stay in cache

std::size_t at(std::int64_t i) { return static_cast<std::size_t>(i); }

}  // namespace

Hessian::Hessian(std::int64_t dim) : dim_(dim) {
  if (dim <= 0) fail("a Hessian needs a positive dimension, got {}", dim);
  h_.assign(at(dim * dim), 0.0);
}

void Hessian::add(std::span<const float> x, std::int64_t rows, kernels::Backend& backend) {
  if (rows < 0 || x.size() != at(rows * dim_)) {
    fail("Hessian of dimension {}: {} values are not {} rows", dim_, x.size(), rows);
  }
  // Checked first, so a bad batch leaves H as it was.
  for (std::size_t i = 0; i < x.size(); ++i) {
    if (!std::isfinite(x[i])) fail("calibration input row {} column {} is {}", i / at(dim_), i % at(dim_), x[i]);
  }
  std::vector<float> xt, gram(h_.size());
  for (std::int64_t first = 0; first < rows; first += kChunkRows) {
    const std::int64_t count = std::min(kChunkRows, rows - first);
    // Xt [dim, count]: the backend's x * w^T with Xt as both operands is X^T X.
    xt.resize(at(dim_ * count));
    for (std::int64_t r0 = 0; r0 < count; r0 += kTile) {
      for (std::int64_t c0 = 0; c0 < dim_; c0 += kTile) {
        for (std::int64_t r = r0; r < std::min(r0 + kTile, count); ++r) {
          for (std::int64_t c = c0; c < std::min(c0 + kTile, dim_); ++c) {
            xt[at(c * count + r)] = x[at((first + r) * dim_ + c)];
          }
        }
      }
    }
    backend.linear(xt.data(), dim_, kernels::Matrix{DType::F32, dim_, count, xt.data()}, nullptr, gram.data());

    // Running mean of 2 x x^T over every row seen: H = 2/n sum x x^T after each
    // chunk. The float32 kernel may sum (a, b) and (b, a) in different orders;
    // averaging them keeps H exactly symmetric.
    const double total = static_cast<double>(samples_ + count);
    const double keep = static_cast<double>(samples_) / total;
    const double weight = 2.0 / total;
    for (std::int64_t a0 = 0; a0 < dim_; a0 += kTile) {
      for (std::int64_t b0 = 0; b0 < dim_; b0 += kTile) {
        for (std::int64_t a = a0; a < std::min(a0 + kTile, dim_); ++a) {
          for (std::int64_t b = b0; b < std::min(b0 + kTile, dim_); ++b) {
            const std::size_t ab = at(a * dim_ + b), ba = at(b * dim_ + a);
            const double gram_ab = 0.5 * (static_cast<double>(gram[ab]) + static_cast<double>(gram[ba]));
            h_[ab] = h_[ab] * keep + weight * gram_ab;
          }
        }
      }
    }
    samples_ += count;
  }
}

std::vector<double> Hessian::column_norms() const {
  std::vector<double> norms(at(dim_), 0.0);
  const double half_samples = static_cast<double>(samples_) / 2.0;
  for (std::int64_t j = 0; j < dim_; ++j) norms[at(j)] = std::sqrt(std::max(0.0, h_[at(j * dim_ + j)] * half_samples));
  return norms;
}

std::vector<double> column_second_moments(std::span<const float> x, std::int64_t rows, std::int64_t cols) {
  if (rows <= 0 || cols <= 0 || x.size() != static_cast<std::size_t>(rows * cols)) {
    fail("{} values do not form [{}, {}] activations", x.size(), rows, cols);
  }
  std::vector<double> moments(static_cast<std::size_t>(cols), 0.0);
  for (std::int64_t r = 0; r < rows; ++r) {
    const float* row = x.data() + r * cols;
    for (std::int64_t c = 0; c < cols; ++c) moments[static_cast<std::size_t>(c)] += static_cast<double>(row[c]) * row[c];
  }
  for (double& m : moments) m /= static_cast<double>(rows);
  return moments;
}

}  // namespace nibble::quant
