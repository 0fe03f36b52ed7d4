#pragma once
// RMSNorm: y = x / rms(x) * w, row by row (Zhang & Sennrich 2019).
#include <cstdint>

#include "kernels/backend.h"

namespace nibble::engine {

struct RmsNorm {
  kernels::Buffer weight;  // [dim]
  float eps = 1e-6f;

  bool empty() const { return weight.empty(); }
  void run(kernels::Backend& backend, const float* x, std::int64_t rows, std::int64_t dim, float* y) const {
    backend.rms_norm(x, rows, dim, weight.data<const float>(), eps, y);
  }
};

}  // namespace nibble::engine
