// Compiled with -mavx2 -mfma -mf16c; only reached after CPUID says AVX2 is there.
#include <immintrin.h>

#include "kernels/cpu/linear_formats.h"
#include "kernels/cpu/linear_kernels.h"

namespace {

struct V {
  static constexpr std::int64_t kWidth = 8;
  using reg = __m256;
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
  static reg fma(reg a, reg b, reg acc) { return _mm256_fmadd_ps(a, b, acc); }
  static float sum(reg v) {
    const __m128 halves = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    const __m128 pairs = _mm_add_ps(halves, _mm_movehl_ps(halves, halves));
    return _mm_cvtss_f32(_mm_add_ss(pairs, _mm_movehdup_ps(pairs)));
  }
};

}  // namespace

#include "kernels/cpu/linear_impl.h"

namespace nibble::kernels::cpu {
const LinearKernelTable& linear_kernels_avx2() { return kTable; }
}  // namespace nibble::kernels::cpu
