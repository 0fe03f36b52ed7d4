#pragma once
// RMSNorm, SwiGLU and GeGLU (elementwise_kernels.h), written once over the vector-traits
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
inline V::reg silu_vector(V::reg gate) {
  return V::div(gate, V::add(V::set1(1.0f), V::exp(V::mul(gate, V::set1(-1.0f)))));
}

// GELU's tanh approximation, 0.5 g (1 + tanh(u)) with u = sqrt(2/pi) (g + 0.044715 g^3),
// as the equal g / (1 + e^(-2u)): one vector exp instead of a scalar tanh per value
// (tanhf was ~15 % of Gemma's prefill), and no cancellation in 1 + tanh(u).
inline V::reg gelu_tanh_vector(V::reg gate) {
  const auto cube = V::mul(V::mul(gate, gate), gate);
  const auto minus_two_u = V::mul(V::fma(cube, V::set1(0.044715f), gate), V::set1(-2.0f * 0.7978845608028654f));
  return V::div(gate, V::add(V::set1(1.0f), V::exp(minus_two_u)));
}

// out = activation(gate) * up.
template <V::reg (*Activation)(V::reg)>
void gated(const float* gate, const float* up, std::int64_t n, float* out) {
  std::int64_t i = 0;
  for (; i + V::kWidth <= n; i += V::kWidth) V::store(out + i, V::mul(Activation(V::load(gate + i)), V::load(up + i)));
  if (i < n) {
    float g[V::kWidth] = {}, u[V::kWidth] = {}, o[V::kWidth];
    std::copy(gate + i, gate + n, g);
    std::copy(up + i, up + n, u);
    V::store(o, V::mul(Activation(V::load(g)), V::load(u)));
    std::copy(o, o + (n - i), out + i);
  }
}

const nibble::kernels::cpu::ElementwiseKernelTable kElementwiseTable{rms_norm_rows, gated<silu_vector>,
                                                                  gated<gelu_tanh_vector>};

}  // namespace
