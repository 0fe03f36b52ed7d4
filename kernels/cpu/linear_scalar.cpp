// Portable fallback and the baseline the SIMD variants are benchmarked against.
#include <cmath>

#include "kernels/cpu/linear_formats.h"
#include "kernels/cpu/elementwise_kernels.h"
#include "kernels/cpu/kv_kernels.h"
#include "kernels/cpu/linear_kernels.h"

namespace {

struct V {
  static constexpr std::int64_t kWidth = 1;
  static constexpr std::int64_t kRowBlock = 4;
  using reg = float;
  using ireg = std::uint32_t;
  static reg zero() { return 0.0f; }
  static reg load(const float* p) { return *p; }
  template <typename Format>
  static reg load(const typename Format::Element* p, Format format) {
    return widen(*p, format);
  }
  static reg fma(reg a, reg b, reg acc) { return acc + a * b; }
  static float sum(reg v) { return v; }

  static ireg load_u32(const std::uint32_t* p) { return *p; }
  static ireg load_u16(const std::uint16_t* p) { return *p; }
  static ireg srli(ireg w, int n) { return w >> n; }
  static ireg slli(ireg w, int n) { return w << n; }
  static ireg and_(ireg w, std::uint32_t mask) { return w & mask; }
  static ireg or_(ireg a, ireg b) { return a | b; }
  static ireg add_i(ireg w, std::uint32_t c) { return w + c; }
  static reg to_float(ireg w) { return static_cast<float>(w); }
  static reg load_u8(const std::uint8_t* p) { return static_cast<float>(*p); }
  static reg set1(float v) { return v; }
  static reg add(reg a, reg b) { return a + b; }
  static reg mul(reg a, reg b) { return a * b; }
  static reg div(reg a, reg b) { return a / b; }
  static reg exp(reg x) { return std::exp(x); }
  static void store(float* p, reg v) { *p = v; }
  static void store(std::uint16_t* p, reg v, F16Weights) { *p = nibble::f32_to_f16(v); }
  static reg lookup16(const float* table, ireg index) { return table[index]; }
  static reg gather(const float* base, ireg index) { return base[index]; }
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
const LinearKernelTable& linear_kernels_scalar() { return kTable; }
const KvKernelTable& kv_kernels_scalar() { return kKvTable; }
const ElementwiseKernelTable& elementwise_kernels_scalar() { return kElementwiseTable; }
}  // namespace nibble::kernels::cpu
