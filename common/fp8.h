#pragma once
// FP8 E4M3 ("e4m3fn", the OCP FP8 format DeepSeek-V3, Qwen3-FP8 and
// compressed-tensors store weights in): sign, 4 exponent bits (bias 7), 3
// mantissa bits; no infinities, S.1111.111 is NaN, the largest finite value 448.
// Scalar decoding, the reference the kernels' vector forms are tested against.
#include <bit>
#include <cstdint>
#include <limits>

namespace nibble {

inline float e4m3_to_f32(std::uint8_t code) {
  const std::uint32_t sign = static_cast<std::uint32_t>(code & 0x80u) << 24;
  const std::uint32_t exponent = (code >> 3) & 0xfu;
  const std::uint32_t mantissa = code & 0x7u;
  if (exponent == 0xfu && mantissa == 0x7u) return std::numeric_limits<float>::quiet_NaN();
  if (exponent == 0) {
    // Subnormal: mantissa * 2^-9, exact in float.
    const float magnitude = static_cast<float>(mantissa) * 0x1p-9f;
    return sign != 0 ? -magnitude : magnitude;
  }
  return std::bit_cast<float>(sign | ((exponent + 120u) << 23) | (mantissa << 20));
}

}  // namespace nibble
