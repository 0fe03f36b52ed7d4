#pragma once
// Rounding one activation block to int8, as both int8-activation units round it
// (linear_vnni.cpp for the packed tiles, block_vnni.cpp for GGUF blocks): up to
// kActivationBlock inputs, one scale amax / 127, to nearest even (the default
// MXCSR mode, as std::nearbyint). Included into each unit's anonymous namespace;
// needs the AVX-512 flags those units are compiled with.
#include <immintrin.h>

#include <cstdint>

namespace {

struct RoundedBlock {
  __mmask16 low_mask, high_mask;  // inputs 0..15 and 16..31 that exist (n of them)
  bool finite;                    // false: the block holds NaN or infinity (nothing else is set)
  float scale;
  __m512i low, high;              // the int32 codes of inputs 0..15 and 16..31, zero past n
};

inline RoundedBlock round_block(const float* x, std::int64_t n) {
  RoundedBlock out{};
  out.low_mask = static_cast<__mmask16>(n >= 16 ? 0xFFFF : (1u << n) - 1u);
  out.high_mask = static_cast<__mmask16>(n >= 32 ? 0xFFFF : n > 16 ? (1u << (n - 16)) - 1u : 0u);
  const __m512 a = _mm512_maskz_loadu_ps(out.low_mask, x);
  const __m512 b = _mm512_maskz_loadu_ps(out.high_mask, x + 16);
  // inf - inf and NaN - NaN are NaN.
  const __mmask16 finite = _mm512_cmp_ps_mask(_mm512_sub_ps(a, a), _mm512_setzero_ps(), _CMP_EQ_OQ) &
                           _mm512_cmp_ps_mask(_mm512_sub_ps(b, b), _mm512_setzero_ps(), _CMP_EQ_OQ);
  out.finite = finite == 0xFFFF;
  if (!out.finite) return out;
  const __m512 sign = _mm512_set1_ps(-0.0f);
  const float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_andnot_ps(sign, a), _mm512_andnot_ps(sign, b)));
  out.scale = amax / 127.0f;
  const __m512 inverse = _mm512_set1_ps(amax > 0.0f ? 127.0f / amax : 0.0f);
  out.low = _mm512_cvtps_epi32(_mm512_mul_ps(a, inverse));
  out.high = _mm512_cvtps_epi32(_mm512_mul_ps(b, inverse));
  return out;
}

}  // namespace
