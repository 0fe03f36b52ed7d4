// Compiled with -mavx512f -mavx512bw -mavx512vl -mavx512dq -mfma -mf16c; only
// reached after CPUID says AVX-512 is there.
#include <immintrin.h>

#include "kernels/cpu/linear_formats.h"
#include "kernels/cpu/linear_kernels.h"

namespace {

struct V {
  static constexpr std::int64_t kWidth = 16;
  using reg = __m512;
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
  static reg fma(reg a, reg b, reg acc) { return _mm512_fmadd_ps(a, b, acc); }
  static float sum(reg v) { return _mm512_reduce_add_ps(v); }
};

}  // namespace

#include "kernels/cpu/linear_impl.h"

namespace nibble::kernels::cpu {
const LinearKernelTable& linear_kernels_avx512() { return kTable; }
}  // namespace nibble::kernels::cpu
