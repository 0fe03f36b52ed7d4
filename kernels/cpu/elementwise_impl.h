#pragma once
// RMSNorm and SwiGLU (elementwise_kernels.h), written once over the vector-traits
// type `V` of the including per-ISA unit (see linear_impl.h for the scheme).
// Ragged ends go through the same vector code on zero-padded copies, so every
// element gets the same function whatever its index.
#include <algorithm>
#include <cmath>
#include <cstdint>

namespace {

void rms_norm_rows(const float* x, std::int64_t rows, std::int64_t dim, const float* weight, float eps, float* y) {
  const std::int64_t body = dim / V::kWidth * V::kWidth;
  for (std::int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * dim;
    float* yr = y + r * dim;
    auto squares = V::zero();
    for (std::int64_t i = 0; i < body; i += V::kWidth) {
      const auto v = V::load(xr + i);
      squares = V::fma(v, v, squares);
    }
    float tail[V::kWidth] = {};
    std::copy(xr + body, xr + dim, tail);
    const auto t = V::load(tail);
    const float sum_squares = V::sum(V::fma(t, t, squares));
    const auto scale = V::set1(1.0f / std::sqrt(sum_squares / static_cast<float>(dim) + eps));
    for (std::int64_t i = 0; i < body; i += V::kWidth) {
      V::store(yr + i, V::mul(V::load(weight + i), V::mul(V::load(xr + i), scale)));
    }
    if (body < dim) {
      float w_tail[V::kWidth] = {};
      std::copy(weight + body, weight + dim, w_tail);
      float out[V::kWidth];
      V::store(out, V::mul(V::load(w_tail), V::mul(t, scale)));
      std::copy(out, out + (dim - body), yr + body);
    }
  }
}

// silu(g) = g / (1 + e^-g); V::exp saturates, so very negative g give -0, not NaN.
inline V::reg swiglu_vector(V::reg gate, V::reg up) {
  const auto e = V::exp(V::mul(gate, V::set1(-1.0f)));
  return V::mul(V::div(gate, V::add(V::set1(1.0f), e)), up);
}

void swiglu(const float* gate, const float* up, std::int64_t n, float* out) {
  std::int64_t i = 0;
  for (; i + V::kWidth <= n; i += V::kWidth) V::store(out + i, swiglu_vector(V::load(gate + i), V::load(up + i)));
  if (i < n) {
    float g[V::kWidth] = {}, u[V::kWidth] = {}, o[V::kWidth];
    std::copy(gate + i, gate + n, g);
    std::copy(up + i, up + n, u);
    V::store(o, swiglu_vector(V::load(g), V::load(u)));
    std::copy(o, o + (n - i), out + i);
  }
}

const nibble::kernels::cpu::ElementwiseKernelTable kElementwiseTable{rms_norm_rows, swiglu};

}  // namespace
