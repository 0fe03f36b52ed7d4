#pragma once
// Comparison helpers for kernel tests: relative error against a reference, where
// any NaN or infinity fails.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <span>
#include <vector>

namespace nibble::testing {

// max |actual - expected| / max |expected|; infinity when anything is not finite.
inline double relative_error(std::span<const float> actual, std::span<const float> expected) {
  if (actual.size() != expected.size()) return INFINITY;
  double max_diff = 0, max_ref = 0;
  for (std::size_t i = 0; i < actual.size(); ++i) {
    if (!std::isfinite(actual[i]) || !std::isfinite(expected[i])) return INFINITY;
    max_diff = std::max(max_diff, std::abs(static_cast<double>(actual[i]) - expected[i]));
    max_ref = std::max(max_ref, std::abs(static_cast<double>(expected[i])));
  }
  return max_ref == 0 ? max_diff : max_diff / max_ref;
}

inline std::vector<float> random_floats(std::mt19937& rng, std::size_t n, float scale = 1.0f) {
  std::normal_distribution<float> normal(0.0f, scale);
  std::vector<float> values(n);
  for (auto& v : values) v = normal(rng);
  return values;
}

}  // namespace nibble::testing
