// Pruning without weight updates (magnitude, Wanda) and the selection rule every
// pruning method shares, SparseGPT's sweep included.
#include <algorithm>
#include <cmath>
#include <numeric>

#include "common/error.h"
#include "quant/obs_sweep.h"

namespace nibble::quant {

void mark_lowest_scores(std::span<const double> scores, std::int64_t count, std::span<std::uint8_t> pruned) {
  if (pruned.size() != scores.size()) fail("{} pruning flags for {} scores", pruned.size(), scores.size());
  const auto n = static_cast<std::int64_t>(scores.size());
  count = std::clamp<std::int64_t>(count, 0, n);
  if (count == 0) return;
  // Called once per m columns of every row by n:m rules: the index buffer is reused.
  thread_local std::vector<std::int32_t> order;
  order.resize(scores.size());
  std::iota(order.begin(), order.end(), 0);
  const auto lower = [&](std::int32_t a, std::int32_t b) {
    const double sa = scores[static_cast<std::size_t>(a)], sb = scores[static_cast<std::size_t>(b)];
    return sa < sb || (sa == sb && a < b);
  };
  if (count < n) std::nth_element(order.begin(), order.begin() + count, order.end(), lower);
  for (std::int64_t i = 0; i < count; ++i) pruned[static_cast<std::size_t>(order[static_cast<std::size_t>(i)])] = 1;
}

namespace {

// Zeroes, row by row, the weights with the lowest score(row, col) under `sparsity`.
template <typename Score>
std::vector<float> prune_by_score(std::span<const float> weights, std::int64_t rows, std::int64_t cols,
                                  const SparsitySpec& sparsity, const Score& score) {
  if (rows <= 0 || cols <= 0 || weights.size() != static_cast<std::size_t>(rows * cols)) {
    fail("cannot prune {} weights as a [{}, {}] matrix", weights.size(), rows, cols);
  }
  sparsity.validate(cols);
  std::vector<float> pruned_weights(weights.begin(), weights.end());
  std::vector<double> scores(static_cast<std::size_t>(cols));
  std::vector<std::uint8_t> pruned(static_cast<std::size_t>(cols));
  for (std::int64_t r = 0; r < rows; ++r) {
    for (std::int64_t c = 0; c < cols; ++c) {
      const float w = weights[static_cast<std::size_t>(r * cols + c)];
      if (!std::isfinite(w)) fail("weight at row {} column {} is {}", r, c, w);
      scores[static_cast<std::size_t>(c)] = score(w, c);
    }
    std::fill(pruned.begin(), pruned.end(), std::uint8_t{0});
    const std::span<const double> row_scores(scores);
    const std::span<std::uint8_t> row_pruned(pruned);
    if (sparsity.kind == SparsitySpec::Kind::Unstructured) {
      mark_lowest_scores(row_scores, sparsity.removed_in(0, cols), row_pruned);
    } else if (sparsity.kind == SparsitySpec::Kind::NofM) {
      for (std::int64_t c = 0; c < cols; c += sparsity.m) {
        const auto begin = static_cast<std::size_t>(c), size = static_cast<std::size_t>(sparsity.m);
        mark_lowest_scores(row_scores.subspan(begin, size), sparsity.n, row_pruned.subspan(begin, size));
      }
    }
    for (std::int64_t c = 0; c < cols; ++c) {
      if (pruned[static_cast<std::size_t>(c)]) pruned_weights[static_cast<std::size_t>(r * cols + c)] = 0.0f;
    }
  }
  return pruned_weights;
}

}  // namespace

std::vector<float> prune_magnitude(std::span<const float> weights, std::int64_t rows, std::int64_t cols,
                                   const SparsitySpec& sparsity) {
  return prune_by_score(weights, rows, cols, sparsity,
                        [](float w, std::int64_t) { return std::abs(static_cast<double>(w)); });
}

std::vector<float> prune_wanda(std::span<const float> weights, std::int64_t rows, std::int64_t cols,
                               std::span<const double> column_norms, const SparsitySpec& sparsity) {
  if (column_norms.size() != static_cast<std::size_t>(cols)) {
    fail("Wanda needs one activation norm per input column: {} norms for {} columns", column_norms.size(), cols);
  }
  for (std::size_t c = 0; c < column_norms.size(); ++c) {
    if (!std::isfinite(column_norms[c]) || column_norms[c] < 0) fail("activation norm of column {} is {}", c, column_norms[c]);
  }
  return prune_by_score(weights, rows, cols, sparsity, [&](float w, std::int64_t c) {
    return std::abs(static_cast<double>(w)) * column_norms[static_cast<std::size_t>(c)];
  });
}

}  // namespace nibble::quant
