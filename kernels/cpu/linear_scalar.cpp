// Portable fallback and the baseline the SIMD variants are benchmarked against.
#include "kernels/cpu/linear_formats.h"
#include "kernels/cpu/linear_kernels.h"

namespace {

struct V {
  static constexpr std::int64_t kWidth = 1;
  using reg = float;
  static reg zero() { return 0.0f; }
  static reg load(const float* p) { return *p; }
  template <typename Format>
  static reg load(const typename Format::Element* p, Format format) {
    return widen(*p, format);
  }
  static reg fma(reg a, reg b, reg acc) { return acc + a * b; }
  static float sum(reg v) { return v; }
};

}  // namespace

#include "kernels/cpu/linear_impl.h"

namespace nibble::kernels::cpu {
const LinearKernelTable& linear_kernels_scalar() { return kTable; }
}  // namespace nibble::kernels::cpu
