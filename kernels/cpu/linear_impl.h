#pragma once
// The linear-layer kernel written once over a vector-traits type `V`, included by
// each per-ISA translation unit (compiled with that ISA's flags). Everything here
// lives in that unit's anonymous namespace so no ISA-specific code can leak into
// another unit through the linker.
//
// Include linear_formats.h, define V, then include this file. V provides: kWidth,
// type reg, zero(), load(const float*), load(const Element*, Format) for each weight
// format, fma(a, b, acc), sum(reg).

namespace {

// Up to kRowBlock activation rows share each weight vector load, so a batch of
// rows costs little more memory traffic than one.
constexpr std::int64_t kRowBlock = 4;

template <typename Format, int Rows>
inline void dot_rows(const float* x, std::int64_t k, const typename Format::Element* w, float* out) {
  typename V::reg acc[Rows];
  for (int r = 0; r < Rows; ++r) acc[r] = V::zero();
  std::int64_t kk = 0;
  for (; kk + V::kWidth <= k; kk += V::kWidth) {
    const auto wv = V::load(w + kk, Format{});
    for (int r = 0; r < Rows; ++r) acc[r] = V::fma(V::load(x + r * k + kk), wv, acc[r]);
  }
  if (kk < k) {
    // The ragged tail goes through the same vector path on zero-padded copies, so
    // no scalar (and possibly differently-compiled) conversion code is needed here.
    typename Format::Element w_tail[V::kWidth] = {};
    float x_tail[V::kWidth] = {};
    for (std::int64_t t = kk; t < k; ++t) w_tail[t - kk] = w[t];
    const auto wv = V::load(w_tail, Format{});
    for (int r = 0; r < Rows; ++r) {
      for (std::int64_t t = kk; t < k; ++t) x_tail[t - kk] = x[r * k + t];
      acc[r] = V::fma(V::load(x_tail), wv, acc[r]);
    }
  }
  for (int r = 0; r < Rows; ++r) out[r] = V::sum(acc[r]);
}

template <typename Format>
void linear(const float* x, std::int64_t rows, std::int64_t k, const void* weights, std::int64_t n_begin,
            std::int64_t n_end, const float* bias, float* y, std::int64_t ldy) {
  const auto* w = static_cast<const typename Format::Element*>(weights);
  float out[kRowBlock];
  for (std::int64_t r0 = 0; r0 < rows; r0 += kRowBlock) {
    const std::int64_t block = rows - r0 < kRowBlock ? rows - r0 : kRowBlock;
    const float* xb = x + r0 * k;
    for (std::int64_t n = n_begin; n < n_end; ++n) {
      const auto* wn = w + n * k;
      switch (block) {
        case 4:
          dot_rows<Format, 4>(xb, k, wn, out);
          break;
        case 3:
          dot_rows<Format, 3>(xb, k, wn, out);
          break;
        case 2:
          dot_rows<Format, 2>(xb, k, wn, out);
          break;
        default:
          dot_rows<Format, 1>(xb, k, wn, out);
          break;
      }
      const float b = bias != nullptr ? bias[n] : 0.0f;
      for (std::int64_t r = 0; r < block; ++r) y[(r0 + r) * ldy + n] = out[r] + b;
    }
  }
}

}  // namespace
