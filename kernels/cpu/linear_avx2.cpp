// Compiled with -mavx2 -mfma -mf16c; only reached after CPUID says AVX2 is there.
#include <immintrin.h>

#include <limits>


#include "kernels/cpu/linear_formats.h"
#include "kernels/cpu/vector_exp.h"
#include "kernels/cpu/elementwise_kernels.h"
#include "kernels/cpu/kv_kernels.h"
#include "kernels/cpu/linear_kernels.h"

namespace {

struct V {
  static constexpr std::int64_t kWidth = 8;
  // Four tile registers per row already take half of the 16 ymm registers.
  static constexpr std::int64_t kRowBlock = 2;
  using reg = __m256;
  using ireg = __m256i;
  static reg zero() { return _mm256_setzero_ps(); }
  static reg load(const float* p) { return _mm256_loadu_ps(p); }
  static reg load(const float* p, F32Weights) { return _mm256_loadu_ps(p); }
  static reg load(const std::uint16_t* p, F16Weights) {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  }
  static reg load(const std::uint16_t* p, BF16Weights) {
    const __m256i wide = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    return _mm256_castsi256_ps(_mm256_slli_epi32(wide, 16));
  }
  static reg load(const std::int8_t* p, I8Codes) {
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
  }
  // e4m3 -> float as in avx512_traits.h: exponent rebias for normals,
  // mantissa * 2^-9 for subnormals, NaN for 0x7f/0xff.
  static reg load(const std::uint8_t* p, E4M3Weights) {
    const __m256i b = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
    const __m256i magnitude = _mm256_and_si256(b, _mm256_set1_epi32(0x7f));
    const __m256i normal = _mm256_add_epi32(_mm256_slli_epi32(magnitude, 20), _mm256_set1_epi32(120 << 23));
    const __m256 subnormal = _mm256_mul_ps(_mm256_cvtepi32_ps(magnitude), _mm256_set1_ps(0x1p-9f));
    __m256 v = _mm256_blendv_ps(_mm256_castsi256_ps(normal), subnormal,
                                _mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_set1_epi32(8), magnitude)));
    v = _mm256_blendv_ps(v, _mm256_set1_ps(std::numeric_limits<float>::quiet_NaN()),
                         _mm256_castsi256_ps(_mm256_cmpeq_epi32(magnitude, _mm256_set1_epi32(0x7f))));
    const __m256i sign = _mm256_slli_epi32(_mm256_and_si256(b, _mm256_set1_epi32(0x80)), 24);
    return _mm256_castsi256_ps(_mm256_or_si256(_mm256_castps_si256(v), sign));
  }
  static reg fma(reg a, reg b, reg acc) { return _mm256_fmadd_ps(a, b, acc); }
  static float sum(reg v) {
    const __m128 halves = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    const __m128 pairs = _mm_add_ps(halves, _mm_movehl_ps(halves, halves));
    return _mm_cvtss_f32(_mm_add_ss(pairs, _mm_movehdup_ps(pairs)));
  }

  static ireg load_u32(const std::uint32_t* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }
  static ireg load_u16(const std::uint16_t* p) {
    return _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  }
  static ireg srli(ireg w, int n) { return _mm256_srli_epi32(w, n); }
  static ireg slli(ireg w, int n) { return _mm256_slli_epi32(w, n); }
  static ireg and_(ireg w, std::uint32_t mask) { return _mm256_and_si256(w, _mm256_set1_epi32(static_cast<int>(mask))); }
  static ireg or_(ireg a, ireg b) { return _mm256_or_si256(a, b); }
  static ireg add_i(ireg w, std::uint32_t c) { return _mm256_add_epi32(w, _mm256_set1_epi32(static_cast<int>(c))); }
  static reg to_float(ireg w) { return _mm256_cvtepi32_ps(w); }
  static reg load_u8(const std::uint8_t* p) {
    return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
  }
  static reg set1(float v) { return _mm256_set1_ps(v); }
  static reg add(reg a, reg b) { return _mm256_add_ps(a, b); }
  static reg mul(reg a, reg b) { return _mm256_mul_ps(a, b); }
  static reg div(reg a, reg b) { return _mm256_div_ps(a, b); }
  static reg min(reg a, reg b) { return _mm256_min_ps(a, b); }
  static reg max(reg a, reg b) { return _mm256_max_ps(a, b); }
  static reg round(reg x) { return _mm256_round_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
  static reg fnmadd(reg a, reg b, reg c) { return _mm256_fnmadd_ps(a, b, c); }  // c - a * b
  // p * 2^n, with 2^n built in the exponent bits (n is within the clamped range).
  static reg scale2n(reg p, reg n) {
    const __m256i two_n = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(two_n));
  }
  static reg exp(reg x) { return nibble::kernels::cpu::vector_exp<V>(x); }
  static void store(float* p, reg v) { _mm256_storeu_ps(p, v); }
  static void store(std::uint16_t* p, reg v, F16Weights) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  }
  static reg lookup16(const float* table, ireg index) {
    const reg low = _mm256_permutevar8x32_ps(_mm256_loadu_ps(table), index);
    const reg high = _mm256_permutevar8x32_ps(_mm256_loadu_ps(table + 8), index);
    return _mm256_blendv_ps(low, high, _mm256_castsi256_ps(_mm256_cmpgt_epi32(index, _mm256_set1_epi32(7))));
  }
  static reg gather(const float* base, ireg index) { return _mm256_i32gather_ps(base, index, 4); }
};

}  // namespace

#include "kernels/cpu/linear_impl.h"
#include "kernels/cpu/packed_impl.h"
#include "kernels/cpu/block_impl.h"
#include "kernels/cpu/fp8_impl.h"
#include "kernels/cpu/table_impl.h"
#include "kernels/cpu/kv_impl.h"
#include "kernels/cpu/elementwise_impl.h"

namespace nibble::kernels::cpu {
const LinearKernelTable& linear_kernels_avx2() { return kTable; }
const KvKernelTable& kv_kernels_avx2() { return kKvTable; }
const ElementwiseKernelTable& elementwise_kernels_avx2() { return kElementwiseTable; }
}  // namespace nibble::kernels::cpu
