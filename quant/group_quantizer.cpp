#include "quant/group_quantizer.h"

#include <algorithm>
#include <cmath>

#include "common/error.h"
#include "common/half.h"

namespace nibble::quant {
namespace {

float round_to_f16(float value) { return f16_to_f32(f32_to_f16(value)); }

// The smallest positive fp16 (a subnormal): a group whose range is so tiny that its
// scale underflows fp16 still gets a finite, positive scale, so w / scale stays finite.
constexpr float kSmallestF16 = 0x1p-24f;

}  // namespace

void QuantSpec::validate() const {
  if (bits != 2 && bits != 3 && bits != 4 && bits != 8) fail("{}-bit quantization is not supported (2, 3, 4, 8)", bits);
  if (min_zero < 0 || min_zero >= maxq()) fail("minimum zero point {} is outside [0, {})", min_zero, maxq());
  if (group_size != -1 && group_size <= 0) {
    fail("group size {} is invalid (a positive number, or -1 for one group per row)", group_size);
  }
}

GroupParams fit_group(std::span<const float> values, const QuantSpec& spec) {
  spec.validate();
  const int maxq = spec.maxq();
  // 0 is always inside the range, so pruned weights (exact zeros) stay exact.
  float low = 0.0f, high = 0.0f;
  for (const float v : values) {
    if (!std::isfinite(v)) fail("cannot quantize a group holding {}", v);
    low = std::min(low, v);
    high = std::max(high, v);
  }
  if (spec.sym) {
    high = std::max(-low, high);
    low = -high;
  }
  if (low == 0.0f && high == 0.0f) {  // an all-zero group: any scale works; GPTQ's choice
    low = -1.0f;
    high = 1.0f;
  }
  float scale = round_to_f16((high - low) / static_cast<float>(maxq));
  if (std::isinf(scale)) fail("weights up to {} need a scale beyond fp16's range", std::max(-low, high));
  scale = std::max(scale, kSmallestF16);

  GroupParams params;
  params.scale = scale;
  if (spec.sym) {
    params.zero = (maxq + 1) / 2;
  } else {
    // Chosen with the fp16 scale readers will see, so the group's minimum lands on a code.
    const float zero = std::nearbyint(-low / scale);
    params.zero = static_cast<int>(std::clamp(zero, 0.0f, static_cast<float>(maxq)));
    if (params.zero < spec.min_zero) {
      // Keep the group's maximum on a code while the zero point moves up.
      params.zero = spec.min_zero;
      params.scale = std::max(round_to_f16(high / static_cast<float>(maxq - spec.min_zero)), kSmallestF16);
      if (std::isinf(params.scale)) fail("weights up to {} need a scale beyond fp16's range", high);
    }
  }
  return params;
}

}  // namespace nibble::quant
