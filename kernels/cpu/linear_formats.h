#pragma once
// Element formats the dense linear kernels (and, with I8Codes, the KV-cache
// kernels) read, with their scalar widening.
// Included into each per-ISA unit's anonymous namespace use (see linear_impl.h).
#include <cstdint>

#include "common/fp8.h"
#include "common/half.h"

namespace {

struct F32Weights {
  using Element = float;
};
struct F16Weights {
  using Element = std::uint16_t;
};
struct BF16Weights {
  using Element = std::uint16_t;
};
struct E4M3Weights {  // FP8 e4m3 codes (their block scales are applied by the caller)
  using Element = std::uint8_t;
};
struct I8Codes {  // an int8 KV cache's codes (their scales are applied by the caller)
  using Element = std::int8_t;
};

inline float widen(float w, F32Weights) { return w; }
inline float widen(std::uint16_t w, F16Weights) { return nibble::f16_to_f32(w); }
inline float widen(std::uint16_t w, BF16Weights) { return nibble::bf16_to_f32(w); }
inline float widen(std::uint8_t w, E4M3Weights) { return nibble::e4m3_to_f32(w); }
inline float widen(std::int8_t w, I8Codes) { return static_cast<float>(w); }

}  // namespace
