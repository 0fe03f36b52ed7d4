#pragma once
// Comparison helpers for kernel tests: relative error against a reference, where
// any NaN or infinity fails.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <span>
#include <vector>

#include "kernels/cpu/isa.h"

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

// max |actual - expected| / scale; infinity when anything is not finite. For sums whose
// terms may cancel, `scale` is the sum of the terms' magnitudes, the size a rounding
// error is proportional to (max |expected| can be arbitrarily small).
inline double error_relative_to(std::span<const float> actual, std::span<const float> expected, double scale) {
  if (actual.size() != expected.size()) return INFINITY;
  double max_diff = 0;
  for (std::size_t i = 0; i < actual.size(); ++i) {
    if (!std::isfinite(actual[i]) || !std::isfinite(expected[i])) return INFINITY;
    max_diff = std::max(max_diff, std::abs(static_cast<double>(actual[i]) - expected[i]));
  }
  return max_diff / scale;
}

inline std::vector<float> random_floats(std::mt19937& rng, std::size_t n, float scale = 1.0f) {
  std::normal_distribution<float> normal(0.0f, scale);
  std::vector<float> values(n);
  for (auto& v : values) v = normal(rng);
  return values;
}

inline std::vector<kernels::cpu::Isa> supported_isas() {
  std::vector<kernels::cpu::Isa> isas;
  for (const auto isa : {kernels::cpu::Isa::Scalar, kernels::cpu::Isa::Avx2, kernels::cpu::Isa::Avx512}) {
    if (kernels::cpu::isa_supported(isa)) isas.push_back(isa);
  }
  return isas;
}

// Restores the process-wide ISA choice when a test ends.
class IsaGuard {
 public:
  IsaGuard() : saved_(kernels::cpu::active_isa()) {}
  ~IsaGuard() { kernels::cpu::set_active_isa(saved_); }
  IsaGuard(const IsaGuard&) = delete;
  IsaGuard& operator=(const IsaGuard&) = delete;

 private:
  kernels::cpu::Isa saved_;
};

}  // namespace nibble::testing
