#pragma once
// The AVX-512 vector traits `V` the kernels in linear_impl.h and packed_impl.h are
// written over. Included only by units compiled with AVX-512 flags (the float
// kernels, and the VNNI integer kernels that share their scale and store helpers).
#include <immintrin.h>

#include <cstdint>
#include <limits>

#include "kernels/cpu/linear_formats.h"
#include "kernels/cpu/vector_exp.h"

namespace {

struct V {
  static constexpr std::int64_t kWidth = 16;
  static constexpr std::int64_t kRowBlock = 4;
  using reg = __m512;
  using ireg = __m512i;
  static reg zero() { return _mm512_setzero_ps(); }
  static reg load(const float* p) { return _mm512_loadu_ps(p); }
  static reg load(const float* p, F32Weights) { return _mm512_loadu_ps(p); }
  static reg load(const std::uint16_t* p, F16Weights) {
    return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  }
  static reg load(const std::uint16_t* p, BF16Weights) {
    const __m512i wide = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
    return _mm512_castsi512_ps(_mm512_slli_epi32(wide, 16));
  }
  static reg load(const std::int8_t* p, I8Codes) {
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
  }
  // e4m3 -> float by bit manipulation (common/fp8.h has the definition): normals
  // rebias the exponent (7 -> 127), subnormals are mantissa * 2^-9 (no reliance on
  // float denormals, so DAZ cannot flush them), 0x7f/0xff are NaN.
  static reg load(const std::uint8_t* p, E4M3Weights) {
    const __m512i b = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    const __m512i magnitude = _mm512_and_si512(b, _mm512_set1_epi32(0x7f));
    const __m512i normal = _mm512_add_epi32(_mm512_slli_epi32(magnitude, 20), _mm512_set1_epi32(120 << 23));
    const __m512 subnormal = _mm512_mul_ps(_mm512_cvtepi32_ps(magnitude), _mm512_set1_ps(0x1p-9f));
    __m512 v = _mm512_mask_blend_ps(_mm512_cmplt_epi32_mask(magnitude, _mm512_set1_epi32(8)),
                                    _mm512_castsi512_ps(normal), subnormal);
    v = _mm512_mask_blend_ps(_mm512_cmpeq_epi32_mask(magnitude, _mm512_set1_epi32(0x7f)), v,
                             _mm512_set1_ps(std::numeric_limits<float>::quiet_NaN()));
    const __m512i sign = _mm512_slli_epi32(_mm512_and_si512(b, _mm512_set1_epi32(0x80)), 24);
    return _mm512_castsi512_ps(_mm512_or_si512(_mm512_castps_si512(v), sign));
  }
  static reg fma(reg a, reg b, reg acc) { return _mm512_fmadd_ps(a, b, acc); }
  static float sum(reg v) { return _mm512_reduce_add_ps(v); }

  static ireg load_u32(const std::uint32_t* p) { return _mm512_loadu_si512(p); }
  static ireg load_u16(const std::uint16_t* p) {
    return _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  }
  static ireg srli(ireg w, unsigned n) { return _mm512_srli_epi32(w, n); }
  static ireg slli(ireg w, unsigned n) { return _mm512_slli_epi32(w, n); }
  static ireg and_(ireg w, std::uint32_t mask) { return _mm512_and_si512(w, _mm512_set1_epi32(static_cast<int>(mask))); }
  static ireg or_(ireg a, ireg b) { return _mm512_or_si512(a, b); }
  static ireg add_i(ireg w, std::uint32_t c) { return _mm512_add_epi32(w, _mm512_set1_epi32(static_cast<int>(c))); }
  static reg to_float(ireg w) { return _mm512_cvtepi32_ps(w); }
  static reg load_u8(const std::uint8_t* p) {
    return _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
  }
  static reg set1(float v) { return _mm512_set1_ps(v); }
  static reg add(reg a, reg b) { return _mm512_add_ps(a, b); }
  static reg mul(reg a, reg b) { return _mm512_mul_ps(a, b); }
  static reg div(reg a, reg b) { return _mm512_div_ps(a, b); }
  static reg min(reg a, reg b) { return _mm512_min_ps(a, b); }
  static reg max(reg a, reg b) { return _mm512_max_ps(a, b); }
  static reg round(reg x) { return _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
  static reg fnmadd(reg a, reg b, reg c) { return _mm512_fnmadd_ps(a, b, c); }  // c - a * b
  static reg scale2n(reg p, reg n) { return _mm512_scalef_ps(p, n); }          // p * 2^n
  static reg exp(reg x) { return nibble::kernels::cpu::vector_exp<V>(x); }
  static void store(float* p, reg v) { _mm512_storeu_ps(p, v); }
  static void store(std::uint16_t* p, reg v, F16Weights) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  }
  static reg lookup16(const float* table, ireg index) { return _mm512_permutexvar_ps(index, _mm512_loadu_ps(table)); }
  static reg gather(const float* base, ireg index) { return _mm512_i32gather_ps(index, base, 4); }
};

}  // namespace
